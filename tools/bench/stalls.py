"""Whose fault was each deadline miss: the platform's, or the cycle's own?

Comparing the cycle's miss count with cyclictest's from separate runs cannot tell: on a
virtual machine both counts are the host's stalls, tens a minute, and two equal rates
give either side the larger count half the time. Run together on one CPU, though,
cyclictest is a probe. At a higher SCHED_FIFO priority than the cycle it preempts the
cycle, so the only thing that can keep it waiting past a release is the platform itself
(the host descheduling the vCPU, an interrupt storm, a non-preemptible kernel section).
Released every 250 µs, it sees any such stall of more than 250 µs; each of its late
wake-ups marks a span ``[release, wake-up]`` during which nothing of the guest ran.

For each miss of the cycle, the stalled time the probe saw inside the miss's window
(its deadline to the end of its work) is taken out of the response. What remains is
the cycle's own time: its wake-up and its work. If that fits the budget, the platform
caused the miss: without the stall the cycle would have made it. If it does not, the
miss is the cycle's own (slow work, a page fault, waiting for the GIL). The probe sees
a stall only from its first release inside it, so the stalled time is known between
two bounds (:func:`stalled_ns`), and a miss whose verdict differs between them is
reported undecided rather than guessed. A stall shorter than the probe's interval that
falls between two of its releases is not seen at all, so ``own`` means "not explained by
any stall the probe could see": an upper bound on the cycle's own misses, never a
lower one.

Pure logic, tested without processes; ``cycle_latency.py --paired-seconds`` runs it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProbeSample:
    """One cyclictest wake-up: its absolute deadline and how late it woke (ns)."""

    deadline_ns: int
    latency_ns: int

    @property
    def wake_ns(self) -> int:
        return self.deadline_ns + self.latency_ns


@dataclass(frozen=True)
class Miss:
    """One cycle whose work ended more than the budget after its deadline."""

    deadline_ns: int
    response_ns: int

    @property
    def end_ns(self) -> int:
        return self.deadline_ns + self.response_ns


@dataclass(frozen=True)
class Verdict:
    """One miss and the bounds on the cycle's own part of its response (ns): the
    response less the most, and less the least, stalled time the probe allows."""

    miss: Miss
    own_min_ns: int
    own_max_ns: int


@dataclass
class Attribution:
    """The misses sorted by cause."""

    budget_ns: int
    stall_threshold_ns: int
    platform: list[Verdict] = field(default_factory=list)
    own: list[Verdict] = field(default_factory=list)
    undecided: list[Verdict] = field(default_factory=list)


def cyclictest_samples(
    latencies_ns: Iterable[int], first_deadline_ns: int, interval_ns: int
) -> list[ProbeSample]:
    """Rebuild the deadlines of cyclictest's samples (its ``-v -N`` values, in order).

    cyclictest's own rule, replayed: after a wake-up at ``now`` the next deadline is
    the last one plus an interval, advanced by further intervals while ``now`` is past
    it (missed periods are skipped, not sampled). With ``-N`` the latencies are exact
    ns, so the replay makes the same skip decisions cyclictest made.
    """
    if interval_ns <= 0:
        raise ValueError(f"interval must be positive, got {interval_ns} ns")
    samples = []
    deadline = first_deadline_ns
    for latency_ns in latencies_ns:
        if latency_ns < 0:
            raise ValueError(f"cyclictest latency {latency_ns} ns is negative")
        samples.append(ProbeSample(deadline, latency_ns))
        now = deadline + latency_ns
        deadline += interval_ns
        if now > deadline:
            deadline += -(-(now - deadline) // interval_ns) * interval_ns
    return samples


def stalled_ns(
    probe: Sequence[ProbeSample],
    deadlines: Sequence[int],
    start_ns: int,
    end_ns: int,
    threshold_ns: int,
    *,
    with_gaps: bool = False,
) -> int:
    """How long within ``[start, end)`` the probe waited past a release, counting only
    wake-ups at least ``threshold_ns`` late (its ordinary latency is not a stall).

    That is the least the stall can have been: it began at some time after the probe's
    previous wake-up, which the probe, asleep, did not see. ``with_gaps`` counts that
    time too (from the previous wake-up), the most the stall can have been — what a
    stall that lets the vCPU back for a moment, then takes it again, looks like.
    cyclictest's next release is never before its last wake-up, so the waits are
    disjoint and add up; ``deadlines`` are the samples' release times, in order.
    """
    total = 0
    i = bisect.bisect_left(deadlines, end_ns) - 1
    while i >= 0 and probe[i].wake_ns > start_ns:
        sample = probe[i]
        if sample.latency_ns >= threshold_ns:
            began = sample.deadline_ns
            if with_gaps and i > 0:
                began = probe[i - 1].wake_ns
            total += min(sample.wake_ns, end_ns) - max(began, start_ns)
        i -= 1
    return total


def attribute(
    misses: Iterable[Miss],
    probe: Sequence[ProbeSample],
    budget_ns: int,
    stall_threshold_ns: int,
) -> Attribution:
    """The platform's when the response less the least stalled time fits the budget
    (the stall alone made it miss); the cycle's own when even less the most stalled
    time it does not; undecided between, where the probe's 250 µs grain cannot tell.
    ``probe`` is in release order."""
    if budget_ns <= 0 or stall_threshold_ns <= 0:
        raise ValueError(
            f"budget ({budget_ns} ns) and stall threshold ({stall_threshold_ns} ns) must be > 0"
        )
    deadlines = [s.deadline_ns for s in probe]
    out = Attribution(budget_ns, stall_threshold_ns)
    for miss in misses:
        start, end = miss.deadline_ns, miss.end_ns
        least = stalled_ns(probe, deadlines, start, end, stall_threshold_ns)
        most = stalled_ns(probe, deadlines, start, end, stall_threshold_ns, with_gaps=True)
        verdict = Verdict(miss, miss.response_ns - most, miss.response_ns - least)
        if verdict.own_max_ns <= budget_ns:
            out.platform.append(verdict)
        elif verdict.own_min_ns > budget_ns:
            out.own.append(verdict)
        else:
            out.undecided.append(verdict)
    return out
