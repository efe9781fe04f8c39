"""``mxrc rt``: the RT process, wiring the cycle to the segments nonrt creates.

nonrt owns the safety statechart and creates three segments; this process only attaches
to them, so it can be restarted (or crash) without nonrt losing its state:

* the control block — nonrt's permission to move (mode, fencing token, lease deadline),
* the ring — everything the cycle has to say (status, faults, the final record),
* the data store — values exchanged every cycle (setpoint in, measurements out).

Each cycle, one hook (:class:`RtHook`) decides whether to drive outputs. It drives only
when the block says RUNNING, the lease deadline is still ahead and the token is the one
seen when RUNNING began; in every other case it holds the outputs safe in that same
cycle, and on the edge from driving to holding it publishes a FAULT record naming the
cause, so "why did it stop" is answered by the cycle that stopped, not guessed later.

Ring records (``RecordType``; eight float64 payload words each, indices below):

* ``STARTED``, the first record (from the first cycle, once the thread is set up) —
  CPU, SCHED_FIFO priority (0: not SCHED_FIFO), period in ns (``STARTED_*``);
* ``CYCLE_STATUS`` every ``rt.status_every_cycles`` — slot, wake-up p99 (µs), deadline
  misses, tracking error, driving (1/0), joint position (``STATUS_*``);
* ``CYCLE_HISTOGRAM`` right after each CYCLE_STATUS, same cycle and time — cumulative
  counts of wake-up latencies ≤ each bound of
  :data:`mxrc.service.events.WAKE_BUCKETS_NS` (20, 50, 100, 200, 500, 1000 µs) since
  the process started, then the total count, then the sum in ns (``HISTOGRAM_*``).
  The hook counts each cycle's latency into eight machine integers as it goes (one
  ``bisect`` in C), so the record costs no scan of the cycle's 10,000-bin histogram
  and is exact at the bounds, which 1 µs bins are not;
* ``FAULT`` on the edge from driving to holding — cause, mode, token, lease left,
  expected token (``FAULT_*``);
* ``STOPPED``, the final record — was driving, misses, cycles (``STOPPED_*``);
* ``MODE_APPLIED`` from the first cycle that saw a new mode in the control block (and
  from the very first cycle) — new mode, previous mode (-1: none), driving (1/0),
  token, slot, ns from the cycle's wake-up (the record's time) to having acted
  (``MODE_*``). It carries the
  trace context nonrt wrote with the mode, and so does every record after it until
  the next mode change: the cycle's part of a command is in the command's trace
  without the cycle ever tracing (nonrt records the span from this record).

The main thread reports the start, then sleeps until SIGTERM/SIGINT (or a cycle fault),
waking a few times per watchdog interval to tell systemd how the cycle is doing and,
once a second, to keep the cycle thread pinned across CPU hotplug (see
:mod:`mxrc.rt.hotplug`). systemd gets ``READY=1`` once the cycle runs, ``STATUS=`` lines
(cycles, misses, driving or holding), ``STOPPING=1`` on the way out, and ``WATCHDOG=1``
only while the cycle counter advances (:class:`~mxrc.service.notify.WatchdogGate`): a
main thread that merely exists proves nothing, so a cycle stuck in a control law stops
the pings and systemd's watchdog (``WatchdogSec=``) fires.

Stopping is done *by the cycle*: the hook holds outputs safe and publishes the final
record itself, so the ring keeps exactly one writer and the last output the joint
sees is the safe one.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from types import FrameType
from typing import Final

from mxrc.config import Config, build_config
from mxrc.errors import MxrcError
from mxrc.rt import sched
from mxrc.rt.control import ControlLaw, load_control_law
from mxrc.rt.controlblock import ControlBlock, ControlBlockReader, ControlState, Mode
from mxrc.rt.cycle import Cycle, CycleConfig, CycleInfo, CycleStartError
from mxrc.rt.datastore import DataStore, DataStoreSegment, KeySpec, KeyTable, Side
from mxrc.rt.executive import Executive
from mxrc.rt.hotplug import POLL_INTERVAL_S, PinWatch
from mxrc.rt.numa import Outcome, bind_rt
from mxrc.rt.plant import SimulatedJoint
from mxrc.rt.ring import Ring, RingLayout, RingWriter
from mxrc.rt.ring import implementation as ring_implementation
from mxrc.rt.shm import SegmentNotFoundError, ShmLayoutError
from mxrc.rt.stats import DeadlineCounter, Histogram
from mxrc.service.events import WAKE_BUCKETS_NS
from mxrc.service.notify import Notifier, WatchdogGate

#: The ring nonrt creates for this process. Both sides must agree on it: a ring of any
#: other geometry is refused at attach with the field that differs.
RING_LAYOUT: Final = RingLayout(capacity=4096, payload_size=64)


def key_table(config: Config) -> KeyTable:
    """The data store's key table, as ``[[datastore.keys]]`` declares it. A table in the
    segment that differs in any key is refused at attach, naming the key."""
    return KeyTable(
        [
            KeySpec(k["name"], k["type"], Side(k["writer"]), bool(k["critical"]))
            for k in config["datastore.keys"]
        ]
    )


#: The key table of the default configuration.
DEFAULT_KEYS: Final = key_table(build_config({}))

STOP_TIMEOUT_S: Final = 2.0
#: How often to ping when systemd gave no WATCHDOG_USEC (the pings then only say "alive").
WATCHDOG_INTERVAL_S: Final = 0.5
#: The main thread looks at the cycle this many times per watchdog interval, so a ping
#: is never more than a quarter interval late; and at least this often (seconds).
WATCH_CHECKS_PER_INTERVAL: Final = 4
WATCH_TICK_MAX_S: Final = 0.5
#: How often a STATUS= line goes to systemd (``systemctl status`` shows the latest).
STATUS_INTERVAL_S: Final = 1.0


class RecordType(IntEnum):
    """Ring record types written by the RT process (the ``rtype`` field)."""

    STARTED = 1  # payload: see STARTED_* indices; the first record, from the first cycle
    CYCLE_STATUS = 2  # payload: see STATUS_* indices
    FAULT = 3  # payload: see FAULT_* indices
    STOPPED = 4  # payload: see STOPPED_* indices
    CYCLE_HISTOGRAM = 5  # payload: see HISTOGRAM_* indices; right after each CYCLE_STATUS
    MODE_APPLIED = 6  # payload: see MODE_* indices; the first cycle under a new mode


class FaultCause(IntEnum):
    """Why the cycle went from driving to holding (``payload[FAULT_CAUSE]``)."""

    LEASE_EXPIRED = 1
    TOKEN_CHANGED = 2
    MODE_LEFT_RUNNING = 3
    CONTROL_BLOCK_UNREADABLE = 4
    CYCLE_FAULTED = 5  # a hook raised; the cycle stops (see mxrc.rt.cycle)


# Payload word indices (float64). Lease times are relative to the decision time so they
# survive the float64 conversion exactly, whatever the uptime.
STARTED_CPU, STARTED_PRIORITY, STARTED_PERIOD_NS = 0, 1, 2
STATUS_SLOT, STATUS_WAKE_P99_US, STATUS_MISSES, STATUS_TRACKING_ERROR = 0, 1, 2, 3
STATUS_DRIVING, STATUS_JOINT_POSITION = 4, 5
FAULT_CAUSE, FAULT_MODE, FAULT_TOKEN, FAULT_LEASE_LEFT_NS, FAULT_EXPECTED_TOKEN = 0, 1, 2, 3, 4
STOPPED_WAS_DRIVING, STOPPED_MISSES, STOPPED_CYCLES = 0, 1, 2
MODE_NEW, MODE_PREVIOUS, MODE_DRIVING, MODE_TOKEN, MODE_SLOT, MODE_ACTED_NS = 0, 1, 2, 3, 4, 5
# CYCLE_HISTOGRAM: words HISTOGRAM_COUNTS + i hold the samples ≤ WAKE_BUCKETS_NS[i].
HISTOGRAM_COUNTS = 0
HISTOGRAM_TOTAL = HISTOGRAM_COUNTS + len(WAKE_BUCKETS_NS)
HISTOGRAM_SUM_NS = HISTOGRAM_TOTAL + 1
if RING_LAYOUT.payload_size < 8 * (HISTOGRAM_SUM_NS + 1):  # pragma: no cover - layout guard
    raise ImportError("CYCLE_HISTOGRAM does not fit the ring's payload")


class RtLayoutError(MxrcError):
    """A segment nonrt created has another layout than this build expects."""

    exit_code = 11


class RtAttachError(MxrcError):
    """nonrt's segments did not appear within ``rt.attach_wait_s``."""

    exit_code = 12


