"""One controller node's durable core: data directory, event log, recovery, checkpoints.

Boot order matters and is fixed here: take the data-directory lock (one writer per
log), open the log (repairing a torn tail), recover the folded state (newest usable
checkpoint + tail), journal ``node_started``, and if the node crashed while driving
outputs, journal ``fault(cause="restart")`` before anything else can happen: motion
never resumes by itself after a crash.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.trace import Tracer

from mxrc import __version__
from mxrc.checkpoint import Recovery, recover, remove_temporaries, write_checkpoint
from mxrc.config import Config
from mxrc.errors import DataDirLockedError
from mxrc.eventlog import EventLog, LogIdentity
from mxrc.nodestate import NodeState
from mxrc.obs.correlation import current_traceparent
from mxrc.obs.tracing import span, unrecorded_tracer
from mxrc.segments import Record, TornTail
from mxrc.statechart import Chart
from mxrc.statemachine import SafetyStateMachine

RESTART_CAUSE = "restart"


@dataclass(frozen=True)
class DataLayout:
    root: Path

    @property
    def eventlog(self) -> Path:
        return self.root / "eventlog"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def lock(self) -> Path:
        return self.root / "lock"


class DataDirLock:
    """An exclusive ``flock`` on ``<data-dir>/lock``, released by the kernel if we die."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLockedError(
                f"data directory {self.path.parent} is in use by another mxrc (pid {holder}, "
                f"lock {self.path}); stop that process or choose another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class BootReport:
    previous_shutdown: str
    recovered_state: str
    recovery: Recovery
    torn_tail: TornTail | None
    restart_fault: bool


