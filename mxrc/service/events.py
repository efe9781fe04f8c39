"""What travels on the EventBus: small immutable facts, one class per kind.

Producers are the ring consumer (what the RT process said), the controller (records
journalled, lease changes) and the admin API; observers (metrics, health, log, the
live event stream) read them. Times are CLOCK_MONOTONIC ns (``mono_ns``) unless named
``wall``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mxrc.segments import Record


@dataclass(frozen=True, slots=True)
class CycleStatus:
    """A CYCLE_STATUS ring record: the cycle's figures every ``rt.status_every_cycles``."""

    cycle: int
    slot: int
    mono_ns: int
    wake_p99_us: float
    misses: int
    tracking_error: float
    driving: bool
    joint_position: float
    traceparent: str | None = None


#: Upper bounds of the wake-up latency buckets the RT process reports (CYCLE_HISTOGRAM).
WAKE_BUCKETS_NS: tuple[int, ...] = (20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000)


@dataclass(frozen=True, slots=True)
class CycleHistogram:
    """Cumulative wake-up latency counts since the RT process started:
    ``counts[i]`` samples were ≤ ``bounds_ns[i]`` (:data:`WAKE_BUCKETS_NS`); ``total``
    samples in all, summing to ``sum_ns``."""

    cycle: int
    mono_ns: int
    bounds_ns: tuple[int, ...]
    counts: tuple[int, ...]
    total: int
    sum_ns: float


@dataclass(frozen=True, slots=True)
class RtStarted:
    cycle: int
    mono_ns: int
    cpu: int
    priority: int  # 0: not SCHED_FIFO (degraded)
    period_ns: int


@dataclass(frozen=True, slots=True)
class RtFault:
    """The cycle went from driving to holding safe outputs, and why (FaultCause name)."""

    cycle: int
    mono_ns: int
    cause: str
    mode: int
    token: int
    lease_left_ns: int
    expected_token: int
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class RtModeApplied:
    """The first cycle that saw a new mode in the control block, and what it did.

    ``traceparent`` is the context nonrt wrote with the mode (the transition's span), so
    the cycle's part of a command joins the command's trace; the cycle took
    ``acted_ns`` from its wake-up to having acted (driving or holding) on the mode.
    """

    cycle: int
    mono_ns: int
    slot: int
    mode: int
    previous_mode: int
    driving: bool
    token: int
    acted_ns: int
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class RtStopped:
    cycle: int
    mono_ns: int
    was_driving: bool
    misses: int
    cycles: int


@dataclass(frozen=True, slots=True)
class RtLost:
    """No ring record for ``silence_s`` while the RT process was expected to run."""

    mono_ns: int
    silence_s: float


@dataclass(frozen=True, slots=True)
class RingDrops:
    """The ring overwrote records nonrt had not read yet (``total`` since start)."""

    mono_ns: int
    new: int
    total: int


@dataclass(frozen=True, slots=True)
class Journaled:
    """A record is durable in the event log."""

    record: Record


@dataclass(frozen=True, slots=True)
class LeaseChanged:
    """Leadership facts after a renewal attempt that changed any of them."""

    mono_ns: int
    leader: bool
    quorum: bool
    token: int
    deadline_ns: int  # CLOCK_MONOTONIC; 0 when not leader


@dataclass(frozen=True, slots=True)
class HealthChanged:
    """A health check's status changed between two evaluations (``previous`` is empty
    for a check that was not healthy at the first one)."""

    mono_ns: int
    check: str
    previous: str
    status: str
    detail: str


@dataclass(frozen=True, slots=True)
class ApiRequest:
    method: str
    route: str  # the route pattern, e.g. /v1/commands/{trigger}
    status: int
    duration_s: float


BusEvent = (
    CycleStatus
    | CycleHistogram
    | RtStarted
    | RtFault
    | RtModeApplied
    | RtStopped
    | RtLost
    | RingDrops
    | Journaled
    | LeaseChanged
    | HealthChanged
    | ApiRequest
)


def traceparent_of(event: BusEvent) -> str | None:
    """The trace context an event belongs to: its own, or its record's."""
    if isinstance(event, Journaled):
        value = event.record.get("traceparent")
        return value if isinstance(value, str) else None
    value = getattr(event, "traceparent", None)
    return value if isinstance(value, str) else None
