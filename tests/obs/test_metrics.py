"""nonrt's Prometheus metrics, read the way Prometheus reads them: every assertion
parses ``generate_latest`` with prometheus_client's own text parser.

Journalled records come from a real node (real event log, real fsync); ring figures
come through a real ring and the real :class:`RingFeed`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from mxrc.node import Node
from mxrc.obs.metrics import NonrtMetrics
from mxrc.rt.process import (
    STATUS_DRIVING,
    STATUS_JOINT_POSITION,
    STATUS_MISSES,
    STATUS_TRACKING_ERROR,
    FaultCause,
    RecordType,
)
from mxrc.rt.ring import Ring, RingLayout
from mxrc.service.events import (
    WAKE_BUCKETS_NS,
    ApiRequest,
    CycleHistogram,
    CycleStatus,
    Journaled,
    LeaseChanged,
    RingDrops,
    RtFault,
    RtLost,
    RtStarted,
    RtStopped,
)
from mxrc.service.ringfeed import CYCLE_HISTOGRAM, RingFeed
from mxrc.statechart import Chart

STATES = ("INIT", "READY", "RUNNING", "SAFE_MODE")


# --- reading the exposition ---------------------------------------------------------------


def families(metrics: NonrtMetrics) -> dict[str, Metric]:
    text = generate_latest(metrics.registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(metrics: NonrtMetrics, name: str) -> list[Sample]:
    return [s for f in families(metrics).values() for s in f.samples if s.name == name]


def value(metrics: NonrtMetrics, name: str, **labels: str) -> float:
    found = [s.value for s in samples(metrics, name) if s.labels == labels]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples in {samples(metrics, name)}"
    return found[0]


def absent(metrics: NonrtMetrics, name: str) -> bool:
    return samples(metrics, name) == []


def buckets(metrics: NonrtMetrics, name: str, **labels: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a histogram's series, in exposition order."""
    out = []
    for sample in samples(metrics, f"{name}_bucket"):
        rest = {k: v for k, v in sample.labels.items() if k != "le"}
        if rest == labels:
            out.append((float(sample.labels["le"]), sample.value))
    return out


def status(cycle: int, misses: int, *, error: float = 0.0, driving: bool = False) -> CycleStatus:
    return CycleStatus(
        cycle=cycle,
        slot=cycle % 10,
        mono_ns=time.monotonic_ns(),
        wake_p99_us=20.0,
        misses=misses,
        tracking_error=error,
        driving=driving,
        joint_position=0.25,
    )


def started() -> RtStarted:
    return RtStarted(cycle=0, mono_ns=time.monotonic_ns(), cpu=1, priority=80, period_ns=1_000_000)


def histogram(counts: tuple[int, ...], total: int, sum_ns: float) -> CycleHistogram:
    return CycleHistogram(
        cycle=100,
        mono_ns=time.monotonic_ns(),
        bounds_ns=WAKE_BUCKETS_NS,
        counts=counts,
        total=total,
        sum_ns=sum_ns,
    )


@pytest.fixture
def metrics() -> NonrtMetrics:
    return NonrtMetrics("node-7", STATES)


# --- RT figures: mirrors of the RT process's own counters ---------------------------------


def test_rt_figures_are_absent_until_the_rt_process_reports(metrics: NonrtMetrics) -> None:
    for name in (
        "mxrc_cycles_total",
        "mxrc_cycle_deadline_misses_total",
        "mxrc_cycle_tracking_error",
        "mxrc_cycle_driving",
        "mxrc_cycle_wake_latency_seconds_count",
        "mxrc_ring_dropped_records_total",
        "mxrc_rt_attached",
    ):
        assert absent(metrics, name), name
    found = families(metrics)
    assert found["mxrc_cycles"].type == "counter"  # described even without a sample
    assert found["mxrc_cycle_wake_latency_seconds"].type == "histogram"


