"""Durable appends per second of the event log, against a bare write + fsync loop.

Usage: python tools/bench/eventlog_append.py [--quick] [--dir DIR] [--threads N]

The question is what the framing, the locking and the group commit cost on top of the
disk's own fsync rate: with one writer the log should be nearly as fast as the bare
loop (the fsync dominates), and with 16 concurrent writers much faster than it (one
fsync serves many appends). Both are measured in the same directory, in interleaved
rounds, so the disk's drift affects both alike. One JSON object goes to stdout.

The same 16-way concurrency is also measured with asyncio tasks (``append_async``), for
information: the difference to the threads is what CPython thread hand-offs cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchutil import common_arguments, emit, percentile, progress, rounded, work_directory

from mxrc import framing
from mxrc.eventlog import EventLog, LogIdentity
from mxrc.statechart import default_registry

SINGLE_TARGET = 0.9
CONCURRENT_TARGET = 10.0


@dataclass
class Run:
    """One timed measurement: how many durable appends, in how long, at what fsync cost."""

    appends: int = 0
    elapsed: float = 0.0
    cpu: float = 0.0
    fsync_seconds: list[float] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)

    def add(self, other: Run) -> None:
        self.appends += other.appends
        self.elapsed += other.elapsed
        self.cpu += other.cpu
        self.fsync_seconds += other.fsync_seconds
        self.batches += other.batches

    @property
    def rate(self) -> float:
        return self.appends / self.elapsed if self.elapsed else 0.0


def identity() -> LogIdentity:
    chart = default_registry().get("rt")
    return LogIdentity("bench-node-01", chart.name, chart.version_hash)


def payload(writer: int, index: int) -> dict[str, int]:
    """A cycle_status payload of constant width, so every line has the same size."""
    return {"cycle": 10_000_000 + index % 90_000_000, "slot": writer % 10,
            "period_ns": 1_000_000, "deadline_misses": 0}


def record_size(directory: Path) -> int:
    """The size of a framed record as the log writes it (measured, not guessed)."""
    with EventLog.open(directory, identity()) as log:
        record = log.append("cycle_status", payload(0, 0), token=7)
    return len(framing.encode(dict(record)))


def bare_loop(path: Path, line: bytes, seconds: float) -> Run:
    """The floor: one os.write + os.fsync per line, nothing else."""
    run = Run()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        cpu0, start = time.process_time(), time.perf_counter()
        deadline = start + seconds
        now = start
        while now < deadline:
            os.write(fd, line)
            before = time.perf_counter()
            os.fsync(fd)
            now = time.perf_counter()
            run.fsync_seconds.append(now - before)
            run.appends += 1
        run.elapsed = now - start
        run.cpu = time.process_time() - cpu0
    finally:
        os.close(fd)
    run.batches = [1] * run.appends
    return run


def eventlog_run(directory: Path, threads: int, seconds: float) -> Run:
    """``threads`` threads append to one fresh log until the deadline."""
    run = Run()
    counts = [0] * threads
    log = EventLog.open(directory, identity())
    lock = threading.Lock()

    def observe(batch: int, duration: float) -> None:
        with lock:
            run.batches.append(batch)
            run.fsync_seconds.append(duration)

    log.fsync_observer = observe
    clock: dict[str, float] = {}

    def go() -> None:
        clock["start"] = time.perf_counter()
        clock["cpu"] = time.process_time()
        clock["deadline"] = clock["start"] + seconds

    barrier = threading.Barrier(threads, action=go)

    def writer(k: int) -> None:
        barrier.wait(timeout=30)
        deadline = clock["deadline"]
        n = 0
        while time.perf_counter() < deadline:
            log.append("cycle_status", payload(k, n), token=7)
            n += 1
        counts[k] = n

    workers = [threading.Thread(target=writer, args=(k,)) for k in range(threads)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=seconds + 60)
        if any(w.is_alive() for w in workers):
            raise RuntimeError("an appender thread did not finish")
        run.elapsed = time.perf_counter() - clock["start"]
        run.cpu = time.process_time() - clock["cpu"]
    finally:
        log.close()
    run.appends = sum(counts)
    return run


def eventlog_async_run(directory: Path, tasks: int, seconds: float) -> Run:
    """``tasks`` asyncio tasks append_async to one fresh log until the deadline: the same
    concurrency as the threads, without a thread wake-up per append."""
    run = Run()
    log = EventLog.open(directory, identity())

    def observe(batch: int, duration: float) -> None:
        run.batches.append(batch)  # list.append is atomic; only the flusher calls this
        run.fsync_seconds.append(duration)

    log.fsync_observer = observe

    async def writer(k: int, deadline: float) -> int:
        n = 0
        while time.perf_counter() < deadline:
            await log.append_async("cycle_status", payload(k, n), token=7)
            n += 1
        return n

    async def all_writers() -> list[int]:
        deadline = time.perf_counter() + seconds
        return await asyncio.gather(*(writer(k, deadline) for k in range(tasks)))

    try:
        start, cpu0 = time.perf_counter(), time.process_time()
        counts = asyncio.run(all_writers())
        run.elapsed = time.perf_counter() - start
        run.cpu = time.process_time() - cpu0
    finally:
        log.close()
    run.appends = sum(counts)
    return run


def summary(run: Run) -> dict[str, Any]:
    return {
        "appends_per_s": round(run.rate, 1),
        "appends": run.appends,
        "seconds": round(run.elapsed, 3),
        "fsync_p50_us": rounded(percentile(run.fsync_seconds, 50) * 1e6, 4),
        "fsync_p99_us": rounded(percentile(run.fsync_seconds, 99) * 1e6, 4),
        "fsyncs": len(run.fsync_seconds),
        "mean_batch": rounded(sum(run.batches) / len(run.batches), 4) if run.batches else 0.0,
        "cpu_us_per_append": rounded(run.cpu / run.appends * 1e6, 4) if run.appends else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Durable appends/s of the event log vs a bare write + fsync loop.")
    common_arguments(parser)
    parser.add_argument("--threads", type=int, default=16, help="concurrent writers (16)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="time per measurement, split over the rounds (3; --quick 0.5)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds per measurement (6; --quick 3)")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (0.5 if args.quick else 3.0)
    rounds = args.rounds if args.rounds is not None else (3 if args.quick else 6)
    per_round = seconds / rounds

    with work_directory("eventlog_append", args) as (directory, fstype):
        size = record_size(directory / "probe")
        line = b"x" * (size - 1) + b"\n"
        progress(f"record size {size} bytes; {rounds} rounds of {per_round:.2f} s each")
        totals = {"baseline": Run(), "single": Run(), "concurrent": Run(), "async": Run()}
        per_round_rates: dict[str, list[float]] = {name: [] for name in totals}
        measures: dict[str, Callable[[Path], Run]] = {
            "baseline": lambda d: bare_loop(d / "bare.jsonl", line, per_round),
            "single": lambda d: eventlog_run(d, 1, per_round),
            "concurrent": lambda d: eventlog_run(d, args.threads, per_round),
            "async": lambda d: eventlog_async_run(d, args.threads, per_round),
        }
        for r in range(rounds):
            order = list(measures) if r % 2 == 0 else list(reversed(measures))
            for name in order:
                target = directory / f"round{r}-{name}"
                target.mkdir()
                result = measures[name](target)
                totals[name].add(result)
                per_round_rates[name].append(round(result.rate, 1))
                progress(f"round {r + 1}/{rounds} {name:>10}: {result.rate:10.1f} appends/s")

    base = totals["baseline"].rate
    single, concurrent = totals["single"], totals["concurrent"]
    single_ratio = single.rate / base if base else 0.0
    concurrent_ratio = concurrent.rate / base if base else 0.0
    emit({
        "benchmark": "eventlog_append",
        "quick": args.quick,
        "filesystem": fstype,
        "record_bytes": size,
        "seconds_per_measurement": seconds,
        "rounds": rounds,
        "baseline": {
            "what": "os.write + os.fsync per line of the same size, same directory",
            **summary(totals["baseline"]),
            "per_round": per_round_rates["baseline"],
        },
        "single_writer": {
            "what": "EventLog.append from 1 thread",
            **summary(single),
            "per_round": per_round_rates["single"],
            "ratio": round(single_ratio, 3),
            "target": SINGLE_TARGET,
            "target_met": single_ratio >= SINGLE_TARGET,
        },
        "concurrent_writers": {
            "what": f"EventLog.append from {args.threads} threads at once",
            "threads": args.threads,
            **summary(concurrent),
            "per_round": per_round_rates["concurrent"],
            "ratio": round(concurrent_ratio, 3),
            "target": CONCURRENT_TARGET,
            "target_met": concurrent_ratio >= CONCURRENT_TARGET,
        },
        "concurrent_async_tasks": {
            "what": f"EventLog.append_async from {args.threads} asyncio tasks at once "
                    "(informational: same concurrency without thread hand-offs; no target)",
            "tasks": args.threads,
            **summary(totals["async"]),
            "per_round": per_round_rates["async"],
            "ratio": round(totals["async"].rate / base, 3) if base else 0.0,
        },
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "target_met": single_ratio >= SINGLE_TARGET and concurrent_ratio >= CONCURRENT_TARGET,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
