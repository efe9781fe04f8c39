#!/usr/bin/env python3
"""Failover drills: partition, kill and pause controller nodes and prove that no two of
them ever drove the robot at once.

    .venv/bin/python tools/partition.py --backend etcd --rounds 6 --out drill-etcd
    .venv/bin/python tools/partition.py --backend peers --nodes 5 --nemesis split,kill-leader
    .venv/bin/python tools/partition.py --list

Each node is a real ``mxrc nonrt`` + ``mxrc rt`` pair with its own data directory under
``--out``; the robot is a real ``mxrc actuator`` process that refuses stale fencing
tokens; every link between nodes (peers) or from a node to etcd passes through a proxy
this tool controls, so a partition is a real black hole on a real socket. At the end
the nodes' event logs, the actuator's record and the nemesis log are judged (see
``report.json``), and the timeline is drawn to ``timeline.html``.

Exit status: 0 no safety violation and every round healed to exactly one leader;
1 a problem was found (listed); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

from mxrc.drill.cluster import DrillSettings
from mxrc.drill.nemesis import NEMESES, by_name
from mxrc.drill.runner import drill, rejudge


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    nemesis_help = "\n".join(
        f"  {n.name:<18} {n.help}" + ("" if len(n.backends) > 1 else " (etcd only)")
        for n in NEMESES
    )
    parser = argparse.ArgumentParser(
        prog="tools/partition.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"nemeses:\n{nemesis_help}",
    )
    parser.add_argument("--backend", choices=("etcd", "peers"), default="etcd")
    parser.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    parser.add_argument("--rounds", type=int, default=6, help="nemesis rounds (default 6)")
    parser.add_argument(
        "--nemesis", default="all", help="comma-separated names, or all (default)"
    )
    parser.add_argument("--seed", type=int, help="makes the choice of nemeses reproducible")
    parser.add_argument("--ttl", type=float, default=2.0, help="lease TTL in s (default 2)")
    parser.add_argument(
        "--renew", type=float, default=0.5, help="renew interval in s (default 0.5)"
    )
    parser.add_argument(
        "--no-auto-start",
        action="store_true",
        help="an operator (this tool) starts the new leader instead of ha.auto_start",
    )
    parser.add_argument(
        "--network",
        choices=("auto", "namespaces", "proxies"),
        default="auto",
        help="namespaces: a network namespace per node with veth links (root); proxies: "
        "loopback through per-link TCP proxies; auto (default): namespaces when root",
    )
    parser.add_argument("--out", type=Path, help="output directory (default: a new temp dir)")
    parser.add_argument("--list", action="store_true", help="list the nemeses and exit")
    parser.add_argument(
        "--judge",
        type=Path,
        metavar="DIR",
        help="judge a finished drill's output again from its files (nothing is started)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if not 0.5 <= args.ttl <= 60:
        parser.error(f"--ttl must be in 0.5..60 s, got {args.ttl}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for n in NEMESES:
            print(f"{n.name:<18} {n.help} [{', '.join(sorted(n.backends))}]")
        return 0
    if args.judge is not None:
        if not (args.judge / "report.json").is_file():
            print(f"tools/partition.py: --judge {args.judge}: no report.json there",
                  file=sys.stderr)  # fmt: skip
            return 2
        return summarize(rejudge(args.judge), args.judge)
    try:
        nemeses = by_name(args.nemesis, args.backend)
    except ValueError as exc:
        print(f"tools/partition.py: --nemesis: {exc}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    out = args.out or Path(tempfile.mkdtemp(prefix=f"mxrc-drill-{args.backend}-"))
    if out.exists() and any(out.iterdir()):
        print(f"tools/partition.py: --out {out} is not empty; choose a new directory",
              file=sys.stderr)  # fmt: skip
        return 2
    settings = DrillSettings(
        backend=args.backend,
        size=args.nodes,
        ttl_s=args.ttl,
        renew_interval_s=args.renew,
        margin_s=min(0.2, args.ttl / 10),
        request_timeout_s=min(0.3, args.renew * 0.6),
        auto_start=not args.no_auto_start,
        network=args.network,
    )
    result = asyncio.run(
        drill(out, settings, nemeses, rounds=args.rounds, seed=seed,
              say=lambda line: print(line, flush=True))
    )  # fmt: skip
    return summarize(result, out)


def summarize(result: dict[str, Any], out: Path) -> int:
    seed = result.get("seed")
    print(f"drill: {'OK' if result['ok'] else 'FAILED'}: {len(result['rounds'])} rounds, "
          f"{result['leaderships']} leaderships, actuator accepted "
          f"{result['actuator']['accepted']}, refused "
          f"{result['actuator']['stale_writes_rejected']} stale writes; seed {seed}")  # fmt: skip
    for name, figures in result["by_nemesis"].items():
        lease = figures["failover_to_lease"]
        running = figures["failover_to_running"]
        stopped = figures["target_stopped_driving"]
        print(f"  {name:<18} rounds {figures['rounds']}: failover to lease p50 "
              f"{lease.get('p50_s', '-')} p99 {lease.get('p99_s', '-')} s, to RUNNING p99 "
              f"{running.get('p99_s', '-')} s; target stopped driving p99 "
              f"{stopped.get('p99_s', '-')} s")  # fmt: skip
    for problem in result["problems"]:
        print(f"  problem: {problem}")
    print(f"  report {out / 'report.json'}; timeline {result['timeline']}; "
          f"replay: mxrc replay {out} --verify")  # fmt: skip
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