def test_rt_counters_mirror_the_latest_report_and_reset_with_the_rt_process(
    metrics: NonrtMetrics,
) -> None:
    metrics.observe(started())
    assert value(metrics, "mxrc_cycles_total") == 0
    assert value(metrics, "mxrc_cycle_deadline_misses_total") == 0
    assert value(metrics, "mxrc_cycle_wake_latency_seconds_count") == 0
    assert value(metrics, "mxrc_rt_attached") == 1
    assert value(metrics, "mxrc_rt_starts_total") == 1

    metrics.observe(status(999, 3, error=0.0125, driving=True))
    assert value(metrics, "mxrc_cycles_total") == 1000  # cycle numbers start at 0
    assert value(metrics, "mxrc_cycle_deadline_misses_total") == 3
    assert value(metrics, "mxrc_cycle_tracking_error") == 0.0125
    assert value(metrics, "mxrc_cycle_joint_position") == 0.25
    assert value(metrics, "mxrc_cycle_driving") == 1
    metrics.observe(status(1099, 5, error=-0.002, driving=True))
    assert value(metrics, "mxrc_cycle_deadline_misses_total") == 5  # the RT figure, not 3 + 5
    assert value(metrics, "mxrc_cycles_total") == 1100
    assert value(metrics, "mxrc_cycle_tracking_error") == -0.002

    metrics.observe(started())  # the RT process restarted: its counters begin again
    assert value(metrics, "mxrc_cycles_total") == 0
    assert value(metrics, "mxrc_cycle_deadline_misses_total") == 0
    assert value(metrics, "mxrc_cycle_driving") == 0
    assert absent(metrics, "mxrc_cycle_tracking_error")  # not reported by this process yet
    assert value(metrics, "mxrc_rt_starts_total") == 2
    metrics.observe(status(49, 1))
    assert value(metrics, "mxrc_cycles_total") == 50
    assert value(metrics, "mxrc_cycle_deadline_misses_total") == 1

    metrics.observe(RtStopped(cycle=60, mono_ns=1, was_driving=False, misses=2, cycles=61))
    assert value(metrics, "mxrc_cycle_deadline_misses_total") == 2  # the final figure
    assert value(metrics, "mxrc_rt_attached") == 0
    metrics.observe(RtLost(mono_ns=2, silence_s=1.5))
    assert value(metrics, "mxrc_rt_lost_total") == 1


def test_counters_seen_first_mid_run_start_at_the_rt_figure(metrics: NonrtMetrics) -> None:
    """nonrt restarted under a running RT process: no made-up zero before the real value."""
    metrics.observe(histogram((1, 2, 3, 4, 5, 6), 6, 1e6))
    assert absent(metrics, "mxrc_cycles_total")  # a histogram says nothing about misses
    assert absent(metrics, "mxrc_cycle_deadline_misses_total")
    assert value(metrics, "mxrc_cycle_wake_latency_seconds_count") == 6
    metrics.observe(status(123_455, 17))
    assert value(metrics, "mxrc_cycles_total") == 123_456
    assert value(metrics, "mxrc_cycle_deadline_misses_total") == 17


def test_wake_latency_is_a_cumulative_prometheus_histogram(metrics: NonrtMetrics) -> None:
    latencies = [5_000, 19_000, 20_000, 21_000, 60_000, 150_000, 450_000, 999_000, 2_000_000]
    counts = tuple(sum(1 for v in latencies if v <= b) for b in WAKE_BUCKETS_NS)
    metrics.observe(histogram(counts, len(latencies), float(sum(latencies))))
    family = families(metrics)["mxrc_cycle_wake_latency_seconds"]
    assert family.type == "histogram"
    series = buckets(metrics, "mxrc_cycle_wake_latency_seconds")
    bounds = [b for b, _ in series]
    assert bounds == [*(b / 1e9 for b in WAKE_BUCKETS_NS), float("inf")]
    assert bounds[:6] == [20e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3]
    cumulative = [c for _, c in series]
    assert cumulative == [3, 4, 5, 6, 7, 8, 9]
    assert cumulative == sorted(cumulative)  # never decreasing
    assert value(metrics, "mxrc_cycle_wake_latency_seconds_count") == cumulative[-1] == 9
    assert value(metrics, "mxrc_cycle_wake_latency_seconds_sum") == pytest.approx(
        sum(latencies) / 1e9
    )

    metrics.observe(histogram((10, 20, 30, 40, 50, 60), 70, 7e6))  # a later report replaces it
    latest = [c for _, c in buckets(metrics, "mxrc_cycle_wake_latency_seconds")]
    assert latest == [10, 20, 30, 40, 50, 60, 70]


