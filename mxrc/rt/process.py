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

The main thread only reports the start, then sleeps until SIGTERM/SIGINT (or a cycle
fault), waking once a second to keep the cycle thread pinned across CPU hotplug (see
:mod:`mxrc.rt.hotplug`).

Stopping is done *by the cycle*: the hook holds outputs safe and publishes the final
record itself, so the ring keeps exactly one writer and the last output the joint
sees is the safe one. ``notify`` is the seam for systemd's sd_notify/watchdog (a later
issue): it is called with ``READY=1``, ``WATCHDOG=1`` and ``STOPPING=1`` at the points
where those messages belong.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from types import FrameType
from typing import Final

from mxrc.config import Config, build_config
from mxrc.errors import MxrcError
from mxrc.rt.control import ControlLaw, load_control_law
from mxrc.rt.controlblock import ControlBlock, ControlBlockReader, ControlState, Mode
from mxrc.rt.cycle import Cycle, CycleConfig, CycleInfo, CycleStartError
from mxrc.rt.datastore import DataStore, DataStoreSegment, KeySpec, KeyTable, Side
from mxrc.rt.executive import Executive
from mxrc.rt.hotplug import POLL_INTERVAL_S, PinWatch
from mxrc.rt.plant import SimulatedJoint
from mxrc.rt.ring import Ring, RingLayout, RingWriter
from mxrc.rt.shm import SegmentNotFoundError, ShmLayoutError
from mxrc.rt.stats import DeadlineCounter, Histogram

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
WATCHDOG_INTERVAL_S: Final = 0.5


class RecordType(IntEnum):
    """Ring record types written by the RT process (the ``rtype`` field)."""

    STARTED = 1  # payload: CPU, priority (0: not SCHED_FIFO), period ns
    CYCLE_STATUS = 2  # payload: see STATUS_* indices
    FAULT = 3  # payload: see FAULT_* indices
    STOPPED = 4  # payload: see STOPPED_* indices


class FaultCause(IntEnum):
    """Why the cycle went from driving to holding (``payload[FAULT_CAUSE]``)."""

    LEASE_EXPIRED = 1
    TOKEN_CHANGED = 2
    MODE_LEFT_RUNNING = 3
    CONTROL_BLOCK_UNREADABLE = 4
    CYCLE_FAULTED = 5  # a hook raised; the cycle stops (see mxrc.rt.cycle)


# Payload word indices (float64). Lease times are relative to the decision time so they
# survive the float64 conversion exactly, whatever the uptime.
STATUS_SLOT, STATUS_WAKE_P99_US, STATUS_MISSES, STATUS_TRACKING_ERROR = 0, 1, 2, 3
STATUS_DRIVING, STATUS_JOINT_POSITION = 4, 5
FAULT_CAUSE, FAULT_MODE, FAULT_TOKEN, FAULT_LEASE_LEFT_NS, FAULT_EXPECTED_TOKEN = 0, 1, 2, 3, 4
STOPPED_WAS_DRIVING, STOPPED_MISSES, STOPPED_CYCLES = 0, 1, 2


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
            f"({RING_LAYOUT.capacity} × {RING_LAYOUT.record_size} B), "
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
        self.driving = False
        self.expected_token = 0  # the token seen when RUNNING began; 0: none yet
        self.fenced = False  # a token changed while RUNNING: wait for RUNNING to end
        self.last_cause = 0
        self.state: ControlState | None = None  # the last consistent snapshot
        self.faults = 0
        self.cycles = 0
        self.stop_requested = False
        self.stopped = threading.Event()

    def bind(self, cycle: Cycle) -> None:
        """Take the cycle's own statistics for the status records (same objects, so the
        hook reads them without going through ``Cycle.status()``)."""
        self.wake_latency = cycle.wake_latency
        self.deadlines = cycle.deadlines

    def __call__(self, info: CycleInfo) -> None:
        if self.stopped.is_set():
            return
        now = time.monotonic_ns()
        tick = info.tick
        cause = self._decide(now)
        if cause == 0:
            if not self.driving:
                self.law.resume()
                self.driving = True
            self.executive.run(info)
        elif self.driving:
            self.driving = False
            self.law.hold_safe()
            self.faults += 1
            self.last_cause = cause
            self._publish_fault(cause, tick, now)
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
    cpu = int(config["rt.cpu"])
    return CycleConfig(
        period_ns=round(float(config["cycle.period_ms"]) * 1_000_000),
        cpu=None if cpu < 0 else cpu,
        priority=int(config["rt.priority"]),
        budget_ns=int(config["rt.budget_us"]) * 1000,
        lock_memory=bool(config["rt.lock_memory"]),
        hold_dma_latency=bool(config["rt.hold_dma_latency"]),
    )


def start_line(node_id: str, attached: Attached, cycle: Cycle, law_path: str) -> str:
    """One line an operator can act on: what was attached, where the cycle runs, and
    every privilege it runs without together with the fix."""
    cfg = cycle.config
    policy, priority = cycle.policy
    degraded = "; ".join(f"{d.what}: {d.detail} (fix: {d.fix})" for d in cycle.degraded)
    return (
        f"mxrc rt: node {node_id}: attached {attached.describe()}; law {law_path}; "
        f"cycle {cfg.period_ns / 1e6:g} ms on CPU {cycle.cpu}, {policy} {priority}, "
        f"memory {'locked' if cycle.memory_locked else 'not locked'}, "
        f"dma latency {'held' if cycle.dma_latency_held else 'not held'}; "
        f"degraded: {degraded or 'none'}"
    )


def run(
    config: Config,
    node_id: str,
    *,
    notify: Callable[[str], None] = lambda message: None,
    print_line: Callable[[str], None] = print,
) -> int:
    """Attach, run the cycle until SIGTERM/SIGINT, stop it cleanly; the exit code."""
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
        return _serve(cycle, hook, node_id, attached, law_path, notify, print_line)
    finally:
        attached.close()


def _serve(
    cycle: Cycle,
    hook: RtHook,
    node_id: str,
    attached: Attached,
    law_path: str,
    notify: Callable[[str], None],
    print_line: Callable[[str], None],
) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            cycle.start()
        except CycleStartError as exc:
            raise RtStartError(f"cycle thread did not start: {exc}") from None
        print_line(start_line(node_id, attached, cycle, law_path))
        notify("READY=1")
        watch = None
        if cycle.tid is not None and cycle.cpu is not None:
            watch = PinWatch(cycle.tid, cycle.cpu, print_line)
        next_watch = time.monotonic() + POLL_INTERVAL_S
        while not stop.wait(WATCHDOG_INTERVAL_S):
            if not cycle.running:
                break
            notify("WATCHDOG=1")
            if watch is not None and time.monotonic() >= next_watch:
                next_watch += POLL_INTERVAL_S
                watch.poll()
        notify("STOPPING=1")
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
