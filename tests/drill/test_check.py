"""The drill's verdict on hand-made records: each finding could be missed, so each is
provoked here."""

from __future__ import annotations

from typing import Any

from mxrc.drill.check import Injection, distribution, lease_grants, round_figures
from mxrc.segments import Record

S = 1_000_000_000


def rec(node: str, wall_s: float, kind: str, **payload: Any) -> Record:
    return {
        "seq": 1, "wall_ns": int(wall_s * S), "mono_ns": 0, "node": node, "type": kind,
        "token": 0, "traceparent": None, "chart": "rt", "chart_hash": "x", "payload": payload,
    }  # fmt: skip


def lease(node: str, wall_s: float, token: int) -> Record:
    return rec(node, wall_s, "lease", leader=True, token=token)


def move(node: str, wall_s: float, source: str, dest: str) -> Record:
    return rec(node, wall_s, "transition", source=source, dest=dest)


def test_tokens_must_grow_and_belong_to_one_node() -> None:
    assert lease_grants([lease("a", 1, 2), lease("b", 5, 4), lease("a", 9, 6)]).problems == []
    shared = lease_grants([lease("a", 1, 2), lease("b", 5, 2)])
    assert shared.problems == ["token 2 granted to a and to b"]
    backwards = lease_grants([lease("a", 1, 6), lease("b", 5, 4)])
    assert len(backwards.problems) == 1 and "token 4 after token 6" in backwards.problems[0]


def test_failover_is_measured_from_the_injection_to_another_node() -> None:
    records = [
        lease("a", 1, 2), move("a", 1.1, "READY", "RUNNING"),
        move("a", 11.4, "RUNNING", "SAFE_MODE"),  # the target stops on its own
        lease("a", 11.5, 2),  # the target itself does not count as the successor
        lease("b", 12.0, 4), move("b", 12.3, "READY", "RUNNING"),
    ]  # fmt: skip
    figures = round_figures(Injection(1, "isolate-leader", "a", 10 * S, 14 * S, True), records)
    assert figures.new_leader == "b"
    assert round(figures.failover_lease_s or 0, 3) == 2.0
    assert round(figures.failover_running_s or 0, 3) == 2.3
    assert round(figures.target_safe_s or 0, 3) == 1.4
    writes = [
        {"node": "a", "wall_ns": int(t * S), "accepted": ok}
        for t, ok in ((9.9, True), (10.5, True), (11.25, True), (11.3, False), (12.5, True))
    ]  # the write at 12.5 is after the heal: another round's business
    stopped = round_figures(Injection(1, "x", "a", 10 * S, 12 * S, True), records, writes)
    assert round(stopped.target_stopped_s or 0, 3) == 1.25  # the last accepted one counts
    idle = round_figures(Injection(1, "x", "b", 10 * S, 12 * S, True), records, writes)
    assert idle.target_stopped_s == 0.0  # b sent nothing after the injection
    none = round_figures(Injection(2, "flap", "b", 20 * S, 21 * S, False), records)
    assert (none.new_leader, none.failover_lease_s, none.target_safe_s) == (None, None, None)


def test_distribution_is_nearest_rank_and_counts_rounds_without_a_figure() -> None:
    d = distribution([2.0, None, 1.0, 3.0, 4.0])
    assert d == {"n": 4, "missing": 1, "min_s": 1.0, "p50_s": 2.0, "p99_s": 4.0, "max_s": 4.0}
    assert distribution([None]) == {"n": 0, "missing": 1}