# --- event counts -----------------------------------------------------------------------


def test_rt_faults_are_counted_by_cause_from_zero(metrics: NonrtMetrics) -> None:
    for cause in FaultCause:  # every known cause exists before it first happens
        assert value(metrics, "mxrc_rt_faults_total", cause=cause.name.lower()) == 0
    metrics.observe(status(10, 0, driving=True))

    def fault(cause: str) -> RtFault:
        return RtFault(11, 1, cause, 2, 7, -5_000_000, 7)

    metrics.observe(fault("lease_expired"))
    metrics.observe(fault("lease_expired"))
    metrics.observe(fault("cause_99"))
    assert value(metrics, "mxrc_rt_faults_total", cause="lease_expired") == 2
    assert value(metrics, "mxrc_rt_faults_total", cause="token_changed") == 0
    assert value(metrics, "mxrc_rt_faults_total", cause="cause_99") == 1
    assert value(metrics, "mxrc_cycle_driving") == 0  # a fault record is the edge to holding


def test_api_requests_by_method_route_status_and_latency_by_route(
    metrics: NonrtMetrics,
) -> None:
    route = "/v1/commands/{trigger}"
    for status_code, seconds in ((200, 0.004), (200, 0.006), (409, 0.0004)):
        metrics.observe(ApiRequest("POST", route, status_code, seconds))
    metrics.observe(ApiRequest("GET", "/metrics", 200, 0.0007))
    assert value(metrics, "mxrc_api_requests_total", method="POST", route=route, status="200") == 2
    assert value(metrics, "mxrc_api_requests_total", method="POST", route=route, status="409") == 1
    assert (
        value(metrics, "mxrc_api_requests_total", method="GET", route="/metrics", status="200") == 1
    )
    label_sets = {tuple(sorted(s.labels)) for s in samples(metrics, "mxrc_api_requests_total")}
    assert label_sets == {("method", "route", "status")}
    assert value(metrics, "mxrc_api_request_seconds_count", route=route) == 3
    assert value(metrics, "mxrc_api_request_seconds_sum", route=route) == pytest.approx(0.0104)
    series = dict(buckets(metrics, "mxrc_api_request_seconds", route=route))
    assert series[0.0005] == 1 and series[0.005] == 2 and series[0.01] == 3
    assert series[float("inf")] == 3
    counts = list(series.values())
    assert counts == sorted(counts)


def test_ring_drops_expose_the_readers_total(metrics: NonrtMetrics) -> None:
    metrics.observe(RingDrops(mono_ns=1, new=940, total=940))
    metrics.observe(RingDrops(mono_ns=2, new=440, total=1380))
    assert value(metrics, "mxrc_ring_dropped_records_total") == 1380
    assert families(metrics)["mxrc_ring_dropped_records"].type == "counter"


# --- lease and bus: figures read at scrape time --------------------------------------------


