"""The node as mxrc-nonrt runs it: statechart owner, shared-memory creator, safety reactor.

Everything that changes the safety state goes through here, and the order of each
reaction is the point of this module:

* **Safety first, then the record.** A fault (the cycle reporting a lost lease or a
  changed token, a deadline-miss burst, the RT process lost or restarted, leadership
  lost) writes "hold" into the control block *at once*, on the event loop, and only
  then journals ``fault`` → SAFE_MODE. The cycle stops driving within one period of the
  block write; the fsync of the record never delays it.
* **Permission: the record, then the control block.** ``start`` is fsynced to the log
  (the transition's ``before`` callback) before the block says RUNNING, so the cycle can
  never drive on a permission that a crash would forget.
* **The lease deadline** in the block comes from the HA backend's last renewal (start of
  renewal + TTL − margin): if this process freezes, the cycle stops by itself.

Threads. The statechart, the log and checkpoints are used from one worker thread
(``mxrc-state``) so that fsyncs never block the event loop; everything else (ring feed,
bus, API, lease loop, control-block writes) runs on the loop. Records reach the loop
through the bus (``Journaled``), in sequence order.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from mxrc.config import Config
from mxrc.errors import MxrcError
from mxrc.eventlog import read_records
from mxrc.ha.backend import NO_LEADERSHIP, HaBackend, Leadership
from mxrc.ha.factory import lease_terms, make_backend
from mxrc.ha.lease import remaining_s
from mxrc.node import BootReport, Node
from mxrc.obs.bus_tracing import BusTracing
from mxrc.obs.correlation import current_traceparent
from mxrc.obs.logs import set_process_fields
from mxrc.obs.metrics import NonrtMetrics
from mxrc.obs.tracing import Tracing, span
from mxrc.rt.controlblock import ControlBlock, ControlBlockWriter, Mode
from mxrc.rt.datastore import DataStore, DataStoreSegment, Side
from mxrc.rt.numa import host_plan, place_segments
from mxrc.rt.process import RING_LAYOUT, key_table, segment_names
from mxrc.rt.ring import Ring
from mxrc.rt.shm import ShmError, validate_header
from mxrc.segments import Record
from mxrc.service.bus import EventBus
from mxrc.service.events import (
    BusEvent,
    CycleStatus,
    HealthChanged,
    Journaled,
    LeaseChanged,
    RtFault,
    RtLost,
    RtStarted,
    RtStopped,
)
from mxrc.service.health import (
    HealthInputs,
    HealthReport,
    HealthWatch,
    Status,
    Thresholds,
    evaluate,
)
from mxrc.service.health import readiness as health_readiness
from mxrc.service.logbook import Logbook
from mxrc.service.ports import OPERATOR_COMMANDS, BadInput, NotPermitted, Readiness
from mxrc.service.ringfeed import EXPECTED_RT_CAUSES, RingFeed
from mxrc.service.rt_spans import CycleSpans
from mxrc.statechart import Chart, default_registry
from mxrc.statemachine import TriggerRejected

T = TypeVar("T")
log = logging.getLogger("mxrc.nonrt")

#: Guards that make a refused ``start`` a 403 (this node may not drive) rather than 409.
PERMISSION_GUARDS: Final = frozenset({"is_leader", "has_quorum"})
SUBSCRIBER_QUEUE: Final = 1000
HOUSEKEEPING_INTERVAL_S: Final = 0.1
STATUS_EVERY_S: Final = 5.0
#: Written by nonrt once its API listens, removed when it stops: where to reach it.
ANNOUNCE_FILE: Final = "nonrt.json"


def iso(wall_ns: int | None) -> str | None:
    if wall_ns is None:
        return None
    return datetime.fromtimestamp(wall_ns / 1e9, UTC).isoformat(timespec="milliseconds")


@dataclass
class Segments:
    control: ControlBlock
    ring: Ring
    store: DataStoreSegment

    def close(self) -> None:
        for segment in (self.store, self.ring, self.control):
            segment.close()

    def problem(self) -> str | None:
        """The first segment whose header no longer matches its layout, or None."""
        for seg in (self.control.segment, self.ring.segment, self.store.segment):
            try:
                size = seg.path.stat().st_size
                validate_header(seg.name, seg.layout, seg.header(), size)
            except FileNotFoundError:
                return f"{seg.name}: {seg.path} was removed while in use"
            except ShmError as exc:
                return str(exc)
        return None


def create_segments(config: Config) -> Segments:
    """Create (or take over from a dead creator) the three segments mxrc rt attaches to."""
    directory = Path(config["rt.shm_dir"])
    control_name, ring_name, store_name = segment_names(config["rt.shm_prefix"], config.node_id)
    control = ControlBlock.create(control_name, directory=directory)
    try:
        ring = Ring.create(ring_name, RING_LAYOUT, directory=directory)
        try:
            store = DataStoreSegment.create(store_name, key_table(config), directory=directory)
        except BaseException:
            ring.close()
            raise
    except BaseException:
        control.close()
        raise
    return Segments(control, ring, store)


def lease_fault(lead: Leadership, driving_token: int) -> str | None:
    """Why a driving node must stop after this renewal, or None. Pure."""
    if not lead.quorum:
        return "quorum_lost"
    if not lead.leader or lead.token <= 0:
        return "lease_lost"
    if driving_token and lead.token != driving_token:
        return "token_changed"  # a newer leadership exists, even if it is ours again
    return None


def _log_notice(line: str) -> None:
    """Where the node's own notices (recovery, damaged checkpoints) go by default."""
    logging.getLogger("mxrc.node").warning("%s", line)