class RtStartError(MxrcError):
    """The cycle thread could not be started at all (not a missing privilege)."""

    exit_code = 13


class RtCycleFaultError(MxrcError):
    """The cycle stopped on a fault while running (outputs were held safe)."""

    exit_code = 14


def segment_names(prefix: str, node_id: str) -> tuple[str, str, str]:
    """(control block, ring, data store) names: nonrt must derive the same ones."""
    base = f"{prefix}-{node_id}"
    return f"{base}-control", f"{base}-ring", f"{base}-datastore"


@dataclass
class Attached:
    control: ControlBlock
    ring: Ring
    store: DataStoreSegment
    directory: Path

    def close(self) -> None:
        for segment in (self.store, self.ring, self.control):
            segment.close()

    def describe(self) -> str:
        return (
            f"{self.control.segment.name}, {self.ring.segment.name} "
            f"({RING_LAYOUT.capacity} × {RING_LAYOUT.record_size} B, {ring_implementation()}), "
            f"{self.store.segment.name} ({len(self.store.table.keys)} keys) in {self.directory}"
        )


def attach(config: Config, node_id: str) -> Attached:
    """Attach to nonrt's three segments, waiting for them up to ``rt.attach_wait_s``."""
    directory = Path(config["rt.shm_dir"])
    wait_s = float(config["rt.attach_wait_s"])
    control_name, ring_name, store_name = segment_names(config["rt.shm_prefix"], node_id)
    opened: list[ControlBlock | Ring | DataStoreSegment] = []
    try:
        control = ControlBlock.attach(control_name, directory=directory, wait_s=wait_s)
        opened.append(control)
        ring = Ring.attach(ring_name, RING_LAYOUT, directory=directory, wait_s=wait_s)
        opened.append(ring)
        store = DataStoreSegment.attach(
            store_name, key_table(config), directory=directory, wait_s=wait_s
        )
    except ShmLayoutError as exc:
        for segment in opened:
            segment.close()
        raise RtLayoutError(str(exc)) from None
    except SegmentNotFoundError as exc:
        for segment in opened:
            segment.close()
        raise RtAttachError(f"{exc} (waited {wait_s:g} s for mxrc-nonrt)") from None
    return Attached(control, ring, store, directory)


