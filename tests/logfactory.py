"""Real multi-node event logs for tests, written from a compact script.

Every record goes through the real :class:`~mxrc.eventlog.EventLog` (real files, real
fsync, real segment rotation and torn-tail repair); only the writer's clock is scripted,
so a test can name the exact moment of each event and assert on it. A script is a list
of steps, each for one node::

    root = write_logs(tmp_path, [
        boot("a"), move("a", "initialized", "INIT", "READY", actor="system"),
        move("a", "start", "READY", "RUNNING", at=10),
        crash("a"), boot("a", previous="crash", recovered="RUNNING"),
        move("a", "fault", "RUNNING", "SAFE_MODE", cause="restart", actor="system"),
    ])

The result is a drill-style directory: ``root/<node>/eventlog/events-*.jsonl``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from mxrc import eventlog
from mxrc.eventlog import EventLog, LogIdentity
from mxrc.segments import Record, list_segments
from mxrc.statechart import Chart, default_registry

NS = 1_000_000_000
T0 = 1_795_325_400 * NS  # 2026-11-22T05:30:00Z, the moment every script starts from
T0_ISO = "2026-11-22T05:30:00"


def at(seconds: float) -> int:
    """Wall time of a script moment, ``seconds`` after :data:`T0`."""
    return T0 + round(seconds * NS)


def rt_chart() -> Chart:
    return default_registry().get("rt")


def trace_id(trace: int) -> str:
    """A realistic-looking (random-like, deterministic) 32-hex trace id for ``trace``."""
    return hashlib.sha256(f"trace {trace}".encode()).hexdigest()[:32]


def traceparent(trace: int, span: int = 1) -> str:
    return f"00-{trace_id(trace)}-{span:016x}-01"


@dataclass(frozen=True)
class Step:
    """Append one record for ``node``; ``at`` in seconds after T0 (default: one tick on)."""

    node: str
    type: str
    payload: dict[str, Any]
    at: float | None = None
    token: int = 0
    traceparent: str | None = None


@dataclass(frozen=True)
class Crash:
    """The node's process dies: no node_stopped; ``torn`` bytes are left half-written at
    the end of its newest segment (EventLog.open repairs them if the node boots again)."""

    node: str
    torn: bytes = b""


ScriptItem = Step | Crash


def boot(node: str, previous: str = "first_boot", recovered: str = "INIT", *,
         at: float | None = None, replayed: int = 0, torn_bytes: int = 0) -> Step:
    return Step(node, "node_started", {
        "pid": 4242, "version": "0.1.0", "previous_shutdown": previous,
        "recovered_state": recovered, "recovered_from_checkpoint": None,
        "replayed_records": replayed, "torn_tail_bytes": torn_bytes,
    }, at)


def move(node: str, trigger: str, source: str, dest: str, *, cause: str | None = None,
         actor: str = "console", guards: dict[str, bool] | None = None,
         at: float | None = None, token: int = 0, trace: str | None = None) -> Step:
    """A transition; guards default to the chart's guards for it, all true."""
    if guards is None:
        rule = rt_chart().find(trigger, source)
        guards = dict.fromkeys(rule.guards, True) if rule else {}
    return Step(node, "transition", {
        "trigger": trigger, "source": source, "dest": dest, "cause": cause,
        "guards": guards, "actor": actor,
    }, at, token, trace)


def reject(node: str, trigger: str, state: str, reason: str = "illegal", *,
           failed: Iterable[str] = (), actor: str = "console", at: float | None = None,
           trace: str | None = None) -> Step:
    legal = list(rt_chart().legal_triggers(state))
    return Step(node, "command_rejected", {
        "trigger": trigger, "state": state, "reason": reason, "legal": legal,
        "failed_guards": list(failed), "actor": actor,
        "message": f"{trigger!r} refused in state {state}; legal in {state}: {', '.join(legal)}",
    }, at, 0, trace)


def stop(node: str, reason: str = "SIGTERM", *, at: float | None = None) -> Step:
    return Step(node, "node_stopped", {"reason": reason}, at)


def cycle(node: str, n: int, *, misses: int = 0, at: float | None = None) -> Step:
    return Step(node, "cycle_status", {"cycle": n, "slot": n % 4, "period_ns": 1_000_000,
                                       "deadline_misses": misses}, at)


def write(node: str, key: str, value: Any, previous: Any = None, *,
          at: float | None = None) -> Step:
    return Step(node, "datastore_write", {"key": key, "value": value, "previous": previous,
                                          "actor": "console"}, at)


def lease(node: str, *, leader: bool, token: int, valid_until: float | None,
          at: float | None = None) -> Step:
    """A ``lease`` record; ``valid_until`` in seconds after T0, like ``at``."""
    return Step(node, "lease", {
        "backend": "etcd", "leader": leader, "quorum": True, "token": token,
        "holder": node if leader else None,
        "valid_until_wall_ns": None if valid_until is None else T0 + int(valid_until * NS),
        "detail": "",
    }, at, token=token)