def _cycle_window(samples: deque[tuple[int, int, int]], now_ns: int, window_s: float) -> None:
    horizon = now_ns - int(window_s * 2e9)  # keep two windows: the rate needs a baseline
    while samples and samples[0][0] < horizon:
        samples.popleft()


class Controller:
    """The real :class:`mxrc.service.ports.AdminBackend` (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        notice: Callable[[str], None] | None = None,
        backend: HaBackend | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.config = config
        self.node_id = config.node_id
        self.chart: Chart = default_registry().get("rt")
        self.notice = notice or _log_notice
        self.tracing = tracing or Tracing(
            service_name="mxrc-nonrt",
            node=self.node_id,
            ratio=float(config["tracing.sample_ratio"]),
        )
        self.tracer = self.tracing.tracer
        set_process_fields(node=self.node_id)
        self.metrics = NonrtMetrics(self.node_id, tuple(self.chart.states))
        self.registry = self.metrics.registry
        self.bus = EventBus(int(config["nonrt.bus_queue"]), instrument=BusTracing(self.tracer))
        self.thresholds = Thresholds.from_config(config)
        self.terms = lease_terms(config)
        self.ha: HaBackend = backend or make_backend(config)
        self.auto_start = bool(config["ha.auto_start"])
        self._driving_token = 0  # the token under which the node went RUNNING
        self._renew_lock = asyncio.Lock()
        self.leadership: Leadership = NO_LEADERSHIP
        self.table = key_table(config)
        guards = {
            "is_leader": lambda: self._lease_valid() and self.leadership.leader,
            "has_quorum": lambda: self.leadership.quorum,
            "is_healthy": self._healthy_enough_to_start,
            "cause_cleared": lambda: not self.active_conditions(),
        }
        self.node = Node(config, self.chart, guards, notice=self.notice, tracer=self.tracer)
        self.node.on_record(self._on_record)
        self.node.on_fsync(lambda _records, seconds: self.metrics.observe_fsync(seconds))
        self.recent: deque[Record] = deque(maxlen=int(config["nonrt.events_memory"]))
        self.cycle_samples: deque[tuple[int, int, int]] = deque()
        self.latest: CycleStatus | None = None
        self.latest_wall_ns: int | None = None
        self.rt_attached = False
        self.rt_starts = 0
        # The RT process stopped cleanly while the node was READY (a planned stop): its
        # return, the node still READY, is no incident either.
        self._rt_stopped_while_ready = False
        self.boot: BootReport | None = None
        self.segments: Segments | None = None
        self.block: ControlBlockWriter | None = None
        self.store: DataStore | None = None
        self.feed: RingFeed | None = None
        self.started_ns = time.monotonic_ns()
        self.loop_ticks = 0
        self.stopping = False
        self._holding = False
        self._fault_pending: set[str] = set()
        self._subscribers: set[asyncio.Queue[Record | None]] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mxrc-state")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._health_watch = HealthWatch()
        self._health_watch_lock = threading.Lock()  # the API, the watchdog and guards
        self._tasks: list[asyncio.Task[None]] = []
        self._last_journaled_cycle = -1

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> BootReport:
        """Create the shared memory, recover and boot the node, take the lease, start
        the loops. The control block says "hold" until the state says otherwise."""
        self._loop = asyncio.get_running_loop()
        segments, placed = place_segments(  # on the RT CPU's NUMA node: mxrc.rt.numa
            host_plan(self.config).shm,
            lambda: create_segments(self.config),
            lambda s: (s.control.segment.buf, s.ring.segment.buf, s.store.segment.buf),
        )
        self.segments = segments
        placement = f"mxrc nonrt: shared memory: {placed.text}"
        if placed.degradation is None:
            log.info("%s", placement)
        else:  # the kernel refused the NUMA binding: the node runs, degraded
            self.notice(placement)
        self.block = self.segments.control.writer()
        self.block.write(Mode.INIT, 0, 0)
        self.store = self.segments.store.store(Side.NONRT)
        self.feed = RingFeed(
            self.segments.ring.reader(),
            self.bus.publish,
            silence_s=float(self.config["nonrt.rt_silence_s"]),
        )
        self.bus.subscribe("metrics", self.metrics.observe)
        self.bus.subscribe("controller", self._observe)
        self.bus.subscribe("log", Logbook(int(self.config["cycle.frame_slots"])))
        self.bus.subscribe("cycle_spans", CycleSpans(self.tracing))
        self.bus.subscribe("stream", self._fan_out)
        try:
            self.boot = await self._state(self.node.start)
        except BaseException:
            self.segments.close()
            raise
        self._restore_critical_keys()
        await self.ha.start()
        if self.node.state == "SAFE_MODE":  # recovered after a crash: stand by, do not lead
            await self.ha.release()
        await self._renew()
        self._mirror()
        self._tasks = [
            asyncio.create_task(self.bus.run(), name="bus"),
            asyncio.create_task(
                self.feed.run(float(self.config["nonrt.ring_poll_ms"]) / 1000), name="ring-feed"
            ),
            asyncio.create_task(self._lease_loop(), name="lease"),
            asyncio.create_task(self._housekeeping(), name="housekeeping"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_ended)
        return self.boot

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """A loop of this process ended while the node runs: a bug or an unexpected
        error, never a reason to keep driving. Hold outputs and fault, loudly."""
        if self.stopping or task.cancelled():
            return
        error = task.exception()
        log.error(
            "internal loop %r ended (%s: %s); holding outputs",
            task.get_name(), type(error).__name__, error, exc_info=error,
        )
        self._safety_fault(f"internal_{task.get_name()}")

    async def stop(self, reason: str) -> None:
        """Hold outputs, journal the stop (RUNNING → READY, ``node_stopped``), checkpoint,
        release the lease, remove the segments."""
        if self.stopping:
            return
        self.stopping = True
        self._hold()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            await self._state(self.node.stop, reason)
        finally:
            self._mirror()
            with contextlib.suppress(Exception):
                await self.ha.release()
            with contextlib.suppress(Exception):
                await self.ha.close()
            if self.feed is not None:
                with contextlib.suppress(Exception):
                    self.feed.poll()
            await self.bus.drain(1.0)
            for queue in self._subscribers:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)
            self._executor.shutdown(wait=True)
            if self.segments is not None:
                self.segments.close()
            self.tracing.shutdown()

    async def _state(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the state thread (statechart, log, checkpoints), in the caller's
        context: its span and request id follow the work (``run_in_executor`` alone
        would run it in the thread's own, empty context)."""
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await loop.run_in_executor(self._executor, call)

    # ------------------------------------------------------------------ control block

    def _lease_valid(self) -> bool:
        return self.leadership.may_drive and self.leadership.deadline_ns > time.monotonic_ns()

    def _hold(self) -> None:
        """Withdraw the permission to move now (before anything is logged)."""
        self._holding = True
        if self.block is not None:
            mode = Mode.from_state(self.node.state) if self.node._machine else Mode.INIT
            if mode == Mode.RUNNING:
                mode = Mode.SAFE_MODE
            self.block.write(mode, self.leadership.token, 0, current_traceparent())

    def _mirror(self) -> None:
        """Make the block say what the durable state says (called after transitions)."""
        self._holding = False
        if self.block is None or self.node._machine is None:
            return
        mode = Mode.from_state(self.node.state)
        lead = self.leadership
        trace = current_traceparent()  # the transition's, when a command or fault mirrors
        if mode != Mode.RUNNING:
            self._driving_token = 0
        if mode == Mode.RUNNING and not self.stopping and self._lease_valid():
            if not self._driving_token:
                self._driving_token = lead.token
            # A token other than the one RUNNING began with is never written as a
            # permission: the cycle would refuse it anyway (token_changed).
            if lead.token == self._driving_token:
                self.block.write(Mode.RUNNING, lead.token, lead.deadline_ns, trace)
                return
            self.block.write(Mode.SAFE_MODE, lead.token, 0, trace)
        elif mode == Mode.RUNNING:
            self.block.write(Mode.SAFE_MODE, lead.token, 0, trace)
        else:
            self.block.write(mode, lead.token, 0, trace)

    # ------------------------------------------------------------------ leadership

    async def _renew(self) -> None:
        """One renewal at a time (the lease loop, a step-down and a reset all renew)."""
        async with self._renew_lock:
            await self._renew_once()

    async def _renew_once(self) -> None:
        before = self.leadership
        self.leadership = await self.ha.renew()
        lead = self.leadership
        if lead.token and lead.token != self.node.token:
            self.node.token = lead.token
        changed = (lead.leader, lead.quorum, lead.token, lead.holder) != (
            before.leader,
            before.quorum,
            before.token,
            before.holder,
        )
        driving = self.node.state in self.chart.driving_states
        cause = lease_fault(lead, self._driving_token) if driving else None
        if cause is not None and not self.stopping:
            self._hold()  # before anything is written: the record follows the safety
        if changed:
            self.bus.publish(
                LeaseChanged(
                    time.monotonic_ns(), lead.leader, lead.quorum, lead.token, lead.deadline_ns
                )
            )
            await self._journal_lease(before, lead)
        if self.stopping or (self._holding and cause is None):
            return
        if cause is not None:
            self._safety_fault(cause)
            return
        self._mirror()
        if self.auto_start and self.node.state == "READY" and self._lease_valid():
            self._auto_start()

    async def _journal_lease(self, before: Leadership, lead: Leadership) -> None:
        """A ``lease`` record on every change of leadership (not every renewal): with
        its deadline in wall time, replay can check leases against RUNNING intervals."""
        deadline = lead.deadline_ns if lead.leader else before.deadline_ns
        valid_until = (
            time.time_ns() + (deadline - time.monotonic_ns())
            if deadline and (lead.leader or before.leader)
            else None
        )
        with contextlib.suppress(MxrcError):  # a failed log is reported by health
            await self._state(
                self.node.journal,
                "lease",
                {
                    "backend": self.ha.name,
                    "leader": lead.leader,
                    "quorum": lead.quorum,
                    "token": lead.token,
                    "holder": lead.holder,
                    "valid_until_wall_ns": valid_until,
                    "detail": lead.detail,
                },
            )

    def _auto_start(self) -> None:
        """``ha.auto_start``: the new leader starts by itself (journalled as actor
        ``ha``), through the same guards an operator's start passes."""
        if "start" in self._fault_pending or not self._healthy_enough_to_start():
            return
        self._fault_pending.add("start")

        async def fire() -> None:
            try:
                await self._state(self.node.fire, "start", actor="ha", cause="auto_start")
            except (TriggerRejected, MxrcError) as exc:
                log.warning("auto start refused: %s", exc)
            finally:
                self._fault_pending.discard("start")
                self._mirror()

        asyncio.get_running_loop().create_task(fire())

    async def _lease_loop(self) -> None:
        interval = self.terms.renew_interval_s
        while True:
            await self.ha.wait_for_change(interval)
            await self._renew()

    # ------------------------------------------------------------------ reactions

    def _safety_fault(self, cause: str) -> None:
        """Hold now, then journal ``fault(cause)`` (once per cause while it is pending)."""
        self._hold()
        if cause in self._fault_pending or self.stopping:
            return
        self._fault_pending.add(cause)
        asyncio.get_running_loop().create_task(self._journal_fault(cause))

    async def _journal_fault(self, cause: str) -> None:
        try:
            if self._driving_token and 0 < self.leadership.deadline_ns <= time.monotonic_ns():
                # The cycle stopped at the deadline already; say so before the fault, so
                # the record shows when driving ended even if this process was frozen
                # and journals the fault seconds later.
                expired = Leadership(
                    False, self.leadership.quorum, 0, 0, self.leadership.holder,
                    "lease deadline passed",
                )  # fmt: skip
                await self._journal_lease(self.leadership, expired)
            if "fault" in self.node.legal_triggers():
                await self._state(self.node.fire, "fault", cause=cause, actor="system")
        except (TriggerRejected, MxrcError) as exc:
            log.error("could not journal fault(%s): %s", cause, exc)
        finally:
            self._fault_pending.discard(cause)
            self._mirror()

    def _observe(self, event: BusEvent) -> None:
        """The controller's own bus observer: bookkeeping and safety reactions."""
        state = self.node.state if self.node._machine else "INIT"
        active = state in ("READY", "RUNNING") and not self.stopping
        if isinstance(event, Journaled):
            self._leadership_follows_state(event.record)
        elif isinstance(event, CycleStatus):
            self.rt_attached = True
            self.latest = event
            self.latest_wall_ns = time.time_ns()
            self.cycle_samples.append((event.mono_ns, event.cycle, event.misses))
            _cycle_window(self.cycle_samples, event.mono_ns, self.thresholds.window_s)
            if state == "RUNNING" and self._miss_burst():
                self._safety_fault("deadline_misses")
            if state == "INIT" and not self.stopping:
                self._initialise()
        elif isinstance(event, RtStarted):
            self.rt_starts += 1
            restarted = self.rt_starts > 1
            planned = self._rt_stopped_while_ready and state == "READY"
            self._rt_stopped_while_ready = False
            self.rt_attached = True
            self.cycle_samples.clear()
            if restarted and active and not planned:
                self._safety_fault("rt_restart")
        elif isinstance(event, RtFault):
            if event.cause not in EXPECTED_RT_CAUSES and state == "RUNNING":
                self._safety_fault(f"rt_{event.cause}")
        elif isinstance(event, RtStopped | RtLost):
            self.rt_attached = False
            self._rt_stopped_while_ready = False
            if isinstance(event, RtStopped) and state == "READY" and not event.was_driving:
                # A clean exit with nothing driven (`systemctl stop mxrc.target` after
                # `mxrc command stop`): the outputs were held already, and start stays
                # refused until the cycle reports again. Lost or killed is still a fault.
                log.info("the RT process stopped cleanly while READY; the node stays READY")
                self._rt_stopped_while_ready = not self.stopping
            elif active:
                what = "rt_stopped" if isinstance(event, RtStopped) else "rt_lost"
                log.warning("the RT process is gone (%s); holding outputs", what)
                self._safety_fault(what)

    def _leadership_follows_state(self, record: Record) -> None:
        """A node in SAFE_MODE steps down, so that a healthy standby takes over without
        waiting out the TTL (Patroni's rule: a node that cannot serve does not hold the
        leader lock); a reset to READY makes it a candidate again."""
        if record["type"] != "transition" or self.stopping:
            return
        payload = record["payload"]
        if payload["dest"] == "SAFE_MODE" and payload["source"] != "SAFE_MODE":
            asyncio.get_running_loop().create_task(self._step_down())
        elif payload["source"] == "SAFE_MODE" and payload["dest"] == "READY":
            self.ha.resume()
            asyncio.get_running_loop().create_task(self._renew())

    async def _step_down(self) -> None:
        async with self._renew_lock:
            with contextlib.suppress(Exception):  # an outage: the lease runs out anyway
                await self.ha.release()
            await self._renew_once()

    def _initialise(self) -> None:
        if "initialized" in self._fault_pending:
            return
        self._fault_pending.add("initialized")

        async def fire() -> None:
            try:
                await self._state(self.node.fire, "initialized", actor="system")
            except TriggerRejected:
                pass
            finally:
                self._fault_pending.discard("initialized")
                self._mirror()

        asyncio.get_running_loop().create_task(fire())

    def _miss_burst(self) -> bool:
        samples = self.cycle_samples
        if len(samples) < 2:
            return False
        horizon = samples[-1][0] - int(self.thresholds.window_s * 1e9)
        base = next((s for s in samples if s[0] >= horizon), samples[0])
        return samples[-1][2] - base[2] >= int(self.config["nonrt.fault_misses"])

    def active_conditions(self) -> list[str]:
        """Conditions that keep ``reset`` refused: the causes of faults still present."""
        conditions = []
        if not self.rt_attached:
            conditions.append("rt_lost: no RT process reporting")
        if self._miss_burst():
            conditions.append("deadline_misses: miss burst within the health window")
        if not self.leadership.quorum:
            # Without a quorum this node cannot even tell who leads. A node that merely
            # is not leader may be READY (a standby); start has its own leader guard.
            conditions.append(f"quorum_lost: {self.leadership.detail}")
        return conditions

    def _healthy_enough_to_start(self) -> bool:
        return self.rt_attached and self.health().status != Status.UNHEALTHY

    # ------------------------------------------------------------------ records

    def _on_record(self, record: Record) -> None:
        """State thread: a record is durable. Keep it for paging; hand it to the loop."""
        self.recent.append(record)
        if self._loop is not None:
            self.bus.publish_threadsafe(Journaled(record))

    def _fan_out(self, event: BusEvent) -> None:
        if not isinstance(event, Journaled):
            return
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event.record)
            except asyncio.QueueFull:  # a reader that cannot keep up is cut off
                self._subscribers.discard(queue)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(None)

    async def subscribe(self) -> AsyncIterator[Record]:
        queue: asyncio.Queue[Record | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        try:
            while not self.stopping or not queue.empty():
                record = await queue.get()
                if record is None:
                    return
                yield record
        finally:
            self._subscribers.discard(queue)

    def events(self, *, after: int, limit: int, types: frozenset[str] | None) -> list[Record]:
        out: list[Record] = []
        recent = self.recent
        source: Any
        if recent and recent[0]["seq"] <= after + 1:
            source = list(recent)
        else:
            source = read_records(self.node.layout.eventlog, after)
        for record in source:
            if record["seq"] <= after or (types is not None and record["type"] not in types):
                continue
            out.append(record)
            if len(out) >= limit:
                break
        return out

    # ------------------------------------------------------------------ commands

    async def command(
        self, trigger: str, *, actor: str, cause: str | None, traceparent: str
    ) -> Record:
        """An operator command, in a span that is the parent of everything it causes: the
        event-log append, the control-block write, and (recorded from the ring) the cycle
        acting on the new mode."""
        if trigger not in OPERATOR_COMMANDS:
            raise BadInput(
                "trigger", f"{trigger!r} is not a command; commands: {', '.join(OPERATOR_COMMANDS)}"
            )
        chart_trigger = "fault" if trigger == "safe_mode" else trigger
        if chart_trigger == "fault" and not cause:
            cause = "operator"
        with span(
            self.tracer,
            f"statechart {chart_trigger}",
            {"mxrc.trigger": chart_trigger, "mxrc.actor": actor, "mxrc.cause": cause,
             "mxrc.rt.state": self.node.state},
            parent=traceparent,
        ) as current:
            if chart_trigger != "start" and self.node.state in self.chart.driving_states:
                self._hold()  # a stop or safe_mode withdraws the permission before the record
            try:
                record = await self._state(
                    self.node.fire, chart_trigger, cause=cause, actor=actor,
                    traceparent=current_traceparent(),
                )
            except TriggerRejected as exc:
                if trigger == "start" and set(exc.failed_guards) & PERMISSION_GUARDS:
                    raise NotPermitted(
                        f"start refused: this node is not leader with quorum "
                        f"({self.leadership.detail})",
                        reason=", ".join(sorted(set(exc.failed_guards) & PERMISSION_GUARDS)),
                    ) from exc
                raise
            finally:
                self._mirror()
            current.set_attribute("mxrc.eventlog.seq", record["seq"])
            return record

    async def write_key(self, key: str, value: Any, *, actor: str, traceparent: str) -> Record:
        if self.store is None:
            raise BadInput("key", "the data store is not open")
        try:
            spec = self.table.spec(key)
        except ShmError:
            names = ", ".join(k.name for k in self.table.keys if k.writer == Side.NONRT)
            raise BadInput("key", f"unknown key {key!r}; writable keys: {names}") from None
        if spec.writer != Side.NONRT:
            raise BadInput("key", f"{key!r} is written by the RT process, not by clients")
        normalised = normalise_value(spec.type, spec.words, value)
        previous = self.store.get(key)
        with span(
            self.tracer, "datastore write", {"mxrc.datastore.key": key, "mxrc.actor": actor},
            parent=traceparent,
        ):
            record = await self._state(
                self.node.journal,
                "datastore_write",
                {
                    "key": key,
                    "value": normalised,
                    "previous": list(previous) if isinstance(previous, tuple) else previous,
                    "actor": actor,
                    "critical": spec.critical,
                },
                traceparent=current_traceparent(),
            )
            self.store.set(key, normalised)  # only once the record is durable
        return record

    def tracing_view(self) -> Mapping[str, Any]:
        return {
            "sample_ratio": self.tracing.ratio,
            "parent_based": True,
            "export": self.tracing.export,
        }

    def set_sample_ratio(self, ratio: float, *, actor: str) -> Mapping[str, Any]:
        before = self.tracing.ratio
        self.tracing.set_ratio(ratio)
        log.warning(
            "tracing: sample ratio %g → %g (by %s; tracing.sample_ratio applies again after "
            "a restart)", before, ratio, actor,
        )
        return self.tracing_view()

    def _restore_critical_keys(self) -> None:
        """Critical keys come back from the recovered state, so a restart keeps the last
        setpoints and limits an operator set (and logged)."""
        assert self.store is not None
        for key, value in self.node.snapshot().critical.items():
            with contextlib.suppress(ValueError, TypeError, ShmError):
                spec = self.table.spec(key)
                if spec.writer == Side.NONRT:
                    self.store.set(key, value)

    # ------------------------------------------------------------------ views

    def health(self) -> HealthReport:
        now = time.monotonic_ns()
        problem = self.segments.problem() if self.segments is not None else "not created"
        log_problem = self.node.log_problem
        feed = self.feed
        last = feed.last_record_ns if feed is not None and feed.records else None
        report = evaluate(
            HealthInputs(
                now_ns=now,
                cycle_samples=tuple(self.cycle_samples),
                rt_expected=True,
                last_ring_record_ns=last if last is not None else self.started_ns,
                shm_valid=problem is None,
                shm_problem=problem or "",
                bus_fill=self.bus.fill_ratio,
                leader=self.leadership.leader,
                quorum=self.leadership.quorum,
                lease_remaining_s=self._lease_remaining(now),
                backend=self.ha.name,
                log_writable=log_problem is None,
                log_problem=log_problem or "",
            ),
            self.thresholds,
        )
        # Under the lock, so that two threads' changes of one check reach the bus in
        # the order they were seen (the state thread asks too: a guard needs health).
        with self._health_watch_lock:
            for c in self._health_watch.observe(report):
                if self._loop is not None:
                    previous = "" if c.previous is None else str(c.previous)
                    event = HealthChanged(now, c.check, previous, str(c.status), c.detail)
                    self.bus.publish_threadsafe(event)
        return report

    def readiness(self) -> Readiness:
        ready, reason = health_readiness(self.health(), self.node.state)
        return Readiness(ready, reason)

    def _lease_remaining(self, now_ns: int) -> float | None:
        if not self.leadership.leader:
            return None
        return remaining_s(self.leadership.deadline_ns, now_ns)

    def state_view(self) -> Mapping[str, Any]:
        snap = self.node.snapshot()
        pos = snap.position(self.chart.name, self.chart.initial)
        latest = self.latest
        return {
            "node": self.node_id,
            "chart": self.chart.ref,
            "state": self.node.state,
            "since": iso(pos.since_wall_ns),
            "since_seq": pos.since_seq,
            "cause": pos.cause,
            "cycle": latest.cycle if latest else snap.cycle,
            "slot": latest.slot if latest else snap.slot,
            "leader": self.leadership.leader,
            "quorum": self.leadership.quorum,
            "holder": self.leadership.holder,
            "token": self.leadership.token,
            "lease_remaining_s": self._lease_remaining(time.monotonic_ns()),
            "ha_backend": self.ha.name,
            "legal_triggers": list(self.node.legal_triggers()),
            "active_conditions": self.active_conditions(),
            "last_seq": snap.last_seq,
            "rt": {
                "attached": self.rt_attached,
                "driving": bool(latest.driving) if latest else False,
                "starts": self.rt_starts,
            },
        }

    def telemetry(self) -> Mapping[str, Any]:
        latest = self.latest
        if latest is None:
            return {}
        return {
            "cycle": latest.cycle,
            "slot": latest.slot,
            "wake_p99_us": latest.wake_p99_us,
            "misses": latest.misses,
            "tracking_error": latest.tracking_error,
            "joint_position": latest.joint_position,
            "driving": latest.driving,
            "t": iso(self.latest_wall_ns),
        }

    def datastore_view(self) -> Sequence[Mapping[str, Any]]:
        out = []
        for spec in self.table.keys:
            value: Any = None
            if self.store is not None:
                with contextlib.suppress(ShmError):
                    value = self.store.get(spec.name)
            out.append(
                {
                    "name": spec.name,
                    "type": spec.type,
                    "writer": str(spec.writer),
                    "critical": spec.critical,
                    "value": list(value) if isinstance(value, tuple) else value,
                }
            )
        return out

    # ------------------------------------------------------------------ housekeeping

    async def _housekeeping(self) -> None:
        """Periodic work on the loop: cycle progress into the log, checkpoints, the RT
        silence check. Its tick counter is what the watchdog watches."""
        status_every_s = float(self.config["cycle.status_interval_s"])
        period_ns = round(float(self.config["cycle.period_ms"]) * 1e6)
        next_status = time.monotonic()
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
            self.loop_ticks += 1
            now = time.monotonic()
            if self.feed is not None and (lost := self.feed.check_silence(time.monotonic_ns())):
                self.bus.publish(lost)
            latest = self.latest
            if (
                now >= next_status
                and latest is not None
                and latest.cycle != self._last_journaled_cycle
            ):
                next_status = now + status_every_s
                self._last_journaled_cycle = latest.cycle
                await self._state(
                    self.node.journal,
                    "cycle_status",
                    {
                        "cycle": latest.cycle,
                        "slot": latest.slot,
                        "period_ns": period_ns,
                        "deadline_misses": latest.misses,
                    },
                )
            await self._state(self.node.checkpoint_if_due)

    def status_line(self) -> str:
        latest = self.latest
        cycle = (
            f"cycle {latest.cycle}, p99 wake {latest.wake_p99_us:.0f} µs, {latest.misses} misses"
            if latest
            else "no cycle figures yet"
        )
        return (
            f"{self.node.state}; {'leader' if self.leadership.leader else 'follower'} "
            f"token {self.leadership.token}; {cycle}; health {self.health().status}"
        )

    def announce(self, api_url: str, token_file: Path) -> Path:
        """Write ``<data_dir>/nonrt.json`` so that ``mxrc run``, tools and tests find the
        API without guessing a port."""
        path = self.config.data_dir / ANNOUNCE_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(
            orjson.dumps(
                {
                    "pid": os.getpid(),
                    "node": self.node_id,
                    "api": api_url,
                    "token_file": str(token_file.resolve()),
                },
                option=orjson.OPT_INDENT_2,
            )
        )
        tmp.replace(path)
        return path

    def withdraw_announcement(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.config.data_dir / ANNOUNCE_FILE).unlink()


def normalise_value(type_: str, words: int, value: Any) -> Any:
    """Check a client's value against the key's declared type (400 naming ``value``)."""

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    if type_ == "f64":
        if not number(value):
            raise BadInput("value", f"expected a number, got {value!r}")
        return float(value)
    if type_ == "i64":
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadInput("value", f"expected an integer, got {value!r}")
        if not -(2**63) <= value < 2**63:
            raise BadInput("value", f"{value} does not fit a signed 64-bit integer")
        return value
    if type_ == "bool":
        if not isinstance(value, bool):
            raise BadInput("value", f"expected true or false, got {value!r}")
        return value
    if not isinstance(value, list) or len(value) != words or not all(map(number, value)):
        raise BadInput("value", f"expected an array of {words} numbers ({type_}), got {value!r}")
    return [float(v) for v in value]
