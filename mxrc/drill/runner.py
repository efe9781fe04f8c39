"""One failover drill: start a cluster, run nemesis rounds, stop it, judge what it wrote.

A round: wait until exactly one node leads and drives (RUNNING) and the others do
not; inject a fault aimed at it; hold the fault past the TTL; heal; act as the
operator would (reset nodes left in SAFE_MODE once they see a quorum); wait for
exactly one leader again. The verdict comes afterwards from the files alone (see
:mod:`mxrc.drill.check`), so a drill's output directory can be judged again, or
handed over, without rerunning anything.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

import orjson

from mxrc.drill import fencing
from mxrc.drill.check import (
    Injection,
    actuator_problems,
    all_round_figures,
    figures_by_nemesis,
    lease_grants,
)
from mxrc.drill.cluster import Cluster, DrillSettings
from mxrc.drill.nemesis import Nemesis
from mxrc.replay import build_timeline, iter_records, open_logs, verify
from mxrc.timeline import render_html

STABLE_TIMEOUT_S: Final = 30.0
POLL_S: Final = 0.1

Say = Callable[[str], None]


async def single_leader(cluster: Cluster, timeout_s: float, say: Say) -> str:
    """Exactly one node that is leader and RUNNING, and every other one a standby
    (READY, not leader, with quorum): the state a round may start from. Nodes left in
    SAFE_MODE that see a quorum are reset, as an operator would."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        views = await cluster.views()
        last = {k: (v["state"], v["leader"]) if v else None for k, v in views.items()}
        for node in cluster.nodes:
            view = views[node.node_id]
            if view and view["state"] == "SAFE_MODE" and view["quorum"]:
                await cluster.command(node, "reset")
        running = [k for k, v in views.items() if v and v["state"] == "RUNNING"]
        leaders = [k for k, v in views.items() if v and v["leader"]]
        standby = [
            k for k, v in views.items()
            if v and v["state"] == "READY" and not v["leader"] and v["quorum"]
        ]  # fmt: skip
        if len(running) == 1 and leaders == running and len(standby) == len(views) - 1:
            return running[0]
        if not cluster.settings.auto_start and len(leaders) == 1:
            view = views[leaders[0]]
            if view and view["state"] == "READY":
                await cluster.command(cluster.node(leaders[0]), "start")
        await asyncio.sleep(POLL_S)
    raise TimeoutError(f"no single RUNNING leader within {timeout_s:g} s: {last}")


async def run_rounds(
    cluster: Cluster,
    nemeses: Sequence[Nemesis],
    rounds: int,
    rng: random.Random,
    hold_s: float,
    say: Say,
) -> tuple[list[Injection], list[str]]:
    injections: list[Injection] = []
    problems: list[str] = []
    log = (cluster.out / "nemesis.jsonl").open("ab")
    try:
        leader = await single_leader(cluster, STABLE_TIMEOUT_S * 2, say)
        for number in range(1, rounds + 1):
            nemesis = rng.choice(list(nemeses))
            injected = time.time_ns()
            heal = await nemesis.inject(cluster, leader, rng)
            say(f"round {number}/{rounds}: {nemesis.name} on {leader}")
            await asyncio.sleep(hold_s)
            await heal()
            healed = time.time_ns()
            injection = Injection(
                number, nemesis.name, leader, injected, healed, nemesis.isolates_target
            )
            injections.append(injection)
            log.write(orjson.dumps(asdict(injection)) + b"\n")
            log.flush()
            try:
                leader = await single_leader(cluster, STABLE_TIMEOUT_S, say)
            except TimeoutError as exc:
                problems.append(f"round {number} ({nemesis.name}): after healing, {exc}")
                say(f"  {problems[-1]}")
                leader = await single_leader(cluster, STABLE_TIMEOUT_S * 2, say)
    finally:
        log.close()
    return injections, problems