class Node:
    """Owns the log, the folded state and the statechart of one node (thread-safe)."""

    def __init__(
        self,
        config: Config,
        chart: Chart,
        guards: Mapping[str, Callable[[], bool]],
        *,
        notice: Callable[[str], None] = lambda _line: None,
        tracer: Tracer | None = None,
    ) -> None:
        self.config = config
        self._tracer = tracer or unrecorded_tracer()
        self.chart = chart
        self.layout = DataLayout(config.data_dir)
        self._guards = guards
        self._notice = notice
        self._lock = DataDirLock(self.layout.lock)
        self._fold_lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._early: dict[int, Record] = {}
        self._state = NodeState()
        self._log: EventLog | None = None
        self._machine: SafetyStateMachine | None = None
        self._checkpointed_seq = -1
        self._last_checkpoint = time.monotonic()
        self.token = 0
        self._listeners: list[Callable[[Record], None]] = []
        self._record_listeners: list[Callable[[Record], None]] = []
        self._fsync_observer: Callable[[int, float], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> BootReport:
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            return self._boot()
        except BaseException:
            self._lock.release()
            raise

    def _boot(self) -> BootReport:
        identity = LogIdentity(self.config.node_id, self.chart.name, self.chart.version_hash)
        self._log = EventLog.open(
            self.layout.eventlog, identity, segment_bytes=self.config["eventlog.segment_bytes"]
        )
        self._log.fsync_observer = self._fsync_observer
        torn = self._log.repaired_tail
        if torn is not None:
            self._notice(
                f"repaired the event log: {torn.describe()}; the bytes were copied to "
                f"{self.layout.eventlog / 'broken'}"
            )
        self.layout.checkpoints.mkdir(exist_ok=True)
        remove_temporaries(self.layout.checkpoints)
        recovery = recover(
            self.layout.eventlog, self.layout.checkpoints, self._log.last_seq, notice=self._notice
        )
        self._state = recovery.state
        self.token = self._state.token
        if self._state.last_seq == 0:
            previous = "first_boot"
        else:
            previous = "crash" if self._state.process_up else "clean"
        recovered = self._state.position(self.chart.name, self.chart.initial).state
        self._machine = SafetyStateMachine(
            self.chart, self._guards, self.journal, initial=recovered
        )
        self._machine.on_transition(self._checkpoint_after_transition)
        for listener in self._listeners:
            self._machine.on_transition(listener)
        self.journal(
            "node_started",
            {
                "pid": os.getpid(),
                "version": __version__,
                "previous_shutdown": previous,
                "recovered_state": recovered,
                "recovered_from_checkpoint": recovery.checkpoint_seq,
                "replayed_records": recovery.replayed,
                "torn_tail_bytes": torn.length if torn else 0,
            },
        )
        restart_fault = recovered in self.chart.driving_states
        if restart_fault:
            self.fire("fault", cause=RESTART_CAUSE, actor="system")
        self.checkpoint()
        return BootReport(previous, recovered, recovery, torn, restart_fault)

    def stop(self, reason: str) -> None:
        """Clean shutdown: leave the driving state, journal ``node_stopped``, checkpoint."""
        if self._log is None:
            return
        try:
            if self.state in self.chart.driving_states:
                self.fire("stop", cause=f"shutdown: {reason}", actor="system")
            self.journal("node_stopped", {"reason": reason})
            self.checkpoint()
        finally:
            self._log.close()
            self._log = None
            self._lock.release()

    def on_transition(self, listener: Callable[[Record], None]) -> None:
        """Register before :meth:`start` so the boot transitions are seen too."""
        self._listeners.append(listener)

    def on_record(self, listener: Callable[[Record], None]) -> None:
        """Called with every record once it is durable (in the appending thread).
        Register before :meth:`start` so ``node_started`` is seen too."""
        self._record_listeners.append(listener)

    def on_fsync(self, observer: Callable[[int, float], None]) -> None:
        """``observer(records, seconds)`` after every fsync of the log (register before
        :meth:`start`)."""
        self._fsync_observer = observer

    @property
    def log_problem(self) -> str | None:
        """Why the log refuses appends (an fsync failed, it is closed), or None."""
        if self._log is None:
            return "event log not open"
        return self._log.problem

    # ------------------------------------------------------------------ journal & state

    def journal(
        self, event_type: str, payload: Mapping[str, Any], *, traceparent: str | None = None
    ) -> Record:
        """Durably append, then fold into the live state (in sequence order, since
        concurrent appenders may return from the group commit in any order).

        The record carries ``traceparent``, or else the caller's current trace context,
        so a record appended while handling a traced command or event joins its trace;
        the wait for the group commit is the ``eventlog.append`` span."""
        assert self._log is not None, "node not started"
        traceparent = traceparent or current_traceparent()
        with span(self._tracer, "eventlog.append", {"mxrc.event.type": event_type}) as current:
            record = self._log.append(
                event_type, payload, token=self.token, traceparent=traceparent
            )
            current.set_attribute("mxrc.eventlog.seq", record["seq"])
        with self._fold_lock:
            self._early[record["seq"]] = record
            while (nxt := self._early.pop(self._state.last_seq + 1, None)) is not None:
                self._state.apply(nxt)
        for listener in self._record_listeners:
            listener(record)
        return record

    def fire(
        self,
        trigger: str,
        *,
        cause: str | None = None,
        actor: str = "system",
        traceparent: str | None = None,
    ) -> Record:
        assert self._machine is not None, "node not started"
        return self._machine.fire(trigger, cause=cause, actor=actor, traceparent=traceparent)

    @property
    def state(self) -> str:
        assert self._machine is not None, "node not started"
        return self._machine.state

    def legal_triggers(self) -> tuple[str, ...]:
        assert self._machine is not None, "node not started"
        return self._machine.legal_triggers()

    def snapshot(self) -> NodeState:
        with self._fold_lock:
            return NodeState.from_dict(self._state.to_dict())

    def checkpoint(self) -> Path | None:
        """Write a checkpoint if anything was logged since the last one."""
        with self._checkpoint_lock:
            state = self.snapshot()
            if state.last_seq == self._checkpointed_seq:
                return None
            path = write_checkpoint(
                self.layout.checkpoints, state, keep=self.config["checkpoint.keep"]
            )
            self._checkpointed_seq = state.last_seq
            self._last_checkpoint = time.monotonic()
            return path

    def _checkpoint_after_transition(self, _record: Record) -> None:
        self.checkpoint()

    def checkpoint_if_due(self) -> Path | None:
        if time.monotonic() - self._last_checkpoint < self.config["checkpoint.interval_s"]:
            return None
        return self.checkpoint()