def test_lease_figures_are_live_at_scrape_time() -> None:
    now = [5_000_000_000_000]
    metrics = NonrtMetrics("node-7", STATES, clock=lambda: now[0])
    assert value(metrics, "mxrc_leader") == 0
    assert value(metrics, "mxrc_lease_remaining_seconds") == 0
    metrics.observe(
        LeaseChanged(now[0], leader=True, quorum=True, token=42, deadline_ns=now[0] + 1_500_000_000)
    )
    assert value(metrics, "mxrc_leader") == 1 and value(metrics, "mxrc_quorum") == 1
    assert value(metrics, "mxrc_fencing_token") == 42
    assert value(metrics, "mxrc_lease_remaining_seconds") == pytest.approx(1.5)
    now[0] += 1_000_000_000  # no new event: the scrape still sees time pass
    assert value(metrics, "mxrc_lease_remaining_seconds") == pytest.approx(0.5)
    now[0] += 1_000_000_000
    assert value(metrics, "mxrc_lease_remaining_seconds") == 0  # expired, never negative
    metrics.observe(LeaseChanged(now[0], leader=False, quorum=False, token=42, deadline_ns=0))
    assert value(metrics, "mxrc_leader") == 0
    assert value(metrics, "mxrc_lease_remaining_seconds") == 0


class Bus:
    """The figures an EventBus exposes, as plain attributes the test changes."""

    def __init__(self) -> None:
        self.fill_ratio = 0.0
        self.dropped = 0
        self.published = 0
        self.depth = 0
        self.capacity = 4096
        self.observer_errors: dict[str, int] = {"metrics": 0, "controller": 0}


def test_bus_figures_are_read_from_the_bus_at_scrape_time(metrics: NonrtMetrics) -> None:
    assert absent(metrics, "mxrc_bus_queue_fill_ratio")  # no bus known yet
    metrics.set_bus_figures(0.25, 3)
    assert value(metrics, "mxrc_bus_queue_fill_ratio") == 0.25
    assert value(metrics, "mxrc_bus_dropped_events_total") == 3

    bus = Bus()
    metrics.bind_bus(bus)
    bus.fill_ratio, bus.dropped, bus.published, bus.depth = 0.5, 7, 1000, 2048
    bus.observer_errors["controller"] = 2
    assert value(metrics, "mxrc_bus_queue_fill_ratio") == 0.5
    assert value(metrics, "mxrc_bus_dropped_events_total") == 7
    assert value(metrics, "mxrc_bus_published_events_total") == 1000
    assert value(metrics, "mxrc_bus_queue_depth") == 2048
    assert value(metrics, "mxrc_bus_queue_capacity") == 4096
    assert value(metrics, "mxrc_bus_observer_errors_total", observer="controller") == 2
    bus.fill_ratio, bus.dropped = 1.0, 9  # changed after binding: the scrape sees it
    assert value(metrics, "mxrc_bus_queue_fill_ratio") == 1.0
    assert value(metrics, "mxrc_bus_dropped_events_total") == 9


# --- journalled records from a real node --------------------------------------------------


def one_state(metrics: NonrtMetrics) -> str:
    """The state whose gauge is 1, checking that exactly one is and the rest are 0."""
    gauges = {s.labels["state"]: s.value for s in samples(metrics, "mxrc_state")}
    assert set(gauges) == set(STATES), gauges
    on = [state for state, v in gauges.items() if v == 1]
    assert len(on) == 1 and all(v in (0, 1) for v in gauges.values()), gauges
    return on[0]


