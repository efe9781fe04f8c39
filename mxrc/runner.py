"""``mxrc run``: one node on this machine, as mxrc nonrt and mxrc rt child processes.

The same two programs systemd runs in production (``mxrc-nonrt.service``,
``mxrc-rt.service``), started and stopped in the order the units encode: nonrt first
(it creates the shared memory and owns the state), rt second; at shutdown nonrt first
(it withdraws the permission to move and journals the stop while the cycle is still
there to obey), rt last. Children run in their own process groups so that a Ctrl-C in
the terminal reaches only this supervisor, which then stops them in that order.

A child that dies is reported, not restarted (restarts are systemd's job): if rt dies,
nonrt sees the ring fall silent and faults to SAFE_MODE, and stays up so the API can
show why; if nonrt dies, the cycle stops driving at the lease deadline on its own, and
this supervisor stops rt and exits with an error.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Final

import orjson

from mxrc import __version__
from mxrc.config import Config, describe_defaults
from mxrc.errors import MxrcError, UsageError
from mxrc.node import DataDirLock
from mxrc.service.controller import ANNOUNCE_FILE
from mxrc.service.options import add_node_options, config_from_args, forwarded_flags

NONRT_START_TIMEOUT_S: Final = 60.0
NONRT_STOP_TIMEOUT_S: Final = 15.0
RT_STOP_TIMEOUT_S: Final = 5.0
POLL_S: Final = 0.1
RUN_LOCK: Final = "run.lock"


class ChildFailedError(MxrcError):
    """A child process ended on its own. ``mxrc run`` exits with the child's own code
    when it has one (4 corrupt log, 8 bad configuration, …), so scripts can tell why."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = code if code is not None and 0 < code < 128 else 1


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "run",
        help="run one node here: mxrc nonrt + mxrc rt, admin API on 127.0.0.1",
        description=(
            "Run one controller node on this machine (the embedded single-node default): "
            "mxrc nonrt (statechart, event log, shared memory, admin API; local HA backend, "
            "a quorum of one) and mxrc rt (the control cycle) as child processes. Data "
            "under ./var unless --data-dir. Ctrl-C / SIGTERM stops both cleanly."
        ),
        epilog="examples:\n"
        "  mxrc run                                   # data in ./var, API on 127.0.0.1:8780\n"
        "  mxrc run --data-dir /tmp/cell --api-port 0 # any free port (printed)\n"
        "  mxrc run --config /etc/mxrc/mxrc.toml --duration 60\n\n"
        "then, in another terminal:\n"
        "  curl -s localhost:8780/v1/state | jq .\n"
        '  curl -s -XPOST -H "Authorization: Bearer $(cat var/api-token)" '
        "localhost:8780/v1/commands/start\n"
        "  mxrc replay var --verify\n\n"
        f"configuration keys (TOML) and defaults:\n{describe_defaults()}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_node_options(parser)
    parser.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="stop cleanly after this many seconds (default: run until stopped)",
    )
    parser.set_defaults(func=run)


def say(line: str) -> None:
    print(f"mxrc run: {line}", flush=True)


