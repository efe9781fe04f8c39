"""A stand-in for the RT cycle process, used by ``mxrc run`` until ``mxrc rt`` exists.

It keeps a fixed period with absolute deadlines on an ordinary thread (no SCHED_FIFO,
no pinning, no shared memory) and counts cycles, slots and late wake-ups. Like the real
cycle it never does I/O: the runner reads its counters and journals them. It exists so
that ``mxrc run`` exercises the real statechart, event log and checkpoints end to end.
"""

from __future__ import annotations

import threading
import time


class StandInCycle:
    def __init__(self, period_ns: int, frame_slots: int) -> None:
        self.period_ns = period_ns
        self.frame_slots = frame_slots
        self.cycle = 0
        self.deadline_misses = 0
        self._last_progress_ns = time.monotonic_ns()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mxrc-standin-cycle", daemon=True)

    @property
    def slot(self) -> int:
        return self.cycle % self.frame_slots

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def progressing(self, within_ns: int = 500_000_000) -> bool:
        """True while the cycle counter advanced recently (what a watchdog would check)."""
        alive = self._thread.is_alive() and not self._stop.is_set()
        return alive and time.monotonic_ns() - self._last_progress_ns < within_ns

    def _run(self) -> None:
        deadline = time.monotonic_ns() + self.period_ns
        while not self._stop.is_set():
            delay = deadline - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
            now = time.monotonic_ns()
            if now - deadline > self.period_ns:  # woke more than one period late
                self.deadline_misses += 1
                deadline = now  # do not try to catch up with a burst of cycles
            self.cycle += 1
            self._last_progress_ns = now
            deadline += self.period_ns