def crash(node: str, torn: bytes = b"") -> Crash:
    return Crash(node, torn)


def bring_up(node: str, *, at: float | None = None) -> list[Step]:
    """First boot and initialisation: the opening of every node's log."""
    return [boot(node, at=at), move(node, "initialized", "INIT", "READY", actor="system")]


def make_record(node: str, seq: int, kind: str, payload: dict[str, Any], *,
                seconds: float | None = None, token: int = 0, trace: str | None = None,
                chart_hash: str | None = None) -> Record:
    """A record as the reader returns it, without any file: for the pure functions."""
    return {
        "seq": seq, "wall_ns": at(seq if seconds is None else seconds),
        "mono_ns": seq * NS, "node": node, "type": kind, "token": token,
        "traceparent": trace, "chart": "rt",
        "chart_hash": chart_hash or rt_chart().version_hash, "payload": dict(payload),
    }


def records_of(node: str, script: Iterable[Step], *, first_seq: int = 1,
               tick: float = 1.0) -> list[Record]:
    """Turn steps of one node into in-memory records, timed like :func:`write_logs`."""
    out: list[Record] = []
    moment = -tick
    for seq, step in enumerate(script, start=first_seq):
        moment = step.at if step.at is not None else moment + tick
        out.append(make_record(node, seq, step.type, step.payload, seconds=moment,
                               token=step.token, trace=step.traceparent))
    return out


@dataclass
class ScriptClock:
    """Stands in for the ``time`` module inside :mod:`mxrc.eventlog` only."""

    now_ns: int = T0
    mono_base: int = 5 * NS
    perf_counter: Any = field(default=time.perf_counter)

    def time_ns(self) -> int:
        return self.now_ns

    def monotonic_ns(self) -> int:
        return self.mono_base + self.now_ns - T0


@contextmanager
def scripted_clock(clock: ScriptClock) -> Iterator[ScriptClock]:
    with mock.patch.object(eventlog, "time", clock):
        yield clock


def write_logs(root: Path, script: Iterable[ScriptItem], *, tick: float = 1.0,
               segment_bytes: int = eventlog.DEFAULT_SEGMENT_BYTES) -> Path:
    """Play ``script`` into ``root/<node>/eventlog`` and return ``root``.

    Steps without ``at`` come ``tick`` seconds after the previous step of any node, so a
    script reads like the incident it stages.
    """
    chart = rt_chart()
    logs: dict[str, EventLog] = {}
    clock = ScriptClock()
    moment = -tick
    with scripted_clock(clock):
        try:
            for item in script:
                if isinstance(item, Crash):
                    _crash(logs, item)
                    continue
                moment = item.at if item.at is not None else moment + tick
                clock.now_ns = at(moment)
                log = logs.get(item.node)
                if log is None:
                    identity = LogIdentity(item.node, chart.name, chart.version_hash)
                    log = EventLog.open(root / item.node / "eventlog", identity,
                                        segment_bytes=segment_bytes)
                    logs[item.node] = log
                log.append(item.type, item.payload, token=item.token,
                           traceparent=item.traceparent)
        finally:
            for log in logs.values():
                log.close()
    return root


def _crash(logs: dict[str, EventLog], item: Crash) -> None:
    log = logs.pop(item.node)
    log.close()
    segment = list_segments(log.directory)[-1]
    if item.torn:
        with segment.open("ab") as handle:
            handle.write(item.torn)


def failover_script() -> list[ScriptItem]:
    """A two-node incident: a runs, faults on deadline misses, b takes over, a's start is
    refused, a crashes while RUNNING later and comes back in SAFE_MODE."""
    return [
        *bring_up("a", at=0),
        *bring_up("b", at=0.5),
        move("a", "start", "READY", "RUNNING", at=2, token=1, trace=traceparent(0xA1)),
        cycle("a", 1000, at=5),
        move("a", "fault", "RUNNING", "SAFE_MODE", cause="deadline_miss_burst",
             actor="rt", at=10, token=1),
        move("b", "start", "READY", "RUNNING", at=12, token=2, trace=traceparent(0xB2)),
        reject("a", "start", "SAFE_MODE", at=13, trace=traceparent(0xB2, 2)),
        move("a", "reset", "SAFE_MODE", "READY", actor="console", at=20),
        write("b", "speed", 1.5, 1.0, at=25),
        move("b", "stop", "RUNNING", "READY", at=30),
        move("a", "start", "READY", "RUNNING", at=31, token=3),
        cycle("a", 2000, at=40),
        crash("a"),
        boot("a", previous="crash", recovered="RUNNING", at=50, replayed=9),
        move("a", "fault", "RUNNING", "SAFE_MODE", cause="restart", actor="system", at=50.001),
        stop("b", at=55),
    ]
