"""Helpers for the drill tests: real actuator processes on loopback, bounded waits, and
cleanup by PID whatever the test did.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mxrc.drill import fencing

MXRC = [sys.executable, "-m", "mxrc"]
START_TIMEOUT_S = 30.0  # a cold `python -m mxrc` imports the whole CLI
WAIT_TIMEOUT_S = 10.0


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def read_record(path: Path) -> list[dict[str, Any]]:
    with path.open("rb") as f:
        return list(fencing.parse_record(f))


def writes(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e["kind"] in (fencing.KIND_WRITE, fencing.KIND_MALFORMED)]


def command(node: str, token: int, cycle: int, value: float = 0.5) -> bytes:
    return fencing.encode_datagram(fencing.Write(node, token, cycle, value, time.monotonic_ns()))


def closed_udp_port() -> int:
    """A loopback UDP port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class RunningActuator:
    """One ``mxrc actuator`` child, found through its announce file."""

    def __init__(self, proc: subprocess.Popen[str], record: Path, announce: Path) -> None:
        self.proc = proc
        self.record = record
        wait_until(
            lambda: announce.exists() or proc.poll() is not None,
            START_TIMEOUT_S,
            f"{announce} from actuator pid {proc.pid}",
        )
        if not announce.exists():
            out, err = proc.communicate(timeout=WAIT_TIMEOUT_S)
            raise AssertionError(f"actuator exited {proc.returncode}: {out}{err}")
        info = json.loads(announce.read_text())
        assert info["pid"] == proc.pid
        self.host: str = info["host"]
        self.port: int = info["port"]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def send(self, data: bytes, sock: socket.socket | None = None) -> None:
        (sock or self.sock).sendto(data, (self.host, self.port))

    def entries(self) -> list[dict[str, Any]]:
        return read_record(self.record)

    def wait_writes(self, count: int, timeout: float = WAIT_TIMEOUT_S) -> list[dict[str, Any]]:
        """The record's write and malformed lines once there are ``count`` of them."""
        wait_until(
            lambda: len(writes(self.entries())) >= count, timeout, f"{count} lines in {self.record}"
        )
        return writes(self.entries())

    def stop(self, sig: int, timeout: float = WAIT_TIMEOUT_S) -> tuple[int, str, str]:
        self.sock.close()
        os.kill(self.proc.pid, sig)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


class Actuators:
    """Actuator children of one test, killed and reaped by PID at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[RunningActuator] = []
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*MXRC, "actuator", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def start(self, record: Path) -> RunningActuator:
        announce = self.tmp / f"announce-{len(self.procs)}.json"
        proc = self.spawn(
            "--listen", "127.0.0.1:0", "--record", str(record), "--announce", str(announce)
        )
        actuator = RunningActuator(proc, record, announce)
        self.started.append(actuator)
        return actuator

    def cleanup(self) -> None:
        for actuator in self.started:
            actuator.sock.close()
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=WAIT_TIMEOUT_S)


@contextlib.contextmanager
def actuators(tmp: Path) -> Iterator[Actuators]:
    group = Actuators(tmp)
    try:
        yield group
    finally:
        group.cleanup()


def check(record: Path) -> tuple[int, dict[str, Any], str]:
    """``mxrc actuator --check``: (exit code, the JSON summary or {}, stderr)."""
    done = subprocess.run(
        [*MXRC, "actuator", "--check", str(record)],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
    )
    summary = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, summary, done.stderr
