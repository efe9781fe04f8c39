"""The ``mxrc`` command: one sub-command per job, each registered by its own module.

Every sub-command module exposes ``add_parser(subparsers)``, which declares its options
and sets ``func`` (``Namespace -> exit code``). Errors meant for the user are
:class:`~mxrc.errors.MxrcError`: printed as one ``mxrc: …`` line with their exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mxrc import __version__, chart_cli, command_cli, log_cli, replay_cli, rt_cli, runner
from mxrc.drill import actuator
from mxrc.errors import MxrcError
from mxrc.service import nonrt_cli
from mxrc.systemd import monitor, units_cli

DESCRIPTION = """\
mxrc: a runtime for robot controllers. The controller's safety state (INIT, READY,
RUNNING, SAFE_MODE) is a statechart whose every transition is fsynced to an event log
before it takes effect; the log can be replayed after an incident.

common jobs:
  mxrc run                      run a single node with data under ./var (Ctrl-C stops it);
                                admin API and page on http://127.0.0.1:8780
  mxrc replay var               what happened, as a table of events
  mxrc replay var --at 10:42    each node's state at that time, and why
  mxrc replay var --verify      check checksums, sequence and transition legality
  mxrc chart draw -o rt.svg     picture of the safety statechart
  mxrc log repair var           repair a damaged log (only when asked)
"""

EXIT_CODES = """\
exit codes: 0 ok, 1 verification found problems, 2 usage error, 3 not an mxrc log,
  4 corrupt record, 5 unknown event type, 6 unknown chart version, 7 bad statechart file,
  8 bad configuration, 9 data directory in use, 10 event log failed (I/O error)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mxrc",
        description=DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mxrc {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    modules = (
        runner, command_cli, nonrt_cli, replay_cli, chart_cli, log_cli, rt_cli, actuator,
        units_cli, monitor,
    )  # fmt: skip
    for module in modules:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except MxrcError as exc:
        if not exc.reported:  # a process with a log pipeline has logged it already
            print(f"mxrc: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