def _joint_readout(law: ControlLaw) -> tuple[Callable[[], float], Callable[[], float]]:
    """Per-cycle getters for (position, tracking error) without building a status dict.

    :class:`ControlLaw` has no measured-value interface yet, so only the default law is
    understood; any other law publishes NaN until it has one.
    """
    if isinstance(law, SimulatedJoint):
        return (lambda: law.measured), (lambda: law.tracking.last)
    return (lambda: math.nan), (lambda: math.nan)


class RtHook:
    """The per-cycle decision: drive (run the executive) or hold safe, and report.

    Runs on the cycle thread: no logging, no I/O, no containers built beyond the control
    block snapshot (one small tuple, freed at once by reference counting). Everything it
    touches is bound in ``__init__``.
    """

    def __init__(
        self,
        law: ControlLaw,
        executive: Executive,
        reader: ControlBlockReader,
        ring: RingWriter,
        store: DataStore,
        *,
        frame_slots: int,
        status_every: int,
    ) -> None:
        self.law = law
        self.executive = executive
        self.reader = reader
        self.ring = ring
        self.store = store
        self.frame_slots = frame_slots
        self.status_every = status_every
        self.position, self.tracking_error = _joint_readout(law)
        self.h_position = store.handle("joint_position", "f64", for_write=True)
        self.h_error = store.handle("tracking_error", "f64", for_write=True)
        self.payload = ring.payload_f64
        self.wake_latency: Histogram | None = None
        self.deadlines: DeadlineCounter | None = None
        self.wake_bounds = WAKE_BUCKETS_NS
        #: Wake-up latency samples per bucket (``[i]``: ≤ bound i and > bound i-1), then
        #: above the largest bound, then the sum in ns. Machine integers: counting
        #: creates no object the garbage collector tracks.
        self.wake_counts = array("Q", bytes(8 * (len(WAKE_BUCKETS_NS) + 2)))
        self.wake_sum_index = len(WAKE_BUCKETS_NS) + 1
        self.cycle: Cycle | None = None
        self.driving = False
        self.expected_token = 0  # the token seen when RUNNING began; 0: none yet
        self.fenced = False  # a token changed while RUNNING: wait for RUNNING to end
        self.last_cause = 0
        self.state: ControlState | None = None  # the last consistent snapshot
        self.applied_mode = -1  # the mode the last MODE_APPLIED record reported
        self.faults = 0
        self.cycles = 0
        self.stop_requested = False
        self.stopped = threading.Event()

    def bind(self, cycle: Cycle) -> None:
        """Take the cycle's own statistics for the status records (same objects, so the
        hook reads them without going through ``Cycle.status()``)."""
        self.wake_latency = cycle.wake_latency
        self.deadlines = cycle.deadlines
        self.cycle = cycle

    def __call__(self, info: CycleInfo) -> None:
        if self.stopped.is_set():
            return
        late = max(info.wake_ns - info.deadline_ns, 0)
        counts = self.wake_counts
        counts[bisect_left(self.wake_bounds, late)] += 1
        counts[self.wake_sum_index] += late
        now = time.monotonic_ns()
        tick = info.tick
        if self.cycles == 0:
            self._publish_started(tick, now, info.period_ns)
        cause = self._decide(now)
        if cause == 0:
            if not self.driving:
                self.law.fencing_token = self.expected_token
                self.law.resume()
                self.driving = True
            self.executive.run(info)
        elif self.driving:
            self.driving = False
            self.law.hold_safe()
            self.faults += 1
            self.last_cause = cause
            self._publish_fault(cause, tick, now)
        state = self.state
        if state is not None and state.mode != self.applied_mode:
            self._publish_mode(state, tick, now, info.wake_ns)
        store = self.store
        store.write_f64(self.h_position, self.position())
        store.write_f64(self.h_error, self.tracking_error())
        if self.cycles % self.status_every == 0:
            self._publish_status(tick, now)
        self.cycles += 1
        if self.stop_requested:
            self.finish(tick, now)

    def _decide(self, now: int) -> int:
        """0 to drive, otherwise the :class:`FaultCause` that forbids it."""
        state = self.reader.read()
        if state is None:
            return FaultCause.CONTROL_BLOCK_UNREADABLE
        self.state = state
        if state.mode != Mode.RUNNING:
            self.expected_token = 0  # the next RUNNING starts a new lease, maybe a new token
            self.fenced = False
            return FaultCause.MODE_LEFT_RUNNING
        if self.expected_token == 0 and not self.fenced and state.token != 0:
            self.expected_token = state.token  # RUNNING began (or was found at start)
        if state.token != self.expected_token or self.expected_token == 0:
            self.fenced = True
            return FaultCause.TOKEN_CHANGED
        if state.deadline_ns <= now:
            return FaultCause.LEASE_EXPIRED
        return 0

    def _publish_started(self, tick: int, now: int, period_ns: int) -> None:
        """The first record: where the cycle runs (known only once its thread is set
        up, and published by that thread, the ring's one writer)."""
        cycle = self.cycle
        p = self.payload
        for i in range(len(p)):
            p[i] = 0.0
        p[STARTED_CPU] = cycle.cpu if cycle is not None and cycle.cpu is not None else -1
        fifo = cycle is not None and cycle.policy[0] == "SCHED_FIFO"
        p[STARTED_PRIORITY] = cycle.policy[1] if cycle is not None and fifo else 0
        p[STARTED_PERIOD_NS] = period_ns
        self.ring.publish(RecordType.STARTED, tick, now)

    def _publish_status(self, tick: int, now: int) -> None:
        p = self.payload
        p[STATUS_SLOT] = tick % self.frame_slots
        hist = self.wake_latency
        p[STATUS_WAKE_P99_US] = hist.percentile(0.99) / 1000 if hist and hist.count else 0.0
        p[STATUS_MISSES] = self.deadlines.misses if self.deadlines else 0
        p[STATUS_TRACKING_ERROR] = self.tracking_error()
        p[STATUS_DRIVING] = 1.0 if self.driving else 0.0
        p[STATUS_JOINT_POSITION] = self.position()
        self.ring.publish(RecordType.CYCLE_STATUS, tick, now)
        self._publish_histogram(tick, now)

    def _publish_histogram(self, tick: int, now: int) -> None:
        """Cumulative counts from the per-bucket ones: seven additions, no scan."""
        p = self.payload
        counts = self.wake_counts
        total = 0
        for i in range(len(self.wake_bounds)):
            total += counts[i]
            p[HISTOGRAM_COUNTS + i] = total
        p[HISTOGRAM_TOTAL] = total + counts[len(self.wake_bounds)]  # + above the last bound
        p[HISTOGRAM_SUM_NS] = counts[self.wake_sum_index]
        self.ring.publish(RecordType.CYCLE_HISTOGRAM, tick, now)

    def _publish_mode(self, state: ControlState, tick: int, now: int, wake_ns: int) -> None:
        """The cycle has acted on a new mode: say so, under the mode's trace context
        (none if the block changed again since this cycle's snapshot: the next cycle
        reports the newer mode with its own)."""
        words = self.reader.trace_at(state.version)
        if words is None:
            self.ring.set_trace_words(0, 0, 0, 0)
        else:
            self.ring.set_trace_words(words[0], words[1], words[2], words[3])
        p = self.payload
        p[MODE_NEW] = state.mode
        p[MODE_PREVIOUS] = self.applied_mode
        p[MODE_DRIVING] = 1.0 if self.driving else 0.0
        p[MODE_TOKEN] = state.token
        p[MODE_SLOT] = tick % self.frame_slots
        p[MODE_ACTED_NS] = time.monotonic_ns() - wake_ns
        p[6] = p[7] = 0.0
        self.ring.publish(RecordType.MODE_APPLIED, tick, wake_ns)
        self.applied_mode = state.mode

    def _publish_fault(self, cause: int, tick: int, now: int) -> None:
        p = self.payload
        p[FAULT_CAUSE] = cause
        state = None if cause == FaultCause.CONTROL_BLOCK_UNREADABLE else self.state
        p[FAULT_MODE] = state.mode if state else -1.0
        p[FAULT_TOKEN] = state.token if state else -1.0
        p[FAULT_LEASE_LEFT_NS] = state.deadline_ns - now if state else 0.0
        p[FAULT_EXPECTED_TOKEN] = self.expected_token
        p[5] = p[6] = p[7] = 0.0
        self.ring.publish(RecordType.FAULT, tick, now)

    def on_fault(self, exc: BaseException) -> None:
        """The cycle's fault handler (cycle thread, loop already left): hold and say so."""
        self.law.hold_safe()
        self.driving = False
        self._publish_fault(FaultCause.CYCLE_FAULTED, self.cycles, time.monotonic_ns())
        self.finish(self.cycles, time.monotonic_ns())

    def finish(self, tick: int, now: int) -> None:
        """Hold outputs safe and publish the final record; the hook does nothing after.

        Called by the cycle thread (on a stop request, or after a fault), or by the main
        thread once the cycle thread has ended: always by the ring's only live writer.
        """
        if self.stopped.is_set():
            return
        was_driving = self.driving
        self.driving = False
        self.law.hold_safe()
        p = self.payload
        p[STOPPED_WAS_DRIVING] = 1.0 if was_driving else 0.0
        p[STOPPED_MISSES] = self.deadlines.misses if self.deadlines else 0
        p[STOPPED_CYCLES] = self.cycles
        for i in range(3, len(p)):
            p[i] = 0.0
        self.ring.publish(RecordType.STOPPED, tick, now)
        self.stopped.set()