class Supervisor:
    def __init__(self, config: Config, child_flags: list[str], config_file: Path | None) -> None:
        self.config = config
        self.child_flags = child_flags
        self.config_file = config_file
        self.stop_reason: str | None = None
        self.stop_event = threading.Event()
        self.nonrt: subprocess.Popen[bytes] | None = None
        self.rt: subprocess.Popen[bytes] | None = None
        self.rt_reported = False

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stop_event.set()

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "mxrc", *args], start_new_session=True)

    def run(self, duration: float | None) -> int:
        data = self.config.data_dir
        data.mkdir(parents=True, exist_ok=True)
        lock = DataDirLock(data / RUN_LOCK)
        lock.acquire()  # a second `mxrc run` on this directory stops here, naming the pid
        try:
            return self._run(duration)
        finally:
            self._stop_children()
            lock.release()

    def _run(self, duration: float | None) -> int:
        announce = self.config.data_dir / ANNOUNCE_FILE
        announce.unlink(missing_ok=True)
        self.nonrt = self._spawn("nonrt", *self.child_flags)
        info = self._wait_for_announcement(announce, self.nonrt)
        if info is None:
            return self._nonrt_failed_at_start()
        rt_flags = ["--node-id", self.config.node_id]
        if self.config_file is not None:
            rt_flags += ["--config", str(self.config_file.resolve())]
        self.rt = self._spawn("rt", *rt_flags)
        self._banner(info)
        end = None if duration is None else time.monotonic() + duration
        while not self.stop_event.wait(POLL_S):
            if end is not None and time.monotonic() >= end:
                self.request_stop("duration elapsed")
                break
            if self.nonrt.poll() is not None:
                code = self.nonrt.returncode
                say(
                    f"mxrc nonrt (pid {self.nonrt.pid}) exited with code {code}; stopping "
                    "mxrc rt (the cycle stopped driving at the lease deadline already). "
                    "The next start recovers in SAFE_MODE if the node was RUNNING."
                )
                self.request_stop("nonrt exited")
                raise ChildFailedError(f"mxrc nonrt exited with code {code}", code)
            if self.rt.poll() is not None and not self.rt_reported:
                self.rt_reported = True
                say(
                    f"mxrc rt (pid {self.rt.pid}) exited with code {self.rt.returncode}; "
                    "outputs are held and the node goes to SAFE_MODE. It is not restarted "
                    "here (under systemd, Restart= does that); the API stays up: Ctrl-C to "
                    "stop."
                )
        say(f"stopping ({self.stop_reason})")
        return 0

    def _wait_for_announcement(
        self, path: Path, child: subprocess.Popen[bytes]
    ) -> dict[str, Any] | None:
        deadline = time.monotonic() + NONRT_START_TIMEOUT_S
        while time.monotonic() < deadline and not self.stop_event.is_set():
            if child.poll() is not None:
                return None
            try:
                info: dict[str, Any] = orjson.loads(path.read_bytes())
                if info.get("pid") == child.pid:
                    return info
            except (FileNotFoundError, orjson.JSONDecodeError):
                pass
            time.sleep(0.05)
        return None

    def _nonrt_failed_at_start(self) -> int:
        assert self.nonrt is not None
        if self.stop_event.is_set():
            return 0
        if self.nonrt.poll() is None:
            raise ChildFailedError(
                f"mxrc nonrt (pid {self.nonrt.pid}) did not open its admin API within "
                f"{NONRT_START_TIMEOUT_S:g} s"
            )
        code = self.nonrt.returncode
        raise ChildFailedError(
            f"mxrc nonrt exited with code {code} before it was ready (its message is above)",
            code,
        )

    def _banner(self, info: dict[str, Any]) -> None:
        data = self.config.data_dir.resolve()
        api = info["api"]
        say(
            f"mxrc {__version__} · node {self.config.node_id} · nonrt pid {info['pid']}, "
            f"rt pid {self.rt.pid if self.rt else '-'}\n"
            f"  admin API:    {api}   (page: {api}/ ; health: {api}/health)\n"
            f"  API token:    {info['token_file']}   (for POST/PUT: Authorization: Bearer …)\n"
            f"  data:         {data}\n"
            f"  event log:    {data / 'eventlog'}   (mxrc replay {self.config.data_dir})\n"
            f"  logs:         this terminal (both processes write to it)\n"
            f"  stop:         Ctrl-C"
        )

    def _stop_children(self) -> None:
        """nonrt first (it holds outputs and journals the stop), then rt; SIGKILL only
        after a bounded wait, and every child reaped."""
        for child, timeout in ((self.nonrt, NONRT_STOP_TIMEOUT_S), (self.rt, RT_STOP_TIMEOUT_S)):
            if child is None:
                continue
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout)
                except subprocess.TimeoutExpired:
                    say(f"pid {child.pid} did not stop within {timeout:g} s; killing it")
                    child.kill()
                    child.wait()
            elif child.returncode != 0 and child is self.rt and not self.rt_reported:
                say(f"mxrc rt exited with code {child.returncode}")


def run(args: argparse.Namespace) -> int:
    if args.duration is not None and args.duration <= 0:
        raise UsageError(f"--duration must be a positive number of seconds, got {args.duration}")
    config = config_from_args(args)
    supervisor = Supervisor(config, forwarded_flags(args), args.config)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        supervisor.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return supervisor.run(args.duration)
