"""The RT cycle: one pinned SCHED_FIFO thread waking at absolute deadlines.

Per cycle it sleeps until the next deadline on CLOCK_MONOTONIC, measures how late it
woke and how long its work took, calls the hooks in order, and counts a deadline miss
when the work ended more than the budget after the deadline. Hooks receive one
:class:`CycleInfo` that is reused every cycle. The intended chain for the RT process is
``(read the control block, executive.run, push ring records)``; the cycle itself knows
nothing about shared memory.

Garbage collection. A full CPython collection walks every tracked object — 12-19 ms for
a controller's heap on a 2-vCPU VM, a dozen missed cycles at 1 ms. So :meth:`Cycle.start` runs one
collection while start-up garbage is still cheap to find, then ``gc.freeze()`` moves
everything that survives (modules, config, the control law) into a permanent generation
no later collection scans, and ``gc.disable()`` keeps the automatic collector from
triggering at all while the loop runs: allocation counts can no longer start a pass
mid-cycle. Reference counting still frees acyclic garbage immediately; only reference
cycles would accumulate, and the cycle's own code creates none (``status()`` reports the
gen-0 count so a leak shows). ``stop()`` re-enables the collector. Tuning thresholds
instead was rejected: it makes passes rarer, not absent, and the rare pass is still a
dozen missed deadlines.

The GIL. The woken cycle thread cannot run Python until it holds the GIL, and a busy
thread keeps it for up to ``sys.getswitchinterval()`` — 5 ms by default. On a 2-vCPU VM,
a second thread spinning in pure Python held the cycle's median wake-up latency at
5.1 ms (833 of 5000 cycles ran); with the interval at 100 µs the median was 178 µs and
13 deadlines were missed. So while it runs the cycle lowers the interval to 100 µs
(``switch_interval_s``) as a bound, but the RT process should run no other Python work:
observers read the cycle's figures through shared memory from another process, and
``status()`` (cheap, but it still takes the GIL) is for start-up, shutdown and tests.
The little other work ``mxrc rt`` does (its main thread, the log writer) runs at
SCHED_FIFO 1 (:func:`mxrc.rt.sched.place_helpers`), so that a thread holding the GIL is
never kept off a CPU by ordinary work while the cycle waits for it.

Overruns. When work runs past the next deadline the missed periods are skipped, not
run back to back: a burst of late control outputs is worse than one missing. The tick
(period number since start) still advances by the skipped periods, so the executive's
slot and the control law's time stay locked to the clock.

Faults. A hook that raises stops the cycle: ``on_fault`` runs first (the control law
holds its outputs safe), then the thread ends with ``status()["state"] == "faulted"``
and the fault text naming the cycle. Carrying on after an unknown error would mean
driving actuators from state nobody can vouch for.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mxrc.rt import sched
from mxrc.rt.stats import DeadlineCounter, Histogram

log = logging.getLogger("mxrc.rt.cycle")

DEFAULT_PERIOD_NS = 1_000_000
DEFAULT_PRIORITY = 80
DEFAULT_BUDGET_NS = 500_000


class CycleInfo:
    """What a hook needs to know about the current cycle; one instance, reused."""

    __slots__ = ("deadline_ns", "period_ns", "start_ns", "tick", "wake_ns")

    def __init__(self, period_ns: int) -> None:
        self.period_ns = period_ns
        self.tick = 0  # period number since start (skipped periods included)
        self.deadline_ns = 0  # the absolute CLOCK_MONOTONIC release time of this cycle
        self.wake_ns = 0  # when the thread actually woke
        self.start_ns = 0  # deadline of tick 0

    @property
    def time_s(self) -> float:
        """Ideal time since start: tick × period, free of wake-up jitter."""
        return self.tick * self.period_ns / 1e9


CycleHook = Callable[[CycleInfo], None]


@dataclass(frozen=True)
class CycleConfig:
    period_ns: int = DEFAULT_PERIOD_NS
    cpu: int | None = None  # None: the highest-numbered CPU this process may use
    priority: int = DEFAULT_PRIORITY
    budget_ns: int = DEFAULT_BUDGET_NS
    lock_memory: bool = True
    hold_dma_latency: bool = True
    dma_latency_path: str = sched.DMA_LATENCY_PATH
    manage_gc: bool = True
    switch_interval_s: float | None = 100e-6  # GIL hand-over bound while running; None: keep
    histogram_bin_ns: int = 1_000
    histogram_limit_ns: int = 10_000_000
    #: Release the cycle at this offset into each period of CLOCK_MONOTONIC (deadlines
    #: ≡ phase_ns mod period_ns) rather than wherever start-up happened to end. Another
    #: periodic task on the same CPU can then be kept clear of the cycle's wake-up
    #: (cyclictest ``--secaligned`` releases at whole milliseconds); None: no alignment.
    phase_ns: int | None = None

    def __post_init__(self) -> None:
        if self.period_ns < 50_000:
            raise ValueError(f"cycle period {self.period_ns} ns is below the 50 µs minimum")
        if self.phase_ns is not None and not 0 <= self.phase_ns < self.period_ns:
            raise ValueError(
                f"cycle phase {self.phase_ns} ns must be in 0..{self.period_ns - 1} "
                "(an offset into one period)"
            )
        if not 1 <= self.priority <= 99:
            raise ValueError(f"SCHED_FIFO priority must be 1..99, got {self.priority}")
        if self.budget_ns <= 0:
            raise ValueError(f"deadline budget must be positive, got {self.budget_ns} ns")


class CycleStartError(RuntimeError):
    """The cycle thread could not be set up at all (not a missing privilege)."""


class Cycle:
    def __init__(
        self,
        config: CycleConfig,
        hooks: Sequence[CycleHook] = (),
        on_fault: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.config = config
        self.hooks: tuple[CycleHook, ...] = tuple(hooks)
        self.on_fault = on_fault
        self.info = CycleInfo(config.period_ns)
        self.wake_latency = Histogram(config.histogram_bin_ns, config.histogram_limit_ns)
        self.exec_time = Histogram(config.histogram_bin_ns, config.histogram_limit_ns)
        self.deadlines = DeadlineCounter(config.budget_ns)
        self.cycles = 0
        self.skipped_periods = 0
        self.degraded: list[sched.Degradation] = []
        self.fault: str | None = None
        self.tid: int | None = None
        self.cpu: int | None = None
        self.policy: tuple[str, int] = ("SCHED_OTHER", 0)
        self.memory_locked = False  # as achieved at start; kept after stop to describe the run
        self.dma_latency_held = False
        self.started_ns = 0
        self._unlock_on_exit = False
        self._faults_start: tuple[int, int] | None = None
        self._faults_end: tuple[int, int] | None = None
        self._sleeper = sched.AbsoluteSleeper()
        self._dma = sched.DmaLatencyHold(config.dma_latency_path)
        self._stop_requested = False
        self._ready = threading.Event()
        self._setup_error: BaseException | None = None
        self._gc_was_enabled = gc.isenabled()
        self._gc_managed = False
        self._saved_switch_interval: float | None = None
        self.gc_policy = "frozen + disabled while running" if config.manage_gc else "unmanaged"
        self._state = "not started"
        self._thread = threading.Thread(target=self._main, name="mxrc-rt-cycle", daemon=True)

    # --- control (called from a non-RT thread) -----------------------------------------

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the thread, wait until it is set up, report degradations once."""
        if self.config.manage_gc:
            self._gc_was_enabled = gc.isenabled()
            gc.collect()
            gc.freeze()
            gc.disable()
            self._gc_managed = True
        if self.config.switch_interval_s is not None:
            self._saved_switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(self.config.switch_interval_s)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            self.stop()
            raise CycleStartError(f"cycle thread not ready within {timeout_s} s")
        if self._setup_error is not None:
            self._thread.join()
            self._restore_interpreter()
            raise CycleStartError(str(self._setup_error)) from self._setup_error
        for d in self.degraded:
            log.warning("RT cycle degraded: %s", d)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop_requested = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._restore_interpreter()

    def __enter__(self) -> Cycle:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop_requested

    @property
    def sleeper(self) -> sched.AbsoluteSleeper:
        return self._sleeper

    def status(self) -> dict[str, Any]:
        """Everything an operator needs to judge the cycle, degraded or not."""
        return {
            "state": self._state,
            "tid": self.tid,
            "cpu": self.cpu,
            "policy": self.policy[0],
            "priority": self.policy[1],
            "memory_locked": self.memory_locked,
            "dma_latency_held": self.dma_latency_held,
            "gc": self.gc_policy,
            "switch_interval_s": self.config.switch_interval_s,
            "gc_gen0_pending": gc.get_count()[0],
            "period_ns": self.config.period_ns,
            "budget_ns": self.config.budget_ns,
            "cycles": self.cycles,
            "skipped_periods": self.skipped_periods,
            "deadline_misses": self.deadlines.misses,
            "worst_response_us": self.deadlines.worst_ns / 1000,
            "eintr_retries": self._sleeper.eintr_retries,
            "page_faults": self._page_faults(),
            "wake_latency_us": self.wake_latency.summary(),
            "exec_time_us": self.exec_time.summary(),
            "degraded": [d.as_dict() for d in self.degraded],
            "fault": self.fault,
        }

    def _page_faults(self) -> dict[str, int] | None:
        """Faults the cycle thread took since set-up (none expected with memory locked)."""
        start, end = self._faults_start, self._faults_end
        if start is not None and end is None and self.tid is not None:
            try:
                end = sched.thread_faults(self.tid)
            except OSError:  # exited just now; its teardown recorded the final count
                end = self._faults_end
        if start is None or end is None:
            return None
        return {"minor": end[0] - start[0], "major": end[1] - start[1]}

    def _restore_interpreter(self) -> None:
        if self._saved_switch_interval is not None:
            sys.setswitchinterval(self._saved_switch_interval)
            self._saved_switch_interval = None
        if self._gc_managed:
            self._gc_managed = False
            gc.unfreeze()
            if self._gc_was_enabled:
                gc.enable()

    # --- the cycle thread --------------------------------------------------------------

    def _setup(self) -> None:
        cfg = self.config
        tid = sched.native_thread_id()
        self.tid = tid
        self.cpu = cfg.cpu if cfg.cpu is not None else sched.default_cpu()
        sched.pin_thread(tid, self.cpu)
        sched.set_timer_slack(1)
        self._degrade(sched.set_fifo(tid, cfg.priority))
        if cfg.lock_memory:
            refused = sched.lock_memory()
            self._degrade(refused)
            self.memory_locked = self._unlock_on_exit = refused is None
        if cfg.hold_dma_latency:
            self._degrade(self._dma.acquire())
            self.dma_latency_held = self._dma.held
        self.policy = sched.thread_policy(tid)
        self._faults_start = sched.thread_faults(tid)

    def _degrade(self, degradation: sched.Degradation | None) -> None:
        if degradation is not None:
            self.degraded.append(degradation)

    def _main(self) -> None:
        try:
            self._setup()
        except (OSError, ValueError) as exc:
            self._setup_error = exc
            self._state = "failed"
            self._teardown()
            self._ready.set()
            return
        self._state = "running"
        self._ready.set()
        try:
            self._loop()
        except Exception as exc:  # a hook failed: hold safe outputs and stop cycling
            self.fault = f"{type(exc).__name__}: {exc} (cycle {self.cycles}, tick {self.info.tick})"
            self._state = "faulted"
            # No logging here either (this is the cycle thread): the fault is reported
            # by whoever joins it (mxrc rt's main thread raises RtCycleFaultError).
            if self.on_fault is not None:
                try:
                    self.on_fault(exc)
                except Exception as handler_exc:
                    self.fault += (
                        f"; then the fault handler failed: {type(handler_exc).__name__}: "
                        f"{handler_exc}"
                    )
        else:
            self._state = "stopped"
        finally:
            self._teardown()

    def _teardown(self) -> None:
        if self._faults_start is not None and self.tid is not None:
            self._faults_end = sched.thread_faults(self.tid)
        self._dma.release()
        if self._unlock_on_exit:
            sched.unlock_memory()
            self._unlock_on_exit = False

    def _loop(self) -> None:
        # Everything the loop touches is bound to a local first: attribute lookups are
        # the bulk of the per-cycle overhead in CPython.
        period = self.config.period_ns
        info = self.info
        hooks = self.hooks
        sleep_until = self._sleeper.sleep_until
        now = time.monotonic_ns  # CLOCK_MONOTONIC, the clock clock_nanosleep waits on
        record_wake = self.wake_latency.record
        record_exec = self.exec_time.record
        observe = self.deadlines.observe
        tick = 0
        deadline = now() + period
        if self.config.phase_ns is not None:
            deadline += (self.config.phase_ns - deadline) % period
        info.start_ns = deadline
        self.started_ns = deadline
        while not self._stop_requested:
            sleep_until(deadline)
            wake = now()
            info.tick = tick
            info.deadline_ns = deadline
            info.wake_ns = wake
            for hook in hooks:
                hook(info)
            end = now()
            record_wake(wake - deadline)
            record_exec(end - wake)
            observe(end - deadline, deadline)
            self.cycles += 1
            tick += 1
            deadline += period
            if end >= deadline:
                behind = (end - deadline) // period + 1
                tick += behind
                deadline += behind * period
                self.skipped_periods += behind
