"""Health rules as pure functions: each threshold at and around its edge."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mxrc.config import build_config
from mxrc.service.health import (
    CHECK_NAMES,
    Check,
    HealthChange,
    HealthInputs,
    HealthReport,
    HealthWatch,
    Status,
    Thresholds,
    evaluate,
    miss_rate,
    readiness,
    watchdog_ok,
)

S = 1_000_000_000
NOW = 1_000 * S
T = Thresholds(window_s=10.0, miss_rate_unhealthy=0.001, bus_fill_degraded=0.9, ring_stall_s=1.0)


def samples(*points: tuple[float, int, int]) -> tuple[tuple[int, int, int], ...]:
    """(seconds before NOW, cycle, misses) → (mono_ns, cycle, misses)."""
    return tuple((NOW - round(ago * S), cycle, misses) for ago, cycle, misses in points)


#: A healthy leader: 10 s of 1 kHz cycles without a miss, a fresh ring, a writable log.
GOOD = HealthInputs(
    now_ns=NOW,
    cycle_samples=samples((11.0, 0, 0), (5.0, 6_000, 0), (0.1, 10_900, 0)),
    rt_expected=True,
    last_ring_record_ns=NOW - S // 10,
    shm_valid=True,
    shm_problem="",
    bus_fill=0.0,
    leader=True,
    quorum=True,
    lease_remaining_s=1.8,
    backend="local",
    log_writable=True,
    log_problem="",
)


def check(inputs: HealthInputs, name: str) -> Check:
    return evaluate(inputs, T).checks[name]


def test_a_healthy_node_is_healthy_in_every_check() -> None:
    report = evaluate(GOOD, T)
    assert list(report.checks) == [
        "rt_deadline",
        "event_bus",
        "shared_memory",
        "lease",
        "event_log",
    ]
    assert report.status == Status.HEALTHY
    assert {c.status for c in report.checks.values()} == {Status.HEALTHY}
    assert report.checks["rt_deadline"].detail == (
        "miss rate 0 (0 misses in 10900 cycles over the last 10 s) ≤ 0.001"
    )
    assert report.checks["lease"].detail == "leader with quorum (backend local); lease 1.8 s left"


def test_thresholds_come_from_the_health_section() -> None:
    config = build_config(
        {"health": {"window_s": 5, "miss_rate_unhealthy": 0.01, "bus_fill_degraded": 0.5}}
    )
    assert Thresholds.from_config(config) == Thresholds(5.0, 0.01, 0.5, 1.0)
    assert Thresholds.from_config(build_config({})) == T


# --- miss_rate ---------------------------------------------------------------------------


def test_miss_rate_counts_from_the_newest_sample_at_or_before_the_window_start() -> None:
    points = samples((15.0, 0, 0), (10.0, 5_000, 3), (6.0, 9_000, 7), (0.0, 15_000, 10))
    # baseline: the sample exactly at the window start (10 s ago), not the older one
    assert miss_rate(points, NOW, 10.0) == (7 / 10_000, 7, 10_000)
    # a window reaching past every sample: the oldest is the baseline
    assert miss_rate(points, NOW, 60.0) == (10 / 15_000, 10, 15_000)
    # a window holding only the newest sample: counts from the one before it
    assert miss_rate(points, NOW, 1.0) == (3 / 6_000, 3, 6_000)


def test_miss_rate_without_two_samples_spanning_the_window_is_zero_over_zero_cycles() -> None:
    assert miss_rate((), NOW, 10.0) == (0.0, 0, 0)
    assert miss_rate(samples((1.0, 500, 2)), NOW, 10.0) == (0.0, 0, 0)  # one sample
    assert miss_rate(samples((30.0, 0, 0), (20.0, 100, 1)), NOW, 10.0) == (0.0, 0, 0)  # all old


def test_miss_rate_counts_from_zero_after_an_rt_restart() -> None:
    points = samples((9.0, 4_000, 4), (5.0, 8_000, 6), (3.0, 999, 1), (1.0, 2_999, 2))
    # 4000 cycles/2 misses before the restart, then 1000 cycles/1 miss (from 0), then 2000/1
    assert miss_rate(points, NOW, 10.0) == (4 / 7_000, 4, 7_000)


# --- rt_deadline ---------------------------------------------------------------------------


def with_rate(misses: int, cycles: int = 10_000) -> HealthInputs:
    return replace(GOOD, cycle_samples=samples((10.0, 0, 0), (0.0, cycles, misses)))


def test_rt_deadline_is_unhealthy_only_above_the_miss_rate() -> None:
    assert check(with_rate(9), "rt_deadline").status == Status.HEALTHY  # 0.0009
    at = check(with_rate(10), "rt_deadline")  # exactly 0.001: not above
    assert at.status == Status.HEALTHY
    assert at.detail == "miss rate 0.001 (10 misses in 10000 cycles over the last 10 s) ≤ 0.001"
    above = check(with_rate(11), "rt_deadline")
    assert above.status == Status.UNHEALTHY
    assert above.detail.startswith(
        "miss rate 0.0011 (11 misses in 10000 cycles over the last 10 s) > 0.001: "
    )
    assert "mxrc check" in above.detail


def test_rt_deadline_without_figures() -> None:
    waiting = check(replace(GOOD, cycle_samples=()), "rt_deadline")
    assert waiting.status == Status.DEGRADED
    assert waiting.detail.startswith("no cycle figures yet")
    none_expected = check(replace(GOOD, cycle_samples=(), rt_expected=False), "rt_deadline")
    assert none_expected == Check(Status.HEALTHY, "no RT process expected")
    stale = replace(GOOD, cycle_samples=samples((25.0, 0, 0), (12.5, 100, 0)))
    old = check(stale, "rt_deadline")
    assert old.status == Status.DEGRADED
    assert old.detail == (
        "no cycles counted in the last 10 s (2 cycle report(s), the latest 12.5 s ago)"
    )
    assert check(replace(stale, rt_expected=False), "rt_deadline").status == Status.HEALTHY


# --- event_bus -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fill", "status"),
    [
        (0.0, Status.HEALTHY),
        (0.9, Status.HEALTHY),  # at the threshold: not above
        (0.9001, Status.DEGRADED),
        (0.999, Status.DEGRADED),
        (1.0, Status.UNHEALTHY),
    ],
)
def test_event_bus_fill(fill: float, status: Status) -> None:
    assert check(replace(GOOD, bus_fill=fill), "event_bus").status == status


def test_event_bus_details_name_the_fill_and_the_threshold() -> None:
    assert check(replace(GOOD, bus_fill=0.95), "event_bus").detail.startswith(
        "event bus queue 95% full > 90%: "
    )
    assert check(replace(GOOD, bus_fill=1.0), "event_bus").detail.startswith(
        "event bus queue full (100%): the oldest events are being dropped"
    )
    assert check(replace(GOOD, bus_fill=0.125), "event_bus").detail == (
        "event bus queue 12.5% full (≤ 90%)"
    )


# --- shared_memory -------------------------------------------------------------------------


def test_invalid_headers_are_unhealthy_with_the_problem() -> None:
    bad = check(
        replace(GOOD, shm_valid=False, shm_problem="ring: magic 0x0 (expected 0x4d585243)"),
        "shared_memory",
    )
    assert bad == Check(
        Status.UNHEALTHY, "segment headers invalid: ring: magic 0x0 (expected 0x4d585243)"
    )


def test_a_ring_without_records_for_longer_than_the_stall_limit_is_unhealthy() -> None:
    at = replace(GOOD, last_ring_record_ns=NOW - S)  # exactly 1 s: not longer
    assert check(at, "shared_memory").status == Status.HEALTHY
    just = replace(GOOD, last_ring_record_ns=NOW - S - 1)
    assert check(just, "shared_memory").status == Status.UNHEALTHY
    stalled = check(replace(GOOD, last_ring_record_ns=NOW - 3_200_000_000), "shared_memory")
    assert stalled.status == Status.UNHEALTHY
    assert stalled.detail.startswith("ring not progressing: last record 3.2 s ago (limit 1 s)")
    # Without an RT process to expect, a quiet ring is what it should be.
    quiet = replace(GOOD, last_ring_record_ns=NOW - 60 * S, rt_expected=False)
    assert check(quiet, "shared_memory").status == Status.HEALTHY
    never = check(replace(GOOD, last_ring_record_ns=None), "shared_memory")
    assert never.status == Status.DEGRADED and "no ring record read yet" in never.detail


# --- lease ---------------------------------------------------------------------------------


def test_lease_says_why_the_node_may_not_drive() -> None:
    follower = check(replace(GOOD, leader=False, lease_remaining_s=None), "lease")
    assert follower == Check(Status.DEGRADED, "follower (backend local): may not drive")
    alone = check(replace(GOOD, leader=False, quorum=False, backend="etcd"), "lease")
    assert alone == Check(Status.DEGRADED, "follower without quorum (backend etcd): may not drive")
    no_quorum = check(replace(GOOD, quorum=False, backend="etcd"), "lease")
    assert no_quorum.status == Status.DEGRADED
    assert no_quorum.detail.startswith("leader without quorum (backend etcd): may not drive")
    expired = check(replace(GOOD, lease_remaining_s=-0.25), "lease")
    assert expired.status == Status.DEGRADED and "ran out 0.2 s ago" in expired.detail
    assert check(replace(GOOD, lease_remaining_s=None), "lease").status == Status.HEALTHY


# --- event_log, aggregation, JSON ----------------------------------------------------------


def test_an_unwritable_event_log_is_unhealthy() -> None:
    bad = check(replace(GOOD, log_writable=False, log_problem="fsync failed: EIO"), "event_log")
    assert bad.status == Status.UNHEALTHY
    assert bad.detail.startswith("event log not writable: fsync failed: EIO")


def test_the_overall_status_is_the_worst_check() -> None:
    degraded = evaluate(replace(GOOD, leader=False), T)
    assert degraded.status == Status.DEGRADED
    both = evaluate(replace(GOOD, leader=False, bus_fill=1.0), T)
    assert both.status == Status.UNHEALTHY
    assert [n for n, c in both.checks.items() if c.status != Status.HEALTHY] == [
        "event_bus",
        "lease",
    ]


def test_report_as_json() -> None:
    report = evaluate(replace(GOOD, log_writable=False, log_problem="EIO"), T)
    doc = report.to_json("2026-01-02T03:04:05Z")
    assert doc["status"] == "unhealthy" and doc["timestamp"] == "2026-01-02T03:04:05Z"
    assert set(doc["checks"]) == set(report.checks)
    assert doc["checks"]["event_log"]["status"] == "unhealthy"
    assert doc["checks"]["lease"] == {"status": "healthy", "detail": report.checks["lease"].detail}
    assert all(type(v["status"]) is str for v in doc["checks"].values())


# --- readiness -----------------------------------------------------------------------------


def test_ready_only_in_ready_or_running_without_an_unhealthy_check() -> None:
    good = evaluate(GOOD, T)
    assert readiness(good, "READY") == (True, "state READY, health healthy")
    assert readiness(good, "RUNNING")[0] is True
    assert readiness(good, "SAFE_MODE") == (
        False,
        "state SAFE_MODE: ready only in READY or RUNNING",
    )
    assert readiness(good, "INIT")[0] is False
    # degraded (a follower) is still ready
    assert readiness(evaluate(replace(GOOD, leader=False), T), "READY") == (
        True,
        "state READY, health degraded",
    )


def test_not_ready_names_the_first_unhealthy_check() -> None:
    sick = evaluate(
        replace(GOOD, last_ring_record_ns=NOW - 5 * S, log_writable=False, log_problem="EIO"), T
    )
    ready, reason = readiness(sick, "RUNNING")
    assert ready is False
    assert reason.startswith("shared_memory unhealthy: ring not progressing: last record 5.0 s ago")
    only_log = HealthReport(
        Status.UNHEALTHY,
        {"lease": Check(Status.DEGRADED, "follower"), "event_log": Check(Status.UNHEALTHY, "x")},
    )
    assert readiness(only_log, "READY") == (False, "event_log unhealthy: x")


def test_the_watchdog_is_fed_unless_a_restart_would_cure_something() -> None:
    assert watchdog_ok(evaluate(GOOD, T))
    dead_rt = replace(GOOD, last_ring_record_ns=NOW - 30 * S, shm_valid=False, shm_problem="x")
    assert evaluate(dead_rt, T).status == Status.UNHEALTHY
    assert watchdog_ok(evaluate(dead_rt, T))  # restarting nonrt would not bring rt back
    no_lease = replace(GOOD, leader=False, quorum=False, lease_remaining_s=None)
    assert watchdog_ok(evaluate(no_lease, T))
    failed_log = replace(GOOD, log_writable=False, log_problem="fsync failed: EIO")
    assert not watchdog_ok(evaluate(failed_log, T))  # only a restart reopens the log


def test_the_checks_evaluate_makes_are_the_named_ones() -> None:
    assert tuple(evaluate(GOOD, T).checks) == CHECK_NAMES


def test_a_watch_tells_each_change_of_a_check_once() -> None:
    watch = HealthWatch()
    assert watch.observe(evaluate(GOOD, T)) == []  # healthy from the start: nothing to tell
    broken = replace(GOOD, log_writable=False, log_problem="EIO on fsync")
    (change,) = watch.observe(evaluate(broken, T))
    assert change == HealthChange(
        "event_log", Status.HEALTHY, Status.UNHEALTHY, change.detail
    ) and "EIO on fsync" in change.detail
    assert watch.observe(evaluate(broken, T)) == []  # still unhealthy: told already
    (back,) = watch.observe(evaluate(GOOD, T))
    assert (back.check, back.previous, back.status) == (
        "event_log", Status.UNHEALTHY, Status.HEALTHY
    )


def test_a_check_not_healthy_at_the_first_evaluation_is_told_with_no_previous() -> None:
    follower = replace(GOOD, leader=False, lease_remaining_s=None)
    changes = HealthWatch().observe(evaluate(follower, T))
    assert [(c.check, c.previous, c.status) for c in changes] == [
        ("lease", None, Status.DEGRADED)
    ]