def judge(
    out: Path, injections: Sequence[Injection], settings: DrillSettings, problems: list[str]
) -> dict[str, Any]:
    """The verdict from the files: logs, actuator record, nemesis log."""
    logs = open_logs([out / f"node-{i + 1}" for i in range(settings.size)])
    report = verify(logs)
    problems = [*problems, *(p.describe() for p in report.problems)]
    records = list(iter_records(logs))
    tokens = lease_grants(records)
    problems += tokens.problems
    with (out / "actuator.jsonl").open("rb") as f:
        actuator = fencing.check(fencing.parse_record(f)).to_json()
    problems += actuator_problems(actuator)
    writes = _actuator_writes(out / "actuator.jsonl")
    figures = all_round_figures(injections, records, writes)
    timeline = out / "timeline.html"
    timeline.write_text(
        render_html(build_timeline(logs), title=f"mxrc drill ({settings.backend})"),
        encoding="utf-8",
    )
    stale = sum(
        1 for w in writes if not w.get("accepted") and "stale" in str(w.get("reason", ""))
    )
    return {
        "ok": not problems,
        "problems": problems,
        "records": report.records,
        "transitions": report.transitions,
        "leaderships": len(tokens.grants),
        "actuator": {
            "accepted": actuator.get("accepted"),
            "rejected": actuator.get("rejected"),
            "stale_writes_rejected": stale,
        },
        "rounds": [asdict(f) for f in figures],
        "by_nemesis": figures_by_nemesis(figures),
        "timeline": str(timeline),
    }


def rejudge(out: Path) -> dict[str, Any]:
    """Judge a finished drill's directory again, from its files alone (for instance
    with a newer checker); the verdict replaces ``report.json``."""
    previous = orjson.loads((out / "report.json").read_bytes())
    settings = DrillSettings(
        backend=previous["backend"], size=previous["nodes"], ttl_s=previous["ttl_s"],
        renew_interval_s=previous["renew_interval_s"],
    )  # fmt: skip
    with (out / "nemesis.jsonl").open("rb") as f:
        injections = [Injection(**orjson.loads(line)) for line in f if line.strip()]
    kept = [p for p in previous["problems"] if p.startswith(("round ", "drill aborted"))]
    result = judge(out, injections, settings, kept)
    result.update({k: previous[k] for k in ("backend", "nodes", "seed", "network",
                                            "network_name", "ttl_s", "renew_interval_s")
                   if k in previous})  # fmt: skip
    (out / "report.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return result


def _actuator_writes(path: Path) -> list[dict[str, Any]]:
    with path.open("rb") as f:
        return [e for e in fencing.parse_record(f) if e.get("kind") == "write"]


async def drill(
    out: Path,
    settings: DrillSettings,
    nemeses: Sequence[Nemesis],
    *,
    rounds: int,
    seed: int,
    hold_s: float | None = None,
    say: Say = print,
) -> dict[str, Any]:
    rng = random.Random(seed)
    cluster = Cluster(out, settings, seed)
    say(f"drill: {settings.size} nodes, {settings.backend} backend, seed {seed}, output {out}")
    problems: list[str] = []
    injections: list[Injection] = []
    try:
        await cluster.start()
        say(f"drill: cluster up ({cluster.net.kind}); waiting for a leader")
        injections, problems = await run_rounds(
            cluster, nemeses, rounds, rng, hold_s or settings.ttl_s + 1.5, say
        )
    except (TimeoutError, OSError) as exc:
        problems.append(f"drill aborted: {exc}")
    finally:
        await cluster.stop()
    result = judge(out, injections, settings, problems)
    result.update(
        {"backend": settings.backend, "nodes": settings.size, "seed": seed,
         "network": cluster.net.kind, "network_name": cluster.net.name,
         "ttl_s": settings.ttl_s,
         "renew_interval_s": settings.renew_interval_s}
    )  # fmt: skip
    (out / "report.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return result
