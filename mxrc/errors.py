"""Errors a user can meet, each with its own exit code.

The CLI prints ``mxrc: <message>`` on one line and exits with the class's ``exit_code``,
so scripts can tell a usage mistake from a damaged log from an unknown chart version.
"""

from __future__ import annotations


class MxrcError(Exception):
    """Base class: an error whose message is meant for the user as it stands."""

    exit_code = 1
    #: Set once the error went to the user through a log pipeline (stderr or journald),
    #: so that the command line does not print it a second time.
    reported = False


class UsageError(MxrcError):
    """Bad command-line input: unparseable time, missing path, bad option value."""

    exit_code = 2


class NotAnMxrcLogError(MxrcError):
    """A file given as an event log is not one (no valid mxrc segment header)."""

    exit_code = 3


class CorruptLogError(MxrcError):
    """A damaged record before the tail of a log: never skipped, always reported."""

    exit_code = 4

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(
            f"{path}: corrupt record at byte offset {offset}: {reason}; the log was not modified"
        )
        self.path = path
        self.offset = offset
        self.reason = reason


class UnknownEventTypeError(MxrcError):
    """A record whose type is not in the event catalogue (``events/``)."""

    exit_code = 5


class UnknownChartError(MxrcError):
    """A record names a chart version this build of mxrc does not have."""

    exit_code = 6


class ChartDefinitionError(MxrcError):
    """A statechart file is malformed; the message names the state or trigger."""

    exit_code = 7


class ConfigError(MxrcError):
    """The TOML configuration is invalid; the message names the key."""

    exit_code = 8


class DataDirLockedError(MxrcError):
    """Another mxrc process owns the data directory."""

    exit_code = 9


class LogFailedError(MxrcError):
    """An fsync or write failed: the log refuses further appends (the page cache can no
    longer be trusted to match the disk, so retrying could acknowledge lost data)."""

    exit_code = 10