def cycle_config(config: Config) -> CycleConfig:
    return CycleConfig(
        period_ns=round(float(config["cycle.period_ms"]) * 1_000_000),
        cpu=sched.rt_cpu_of(config),
        priority=int(config["rt.priority"]),
        budget_ns=int(config["rt.budget_us"]) * 1000,
        lock_memory=bool(config["rt.lock_memory"]),
        hold_dma_latency=bool(config["rt.hold_dma_latency"]),
    )


def start_line(
    node_id: str,
    attached: Attached,
    cycle: Cycle,
    law_path: str,
    numa: str = "not set",
    helpers: str = "not placed",
) -> str:
    """One line an operator can act on: what was attached, where the cycle runs, and
    every privilege it runs without together with the fix. ``numa``: what
    :func:`mxrc.rt.numa.bind_rt` did (a refusal is also among the degradations);
    ``helpers``: what :func:`mxrc.rt.sched.place_helpers` did."""
    cfg = cycle.config
    policy, priority = cycle.policy
    degraded = "; ".join(f"{d.what}: {d.detail} (fix: {d.fix})" for d in cycle.degraded)
    return (
        f"mxrc rt: node {node_id}: attached {attached.describe()}; law {law_path}; "
        f"cycle {cfg.period_ns / 1e6:g} ms on CPU {cycle.cpu}, {policy} {priority}, "
        f"memory {'locked' if cycle.memory_locked else 'not locked'}, "
        f"dma latency {'held' if cycle.dma_latency_held else 'not held'}; numa: {numa}; "
        f"other threads: {helpers}; "
        f"degraded: {degraded or 'none'}"
    )


