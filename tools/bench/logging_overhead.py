"""What logging costs a cycle: 10 records per 10 ms cycle against no logging, same run.

    .venv/bin/python tools/bench/logging_overhead.py [--cycles 600] [--block 20]
                                                     [--work-us 200] [--cpu N] [--quick]

A 10 ms cycle (absolute deadlines on CLOCK_MONOTONIC) executes a fixed workload of
``--work-us`` µs of pure-Python arithmetic (calibrated at start), then — in the logging
blocks — 10 records carrying mxrc fields and a trace context through mxrc's real
pipeline (:mod:`mxrc.obs.logs`: capture on the caller, the writer thread formatting ECS
JSON and writing a real rotating file), by one of two entrances: ``stdlib`` (a
``logging.Logger.info`` call with ``extra=mxrc_extra(...)``) or ``cycle_logger``
(:class:`mxrc.obs.logs.CycleLogger`, the entrance for code that logs every cycle; the
same records in the same sinks). "none" blocks run the same cycle without the calls.
Each round runs one block of each mode (none, stdlib, cycle_logger), the order rotating
from round to round, and an entrance's cost is its block's mean minus the same round's
none block, the median over rounds: a machine whose speed drifts between minutes (a
VM's) then moves both sides of every difference. The JSON gives the quartiles of those
per-round differences beside the median, so the spread is in view. The default workload
is short (200 µs) because its own run-to-run spread is noise in every difference and
nothing else: what logging costs does not grow with it (the cycle still sleeps ~9.8 ms,
and that sleep is what leaves the caches cold), while a 1 ms workload measured here gave
the same median with quartiles four times as far apart. ``--work-us`` sets it. The whole
process is pinned to one CPU by default, as mxrc nonrt is on a two-CPU controller (the
RT CPU is the other one): the writer thread then competes with the cycle for that CPU
and for the GIL, and its cost shows up where it would.

Per cycle it measures the execution time (wake-up to end of work, log calls included)
and the process CPU time (all threads: the writer's formatting and writes included).
Reported per entrance: medians and means, the added execution time per cycle as a share
of the 10 ms cycle (the target: < 1 %, judged on the cycle_logger entrance, the one mxrc
provides for per-cycle logging; the stdlib figure is reported beside it) and of the
workload itself, the added CPU time per cycle, and — why mxrc formats with orjson — µs
per record of mxrc's ECS formatter and of the ``ecs-logging`` package's
``StdlibFormatter`` on the same record.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchutil import emit, progress

from mxrc.obs.correlation import correlated
from mxrc.obs.ecs import ecs_document, ecs_line, mxrc_extra
from mxrc.obs.logs import (
    CapturingQueueHandler,
    CycleLogger,
    DropOldestQueue,
    LogPipeline,
    LogSettings,
)
from mxrc.rt.sched import AbsoluteSleeper

PERIOD_NS = 10_000_000
RECORDS_PER_CYCLE = 10
TARGET_PCT_OF_CYCLE = 1.0
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def calibrate(work_us: float) -> int:
    """Iterations of the workload loop that take ``work_us`` µs here."""
    n = 10_000
    while True:
        t = time.perf_counter_ns()
        workload(n)
        took = time.perf_counter_ns() - t
        if took > 20_000_000:
            return max(1, int(n * work_us * 1000 / took))
        n *= 2


def workload(n: int) -> float:
    acc = 0.0
    for i in range(n):
        acc += (i % 7) * 0.5
    return acc


MODES = ("stdlib", "cycle_logger")
MESSAGE = "cycle %d record %d via %s: tracking error %.6f"
#: Cycles run but not measured at the start of each block: the writer may still be
#: draining what the previous block logged (it lingers up to 20 ms).
SETTLE_CYCLES = 3


def run_block(
    mode: str, cycles: int, iterations: int, deadline: int
) -> tuple[list[int], list[int], int]:
    log = logging.getLogger("mxrc.bench")
    fast = CycleLogger("mxrc.bench")
    exec_ns: list[int] = []
    cpu_ns: list[int] = []
    sleeper = AbsoluteSleeper()
    for cycle in range(cycles):
        deadline += PERIOD_NS
        sleeper.sleep_until(deadline)
        woke = time.monotonic_ns()
        cpu = time.process_time_ns()
        workload(iterations)
        if mode == "stdlib":
            for k in range(RECORDS_PER_CYCLE):
                log.info(MESSAGE, cycle, k, mode, 0.001 * k,
                         extra=mxrc_extra(rt_cycle=cycle, rt_slot=k, lease_token=3))  # fmt: skip
        elif mode == "cycle_logger":
            for k in range(RECORDS_PER_CYCLE):
                fast.info(MESSAGE, cycle, k, mode, 0.001 * k,
                          rt_cycle=cycle, rt_slot=k, lease_token=3)  # fmt: skip
        exec_ns.append(time.monotonic_ns() - woke)
        cpu_ns.append(time.process_time_ns() - cpu)
    return exec_ns, cpu_ns, deadline


def formatter_cost(records: int) -> dict[str, float]:
    import ecs_logging  # the reference implementation, a development dependency

    record = logging.LogRecord("mxrc.nonrt", logging.INFO, __file__, 1,
                               "RT cycle %d applied %s", (1234, "RUNNING"), None, "f")  # fmt: skip
    handler = CapturingQueueHandler(DropOldestQueue(4))
    with correlated(request_id="r1", traceparent=TRACEPARENT):
        prepared = handler.prepare(record)
    reference = ecs_logging.StdlibFormatter()
    out: dict[str, float] = {}
    t = time.perf_counter_ns()
    for _ in range(records):
        ecs_line(ecs_document(prepared, process_name="mxrc-nonrt"))
    out["mxrc_orjson_us"] = (time.perf_counter_ns() - t) / records / 1000
    t = time.perf_counter_ns()
    for _ in range(records):
        reference.format(record)
    out["ecs_logging_us"] = (time.perf_counter_ns() - t) / records / 1000
    out["ecs_logging_over_mxrc"] = out["ecs_logging_us"] / out["mxrc_orjson_us"]
    return out


def summary(values: list[int]) -> dict[str, float]:
    return {
        "median_us": statistics.median(values) / 1000,
        "mean_us": statistics.fmean(values) / 1000,
        "p99_us": sorted(values)[int(0.99 * (len(values) - 1))] / 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=600,
                        help="measured cycles per mode (default 600: 20 s in all)")  # fmt: skip
    parser.add_argument("--block", type=int, default=20,
                        help="measured cycles per block (default 20)")  # fmt: skip
    parser.add_argument("--work-us", type=float, default=200.0,
                        help="the cycle's own work, µs (default 200)")  # fmt: skip
    parser.add_argument("--cpu", type=int, default=0,
                        help="pin the process to this CPU (-1: do not pin; default 0)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke run: 40 cycles per mode")
    args = parser.parse_args(argv)
    cycles = 40 if args.quick else args.cycles
    rounds = max(1, cycles // args.block)
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    iterations = calibrate(args.work_us)
    modes = ("none", *MODES)
    progress(f"workload: {iterations} iterations ≈ {args.work_us:g} µs; {rounds} rounds of "
             f"{args.block}-cycle blocks ({', '.join(modes)}, order rotating)")  # fmt: skip
    results: dict[str, tuple[list[int], list[int]]] = {mode: ([], []) for mode in modes}
    paired: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="mxrc-logbench-") as tmp:
        settings = LogSettings(stderr="off", journald="off", file=Path(tmp) / "bench.log",
                               file_max_bytes=50 * 1024 * 1024, file_backups=1)  # fmt: skip
        with LogPipeline(settings, process_name="mxrc-bench") as pipeline, \
                correlated(traceparent=TRACEPARENT):  # fmt: skip
            deadline = time.monotonic_ns() + PERIOD_NS
            for r in range(rounds):
                if r % max(1, rounds // 10) == 0:
                    progress(f"round {r + 1}/{rounds}")
                order = modes[r % len(modes) :] + modes[: r % len(modes)]
                means: dict[str, float] = {}
                for mode in order:
                    exec_ns, cpu_ns, deadline = run_block(
                        mode, SETTLE_CYCLES + args.block, iterations, deadline
                    )
                    exec_ns, cpu_ns = exec_ns[SETTLE_CYCLES:], cpu_ns[SETTLE_CYCLES:]
                    results[mode][0].extend(exec_ns)
                    results[mode][1].extend(cpu_ns)
                    means[mode] = statistics.fmean(exec_ns)
                for mode in MODES:
                    paired[mode].append(means[mode] - means["none"])
            dropped = pipeline.dropped
        lines = (Path(tmp) / "bench.log").read_bytes().splitlines()
    none_exec, none_cpu = results["none"]
    period_us = PERIOD_NS / 1000
    entrances: dict[str, Any] = {}
    for mode in MODES:
        log_exec, log_cpu = results[mode]
        differences = paired[mode]
        added_exec_us = statistics.median(differences) / 1000
        q1, _, q3 = statistics.quantiles(
            differences * (2 if len(differences) < 2 else 1), n=4, method="inclusive"
        )
        added_cpu_us = (statistics.fmean(log_cpu) - statistics.fmean(none_cpu)) / 1000
        entrances[mode] = {
            "exec": summary(log_exec),
            "cpu_per_cycle_us": statistics.fmean(log_cpu) / 1000,
            "added_exec_us_per_cycle": added_exec_us,
            "added_exec_us_per_cycle_of_means": (
                statistics.fmean(log_exec) - statistics.fmean(none_exec)
            )
            / 1000,
            "added_exec_pct_of_cycle": 100 * added_exec_us / period_us,
            "added_exec_us_per_cycle_quartiles": [q1 / 1000, q3 / 1000],
            "added_exec_pct_of_work": 100 * added_exec_us / (statistics.fmean(none_exec) / 1000),
            "added_cpu_us_per_cycle": added_cpu_us,
            "added_cpu_pct_of_cycle": 100 * added_cpu_us / period_us,
            "per_record_us": added_exec_us / RECORDS_PER_CYCLE,
            "records_logged": rounds * (SETTLE_CYCLES + args.block) * RECORDS_PER_CYCLE,
            "records_written": sum(1 for line in lines if f" via {mode}:".encode() in line),
        }
    result: dict[str, Any] = {
        "period_ms": PERIOD_NS / 1e6,
        "records_per_cycle": RECORDS_PER_CYCLE,
        "cycles_per_mode": len(none_exec),
        "rounds": rounds,
        "estimator": "added_exec_us_per_cycle: median over rounds of (the entrance's block "
        "mean - the same round's none-block mean); the first "
        f"{SETTLE_CYCLES} cycles of each block (the previous block's writer tail) not counted",
        "work_us": args.work_us,
        "pinned_cpu": args.cpu if args.cpu >= 0 else None,
        "none": {"exec": summary(none_exec), "cpu_per_cycle_us": statistics.fmean(none_cpu) / 1000},
        **entrances,
        "records_dropped": dropped,
        "formatter": formatter_cost(2000 if args.quick else 20000),
        "target": f"cycle_logger's added execution time < {TARGET_PCT_OF_CYCLE:g} % of the "
        "10 ms cycle",
    }
    result["target_met"] = (
        entrances["cycle_logger"]["added_exec_pct_of_cycle"] < TARGET_PCT_OF_CYCLE
    )
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
