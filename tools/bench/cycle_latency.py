"""Cycle wake-up latency of the Python RT cycle against cyclictest, same CPU, same run.

    .venv/bin/python tools/bench/cycle_latency.py [--seconds 60] [--quick] [--cpu 1] [--load]
        [--same-time-seconds 60] [--paired-seconds 60] [--probe-interval-us 250]
        [--stall-threshold-us 100] [--trace]

Runs the mxrc cycle (SCHED_FIFO 80, pinned, mlockall, /dev/cpu_dma_latency held at 0,
GC frozen and disabled, the default simulated-joint control law in the executive) at
1 kHz, then ``cyclictest -m -p 80 -a CPU -t 1 -i 1000 -l N -h ...`` for the same number
of cycles on the same CPU — alternating in blocks of 10 s (``--block-seconds``, an
even number of them, cyclictest going first in every other one) with histograms
summed, because on a busy or virtual machine the background noise drifts
over minutes and two back-to-back 60 s runs would each see a different machine.
cyclictest is the floor: it is C, does no work per cycle, and also holds
/dev/cpu_dma_latency at 0, so whatever the machine (hypervisor stalls included) does to
one it does to the other. With ``--load`` a busy process spins on every other CPU
during both runs.

Prints one JSON object: both figure sets (p50/p99/p99.9/max in µs, misses over the
budget), ratios, the targets — cycle p99 ≤ 1.5 × cyclictest p99 and no more misses than
cyclictest — and ``target_met``. Misses are rare (tens a minute on a VM, from its
stalls), so two equally good loops differ by at least the square root of their counts
from run to run; ``misses_comparison`` says whether the cycle's count is really higher,
which the plain comparison cannot. It gives two one-sided tests: of the totals as
Poisson counts (:func:`benchutil.excess_p_value`), and block by block
(:func:`benchutil.paired_excess_p_value`, each block's two counts a pair), which
decides the ``reading``: the stalls come in bursts, a bad ten seconds giving one side of
one block dozens of misses, and only the block test weighs such a burst as one block.
Each block's counts and both sides' p99 are in ``misses_comparison.blocks``
(``p99_by_block`` counts the blocks within the p99 target); ``wake_rule`` repeats both
tests with the cycle's misses counted by cyclictest's rule (the wake-up alone, without
the cycle's work).

Then the same-time part (``--same-time-seconds``, default as long as ``--seconds``; 0
skips it) runs the cycle beside ``cyclictest -m -p 80 -i 1000 --secaligned`` on the
same CPU, each released half a period after the other so that neither delays the other:
every stall of the CPU then reaches both, and ``same_time`` compares the two counts it
gave, by the cycle's rule and by cyclictest's (without the noise of two different
stretches of time that the alternating counts carry).

Last, the paired run (``--paired-seconds``, default as long as ``--seconds``; 0 skips
it) asks the question the counts cannot answer: was each miss the platform's or the
cycle's own? The cycle runs with ``cyclictest -p 81 -i 250 --secaligned -v -N`` on the
same CPU at the same time: a probe that outranks the cycle and is released every
250 µs, between the cycle's releases (the cycle is phase-aligned to it). A late probe
means nothing in the guest could run; each miss's response, less the stalled time the
probe saw in it, says whether the stall made it miss (``platform``), whether the cycle
would have missed anyway (``own``), or, when the probe's grain cannot tell,
``undecided`` (:mod:`stalls`). ``paired.own_misses_met`` is true when no miss was the
cycle's own. With ``--trace`` the paired run also records the CPU's scheduler and
interrupt events (ftrace, :mod:`tracefs`) and says, for each miss, what else of the
guest ran in it (:mod:`guesttrace`): ``paired.guest``. Exit status 0 when every
measurement ran.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import excess_p_value, paired_excess_p_value, percentile
from guesttrace import FOREIGN_FREE_US, Timeline
from stalls import (
    Attribution,
    Miss,
    ProbeSample,
    Verdict,
    attribute,
    cyclictest_samples,
    stalled_ns,
)
from tracefs import KIB_PER_SECOND, CpuTrace

from mxrc.rt.control import DEFAULT_CONTROL_LAW, load_control_law
from mxrc.rt.cpu import read_machine
from mxrc.rt.cycle import Cycle, CycleConfig, CycleHook
from mxrc.rt.executive import Executive
from mxrc.rt.stats import PERCENTILES, Histogram, percentile_from_bins

PERIOD_NS = 1_000_000
PRIORITY = 80
HIST_LIMIT_US = 10_000
P99_RATIO_MAX = 1.5
#: Wake-up latencies counted at these thresholds for both sides: the tail where the
#: misses come from, so that one can see whether the same stalls hit both.
TAIL_THRESHOLDS_US = (200, 300, 400, 500, 1000, 2000)


def _round(value: float) -> float:
    return round(value, 3)


class CycleRuns:
    """The mxrc cycle's figures summed over the blocks of a run."""

    def __init__(
        self, cpu: int, budget_ns: int, hook: str, extra_hooks: Sequence[CycleHook] = ()
    ) -> None:
        self.config = CycleConfig(
            period_ns=PERIOD_NS,
            cpu=cpu,
            priority=PRIORITY,
            budget_ns=budget_ns,
            histogram_limit_ns=HIST_LIMIT_US * 1000,
        )
        self.hook = hook
        self.extra_hooks = tuple(extra_hooks)  # after the control law (tests inject work)
        self.wake = Histogram(1_000, HIST_LIMIT_US * 1000)
        self.exec = Histogram(1_000, HIST_LIMIT_US * 1000)
        self.misses = 0
        self.skipped = 0
        self.tracking_max = 0.0
        self.status: dict[str, Any] = {}
        self.faults: list[str] = []

    def run(self, seconds: float, phase_ns: int | None = None) -> Cycle:
        """One block; returns the cycle, whose miss log the paired run reads."""
        executive = Executive(PERIOD_NS)
        law = None
        if self.hook == "plant":
            law = load_control_law(DEFAULT_CONTROL_LAW, PERIOD_NS / 1e9)
            executive.add("control", PERIOD_NS, law.step)

        def hold_safe(_exc: BaseException) -> None:
            if law is not None:
                law.hold_safe()

        config = dataclasses.replace(self.config, phase_ns=phase_ns)
        cycle = Cycle(config, hooks=(executive.run, *self.extra_hooks), on_fault=hold_safe)
        cycle.start()
        try:
            time.sleep(seconds)
        finally:
            cycle.stop()
        self.wake.merge(cycle.wake_latency)
        self.exec.merge(cycle.exec_time)
        self.misses += cycle.deadlines.misses
        self.skipped += cycle.skipped_periods
        self.status = cycle.status()
        if cycle.fault is not None:
            self.faults.append(cycle.fault)
        if law is not None:
            self.tracking_max = max(self.tracking_max, law.status()["max_abs_error_rad"])
        return cycle

    def wake_misses(self) -> int:
        """Wake-ups at least the budget late: cyclictest's rule, without the work."""
        return self.wake.count_at_least(self.config.budget_ns)

    def figures(self) -> dict[str, Any]:
        budget_ns = self.config.budget_ns
        wake = self.wake
        out: dict[str, Any] = {
            "samples": wake.count,
            **{f"{name}_us": wake.percentile(q) / 1000 for name, q in PERCENTILES.items()},
            "max_us": _round(wake.max_ns / 1000),
            "misses": self.misses,
            "miss_rule": f"wake-up latency + execution time > {budget_ns // 1000} µs",
            "wake_misses": self.wake_misses(),
            "wake_at_least_us": {
                str(us): wake.count_at_least(us * 1000) for us in TAIL_THRESHOLDS_US
            },
            "skipped_periods": self.skipped,
            "exec_p99_us": self.exec.percentile(0.99) / 1000,
            "exec_max_us": _round(self.exec.max_ns / 1000),
            "policy": self.status["policy"],
            "priority": self.status["priority"],
            "memory_locked": self.status["memory_locked"],
            "dma_latency_held": self.status["dma_latency_held"],
            "gc": self.status["gc"],
            "hook": self.hook,
            "degraded": self.status["degraded"],
            "fault": "; ".join(self.faults) or None,
        }
        if self.hook == "plant":
            out["tracking_max_abs_error_rad"] = self.tracking_max
        return out


