"""The drill's verdict, from what the processes wrote (pure: records in, findings out).

Three sources, each written by a different party, so that no single component grades
itself:

* the **nodes' event logs** (``mxrc.replay``): checksums, sequence, schemas, legal
  transitions, and never two nodes RUNNING under overlapping valid leases (a RUNNING
  interval is cut at the deadline of a lease the node reports lost, see
  :class:`mxrc.replay.RunningTracker`); tokens granted only grow;
* the **actuator's record** (:mod:`mxrc.drill.fencing`): no stale-token write accepted,
  no token used by two nodes, and the count of stale writes it had to refuse (the
  drill's safety figure: a deposed leader still trying to drive);
* the **drill's own nemesis log**: when each fault was injected and healed, from which
  the failover figures are measured against the logs' timestamps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mxrc.segments import Record


@dataclass(frozen=True)
class Injection:
    """One nemesis round as the drill runner recorded it (wall-clock ns)."""

    round: int
    nemesis: str
    target: str  # the leader the fault was aimed at
    injected_ns: int
    healed_ns: int
    isolates_target: bool  # the target is cut off (or frozen): it must stop on its own


@dataclass(frozen=True)
class RoundFigures:
    round: int
    nemesis: str
    target: str
    new_leader: str | None
    failover_lease_s: float | None  # injected → another node holds the lease
    failover_running_s: float | None  # injected → another node RUNNING
    target_safe_s: float | None  # injected → the target left RUNNING (journalled)
    #: injected → the target's last command the actuator accepted: when it really
    #: stopped driving (a frozen nonrt journals its fault late; the cycle stops on time)
    target_stopped_s: float | None = None


@dataclass
class TokenFindings:
    grants: list[tuple[int, str, int]] = field(default_factory=list)  # wall, node, token
    problems: list[str] = field(default_factory=list)


def lease_grants(records: Iterable[Record]) -> TokenFindings:
    """Every leadership a node journalled, in wall-clock order, and whether the tokens
    grew: a token may only be held by one node, and a later grant never has a lower
    token than an earlier one (the fencing guarantee every actuator relies on)."""
    found = TokenFindings()
    for r in records:
        if r["type"] == "lease" and r["payload"].get("leader"):
            found.grants.append((r["wall_ns"], r["node"], int(r["payload"]["token"])))
    found.grants.sort()
    holder: dict[int, str] = {}
    highest = 0
    for wall, node, token in found.grants:
        if holder.setdefault(token, node) != node:
            found.problems.append(f"token {token} granted to {holder[token]} and to {node}")
        if token < highest:
            found.problems.append(
                f"{node} was granted token {token} after token {highest} had been granted"
                f" (at {wall})"
            )
        highest = max(highest, token)
    return found


def round_figures(
    injection: Injection,
    records: Sequence[Record],
    writes: Sequence[Mapping[str, Any]] = (),
    until_ns: int | None = None,
) -> RoundFigures:
    """Failover as the logs tell it: the first lease and the first RUNNING of a node
    other than the target after the injection, and when the target left RUNNING; and
    from the actuator's ``writes`` (its record's write lines), when the target's last
    accepted command arrived (0 when none came after the injection). Only records
    before ``until_ns`` (the next round's injection) belong to this round: a fault that
    needed no failover must not be credited with the next round's."""
    lease_at = running_at = safe_at = None
    new_leader = None
    for r in records:
        if r["wall_ns"] < injection.injected_ns:
            continue
        if until_ns is not None and r["wall_ns"] >= until_ns:
            break
        node, payload = r["node"], r["payload"]
        if node != injection.target:
            if lease_at is None and r["type"] == "lease" and payload.get("leader"):
                lease_at, new_leader = r["wall_ns"], node
            if (
                running_at is None
                and r["type"] == "transition"
                and payload.get("dest") == "RUNNING"
            ):
                running_at = r["wall_ns"]
                new_leader = new_leader or node
        elif safe_at is None and r["type"] == "transition" and payload.get("source") == "RUNNING":
            safe_at = r["wall_ns"]

    def since(t: int | None) -> float | None:
        return None if t is None else (t - injection.injected_ns) / 1e9

    stopped = None
    if writes:
        later = [
            int(w["wall_ns"]) for w in writes
            if w.get("node") == injection.target and w.get("accepted")
            and injection.injected_ns <= int(w["wall_ns"]) <= injection.healed_ns
        ]  # fmt: skip
        stopped = since(max(later)) if later else 0.0
    return RoundFigures(
        injection.round,
        injection.nemesis,
        injection.target,
        new_leader,
        since(lease_at),
        since(running_at),
        since(safe_at),
        stopped,
    )


def distribution(values: Sequence[float | None]) -> dict[str, Any]:
    """min / p50 / p99 / max of the measured values (nearest rank), and how many rounds
    had none (no failover happened, or none was expected)."""
    present = sorted(v for v in values if v is not None)
    missing = len(values) - len(present)
    if not present:
        return {"n": 0, "missing": missing}

    def rank(q: float) -> float:
        return present[min(len(present) - 1, max(0, math.ceil(q * len(present)) - 1))]

    return {
        "n": len(present),
        "missing": missing,
        "min_s": round(present[0], 3),
        "p50_s": round(rank(0.5), 3),
        "p99_s": round(rank(0.99), 3),
        "max_s": round(present[-1], 3),
    }


def all_round_figures(
    injections: Sequence[Injection],
    records: Sequence[Record],
    writes: Sequence[Mapping[str, Any]] = (),
) -> list[RoundFigures]:
    """Every round's figures, each bounded by the next round's injection. ``records``
    must be in wall-clock order (as :func:`mxrc.replay.iter_records` merges them)."""
    ordered = sorted(injections, key=lambda i: i.injected_ns)
    bounds = [i.injected_ns for i in ordered[1:]] + [None]
    return [
        round_figures(i, records, writes, until)
        for i, until in zip(ordered, bounds, strict=True)
    ]


def figures_by_nemesis(rounds: Sequence[RoundFigures]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in sorted({r.nemesis for r in rounds}):
        mine = [r for r in rounds if r.nemesis == name]
        out[name] = {
            "rounds": len(mine),
            "failover_to_lease": distribution([r.failover_lease_s for r in mine]),
            "failover_to_running": distribution([r.failover_running_s for r in mine]),
            "target_left_running": distribution([r.target_safe_s for r in mine]),
            "target_stopped_driving": distribution([r.target_stopped_s for r in mine]),
        }
    return out


def actuator_problems(summary: Mapping[str, Any]) -> list[str]:
    """The fencing checker's violations as sentences (its JSON summary in)."""
    return [
        f"actuator: {v.get('kind')}: {v.get('detail')}" for v in summary.get("violations", [])
    ]
