"""``mxrc run``: one node with its durable core and the stand-in cycle.

Until the RT process and the admin API exist, commands come from a console on standard
input (``start``, ``stop``, ``reset``, ``fault CAUSE`` …), so that a person or a script
can drive the real statechart and produce real event logs to replay.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from mxrc import __version__
from mxrc.config import Config, describe_defaults, load_config
from mxrc.errors import CorruptLogError, MxrcError, UsageError
from mxrc.node import BootReport, Node
from mxrc.segments import Record
from mxrc.standin import StandInCycle
from mxrc.statechart import default_registry
from mxrc.statemachine import TriggerRejected

CONSOLE_HELP = """\
console commands (one per line on standard input):
  start | stop | reset        fire that trigger (start needs the guards, reset needs the
                              fault's condition cleared)
  fault CAUSE                 go to SAFE_MODE with this cause (an operator stop)
  inject CAUSE / clear CAUSE  raise / clear a simulated fault condition: inject faults the
                              node and keeps `reset` refused until the condition is cleared
  state                       print the current state
  help                        this text
  quit                        clean shutdown (same as Ctrl-C)"""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "run",
        help="run one node (embedded single-node default)",
        description=(
            "Run one controller node: recover its state from the data directory, journal "
            "every transition to the event log, checkpoint, and shut down cleanly on "
            "Ctrl-C / SIGTERM. The RT cycle is a stand-in thread until mxrc-rt exists; "
            "commands are read from standard input."
        ),
        epilog=f"{CONSOLE_HELP}\n\nconfiguration keys (TOML) and defaults:\n"
        f"{describe_defaults()}\n\nexamples:\n"
        "  mxrc run                                   # data in ./var, until Ctrl-C\n"
        "  printf 'start\\nstop\\n' | mxrc run --duration 5\n"
        "  mxrc run --config /etc/mxrc/mxrc.toml --data-dir /var/lib/mxrc",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML configuration (default: built-in defaults)",
    )
    parser.add_argument(
        "--data-dir", type=Path, metavar="DIR", help="overrides node.data_dir (default ./var)"
    )
    parser.add_argument("--node-id", metavar="ID", help="overrides node.id (default node-1)")
    parser.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="stop cleanly after this many seconds (default: run until stopped)",
    )
    parser.set_defaults(func=run)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]


class Runner:
    def __init__(self, config: Config, out: TextIO) -> None:
        self.config = config
        self.out = out
        self.conditions: set[str] = set()
        self.stop_reason: str | None = None
        self._stopped = threading.Event()
        self._print_lock = threading.Lock()
        self.cycle = StandInCycle(int(config["cycle.period_ms"] * 1e6), config["cycle.frame_slots"])
        chart = default_registry().get("rt")
        guards: dict[str, Callable[[], bool]] = {
            "is_leader": lambda: True,  # local backend: a quorum of one, always leader
            "has_quorum": lambda: True,
            "is_healthy": self.cycle.progressing,
            "cause_cleared": lambda: not self.conditions,
        }
        self.node = Node(config, chart, guards, notice=self.say)
        self.node.on_transition(self._print_transition)

    def say(self, line: str) -> None:
        with self._print_lock:
            print(line, file=self.out, flush=True)

    def _print_transition(self, record: Record) -> None:
        p = record["payload"]
        cause = f", cause: {p['cause']}" if p["cause"] else ""
        self.say(
            f"{_stamp()} {record['node']} {p['source']} → {p['dest']} "
            f"({p['trigger']} by {p['actor']}{cause}) [seq {record['seq']}]"
        )

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stopped.set()

    # ------------------------------------------------------------------ main loop

    def run(self, duration: float | None, console: TextIO | None) -> int:
        self._print_banner()
        try:
            boot = self.node.start()
        except CorruptLogError as exc:
            raise CorruptLogError(
                exc.path,
                exc.offset,
                f"{exc.reason}; the node cannot start on it: see `mxrc log repair "
                f"{self.config.data_dir} --truncate-corrupt`",
            ) from None
        self._print_recovery(boot)
        self.cycle.start()
        try:
            if self.node.state == "INIT":
                self._wait_for_cycle()
                self.node.fire("initialized", actor="system")
            if console is not None:
                threading.Thread(
                    target=self.console, args=(console,), name="mxrc-console", daemon=True
                ).start()
            self._loop(duration)
        finally:
            self.cycle.stop()
            self.node.stop(self.stop_reason or "exception")
        self.say(f"{_stamp()} stopped cleanly ({self.stop_reason}); state {self.node.state}")
        return 0

    def _wait_for_cycle(self) -> None:
        deadline = time.monotonic() + 5.0
        while not self.cycle.progressing():
            if time.monotonic() > deadline:
                raise MxrcError("the stand-in cycle did not start within 5 s")
            time.sleep(0.005)

    def _loop(self, duration: float | None) -> None:
        status_every = self.config["cycle.status_interval_s"]
        end = None if duration is None else time.monotonic() + duration
        next_status = time.monotonic()
        while not self._stopped.is_set():
            now = time.monotonic()
            if end is not None and now >= end:
                self.request_stop("duration elapsed")
                break
            if now >= next_status:
                self.node.journal(
                    "cycle_status",
                    {
                        "cycle": self.cycle.cycle,
                        "slot": self.cycle.slot,
                        "period_ns": self.cycle.period_ns,
                        "deadline_misses": self.cycle.deadline_misses,
                    },
                )
                next_status = now + status_every
            self.node.checkpoint_if_due()
            self._stopped.wait(min(0.1, max(0.0, next_status - time.monotonic())))

    def _print_recovery(self, boot: BootReport) -> None:
        rec = boot.recovery
        how = (
            f"checkpoint {rec.checkpoint.name} + {rec.replayed} records"
            if rec.checkpoint
            else f"full replay of {rec.replayed} records"
        )
        self.say(
            f"  recovered:    {boot.recovered_state} ({boot.previous_shutdown}; {how}); "
            f"now {self.node.state}"
        )

    def _print_banner(self) -> None:
        layout = self.node.layout
        self.say(
            f"mxrc {__version__} · node {self.config.node_id} · chart {self.node.chart.ref}\n"
            f"  data:         {layout.root.resolve()}\n"
            f"  event log:    {layout.eventlog.resolve()}   (replay: mxrc replay "
            f"{layout.root})\n"
            f"  checkpoints:  {layout.checkpoints.resolve()}\n"
            f"  cycle:        stand-in thread at {self.config['cycle.period_ms']} ms "
            "(mxrc rt is not wired into mxrc run yet)\n"
            "  admin API:    not built yet; type commands on standard input ('help')"
        )

    # ------------------------------------------------------------------ console

    def console(self, stream: TextIO) -> None:
        for raw in stream:
            words = raw.split()
            if self._stopped.is_set():  # shutting down: the log may already be closed
                return
            if not words:
                continue
            try:
                self.command(words[0], " ".join(words[1:]) or None)
            except TriggerRejected as exc:
                self.say(f"{_stamp()} rejected: {exc}")
            except MxrcError as exc:
                self.say(f"{_stamp()} error: {exc}")
                self.request_stop(f"error: {exc}")

    def command(self, verb: str, arg: str | None) -> None:
        if verb in ("start", "stop", "reset"):
            self.node.fire(verb, actor="console")
        elif verb == "fault":
            self.node.fire("fault", cause=arg, actor="console")
        elif verb == "inject" and arg:
            self.conditions.add(arg)
            if self.node.state != "SAFE_MODE":
                self.node.fire("fault", cause=arg, actor="console")
        elif verb == "clear" and arg:
            self.conditions.discard(arg)
            self.say(f"{_stamp()} condition {arg!r} cleared; active: {sorted(self.conditions)}")
        elif verb == "state":
            self.say(
                f"{_stamp()} {self.node.state}; legal: {', '.join(self.node.legal_triggers())}"
                f"; cycle {self.cycle.cycle}; active conditions: {sorted(self.conditions)}"
            )
        elif verb == "quit":
            self.request_stop("console quit")
        elif verb == "help":
            self.say(CONSOLE_HELP)
        else:
            self.say(
                f"{_stamp()} unknown command {raw_verb(verb, arg)!r} (try 'help'); "
                f"legal triggers now: {', '.join(self.node.legal_triggers())}"
            )


def raw_verb(verb: str, arg: str | None) -> str:
    return f"{verb} {arg}" if arg else verb


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.data_dir is not None:
        overrides["node.data_dir"] = str(args.data_dir)
    if args.node_id is not None:
        overrides["node.id"] = args.node_id
    if args.duration is not None and args.duration <= 0:
        raise UsageError(f"--duration must be a positive number of seconds, got {args.duration}")
    config = load_config(args.config, overrides)
    runner = Runner(config, sys.stdout)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        runner.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    console = sys.stdin if sys.stdin is not None and not sys.stdin.closed else None
    return runner.run(args.duration, console)