_BIN_LINE = re.compile(r"^(\d+)\s+(\d+)\s*$")


class CyclictestRuns:
    """cyclictest's 1 µs histogram summed over the blocks of a run."""

    def __init__(self, cpu: int, budget_us: int) -> None:
        self.cpu = cpu
        self.budget_us = budget_us
        self.bins = [0] * HIST_LIMIT_US
        self.overflow = 0
        self.max_us = 0
        self.error: str | None = None
        self.command = ""
        self.last_p99_us = 0

    def run(self, loops: int) -> None:
        exe = shutil.which("cyclictest")
        if exe is None:
            self.error = "cyclictest not found; install it: apt-get install rt-tests"
            return
        command = [
            exe, "-m", "-p", str(PRIORITY), "-a", str(self.cpu), "-t", "1",
            "-i", str(PERIOD_NS // 1000), "-l", str(loops), "-h", str(HIST_LIMIT_US), "-q",
        ]  # fmt: skip
        self.command = " ".join(["cyclictest", *command[1:]])
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            self.error = f"exit {proc.returncode}: {proc.stderr.strip()[-400:]}"
            return
        self.add_output(proc.stdout)

    def add_output(self, text: str) -> None:
        """Add one run's histogram; its own p99 is kept as ``last_p99_us``."""
        bins, overflow, max_us = [0] * HIST_LIMIT_US, 0, 0
        for line in text.splitlines():
            m = _BIN_LINE.match(line)
            if m:
                index, count = int(m.group(1)), int(m.group(2))
                if index < HIST_LIMIT_US:
                    bins[index] += count
                else:
                    overflow += count
            elif line.startswith("# Histogram Overflows:"):
                overflow += int(line.split(":", 1)[1].split()[0])
            elif line.startswith("# Max Latencies:"):
                max_us = max(max_us, int(line.split(":", 1)[1].split()[0]))
        if overflow == 0 and not any(bins):
            self.error = "cyclictest printed no histogram"
            return
        self.bins = [a + b for a, b in zip(self.bins, bins, strict=True)]
        self.overflow += overflow
        self.max_us = max(self.max_us, max_us)
        self.last_p99_us = percentile_from_bins(bins, 1, overflow, max_us, 0.99)

    def misses(self) -> int:
        return sum(self.bins[self.budget_us :]) + self.overflow

    def figures(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error, "command": self.command}
        return {
            "samples": sum(self.bins) + self.overflow,
            **{
                f"{name}_us": percentile_from_bins(self.bins, 1, self.overflow, self.max_us, q)
                for name, q in PERCENTILES.items()
            },
            "max_us": self.max_us,
            "misses": self.misses(),
            "wake_at_least_us": {
                str(us): sum(self.bins[us:]) + self.overflow for us in TAIL_THRESHOLDS_US
            },
            "miss_rule": f"wake-up latency ≥ {self.budget_us} µs",
            "command": self.command,
        }


#: The paired run's probe outranks the cycle, so that a cycle busy with its own work
#: cannot keep the probe off the CPU: a late probe then means nobody could run.
PROBE_PRIORITY = PRIORITY + 1
#: By default it is released every 250 µs (``--secaligned``: at whole multiples of
#: that), so it sees any stall longer than 250 µs wherever it falls in the period.
PROBE_INTERVAL_NS = 250_000


def probe_offset_ns(interval_ns: int) -> int:
    """How long before a probe release the cycle is released: half an interval, so at
    250 µs the probe's releases fall 125, 375, 625 and 875 µs into the cycle's period,
    clear of the cycle's own wake-up and work (≈ 25 + 30 µs), which they would delay."""
    return interval_ns // 2


_VALUE_LINE = re.compile(r"^\s*0:\s*(\d+):\s*(\d+)\s*$")
#: How many of the cycle's own and undecided misses the report lists one by one.
LISTED_MISSES = 20


class PairedRun:
    """The cycle and a cyclictest probe on the same CPU at the same time.

    See :mod:`stalls`: every miss of the cycle is put down to the platform or to the
    cycle, by the stalls the probe saw during it. cyclictest's ``-v -N`` gives each
    sample's latency in ns, in order; ``--secaligned`` starts it at a known whole
    second, from which its deadlines are rebuilt (its own skipping rule replayed).
    """

    def __init__(
        self,
        cpu: int,
        budget_ns: int,
        hook: str,
        stall_threshold_ns: int,
        extra_hooks: Sequence[CycleHook] = (),
        probe_interval_ns: int = PROBE_INTERVAL_NS,
        trace: bool = False,
        probe_priority: int = PROBE_PRIORITY,
    ) -> None:
        if probe_interval_ns <= 0 or PERIOD_NS % probe_interval_ns or probe_interval_ns % 2000:
            raise ValueError(
                f"the probe's interval ({probe_interval_ns / 1000:g} µs) must be an even "
                f"number of µs dividing the {PERIOD_NS // 1000} µs period (e.g. 100, 200, 250, 500)"
            )
        self.cpu = cpu
        self.budget_ns = budget_ns
        self.stall_threshold_ns = stall_threshold_ns
        self.interval_ns = probe_interval_ns
        self.priority = probe_priority
        self.offset_ns = probe_offset_ns(probe_interval_ns)
        self.cycle_runs = CycleRuns(cpu, budget_ns, hook, extra_hooks)
        self.command = ""
        self.trace = trace
        self.attribution: Attribution | None = None  # of the last run, for inspection
        self.timeline: Timeline | None = None  # of the last traced run

    def run(self, seconds: float) -> dict[str, Any]:
        exe = shutil.which("cyclictest")
        if exe is None:
            return {"error": "cyclictest not found; install it: apt-get install rt-tests"}
        probe_seconds = math.ceil(seconds) + 2
        command = [
            exe, "-m", "-p", str(self.priority), "-a", str(self.cpu), "-t", "1",
            "-i", str(self.interval_ns // 1000), "-D", str(probe_seconds),
            "-v", "-N", "-q", "--secaligned",
        ]  # fmt: skip
        self.command = " ".join(["cyclictest", *command[1:]])
        tracer = None
        if self.trace:  # the probe's releases make most of the events
            rate = KIB_PER_SECOND * PROBE_INTERVAL_NS // self.interval_ns
            tracer = CpuTrace(self.cpu, probe_seconds + 2, kib_per_second=rate)
        trace: dict[str, Any] | None = None
        if tracer is not None and (reason := tracer.unavailable()) is not None:
            trace, tracer = {"error": reason}, None
        with tempfile.TemporaryFile("w+") as values, contextlib.ExitStack() as stack:
            if tracer is not None:
                stack.enter_context(tracer)  # the instance goes, whatever happens
                tracer.start()  # first: allocating its buffer can take a second
            # Launched early in a second, cyclictest's thread is set up within that second,
            # and --secaligned then starts it at the next whole one: start_s.
            while not 0.05e9 <= time.monotonic_ns() % 1_000_000_000 <= 0.5e9:
                time.sleep(0.01)
            start_s = time.monotonic_ns() // 1_000_000_000 + 1
            # -v writes ~30 B a sample: to a file, not a pipe
            cycle, proc, stderr, exited_ns = self._with_probe(
                command, values, start_s, probe_seconds, seconds
            )
            if tracer is not None:
                trace = self._read_trace(tracer)
            values.seek(0)
            text = values.read()
        if proc.returncode != 0:
            error = f"exit {proc.returncode}: {stderr.strip()[-400:]}"
            return {"error": error, "command": self.command}
        latencies = _probe_latencies(text)
        if isinstance(latencies, str):
            return {"error": latencies, "command": self.command}
        overshoot_s = (exited_ns - (start_s + probe_seconds) * 1_000_000_000) / 1e9
        if not 0 <= overshoot_s < 0.9:  # cyclictest ends at its start second + -D
            return {
                "error": f"cyclictest ended {overshoot_s:.3f} s after its expected end: its "
                "start second is not the one assumed, so its deadlines cannot be rebuilt",
                "command": self.command,
            }
        first = start_s * 1_000_000_000 + self.interval_ns
        probe = cyclictest_samples(latencies, first, self.interval_ns)
        report = self._report(cycle, probe, seconds)
        if trace is not None:
            report["guest"] = trace
            if self.timeline is not None:
                trace.update(self._guest(cycle, probe, report))
        return report

    def _with_probe(
        self, command: list[str], values: IO[str], start_s: int, probe_seconds: int, seconds: float
    ) -> tuple[Cycle, subprocess.Popen[str], str, int]:
        """Start cyclictest, then the cycle once the probe runs; return when both ended,
        with the moment cyclictest had exited (which dates its start)."""
        proc = subprocess.Popen(command, stdout=values, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(max(0.0, (start_s * 1_000_000_000 - time.monotonic_ns()) / 1e9) + 0.1)
            cycle = self.cycle_runs.run(seconds, phase_ns=PERIOD_NS - self.offset_ns)
            _, stderr = proc.communicate(timeout=probe_seconds + 30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return cycle, proc, stderr, time.monotonic_ns()

    def _read_trace(self, tracer: CpuTrace) -> dict[str, Any]:
        lines, lost = tracer.stop()
        self.timeline = Timeline.from_lines(lines)
        return {
            "events": len(lines),
            "lost_events": lost,
            "removed_stale_instances": tracer.removed_stale,  # of killed earlier runs
        }

    def _guest(
        self, cycle: Cycle, probe: list[ProbeSample], report: dict[str, Any]
    ) -> dict[str, Any]:
        """What else of the guest ran in each miss, and which misses the probe's waits
        explain once the trace shows that nothing of the guest caused them."""
        timeline, result = self.timeline, self.attribution
        assert timeline is not None and result is not None and cycle.tid is not None
        first = cycle.started_ns
        ordinary_ns = 2 * int(statistics.median(s.latency_ns for s in probe))
        deadlines = [s.deadline_ns for s in probe]
        by_verdict: dict[str, dict[str, int]] = {}
        busy: list[dict[str, Any]] = []  # misses in which something else of the guest ran
        for kind, verdicts in (
            ("platform", result.platform), ("own", result.own), ("undecided", result.undecided)
        ):  # fmt: skip
            counts = {"misses": len(verdicts), "traced": 0, "foreign_free": 0, "host_explained": 0}
            by_verdict[kind] = counts
            listed = {
                item["at_s"]: item
                for item in report["attribution"].get(f"{kind}_misses", [])
            }  # fmt: skip
            for v in verdicts:
                start, end = v.miss.deadline_ns, v.miss.end_ns
                if not timeline.covers(start, end):
                    continue
                counts["traced"] += 1
                act = timeline.activity(start, end, cycle.tid)
                clear = (
                    act.foreign_us < FOREIGN_FREE_US
                    and not act.cycle_syscalls
                    and act.cycle_page_faults == 0
                )
                waits = stalled_ns(probe, deadlines, start, end, ordinary_ns + 1)
                counts["foreign_free"] += clear
                counts["host_explained"] += clear and v.miss.response_ns - waits <= self.budget_ns
                at_s = round((start - first) / 1e9, 6)  # as _report lists it
                if not clear and len(busy) < LISTED_MISSES:
                    response_us = v.miss.response_ns / 1000
                    busy.append({"at_s": at_s, "verdict": kind, "response_us": response_us,
                                 **act.as_dict()})  # fmt: skip
                item = listed.get(at_s)
                if item is not None:
                    item["guest"] = {**act.as_dict(), "probe_waits_us": waits / 1000}
        unexplained = sum(
            c["traced"] - c["host_explained"] for k, c in by_verdict.items() if k != "platform"
        )
        traced = sum(c["traced"] for c in by_verdict.values())
        foreign_free = sum(c["foreign_free"] for c in by_verdict.values())
        return {
            "cycle_tid": cycle.tid,
            "probe_ordinary_us": ordinary_ns / 1000,
            "foreign_free_below_us": FOREIGN_FREE_US,
            "by_verdict": by_verdict,
            "not_foreign_free": busy,
            "reading": (
                f"{foreign_free} of {traced} traced misses ran with nothing else of the guest "
                f"on the CPU (under {FOREIGN_FREE_US:g} µs of other tasks and interrupts, no "
                "system call but its sleep, no page fault of the cycle); counting every wait "
                "of the probe past "
                f"{ordinary_ns / 1000:g} µs (twice its median) in those, {unexplained} of the "
                "own and undecided misses remain unexplained by the host"
            ),
        }

    def _report(self, cycle: Cycle, probe: list[ProbeSample], seconds: float) -> dict[str, Any]:
        first = cycle.started_ns
        end = first + (cycle.cycles + cycle.skipped_periods) * PERIOD_NS
        inside = [s for s in probe if first <= s.deadline_ns < end]
        kept = [Miss(d, r) for d, r in cycle.deadlines.recent_misses()]
        result = attribute(kept, probe, self.budget_ns, self.stall_threshold_ns)
        self.attribution = result

        def listed(verdicts: list[Verdict]) -> list[dict[str, float]]:
            return [
                {
                    "at_s": round((v.miss.deadline_ns - first) / 1e9, 6),
                    "response_us": v.miss.response_ns / 1000,
                    "own_us_min": v.own_min_ns / 1000,
                    "own_us_max": v.own_max_ns / 1000,
                }
                for v in verdicts[:LISTED_MISSES]
            ]

        platform_own = [v.own_max_ns for v in result.platform]
        if not kept:
            reading = "the cycle missed no deadline: nothing to attribute"
        elif result.own or result.undecided:
            reading = (
                f"of the cycle's {len(kept)} misses, {len(result.own)} were its own as far "
                "as the probe can tell (even without the longest stalls it allows, their "
                f"response exceeded the budget) and {len(result.undecided)} undecided (the "
                f"probe's {self.interval_ns // 1000} µs grain cannot tell)"
            )
        else:
            reading = (
                f"all {len(kept)} of the cycle's misses were the platform's: without the "
                "stalls that held the higher-priority probe off the CPU too, each would have "
                "met the budget"
            )
        return {
            "seconds": seconds,
            "probe_command": self.command,
            "probe_priority": self.priority,
            "probe_interval_us": self.interval_ns // 1000,
            "probe_offset_us": self.offset_ns // 1000,
            "cycle": self.cycle_runs.figures(),
            "probe": {
                "samples": len(inside),
                "stalls": sum(1 for s in inside if s.latency_ns >= self.stall_threshold_ns),
                "at_least_budget": sum(1 for s in inside if s.latency_ns >= self.budget_ns),
                "p99_us": percentile([s.latency_ns for s in inside], 99) / 1000 if inside else None,
                "max_us": max((s.latency_ns for s in inside), default=0) / 1000,
            },
            "attribution": {
                "stall_threshold_us": self.stall_threshold_ns / 1000,
                "misses": cycle.deadlines.misses,
                "attributed": len(kept),
                "platform": len(result.platform),
                "own": len(result.own),
                "undecided": len(result.undecided),
                "platform_misses_own_us_max": max(platform_own) / 1000 if platform_own else None,
                "own_misses": listed(result.own),
                "undecided_misses": listed(result.undecided),
            },
            "own_misses_met": not result.own and len(kept) == cycle.deadlines.misses,
            "reading": reading,
        }


#: The cycle's figures the same-time part reports.
SAME_TIME_FIGURES = (
    "samples", "p50_us", "p99_us", "max_us", "misses", "wake_misses", "wake_at_least_us",
    "exec_p99_us", "fault",
)  # fmt: skip


def same_time(paired: dict[str, Any]) -> dict[str, Any]:
    """The literal comparison at one time: the cycle's misses against the samples of
    ``cyclictest -m -p 80 -i 1000`` that ran beside it, half a period apart, so that
    every stall of the CPU reaches both. Counted both ways: by the cycle's rule (its
    work done within the budget) and by cyclictest's (the wake-up alone)."""
    if "error" in paired:
        return paired
    cycle, probe = paired["cycle"], paired["probe"]
    theirs = probe["at_least_budget"]
    met = cycle["misses"] <= theirs
    wake_met = cycle["wake_misses"] <= theirs
    if met:
        reading = "the cycle missed no more often than cyclictest beside it"
    elif wake_met:
        reading = (
            f"the cycle's wake-ups were late past the budget no more often than cyclictest's "
            f"({cycle['wake_misses']} vs {theirs}); its {cycle['misses']} misses also count "
            "the stalls that ended too late for its work to finish in time, which a loop "
            "that does no work cannot miss"
        )
    else:
        reading = (
            f"the cycle's wake-ups were late past the budget more often than cyclictest's "
            f"beside it ({cycle['wake_misses']} vs {theirs}): it is not the platform alone"
        )
    return {
        "seconds": paired["seconds"],
        "command": paired["probe_command"],
        "offset_us": paired["probe_offset_us"],
        "cycle": {key: cycle[key] for key in SAME_TIME_FIGURES},
        "cyclictest": {
            "samples": probe["samples"],
            "p99_us": probe["p99_us"],
            "max_us": probe["max_us"],
            "misses": theirs,
        },
        "misses_met": met,
        "wake_misses_met": wake_met,
        "reading": reading,
    }


def _probe_latencies(text: str) -> list[int] | str:
    """cyclictest ``-v -N`` values (ns) in sample order, or what is wrong with them."""
    latencies: list[int] = []
    for line in text.splitlines():
        m = _VALUE_LINE.match(line)
        if m is None:
            continue
        index, latency = int(m.group(1)), int(m.group(2))
        if index != len(latencies):
            return f"cyclictest -v skipped from sample {len(latencies)} to {index}"
        latencies.append(latency)
    return latencies if latencies else "cyclictest -v printed no samples"


def run_blocks(
    ours: CycleRuns, theirs: CyclictestRuns, blocks: int, seconds: float, cpu: int
) -> list[dict[str, Any]]:
    """The alternating part: both sides for ``seconds / blocks`` each, block by block,
    until cyclictest fails (its error is in ``theirs``). Returns each block's miss
    counts, which the block-by-block test pairs."""
    each_s = seconds / blocks
    counts: list[dict[str, Any]] = []
    for block in range(blocks):
        order = block_order(block)
        print(
            f"cycle_latency: block {block + 1}/{blocks}: {' then '.join(order)} on "
            f"CPU {cpu}, {each_s:g} s each",
            file=sys.stderr,
        )
        before = (ours.misses, ours.wake_misses(), theirs.misses())
        cycle_p99_us = 0.0
        for side in order:
            if side == "cyclictest":
                theirs.run(int(each_s * 1e9 / PERIOD_NS))
            else:
                cycle_p99_us = ours.run(each_s).wake_latency.percentile(0.99) / 1000
        if theirs.error is not None:
            return counts
        after = (ours.misses, ours.wake_misses(), theirs.misses())
        misses, wake, ct = (b - a for a, b in zip(before, after, strict=True))
        print(
            f"cycle_latency: block {block + 1}/{blocks}: misses: cycle {misses} "
            f"(wake-up alone {wake}), cyclictest {ct}; p99 {cycle_p99_us:g} vs "
            f"{theirs.last_p99_us} µs",
            file=sys.stderr,
        )
        counts.append({
            "first": order[0], "cycle": misses, "cycle_wake": wake, "cyclictest": ct,
            "cycle_p99_us": cycle_p99_us, "cyclictest_p99_us": theirs.last_p99_us,
        })  # fmt: skip
    return counts


def block_order(block: int) -> tuple[str, str]:
    """Which side runs first in a block: the mxrc cycle in even blocks, cyclictest in
    odd ones."""
    sides = ("mxrc cycle", "cyclictest")
    return sides if block % 2 == 0 else (sides[1], sides[0])


def start_load(cpu: int) -> subprocess.Popen[bytes] | None:
    others = sorted(set(os.sched_getaffinity(0)) - {cpu})
    if not others:
        return None
    spin = f"import os\nos.sched_setaffinity(0, {others})\nwhile True:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", spin])


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def comparison(
    cycle: dict[str, Any], ct: dict[str, Any], blocks: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Ratios, targets and the miss-count tests of the alternating runs."""
    p99_limit = P99_RATIO_MAX * ct["p99_us"]
    targets = {
        "p99_us_max": p99_limit,
        "p99_met": cycle["p99_us"] <= p99_limit,
        "misses_max": ct["misses"],
        "misses_met": cycle["misses"] <= ct["misses"],
    }
    periods = cycle["samples"] + cycle["skipped_periods"]
    p_value = excess_p_value(cycle["misses"], periods, ct["misses"], ct["samples"])
    by_block = paired_excess_p_value([(b["cycle"], b["cyclictest"]) for b in blocks])
    wake_by_block = paired_excess_p_value([(b["cycle_wake"], b["cyclictest"]) for b in blocks])
    return {
        "ratios": {
            key: _ratio(cycle[key], ct[key]) for key in ("p50_us", "p99_us", "p99.9_us", "max_us")
        },
        "targets": targets,
        "target_met": targets["p99_met"] and targets["misses_met"],
        # whether a p99 over the limit is the whole run's or a few noisy blocks'
        "p99_by_block": {
            "met": sum(
                b["cycle_p99_us"] <= P99_RATIO_MAX * b["cyclictest_p99_us"] for b in blocks
            ),
            "blocks": len(blocks),
        },
        "misses_comparison": {
            "p_value_cycle_more": round(p_value, 4),
            "p_value_cycle_more_by_block": round(by_block, 4),
            "blocks": list(blocks),
            "blocks_cycle_more": sum(b["cycle"] > b["cyclictest"] for b in blocks),
            "blocks_cyclictest_more": sum(b["cycle"] < b["cyclictest"] for b in blocks),
            "wake_rule": {
                "cycle": cycle["wake_misses"],
                "cyclictest": ct["misses"],
                "p_value_cycle_more": round(
                    excess_p_value(cycle["wake_misses"], periods, ct["misses"], ct["samples"]),
                    4,
                ),
                "p_value_cycle_more_by_block": round(wake_by_block, 4),
            },
            "reading": misses_reading(p_value, by_block),
        },
    }


def misses_reading(p_value: float, by_block: float) -> str:
    """The block-by-block test decides: the counts' own test takes a burst of stalls in
    one block for a difference of rates."""
    if by_block < 0.05:
        return (
            f"the cycle misses more often than cyclictest: block by block, p = {by_block:.3g}"
        )
    if p_value < 0.05:
        return (
            f"the counts alone would say the cycle misses more (p = {p_value:.3g} as Poisson "
            f"counts), but block by block the excess is within the blocks' own variation "
            f"(p = {by_block:.3g}): bursts of stalls, not a higher rate"
        )
    return (
        "the two miss counts do not differ beyond their own noise "
        f"(p = {p_value:.3g} as counts, {by_block:.3g} block by block)"
    )


def run_together(
    beside: PairedRun, beside_seconds: float, probed: PairedRun, probed_seconds: float
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The parts where the cycle shares its CPU with a cyclictest: ``same_time`` (the
    reference command beside it) and ``paired`` (the probe above it); None if skipped."""
    together = paired = None
    if beside_seconds > 0:
        print(
            f"cycle_latency: same time: the cycle with cyclictest -p {beside.priority} -i "
            f"{beside.interval_ns // 1000} half a period apart on CPU {beside.cpu}, "
            f"{beside_seconds:g} s",
            file=sys.stderr,
        )
        together = same_time(beside.run(beside_seconds))
    if probed_seconds > 0:
        print(
            f"cycle_latency: paired: the cycle with a cyclictest probe at priority "
            f"{probed.priority} on CPU {probed.cpu}, {probed_seconds:g} s",
            file=sys.stderr,
        )
        paired = probed.run(probed_seconds)
    return together, paired


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of each run")
    parser.add_argument("--quick", action="store_true", help="5 s runs (smoke test)")
    parser.add_argument("--cpu", type=int, default=None, help="CPU for both (default: last)")
    parser.add_argument("--load", action="store_true", help="spin a busy process elsewhere")
    parser.add_argument("--budget-us", type=int, default=500, help="deadline budget in µs")
    parser.add_argument(
        "--block-seconds",
        type=float,
        default=10.0,
        help="alternate the two in blocks this long, so slow drifts in machine noise hit both",
    )
    parser.add_argument(
        "--hook", choices=("plant", "none"), default="plant", help="work done each cycle"
    )
    parser.add_argument(
        "--same-time-seconds",
        type=float,
        default=None,
        help="then run the cycle and `cyclictest -m -p 80 -i 1000` on its CPU at the same "
        "time, half a period apart, this long, and compare their misses under the same "
        "stalls (default: --seconds; 0: skip)",
    )
    parser.add_argument(
        "--paired-seconds",
        type=float,
        default=None,
        help="then run the cycle and a higher-priority cyclictest probe together this long, "
        "and put each of the cycle's misses down to the platform or to the cycle "
        "(default: --seconds; 0: skip)",
    )
    parser.add_argument(
        "--probe-interval-us",
        type=int,
        default=PROBE_INTERVAL_NS // 1000,
        help="paired run: the probe's period; it sees stalls longer than this (a divisor "
        "of the 1000 µs cycle period; shorter ones interfere more with the cycle)",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="paired run: also trace the CPU's scheduler and interrupt events (ftrace; "
        "root) and report, for each miss, what else of the guest ran in it",
    )
    parser.add_argument(
        "--stall-threshold-us",
        type=int,
        default=100,
        help="paired run: a probe wake-up at least this late is a stall of the CPU (below "
        "it, the probe's ordinary wake-up latency)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    seconds = 5.0 if args.quick else args.seconds
    paired_seconds = seconds if args.paired_seconds is None else args.paired_seconds
    if paired_seconds < 0:
        parser.error(f"--paired-seconds must be ≥ 0, got {paired_seconds:g}")
    together_seconds = seconds if args.same_time_seconds is None else args.same_time_seconds
    if together_seconds < 0:
        parser.error(f"--same-time-seconds must be ≥ 0, got {together_seconds:g}")
    if args.stall_threshold_us <= 0:
        parser.error(f"--stall-threshold-us must be > 0, got {args.stall_threshold_us}")
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    try:
        pair = PairedRun(
            cpu,
            args.budget_us * 1000,
            args.hook,
            args.stall_threshold_us * 1000,
            probe_interval_ns=args.probe_interval_us * 1000,
            trace=args.trace,
        )
    except ValueError as exc:
        parser.error(f"--probe-interval-us: {exc}")
    beside = PairedRun(
        cpu,
        args.budget_us * 1000,
        args.hook,
        args.stall_threshold_us * 1000,
        probe_interval_ns=PERIOD_NS,
        probe_priority=PRIORITY,
    )
    machine = read_machine()

    # An even number of blocks, the order turned each time (cycle first, then cyclictest
    # first, …): noise that drifts over the run, or is left by whatever ran just before,
    # then falls on both sides alike instead of always on the side that goes first.
    blocks = 2 * max(1, round(seconds / args.block_seconds / 2))
    ours = CycleRuns(cpu, args.budget_us * 1000, args.hook)
    theirs = CyclictestRuns(cpu, args.budget_us)
    load = start_load(cpu) if args.load else None
    try:
        time.sleep(0.5 if load else 0)
        block_counts = run_blocks(ours, theirs, blocks, seconds, cpu)
        together = paired = None
        if theirs.error is None:
            together, paired = run_together(beside, together_seconds, pair, paired_seconds)
    finally:
        if load is not None:
            load.kill()
            load.wait()
    cycle, ct = ours.figures(), theirs.figures()

    report: dict[str, Any] = {
        "benchmark": "cycle_latency",
        "seconds": seconds,
        "period_us": PERIOD_NS // 1000,
        "budget_us": args.budget_us,
        "cpu": cpu,
        "load": bool(args.load),
        "blocks": blocks,
        "environment": {
            "kernel": os.uname().release,
            "preemption": machine.preemption.model,
            "cpu_isolated": cpu in machine.cmdline.isolcpus or cpu in machine.sys_isolated,
            "cpus": len(machine.cpus),
        },
        "cycle": cycle,
        "cyclictest": ct,
    }
    ok = "error" not in ct
    if ok:
        report.update(comparison(cycle, ct, block_counts))
    else:
        report["target_met"] = False
    if together is not None:
        report["same_time"] = together
        ok = ok and "error" not in together and together["cycle"]["fault"] is None
    if paired is not None:
        report["paired"] = paired
        ok = ok and "error" not in paired and paired["cycle"]["fault"] is None
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0 if ok and cycle["fault"] is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
