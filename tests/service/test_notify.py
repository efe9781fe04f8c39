"""systemd notifications against real datagram sockets bound by the test (a filesystem
path and an abstract name), the watchdog variables, and the watchdog gate."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mxrc.service.notify import Notifier, NotifyConfigError, WatchdogGate, watchdog_interval

RECV_TIMEOUT_S = 5.0


class Receiver:
    """The service manager's end: a bound AF_UNIX datagram socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(RECV_TIMEOUT_S)

    def recv(self) -> bytes:
        return self.sock.recv(65536)

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(65536)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(RECV_TIMEOUT_S)
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (AF_UNIX paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="mxrc-notify-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def path_socket(short_dir: Path) -> Iterator[tuple[str, Receiver]]:
    address = str(short_dir / "notify")
    receiver = Receiver(address)
    try:
        yield address, receiver
    finally:
        receiver.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, Receiver]]:
    name = f"mxrc-test-{secrets.token_hex(6)}"
    receiver = Receiver("\0" + name)
    try:
        yield "@" + name, receiver
    finally:
        receiver.close()


def exchange(notify_socket: str, receiver: Receiver) -> list[bytes]:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": notify_socket})
    assert notifier.enabled
    try:
        notifier.ready("cycle 1 ms on CPU 1")
        notifier.status("42 cycles\n0 misses")
        notifier.watchdog()
        notifier.status("wake p99 51 µs → fine")
        notifier.stopping("SIGTERM")
        got = [receiver.recv() for _ in range(5)]
        assert receiver.nothing_pending()
        assert notifier.errors == 0 and notifier.sent == 5
    finally:
        notifier.close()
    return got


EXPECTED = [
    b"READY=1\nSTATUS=cycle 1 ms on CPU 1",
    b"STATUS=42 cycles 0 misses",  # one line: a newline would start another field
    b"WATCHDOG=1",
    "STATUS=wake p99 51 µs → fine".encode(),  # UTF-8, as systemd requires
    b"STOPPING=1\nSTATUS=SIGTERM",
]


def test_datagrams_to_a_filesystem_socket(path_socket: tuple[str, Receiver]) -> None:
    address, receiver = path_socket
    assert exchange(address, receiver) == EXPECTED


def test_datagrams_to_an_abstract_socket(abstract_socket: tuple[str, Receiver]) -> None:
    address, receiver = abstract_socket
    assert address.startswith("@mxrc-test-")
    assert exchange(address, receiver) == EXPECTED


def test_without_notify_socket_nothing_is_sent_and_there_is_no_watchdog() -> None:
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "2000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None  # nobody to ping
    notifier.ready("x")
    notifier.watchdog()
    assert (notifier.sent, notifier.errors) == (0, 0)
    assert not Notifier.from_environment({"NOTIFY_SOCKET": ""}).enabled


def test_an_unusable_notify_socket_is_refused_naming_the_variable() -> None:
    with pytest.raises(NotifyConfigError, match=r"NOTIFY_SOCKET='run/notify' is neither"):
        Notifier.from_environment({"NOTIFY_SOCKET": "run/notify"})
    assert NotifyConfigError.exit_code == 8


# --- WATCHDOG_USEC / WATCHDOG_PID ------------------------------------------------------------


def test_the_watchdog_interval_is_half_of_watchdog_usec() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "200000"}
    assert Notifier.from_environment(env).watchdog_interval_s == 0.1
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, pid=1) == 15.0
    assert watchdog_interval({}, pid=1) is None