def run(
    config: Config,
    node_id: str,
    *,
    notifier: Notifier | None = None,
    print_line: Callable[[str], None] = print,
    numa: Outcome | None = None,
) -> int:
    """Attach, run the cycle until SIGTERM/SIGINT, stop it cleanly; the exit code.

    ``notifier`` carries the systemd notifications (none when omitted). ``numa``: what
    the caller's :func:`mxrc.rt.numa.bind_rt` did, when it bound this thread earlier
    (before creating threads of its own); without it, the binding is done here."""
    # First: this thread's memory policy, before anything big is allocated and before
    # the cycle thread exists (it inherits the policy; see mxrc.rt.numa).
    if numa is None:
        numa = bind_rt(config)
    period_s = float(config["cycle.period_ms"]) / 1000
    law_path = str(config["rt.control_law"])
    law = load_control_law(law_path, period_s)
    attached = attach(config, node_id)
    try:
        cycle_cfg = cycle_config(config)
        executive = Executive(cycle_cfg.period_ns)
        executive.add("control_law", cycle_cfg.period_ns, law.step)
        store = attached.store.store(Side.RT)
        hook = RtHook(
            law,
            executive,
            attached.control.reader(),
            attached.ring.writer(),
            store,
            frame_slots=int(config["cycle.frame_slots"]),
            status_every=int(config["rt.status_every_cycles"]),
        )
        cycle = Cycle(cycle_cfg, hooks=[hook], on_fault=hook.on_fault)
        hook.bind(cycle)
        if numa.degradation is not None:
            cycle.degraded.append(numa.degradation)  # start line, log, status()
        return _serve(
            cycle,
            hook,
            node_id,
            attached,
            law_path,
            notifier or Notifier(None),
            print_line,
            numa,
        )
    finally:
        attached.close()


