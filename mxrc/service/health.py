"""Health rules: what the controller observed in, a verdict per check out.

The rules are pure functions of :class:`HealthInputs` (time is one of the inputs), so
every threshold can be tested at and around its edge without sockets, clocks or a
running node, and ``/health``, ``/ready``, the watchdog and the ``is_healthy`` guard all
judge from one definition. Each check's ``detail`` is the line an operator reads at
3 a.m.: the observed figure, the threshold, and what it means.

Three levels: *healthy*; *degraded* — works, but something needs a look or the node may
not drive (a follower is degraded, not broken); *unhealthy* — the node cannot be trusted
to run (the watchdog stops being fed, ``/health`` answers 503, a start is refused).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from mxrc.config import Config


class Status(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


_RANK: Final = {Status.HEALTHY: 0, Status.DEGRADED: 1, Status.UNHEALTHY: 2}

#: The checks :func:`evaluate` makes, in the order it makes them.
CHECK_NAMES: Final = ("rt_deadline", "event_bus", "shared_memory", "lease", "event_log")

#: Chart states in which the node is ready to take commands that move the joint.
READY_STATES: Final = ("READY", "RUNNING")


@dataclass(frozen=True)
class Check:
    status: Status
    detail: str  # one line a human can act on: the observed figure and the threshold


@dataclass(frozen=True)
class HealthReport:
    status: Status
    checks: Mapping[str, Check]

    def to_json(self, timestamp: str) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "timestamp": timestamp,
            "checks": {
                name: {"status": str(check.status), "detail": check.detail}
                for name, check in self.checks.items()
            },
        }


@dataclass(frozen=True)
class Thresholds:
    window_s: float
    miss_rate_unhealthy: float
    bus_fill_degraded: float
    ring_stall_s: float

    @classmethod
    def from_config(cls, config: Config) -> Thresholds:
        return cls(
            window_s=float(config["health.window_s"]),
            miss_rate_unhealthy=float(config["health.miss_rate_unhealthy"]),
            bus_fill_degraded=float(config["health.bus_fill_degraded"]),
            ring_stall_s=float(config["health.ring_stall_s"]),
        )


@dataclass(frozen=True)
class HealthInputs:
    """What the controller observed, at ``now_ns`` (CLOCK_MONOTONIC)."""

    now_ns: int
    #: (mono_ns, cycle, misses) from CYCLE_STATUS records, oldest first; ``cycle`` and
    #: ``misses`` are the RT process's cumulative counters.
    cycle_samples: Sequence[tuple[int, int, int]]
    rt_expected: bool  # an RT process should be attached
    last_ring_record_ns: int | None  # when nonrt last read a ring record (None: never)
    shm_valid: bool  # segment headers valid
    shm_problem: str
    bus_fill: float
    leader: bool
    quorum: bool
    lease_remaining_s: float | None
    backend: str
    log_writable: bool
    log_problem: str


def worst(statuses: Iterable[Status]) -> Status:
    return max(statuses, key=_RANK.__getitem__, default=Status.HEALTHY)


def miss_rate(
    samples: Iterable[tuple[int, int, int]], now_ns: int, window_s: float
) -> tuple[float, int, int]:
    """(rate, misses, cycles) over the ``window_s`` before ``now_ns``.

    The baseline is the newest sample at or before the window's start (the controller
    keeps one that old), so the counts cover the whole window; with none that old, the
    oldest sample. A counter that goes backwards is an RT restart: its counts start
    from zero there. No sample inside the window gives (0.0, 0, 0).
    """
    start = now_ns - round(window_s * 1e9)
    misses = cycles = 0
    prev: tuple[int, int, int] | None = None
    for sample in samples:
        if prev is not None and sample[0] > start:
            d_cycles, d_misses = sample[1] - prev[1], sample[2] - prev[2]
            if d_cycles < 0 or d_misses < 0:  # restarted: counted from zero since
                d_cycles, d_misses = sample[1] + 1, sample[2]
            cycles += d_cycles
            misses += d_misses
        prev = sample
    return (misses / cycles if cycles > 0 else 0.0), misses, cycles


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.4g}%"


def _rt_deadline(i: HealthInputs, t: Thresholds) -> Check:
    samples = i.cycle_samples
    if not samples:
        if i.rt_expected:
            return Check(
                Status.DEGRADED,
                "no cycle figures yet (waiting for the RT process's first CYCLE_STATUS)",
            )
        return Check(Status.HEALTHY, "no RT process expected")
    rate, misses, cycles = miss_rate(samples, i.now_ns, t.window_s)
    if cycles == 0:
        age_s = (i.now_ns - samples[-1][0]) / 1e9
        detail = (
            f"no cycles counted in the last {t.window_s:g} s "
            f"({len(samples)} cycle report(s), the latest {age_s:.1f} s ago)"
        )
        return Check(Status.DEGRADED if i.rt_expected else Status.HEALTHY, detail)
    figures = (
        f"miss rate {rate:.3g} ({misses} misses in {cycles} cycles over the last {t.window_s:g} s)"
    )
    if rate > t.miss_rate_unhealthy:
        return Check(
            Status.UNHEALTHY,
            f"{figures} > {t.miss_rate_unhealthy:g}: the cycle is late too often "
            "(mxrc check names what the RT CPU lacks)",
        )
    return Check(Status.HEALTHY, f"{figures} ≤ {t.miss_rate_unhealthy:g}")


def _event_bus(i: HealthInputs, t: Thresholds) -> Check:
    fill = i.bus_fill
    if fill >= 1.0:
        return Check(
            Status.UNHEALTHY,
            f"event bus queue full ({_pct(fill)}): the oldest events are being dropped; "
            "an observer is slower than the producers",
        )
    if fill > t.bus_fill_degraded:
        return Check(
            Status.DEGRADED,
            f"event bus queue {_pct(fill)} full > {_pct(t.bus_fill_degraded)}: observers "
            "are falling behind (at 100% the oldest events are dropped)",
        )
    return Check(
        Status.HEALTHY, f"event bus queue {_pct(fill)} full (≤ {_pct(t.bus_fill_degraded)})"
    )


def _shared_memory(i: HealthInputs, t: Thresholds) -> Check:
    if not i.shm_valid:
        return Check(
            Status.UNHEALTHY, f"segment headers invalid: {i.shm_problem or 'no detail given'}"
        )
    if not i.rt_expected:
        return Check(Status.HEALTHY, "segment headers valid; no RT process expected")
    if i.last_ring_record_ns is None:
        return Check(
            Status.DEGRADED, "segment headers valid; no ring record read yet (RT process expected)"
        )
    age_s = (i.now_ns - i.last_ring_record_ns) / 1e9
    if age_s > t.ring_stall_s:
        return Check(
            Status.UNHEALTHY,
            f"ring not progressing: last record {age_s:.1f} s ago (limit {t.ring_stall_s:g} s); "
            "is mxrc rt running?",
        )
    return Check(Status.HEALTHY, f"segment headers valid; last ring record {age_s:.1f} s ago")


def _lease(i: HealthInputs) -> Check:
    backend = f"backend {i.backend}"
    if not i.leader:
        who = "follower" if i.quorum else "follower without quorum"
        return Check(Status.DEGRADED, f"{who} ({backend}): may not drive")
    if not i.quorum:
        return Check(
            Status.DEGRADED, f"leader without quorum ({backend}): may not drive until it returns"
        )
    remaining = i.lease_remaining_s
    if remaining is None:
        return Check(Status.HEALTHY, f"leader with quorum ({backend})")
    if remaining <= 0:
        return Check(
            Status.DEGRADED,
            f"leader with quorum ({backend}), but the lease ran out {-remaining:.1f} s ago: "
            "may not drive until it is renewed",
        )
    return Check(Status.HEALTHY, f"leader with quorum ({backend}); lease {remaining:.1f} s left")


def _event_log(i: HealthInputs) -> Check:
    if not i.log_writable:
        return Check(
            Status.UNHEALTHY,
            f"event log not writable: {i.log_problem or 'no detail given'}; "
            "no transition can be journalled",
        )
    return Check(Status.HEALTHY, "event log writable")


def evaluate(inputs: HealthInputs, t: Thresholds) -> HealthReport:
    """Every check, and the worst of them as the overall status."""
    verdicts = (
        _rt_deadline(inputs, t),
        _event_bus(inputs, t),
        _shared_memory(inputs, t),
        _lease(inputs),
        _event_log(inputs),
    )
    checks = dict(zip(CHECK_NAMES, verdicts, strict=True))
    return HealthReport(worst(c.status for c in checks.values()), MappingProxyType(checks))


#: What restarting mxrc-nonrt can cure: a failed event log (it refuses appends until a
#: restart) and a stuck EventBus. A dead or missing RT process, a lost lease or a stalled
#: ring are not cured by restarting nonrt, and a watchdog restart loop would only take
#: the admin API away from the operator who needs it to see why.
WATCHDOG_CHECKS: frozenset[str] = frozenset({"event_log", "event_bus"})


@dataclass(frozen=True)
class HealthChange:
    check: str
    previous: Status | None  # None: the first evaluation
    status: Status
    detail: str


class HealthWatch:
    """Each check's status at the last evaluation, so that a change is told once.

    ``/health`` answers from a cache and says nothing about what happened between two
    requests; the changes are what an operator (the log) and an alert (a counter) need
    to learn which check turned a node unhealthy and when. A check healthy from the
    first evaluation on has nothing to tell.
    """

    def __init__(self) -> None:
        self._last: dict[str, Status] = {}

    def observe(self, report: HealthReport) -> list[HealthChange]:
        changes = []
        for name, check in report.checks.items():
            before = self._last.get(name)
            if check.status != (Status.HEALTHY if before is None else before):
                changes.append(HealthChange(name, before, check.status, check.detail))
            self._last[name] = check.status
        return changes


def watchdog_ok(report: HealthReport) -> bool:
    """Whether nonrt may feed its watchdog: none of the checks a restart cures is
    unhealthy (its loop progressing is checked by the caller)."""
    return all(
        check.status != Status.UNHEALTHY
        for name, check in report.checks.items()
        if name in WATCHDOG_CHECKS
    )


def readiness(report: HealthReport, state: str) -> tuple[bool, str]:
    """Ready when no check is unhealthy and the chart is READY or RUNNING; the reason
    names the first unhealthy check, else the state."""
    for name, check in report.checks.items():
        if check.status == Status.UNHEALTHY:
            return False, f"{name} unhealthy: {check.detail}"
    if state not in READY_STATES:
        return False, f"state {state}: ready only in {' or '.join(READY_STATES)}"
    return True, f"state {state}, health {report.status}"