def test_watchdog_pid_decides_whose_watchdog_it_is() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "200000"}
    ours = Notifier.from_environment({**env, "WATCHDOG_PID": str(os.getpid())})
    assert ours.watchdog_interval_s == 0.1
    other = Notifier.from_environment({**env, "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval_s is None  # our parent's watchdog, not ours
    assert other.enabled  # notifications still go out
    assert watchdog_interval({**env, "WATCHDOG_PID": "4242"}, pid=4242) == 0.1


@pytest.mark.parametrize("value", ["abc", "-5", "0", "1.5", "200000us", " 200000"])
def test_a_bad_watchdog_usec_is_an_error_naming_it(value: str) -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": value}
    with pytest.raises(NotifyConfigError, match=r"^WATCHDOG_USEC=") as raised:
        Notifier.from_environment(env)
    assert repr(value) in str(raised.value) and "microseconds" in str(raised.value)


def test_a_bad_watchdog_pid_is_an_error_naming_it() -> None:
    env = {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "self"}
    with pytest.raises(NotifyConfigError, match=r"^WATCHDOG_PID='self' is not a process id"):
        watchdog_interval(env, pid=1)


# --- delivery problems are reported, once ---------------------------------------------------


def test_a_failing_send_is_reported_once_then_counted_and_recovery_is_reported(
    short_dir: Path,
) -> None:
    address = str(short_dir / "later")
    reports: list[str] = []
    notifier = Notifier(address, report=reports.append)
    try:
        notifier.ready("up")  # nobody listens yet: refused, not raised
        notifier.watchdog()
        notifier.watchdog()
        assert notifier.errors == 3 and notifier.sent == 0
        assert len(reports) == 1
        assert reports[0].startswith(f"systemd notification to NOTIFY_SOCKET={address} failed")
        assert "(READY=1)" in reports[0] and "further failures are counted" in reports[0]
        receiver = Receiver(address)  # the manager's socket appears: reconnected
        try:
            notifier.watchdog()
            assert receiver.recv() == b"WATCHDOG=1"
        finally:
            receiver.close()
        assert notifier.errors == 0 and notifier.sent == 1
        assert len(reports) == 2 and "works again after 3 failed send(s)" in reports[1]
        os.unlink(address)  # gone again (closed and removed): a new failure, a new report
        notifier.status("x")
        notifier.status("y")
        assert len(reports) == 3 and "(STATUS=x)" in reports[2]
        assert notifier.errors == 2
    finally:
        notifier.close()


def test_the_default_report_is_a_logged_warning(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(short_dir / "none")})
    with caplog.at_level(logging.WARNING, logger="mxrc.service.notify"):
        for _ in range(5):
            notifier.watchdog()
    warnings = [r for r in caplog.records if r.name == "mxrc.service.notify"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert (
        "NOTIFY_SOCKET=" in warnings[0].getMessage() and "(WATCHDOG=1)" in warnings[0].getMessage()
    )


# --- WatchdogGate ----------------------------------------------------------------------------


def test_the_gate_pings_at_the_interval_while_progress_advances() -> None:
    gate = WatchdogGate(0.125)  # binary fractions: the edge is exact
    assert gate.should_ping(10.0, progress=1, healthy=True)  # the first: sets the baseline
    assert not gate.should_ping(10.0625, progress=50, healthy=True)  # too soon
    assert not gate.should_ping(10.124, progress=99, healthy=True)
    assert gate.should_ping(10.125, progress=100, healthy=True)  # exactly one interval
    assert gate.should_ping(10.25, progress=250, healthy=True)


def test_the_gate_does_not_ping_when_progress_stalls() -> None:
    gate = WatchdogGate(0.1)
    assert gate.should_ping(0.0, progress=7, healthy=True)
    for t in (0.1, 0.2, 0.5, 5.0):
        assert not gate.should_ping(t, progress=7, healthy=True)  # a stuck counter
    assert gate.should_ping(5.01, progress=8, healthy=True)  # moves again: ping at once
    assert not gate.should_ping(5.2, progress=8, healthy=True)
    assert gate.should_ping(5.3, progress=0, healthy=True)  # counter restarted: it changed


def test_the_gate_does_not_ping_when_unhealthy() -> None:
    gate = WatchdogGate(1.0)
    assert not gate.should_ping(0.0, progress=1, healthy=False)  # not even the first
    assert gate.should_ping(0.5, progress=2, healthy=True)
    assert not gate.should_ping(2.0, progress=3, healthy=False)
    assert not gate.should_ping(3.0, progress=4, healthy=False)
    assert gate.should_ping(3.1, progress=5, healthy=True)


@pytest.mark.parametrize("interval", [0.0, -1.0, float("nan")])
def test_the_gate_needs_a_positive_interval(interval: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        WatchdogGate(interval)