def status_line(cycle: Cycle, hook: RtHook, stalled_s: float = 0.0) -> str:
    """The one-line summary systemd shows (``systemctl status``): cheap to build, read
    from counters only (no percentile scan while the cycle runs)."""
    cycles, misses = cycle.cycles, cycle.deadlines.misses
    state = "driving" if hook.driving else "holding outputs"
    line = (
        f"{state}; {cycles} cycle{'' if cycles == 1 else 's'}, "
        f"{misses} deadline miss{'' if misses == 1 else 'es'}"
    )
    if stalled_s > 0:
        line += f"; cycle not progressing for {stalled_s:.1f} s"
    return line


class CycleWatch:
    """What the main thread tells systemd about the cycle, decided from its counter.

    ``WATCHDOG=1`` goes out only when :class:`WatchdogGate` sees the cycle counter move
    (at half of ``WatchdogSec=``, or every :data:`WATCHDOG_INTERVAL_S` without one);
    ``STATUS=`` every :data:`STATUS_INTERVAL_S`, naming a stall when there is one.
    """

    def __init__(self, cycle: Cycle, hook: RtHook, notifier: Notifier, now_s: float) -> None:
        self.cycle = cycle
        self.hook = hook
        self.notifier = notifier
        self.gate = WatchdogGate(notifier.watchdog_interval_s or WATCHDOG_INTERVAL_S)
        self.tick_s = min(self.gate.interval_s / WATCH_CHECKS_PER_INTERVAL, WATCH_TICK_MAX_S)
        self.next_status_s = now_s + STATUS_INTERVAL_S
        self.last_cycles = cycle.cycles
        self.progress_s = now_s  # when the counter last moved

    def stalled_s(self, now_s: float) -> float:
        """How long the counter has not moved, once that spans two checks (a running
        cycle moves it dozens of times between two checks); 0.0 otherwise."""
        quiet = now_s - self.progress_s
        return quiet if quiet >= self.tick_s * 2 else 0.0

    def poll(self, now_s: float) -> None:
        cycles = self.cycle.cycles
        if cycles != self.last_cycles:
            self.last_cycles = cycles
            self.progress_s = now_s
        healthy = self.cycle.running and self.cycle.fault is None
        if self.gate.should_ping(now_s, cycles, healthy):
            self.notifier.watchdog()
        if now_s >= self.next_status_s:
            self.next_status_s = now_s + STATUS_INTERVAL_S
            self.notifier.status(status_line(self.cycle, self.hook, self.stalled_s(now_s)))