def test_state_transitions_and_appends_from_a_real_node(
    make_node: Callable[..., Node], rt_chart: Chart
) -> None:
    metrics = NonrtMetrics("node-1", rt_chart.states)
    assert {s.labels["state"]: s.value for s in samples(metrics, "mxrc_state")} == dict.fromkeys(
        STATES, 0.0
    )
    node = make_node()
    node.on_record(lambda record: metrics.observe(Journaled(record)))
    node.on_fsync(metrics.fsync_observer)
    node.start()
    try:
        assert one_state(metrics) == "INIT"  # from node_started's recovered_state
        node.fire("initialized")
        assert one_state(metrics) == "READY"
        node.fire("start")
        assert one_state(metrics) == "RUNNING"
        node.fire("fault", cause="operator")
        assert one_state(metrics) == "SAFE_MODE"
        node.fire("reset")
        assert one_state(metrics) == "READY"
        assert value(metrics, "mxrc_transitions_total", trigger="start", dest="RUNNING") == 1
        assert value(metrics, "mxrc_transitions_total", trigger="reset", dest="READY") == 1
        assert value(metrics, "mxrc_transitions_total", trigger="fault", dest="SAFE_MODE") == 1
        assert value(metrics, "mxrc_eventlog_appends_total", type="transition") == 4
        assert value(metrics, "mxrc_eventlog_appends_total", type="node_started") == 1
        assert value(metrics, "mxrc_eventlog_appends_total", type="datastore_write") == 0
        appended = 5
        # Every record went through one real fsync; lone appends: one batch each.
        assert value(metrics, "mxrc_eventlog_fsync_batch_records_sum") == appended
        fsyncs = value(metrics, "mxrc_eventlog_fsync_seconds_count")
        assert 1 <= fsyncs <= appended
        assert value(metrics, "mxrc_eventlog_fsync_seconds_sum") > 0
        info = samples(metrics, "mxrc_build_info")
        assert len(info) == 1 and info[0].value == 1
        assert info[0].labels["node"] == "node-1"
        assert info[0].labels["chart"] == rt_chart.ref
    finally:
        node.stop("test")
    assert value(metrics, "mxrc_eventlog_appends_total", type="node_stopped") == 1


def test_a_state_the_chart_does_not_declare_is_still_shown(metrics: NonrtMetrics) -> None:
    record = {
        "seq": 9,
        "wall_ns": 1,
        "mono_ns": 1,
        "node": "node-7",
        "type": "transition",
        "token": 0,
        "traceparent": None,
        "chart": "rt",
        "chart_hash": "0123456789ab",
        "payload": {"trigger": "park", "source": "READY", "dest": "PARKED"},
    }
    metrics.observe(Journaled(record))  # type: ignore[arg-type]
    gauges = {s.labels["state"]: s.value for s in samples(metrics, "mxrc_state")}
    assert gauges == {**dict.fromkeys(STATES, 0.0), "PARKED": 1.0}
    assert value(metrics, "mxrc_transitions_total", trigger="park", dest="PARKED") == 1


def test_observe_fsync_takes_the_seconds_alone(metrics: NonrtMetrics) -> None:
    metrics.observe_fsync(0.0003)
    metrics.observe_fsync(0.02)
    series = dict(buckets(metrics, "mxrc_eventlog_fsync_seconds"))
    assert series[0.00025] == 0 and series[0.0005] == 1 and series[0.025] == 2
    assert value(metrics, "mxrc_eventlog_fsync_batch_records_count") == 0


# --- the registry ---------------------------------------------------------------------------


def test_each_instance_has_its_own_registry_and_the_global_one_is_untouched() -> None:
    first = NonrtMetrics("node-a", STATES)
    second = NonrtMetrics("node-b", STATES)
    first.observe(status(9, 4))
    assert value(first, "mxrc_cycle_deadline_misses_total") == 4
    assert absent(second, "mxrc_cycle_deadline_misses_total")
    assert not [m for m in REGISTRY.collect() if m.name.startswith("mxrc_")]
    assert [s.labels["node"] for s in samples(second, "mxrc_build_info")] == ["node-b"]


