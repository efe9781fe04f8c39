"""Prometheus metrics of mxrc-nonrt, on the node's own registry.

One observer of the EventBus (:meth:`NonrtMetrics.observe`) turns bus events into
metrics; two hooks cover what never travels on the bus (the event log's fsync times,
the bus's own queue). A registry of its own, never the global one, so a test or a second
controller in one process cannot mix figures with another.

Two kinds of figure, deliberately different:

* **Mirrors** of something another component counts — the RT process's deadline
  misses, cycle number and wake-up histogram, the ring reader's drop count, the bus's
  queue. Exposed by a collector at scrape time from the latest report (or the live
  object), never re-counted here: the exposed value *is* the owner's figure, so events
  lost on the bus cannot make it drift. A restart of the RT process restarts its
  counters at zero, which Prometheus treats as a counter reset (``rate`` stays right).
  RT figures are absent until the RT process first reports.
* **Counts of events** seen on the bus (faults, transitions, appends, API requests),
  kept with ordinary prometheus_client metrics. The bus drops its oldest events when
  its queue is full; ``mxrc_bus_dropped_events_total`` says when that happened, and the
  event log stays the exact record.

The node is named once, in ``mxrc_build_info{version,node,chart}`` (one process per
node: a per-sample ``node`` label would only repeat the scrape target).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from mxrc import __version__
from mxrc.catalog import event_types
from mxrc.obs.logs import dropped_records
from mxrc.rt.process import FaultCause
from mxrc.service.events import (
    WAKE_BUCKETS_NS,
    ApiRequest,
    BusEvent,
    CycleHistogram,
    CycleStatus,
    HealthChanged,
    Journaled,
    LeaseChanged,
    RingDrops,
    RtFault,
    RtLost,
    RtStarted,
    RtStopped,
)
from mxrc.service.health import CHECK_NAMES, Status

#: fsync of an append batch: from a fast NVMe (~100 µs) to a disk in trouble (seconds).
FSYNC_BUCKETS_S: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
#: Records per fsync (group commit): 1 is a lone writer, more is commit sharing.
FSYNC_BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)
#: Labelled API children remembered for reuse (method, route and status are few in practice).
API_CHILDREN_CACHED: Final = 1024
#: Admin API latency: mutating calls wait for an fsync, reads should be sub-millisecond.
API_BUCKETS_S: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class BusFigures(Protocol):
    """What the metrics read from the EventBus at scrape time. ``published``, ``depth``,
    ``capacity`` and ``observer_errors`` (an int, or a mapping of observer name to
    count) are exposed too when the bus has them."""

    @property
    def fill_ratio(self) -> float: ...

    @property
    def dropped(self) -> int: ...


class _RtView:
    """The latest figures the RT process reported; replaced as a whole on its restart.

    None is "not reported yet": a figure is exposed only once it is known, so a counter
    never shows a made-up zero followed by the real value (a false increase). After a
    STARTED record every counter is known to be zero.
    """

    __slots__ = ("cycles", "driving", "histogram", "joint_position", "misses", "tracking_error")

    def __init__(self, *, started: bool = False) -> None:
        #: periods since the RT process started (its cycle number + 1)
        self.cycles: int | None = 0 if started else None
        self.misses: int | None = 0 if started else None
        self.tracking_error: float | None = None
        self.joint_position: float | None = None
        self.driving: bool | None = False if started else None
        self.histogram: CycleHistogram | None = (
            CycleHistogram(0, 0, WAKE_BUCKETS_NS, (0,) * len(WAKE_BUCKETS_NS), 0, 0.0)
            if started
            else None
        )


def _le(bound_s: float) -> str:
    """A bucket bound written as prometheus_client writes its own (``2e-05``)."""
    return str(floatToGoString(bound_s))  # type: ignore[no-untyped-call]


class NonrtMetrics:
    """The metrics of one nonrt process (see the module docstring).

    ``chart_states`` are exposed in ``mxrc_state`` from the start (0 until the node
    says which one is current), so a query for any state never finds "no data".
    ``chart`` is the statechart version (``Chart.ref``) for ``mxrc_build_info``; each
    journalled record's own version replaces it. ``clock`` is CLOCK_MONOTONIC in ns, the
    time base of lease deadlines. ``process_metrics`` adds prometheus_client's standard
    ``process_*`` and ``python_*`` collectors to the registry.
    """

    def __init__(
        self,
        node_id: str,
        chart_states: Sequence[str],
        *,
        chart: str = "",
        bus: BusFigures | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        process_metrics: bool = True,
    ) -> None:
        self.node_id = node_id
        self.chart_states: tuple[str, ...] = tuple(chart_states)
        self.chart = chart
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        self._bus = bus
        self._bus_fill: float | None = None
        self._bus_dropped: int | None = None
        self._rt: _RtView | None = None
        self._rt_attached: bool | None = None
        self._ring_dropped: int | None = None
        self._state: str | None = None
        self._leader = False
        self._quorum = False
        self._token = 0
        self._deadline_ns = 0
        reg = self.registry

        self.rt_faults = Counter(
            "mxrc_rt_faults",
            "FAULT records: the cycle went from driving to holding safe outputs, by cause",
            ["cause"],
            registry=reg,
        )
        for cause in FaultCause:
            self.rt_faults.labels(cause.name.lower())
        self.rt_starts = Counter(
            "mxrc_rt_starts", "STARTED records: the RT process (re)started", registry=reg
        )
        self.rt_lost = Counter(
            "mxrc_rt_lost",
            "Times the RT process went silent while expected to run (no ring record)",
            registry=reg,
        )
        self.transitions = Counter(
            "mxrc_transitions",
            "Statechart transitions journalled, by trigger and destination state",
            ["trigger", "dest"],
            registry=reg,
        )
        self.appends = Counter(
            "mxrc_eventlog_appends",
            "Records made durable in the event log, by event type",
            ["type"],
            registry=reg,
        )
        for kind in sorted(event_types()):
            self.appends.labels(kind)
        self.fsync_seconds = Histogram(
            "mxrc_eventlog_fsync_seconds",
            "write + fsync of one group-commit batch of the event log",
            buckets=FSYNC_BUCKETS_S,
            registry=reg,
        )
        self.fsync_batch = Histogram(
            "mxrc_eventlog_fsync_batch_records",
            "Records made durable by one fsync (group commit shares it)",
            buckets=FSYNC_BATCH_BUCKETS,
            registry=reg,
        )
        self.api_requests = Counter(
            "mxrc_api_requests",
            "Admin API requests answered, by method, route pattern and status code",
            ["method", "route", "status"],
            registry=reg,
        )
        self.api_seconds = Histogram(
            "mxrc_api_request_seconds",
            "Admin API request handling time, by route pattern",
            ["route"],
            buckets=API_BUCKETS_S,
            registry=reg,
        )
        self.health_changes = Counter(
            "mxrc_health_check_changes",
            "Changes of a /health check's status, by check and the status it changed to",
            ["check", "status"],
            registry=reg,
        )
        for check in CHECK_NAMES:  # present from the start, so increase() sees the first
            for status in Status:
                self.health_changes.labels(check, str(status))
        self._api_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        reg.register(_LiveCollector(self))
        if process_metrics:
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
            GCCollector(registry=reg)

        self._dispatch: dict[type, Callable[[Any], None]] = {
            CycleStatus: self._cycle_status,
            CycleHistogram: self._cycle_histogram,
            RtStarted: self._rt_started,
            RtFault: self._rt_fault,
            RtStopped: self._rt_stopped,
            RtLost: self._rt_lost,
            RingDrops: self._ring_drops,
            Journaled: self._journaled,
            LeaseChanged: self._lease_changed,
            HealthChanged: self._health_changed,
            ApiRequest: self._api_request,
        }

    # ---------------------------------------------------------------- hooks

    def observe(self, event: BusEvent) -> None:
        """The bus observer. Event kinds it does not know are ignored, so a newer
        producer never breaks the metrics."""
        handler = self._dispatch.get(type(event))
        if handler is not None:
            handler(event)

    def observe_fsync(self, seconds: float) -> None:
        """One group-commit write + fsync took ``seconds``."""
        self.fsync_seconds.observe(seconds)

    def fsync_observer(self, records: int, seconds: float) -> None:
        """Exactly :attr:`mxrc.eventlog.EventLog.fsync_observer`'s signature: also keeps
        the batch size. Called on the appending thread; prometheus_client is
        thread-safe."""
        self.fsync_batch.observe(records)
        self.fsync_seconds.observe(seconds)

    def bind_bus(self, bus: BusFigures) -> None:
        """Read the bus's figures live at every scrape (preferred to
        :meth:`set_bus_figures`: a copy is stale by the time it is scraped)."""
        self._bus = bus

    def set_bus_figures(self, fill_ratio: float, dropped: int) -> None:
        """For a bus that cannot be bound: the figures to expose until the next call."""
        self._bus_fill = fill_ratio
        self._bus_dropped = dropped

    # ---------------------------------------------------------------- events

    def _rt_view(self) -> _RtView:
        if self._rt is None:
            self._rt = _RtView()
        return self._rt

    def _cycle_status(self, event: CycleStatus) -> None:
        rt = self._rt_view()
        rt.cycles = event.cycle + 1
        rt.misses = event.misses
        rt.tracking_error = event.tracking_error
        rt.joint_position = event.joint_position
        rt.driving = event.driving
        self._rt_attached = True

    def _cycle_histogram(self, event: CycleHistogram) -> None:
        self._rt_view().histogram = event
        self._rt_attached = True

    def _rt_started(self, event: RtStarted) -> None:
        self.rt_starts.inc()
        self._rt = _RtView(started=True)  # its counters restart at zero: a counter reset
        self._rt_attached = True

    def _rt_fault(self, event: RtFault) -> None:
        self.rt_faults.labels(event.cause).inc()
        self._rt_view().driving = False  # the fault record is the edge to holding

    def _rt_stopped(self, event: RtStopped) -> None:
        rt = self._rt_view()
        rt.misses = event.misses  # its final figure
        rt.driving = False
        self._rt_attached = False

    def _rt_lost(self, event: RtLost) -> None:
        self.rt_lost.inc()
        self._rt_attached = False

    def _ring_drops(self, event: RingDrops) -> None:
        self._ring_dropped = event.total

    def _journaled(self, event: Journaled) -> None:
        record = event.record
        kind = record.get("type", "")
        self.appends.labels(kind).inc()
        chart, chart_hash = record.get("chart"), record.get("chart_hash")
        if chart and chart_hash:
            self.chart = f"{chart}@{chart_hash}"  # as Chart.ref names it
        payload: Mapping[str, Any] = record.get("payload") or {}
        if kind == "transition":
            dest = str(payload.get("dest", ""))
            self.transitions.labels(str(payload.get("trigger", "")), dest).inc()
            if dest:
                self._state = dest
        elif kind == "node_started" and payload.get("recovered_state"):
            self._state = str(payload["recovered_state"])

    def _lease_changed(self, event: LeaseChanged) -> None:
        self._leader = event.leader
        self._quorum = event.quorum
        self._token = event.token
        self._deadline_ns = event.deadline_ns

    def _health_changed(self, event: HealthChanged) -> None:
        self.health_changes.labels(event.check, event.status).inc()

    def _api_request(self, event: ApiRequest) -> None:
        # The labelled children are looked up once per (method, route, status): under a
        # monitoring load, labels() would otherwise be most of the cost of a request.
        key = (event.method, event.route, event.status)
        children = self._api_children.get(key)
        if children is None:
            children = (
                self.api_requests.labels(event.method, event.route, str(event.status)),
                self.api_seconds.labels(event.route),
            )
            if len(self._api_children) < API_CHILDREN_CACHED:
                self._api_children[key] = children
        children[0].inc()
        children[1].observe(event.duration_s)

    # ---------------------------------------------------------------- scrape time

    def lease_remaining_s(self) -> float:
        """Seconds until the lease deadline now; 0 when not leader or already past."""
        if not self._leader or self._deadline_ns <= 0:
            return 0.0
        return max(0.0, (self._deadline_ns - self.clock()) / 1e9)

    def collect_live(self) -> Iterable[Metric]:
        """Every figure read at scrape time (see :class:`_LiveCollector`)."""
        info = GaugeMetricFamily(
            "mxrc_build_info",
            "Always 1: this process's version, node and statechart version",
            labels=["version", "node", "chart"],
        )
        info.add_metric([__version__, self.node_id, self.chart], 1.0)
        yield info

        state = GaugeMetricFamily(
            "mxrc_state", "1 for the statechart's current state, 0 for the others", labels=["state"]
        )
        states = list(self.chart_states)
        if self._state is not None and self._state not in states:
            states.append(self._state)  # a state this chart does not declare: still shown
        for name in states:
            state.add_metric([name], 1.0 if name == self._state else 0.0)
        yield state

        yield from self._collect_rt()

        dropped = CounterMetricFamily(
            "mxrc_ring_dropped_records",
            "Ring records the RT process overwrote before nonrt read them (exact)",
        )
        if self._ring_dropped is not None:
            dropped.add_metric([], self._ring_dropped)
        yield dropped

        yield GaugeMetricFamily(
            "mxrc_leader", "1 while this node holds the leader lease", value=float(self._leader)
        )
        yield GaugeMetricFamily(
            "mxrc_quorum", "1 while the HA backend reports a quorum", value=float(self._quorum)
        )
        yield GaugeMetricFamily(
            "mxrc_fencing_token",
            "Fencing token of the current lease (0: none); the RT cycle drives only with it",
            value=float(self._token),
        )
        yield GaugeMetricFamily(
            "mxrc_lease_remaining_seconds",
            "Time left until the lease deadline the control block carries (0: no lease)",
            value=self.lease_remaining_s(),
        )
        yield from self._collect_bus()
        yield CounterMetricFamily(
            "mxrc_log_dropped_records",
            "Log records dropped because the log queue was full (the oldest go first)",
            value=dropped_records(),
        )

    def _collect_rt(self) -> Iterable[Metric]:
        rt = self._rt
        attached = GaugeMetricFamily(
            "mxrc_rt_attached", "1 while the RT process is reporting through the ring"
        )
        if self._rt_attached is not None:
            attached.add_metric([], float(self._rt_attached))
        yield attached

        wake = HistogramMetricFamily(
            "mxrc_cycle_wake_latency_seconds",
            "Cycle wake-up latency (actual wake-up minus the absolute deadline) since the "
            "RT process started, as it reports it",
        )
        hist = rt.histogram if rt is not None else None
        if hist is not None:
            buckets = [
                (_le(b / 1e9), float(c)) for b, c in zip(hist.bounds_ns, hist.counts, strict=True)
            ]
            buckets.append(("+Inf", float(hist.total)))
            wake.add_metric([], buckets, sum_value=hist.sum_ns / 1e9)
        yield wake

        misses = CounterMetricFamily(
            "mxrc_cycle_deadline_misses",
            "Cycles whose work ended later than the budget after their deadline (RT figure)",
        )
        cycles = CounterMetricFamily(
            "mxrc_cycles",
            "Cycle periods since the RT process started, skipped overrun periods included "
            "(RT figure)",
        )
        error = GaugeMetricFamily(
            "mxrc_cycle_tracking_error",
            "Joint tracking error (setpoint minus position) in the joint position's unit",
        )
        position = GaugeMetricFamily(
            "mxrc_cycle_joint_position", "Joint position the cycle last measured"
        )
        driving = GaugeMetricFamily(
            "mxrc_cycle_driving", "1 while the cycle drives outputs, 0 while it holds them safe"
        )
        if rt is not None:
            if rt.misses is not None:
                misses.add_metric([], rt.misses)
            if rt.cycles is not None:
                cycles.add_metric([], rt.cycles)
            if rt.tracking_error is not None and not math.isnan(rt.tracking_error):
                error.add_metric([], rt.tracking_error)
            if rt.joint_position is not None and not math.isnan(rt.joint_position):
                position.add_metric([], rt.joint_position)
            if rt.driving is not None:
                driving.add_metric([], float(rt.driving))
        yield from (misses, cycles, error, position, driving)

    def _collect_bus(self) -> Iterable[Metric]:
        bus = self._bus
        fill = self._bus_fill if bus is None else float(bus.fill_ratio)
        dropped = self._bus_dropped if bus is None else int(bus.dropped)
        fill_family = GaugeMetricFamily(
            "mxrc_bus_queue_fill_ratio", "EventBus queue occupancy (0..1); 1 means dropping"
        )
        dropped_family = CounterMetricFamily(
            "mxrc_bus_dropped_events", "Events the EventBus dropped because its queue was full"
        )
        if fill is not None:
            fill_family.add_metric([], fill)
        if dropped is not None:
            dropped_family.add_metric([], dropped)
        yield fill_family
        yield dropped_family
        if bus is None:
            return
        published = getattr(bus, "published", None)
        if isinstance(published, int):
            yield CounterMetricFamily(
                "mxrc_bus_published_events", "Events published on the EventBus", value=published
            )
        depth, capacity = getattr(bus, "depth", None), getattr(bus, "capacity", None)
        if isinstance(depth, int):
            yield GaugeMetricFamily("mxrc_bus_queue_depth", "Events waiting", value=depth)
        if isinstance(capacity, int):
            yield GaugeMetricFamily(
                "mxrc_bus_queue_capacity", "EventBus queue size", value=capacity
            )
        errors = getattr(bus, "observer_errors", None)
        if isinstance(errors, int):
            yield CounterMetricFamily(
                "mxrc_bus_observer_errors", "Exceptions raised by bus observers", value=errors
            )
        elif isinstance(errors, Mapping):
            family = CounterMetricFamily(
                "mxrc_bus_observer_errors",
                "Exceptions raised by bus observers, by observer",
                labels=["observer"],
            )
            for name, count in sorted(errors.items()):
                family.add_metric([str(name)], float(count))
            yield family


class _LiveCollector(Collector):
    """Hands the registry the figures :class:`NonrtMetrics` reads at scrape time."""

    def __init__(self, metrics: NonrtMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics.collect_live()