def _serve(
    cycle: Cycle,
    hook: RtHook,
    node_id: str,
    attached: Attached,
    law_path: str,
    notifier: Notifier,
    print_line: Callable[[str], None],
    numa: Outcome,
) -> int:
    stop = threading.Event()
    signalled: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signalled.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            cycle.start()
        except CycleStartError as exc:
            raise RtStartError(f"cycle thread did not start: {exc}") from None
        helpers = "left as started (the cycle is not SCHED_FIFO above 1)"
        policy, priority = cycle.policy
        if cycle.tid is not None and policy == "SCHED_FIFO" and priority > sched.HELPER_PRIORITY:
            helpers = sched.place_helpers(cycle.tid)
        print_line(start_line(node_id, attached, cycle, law_path, numa.summary, helpers))
        notifier.ready(status_line(cycle, hook))
        pin_watch = None
        if cycle.tid is not None and cycle.cpu is not None:
            pin_watch = PinWatch(cycle.tid, cycle.cpu, print_line)
        watch = CycleWatch(cycle, hook, notifier, time.monotonic())
        watch.poll(time.monotonic())
        next_pin_check = time.monotonic() + POLL_INTERVAL_S
        while not stop.wait(watch.tick_s):
            if not cycle.running:
                break
            now_s = time.monotonic()
            watch.poll(now_s)
            if pin_watch is not None and now_s >= next_pin_check:
                next_pin_check += POLL_INTERVAL_S
                pin_watch.poll()
        why = signal.Signals(signalled[0]).name if signalled else "the cycle ended"
        notifier.stopping(f"stopping ({why}): {status_line(cycle, hook)}")
        hook.stop_requested = True
        hook.stopped.wait(STOP_TIMEOUT_S)  # the cycle holds outputs and writes the record
        cycle.stop(STOP_TIMEOUT_S)
        if not hook.stopped.is_set() and cycle.status()["state"] != "running":
            hook.finish(hook.cycles, time.monotonic_ns())  # the cycle thread is gone
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if cycle.fault is not None:
        raise RtCycleFaultError(f"the cycle stopped on a fault: {cycle.fault}")
    return 0