def test_names_follow_prometheus_conventions(metrics: NonrtMetrics) -> None:
    metrics.observe(started())
    metrics.observe(status(1, 0))
    metrics.observe(RingDrops(1, 1, 1))
    metrics.set_bus_figures(0.1, 0)
    found = {name: f for name, f in families(metrics).items() if name.startswith("mxrc_")}
    for name, family in found.items():
        if family.type == "counter":
            assert all(s.name in (f"{name}_total", f"{name}_created") for s in family.samples), name
        if name.endswith("_seconds"):
            assert family.type in ("histogram", "gauge"), name
        assert "node" not in {k for s in family.samples for k in s.labels} or name == (
            "mxrc_build_info"
        )
    required = {
        "mxrc_cycle_wake_latency_seconds": "histogram",
        "mxrc_cycle_deadline_misses": "counter",
        "mxrc_cycles": "counter",
        "mxrc_cycle_tracking_error": "gauge",
        "mxrc_cycle_driving": "gauge",
        "mxrc_ring_dropped_records": "counter",
        "mxrc_rt_faults": "counter",
        "mxrc_state": "gauge",
        "mxrc_transitions": "counter",
        "mxrc_eventlog_appends": "counter",
        "mxrc_eventlog_fsync_seconds": "histogram",
        "mxrc_api_requests": "counter",
        "mxrc_api_request_seconds": "histogram",
        "mxrc_bus_queue_fill_ratio": "gauge",
        "mxrc_bus_dropped_events": "counter",
        "mxrc_lease_remaining_seconds": "gauge",
        "mxrc_leader": "gauge",
        "mxrc_fencing_token": "gauge",
        "mxrc_build_info": "gauge",
    }
    assert {name: found[name].type for name in required} == required


# --- from the ring, through the real feed ---------------------------------------------------


@pytest.fixture
def ring() -> Iterator[Ring]:
    directory = Path(tempfile.mkdtemp(prefix="mxrc-test-metrics-", dir="/dev/shm"))
    name = f"mxrc-test-{os.getpid()}-{secrets.token_hex(4)}-ring"
    try:
        with Ring.create(name, RingLayout(capacity=64), directory=directory) as made:
            yield made
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_ring_records_reach_the_metrics_through_the_feed(metrics: NonrtMetrics, ring: Ring) -> None:
    writer = ring.writer()
    feed = RingFeed(ring.reader(), metrics.observe, silence_s=1.0)
    writer.write(RecordType.STARTED, 0, time.monotonic_ns(), [2.0, 80.0, 1e6])
    p = writer.payload_f64
    for cycle in range(0, 500, 100):
        p[STATUS_MISSES], p[STATUS_TRACKING_ERROR] = cycle // 100, 0.001 * cycle
        p[STATUS_DRIVING], p[STATUS_JOINT_POSITION] = 1.0, 0.5
        writer.publish(RecordType.CYCLE_STATUS, cycle, time.monotonic_ns())
        writer.write(
            CYCLE_HISTOGRAM,
            cycle,
            time.monotonic_ns(),
            [cycle, cycle, cycle, cycle, cycle, cycle + 1, cycle + 1, 1e4 * (cycle + 1)],
        )
    feed.poll()
    assert value(metrics, "mxrc_cycles_total") == 401
    assert value(metrics, "mxrc_cycle_deadline_misses_total") == 4
    assert value(metrics, "mxrc_cycle_tracking_error") == pytest.approx(0.4)
    assert value(metrics, "mxrc_cycle_driving") == 1
    assert value(metrics, "mxrc_cycle_wake_latency_seconds_count") == 401
    assert absent(metrics, "mxrc_ring_dropped_records_total")  # nothing lost yet

    for cycle in range(500, 700):  # far more than the 64 slots before the next poll
        writer.publish(RecordType.CYCLE_STATUS, cycle, time.monotonic_ns())
    writer.write(RecordType.STOPPED, 700, time.monotonic_ns(), [1.0, 9.0, 700.0])
    feed.poll()
    assert feed.dropped > 0
    assert value(metrics, "mxrc_ring_dropped_records_total") == feed.dropped
    assert value(metrics, "mxrc_cycle_deadline_misses_total") == 9
    assert value(metrics, "mxrc_cycle_driving") == 0
    assert value(metrics, "mxrc_rt_attached") == 0
