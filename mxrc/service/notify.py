"""systemd notifications (``sd_notify``): READY, STATUS, WATCHDOG, STOPPING.

The datagrams go out through the ``sdnotify`` library, with three things it does not do:

* **Errors are reported.** ``sdnotify`` swallows every failure unless ``debug=True``, so
  a unit whose notifications never arrive would look fine until systemd kills it for a
  missed watchdog. Here the library runs with ``debug=True``; the first failure is
  reported (``report``, default: a logging warning) and later ones are counted in
  ``errors`` until a send works again, which is reported too. A failed socket is
  reconnected on the next send.
* **The address comes from the mapping given**, not from the process environment that
  ``SystemdNotifier()`` reads by itself: the library's notifier is built on a socket
  connected here (path, or ``@name`` for an abstract socket).
* **Text is sent as UTF-8**, which systemd requires (it ignores a STATUS that is not);
  ``sdnotify`` encodes as Latin-1, so the message is handed to it as the Latin-1
  reading of its UTF-8 bytes.

Watchdog. systemd sets ``WATCHDOG_USEC`` (from ``WatchdogSec=``) and ``WATCHDOG_PID``;
pinging at half the timeout is the documented rate. A ping says "this process makes
progress", not "this process exists", so :class:`WatchdogGate` decides: only when a
progress counter moved and nothing is unhealthy. A frozen loop or a stuck cycle then
stops the pings, and systemd's watchdog restarts the service.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Final

import sdnotify

from mxrc.errors import MxrcError

log = logging.getLogger("mxrc.service.notify")

_DIGITS: Final = re.compile(r"[0-9]+")


class NotifyConfigError(MxrcError):
    """A systemd notification variable has a value that cannot be used."""

    exit_code = 8


def socket_address(value: str) -> str:
    """``NOTIFY_SOCKET`` as a socket address: a path, or ``@name`` for the abstract
    namespace (``\\0name``)."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    raise NotifyConfigError(
        f"NOTIFY_SOCKET={value!r} is neither an absolute path nor an @abstract socket name"
    )


class _Sd(sdnotify.SystemdNotifier):  # type: ignore[misc]  # untyped library
    """``sdnotify``'s notifier on a socket connected to the given address, raising
    instead of swallowing (``debug=True``)."""

    def __init__(self, address: str) -> None:
        self.debug = True
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.connect(socket_address(address))
        except BaseException:
            sock.close()
            raise
        self.socket = sock

    def close(self) -> None:
        self.socket.close()


def _positive_int(name: str, text: str, what: str) -> int:
    if not _DIGITS.fullmatch(text) or int(text) == 0:
        raise NotifyConfigError(f"{name}={text!r} is not {what}")
    return int(text)


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """How often to ping: half of ``WATCHDOG_USEC`` in seconds, or None when there is
    no watchdog for process ``pid`` (unset, or ``WATCHDOG_PID`` names another process)."""
    usec_text = environ.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    usec = _positive_int(
        "WATCHDOG_USEC",
        usec_text,
        "a positive whole number of microseconds (systemd sets it from WatchdogSec=)",
    )
    pid_text = environ.get("WATCHDOG_PID")
    if pid_text and _positive_int("WATCHDOG_PID", pid_text, "a process id") != pid:
        return None  # the watchdog is another process's (we were started by it)
    return usec / 2e6


class Notifier:
    """Sends systemd notifications when ``NOTIFY_SOCKET`` is set; does nothing otherwise.

    ``watchdog_interval_s`` is how often to ping (half of ``WATCHDOG_USEC``), or None
    when there is no watchdog to feed. Safe to call from any thread.
    """

    def __init__(
        self,
        address: str | None,
        watchdog_interval_s: float | None = None,
        *,
        report: Callable[[str], None] | None = None,
    ) -> None:
        if address:
            socket_address(address)  # refuse an unusable address now, not at first send
        self.address = address or None
        self.enabled: bool = self.address is not None
        self.watchdog_interval_s: float | None = watchdog_interval_s if self.enabled else None
        self.errors = 0  # failed sends since the last one that worked
        self.sent = 0
        self._report = report or log.warning
        self._sd: _Sd | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_environment(
        cls,
        environ: Mapping[str, str] = os.environ,
        *,
        pid: int | None = None,
        report: Callable[[str], None] | None = None,
    ) -> Notifier:
        """``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` as systemd sets
        them; ``pid`` is this process's (default ``os.getpid()``). A value that cannot
        be used raises :class:`NotifyConfigError` naming the variable."""
        interval = watchdog_interval(environ, os.getpid() if pid is None else pid)
        return cls(environ.get("NOTIFY_SOCKET"), interval, report=report)

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={_one_line(status)}")

    def status(self, line: str) -> None:
        self.send(f"STATUS={_one_line(line)}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self.send(f"STOPPING=1\nSTATUS={_one_line(status)}")

    def send(self, message: str) -> None:
        """One datagram (``KEY=value`` lines). Never raises for a delivery problem."""
        if self.address is None:
            return
        with self._lock:
            try:
                if self._sd is None:
                    self._sd = _Sd(self.address)
                self._sd.notify(message.encode("utf-8").decode("latin-1"))
            except OSError as exc:
                self._failed(message, exc)
            else:
                self.sent += 1
                if self.errors:
                    self._report(
                        f"systemd notification to NOTIFY_SOCKET={self.address} works "
                        f"again after {self.errors} failed send(s)"
                    )
                    self.errors = 0

    def _failed(self, message: str, exc: OSError) -> None:
        if self._sd is not None:
            self._sd.close()
            self._sd = None
        self.errors += 1
        if self.errors == 1:
            first = message.split("\n", 1)[0]
            self._report(
                f"systemd notification to NOTIFY_SOCKET={self.address} failed ({first}): "
                f"{exc}; further failures are counted until a send works again"
            )

    def close(self) -> None:
        with self._lock:
            if self._sd is not None:
                self._sd.close()
                self._sd = None

    def __repr__(self) -> str:
        return (
            f"Notifier(address={self.address!r}, watchdog_interval_s={self.watchdog_interval_s!r})"
        )


def _one_line(text: str) -> str:
    """A STATUS value must not contain a newline (it would start another field)."""
    return " ".join(text.splitlines())


class WatchdogGate:
    """Whether to ping the watchdog now. Pure: the caller passes the time and figures.

    A ping is due when ``interval_s`` has passed since the last one, ``progress`` (a
    counter: loop ticks, RT cycles) changed since the last one, and ``healthy``. A
    counter that went backwards changed too (the RT process restarted and counts from
    zero: alive). The first call pings if healthy, which sets the baseline.
    """

    def __init__(self, interval_s: float) -> None:
        if not interval_s > 0:
            raise ValueError(f"watchdog interval must be positive, got {interval_s!r}")
        self.interval_s = interval_s
        self.last_ping_s: float | None = None
        self.last_progress: int | None = None

    def should_ping(self, now_s: float, progress: int, healthy: bool) -> bool:
        if not healthy:
            return False
        if self.last_ping_s is not None:
            if now_s - self.last_ping_s < self.interval_s:
                return False
            if progress == self.last_progress:
                return False
        self.last_ping_s = now_s
        self.last_progress = progress
        return True

    def __repr__(self) -> str:
        return f"WatchdogGate(interval_s={self.interval_s!r})"
