"""The log pipeline of an mxrc process: capture on the caller, write on a thread.

A logging call must never make the caller wait — the caller may be the event loop that
renews the lease — so the caller only captures what exists nowhere else later (the
message with its arguments, the traceback, the correlation ids and mxrc fields from its
context) and puts the record on a bounded queue (:class:`DropOldestQueue`). One writer
thread (stdlib :class:`logging.handlers.QueueListener`) turns each record into its ECS
document once and hands it to the sinks: stderr (ECS JSON lines, or text on a terminal),
a size-rotated file (stdlib :class:`~logging.handlers.RotatingFileHandler`, one JSON
object per line) and journald's native protocol when the process runs under systemd.

Under pressure the queue drops its *oldest* record and counts it (``dropped``, exported
as ``mxrc_log_dropped_records_total`` by nonrt): the newest lines say most about what is
happening now, the same rule as the RT ring and the EventBus. The event log, not this,
is the exact record of what the node did.

The RT cycle thread never logs: what it has to say travels through the ring, and nonrt
logs it (see :mod:`mxrc.service.logbook`).
"""

from __future__ import annotations

import contextvars
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple, TextIO

from opentelemetry.trace import Span, get_current_span

from mxrc.errors import MxrcError
from mxrc.obs import journald
from mxrc.obs.correlation import current_request_id
from mxrc.obs.ecs import (
    MXRC_FIELDS,
    ecs_document,
    ecs_line,
    journal_fields,
    mxrc_extra,
    text_line,
)

DEFAULT_QUEUE_CAPACITY: Final = 8192
#: How long the writer keeps polling an emptied queue before it asks producers to wake
#: it (:class:`DropOldestQueue`): also the longest a record waits for its sinks.
WRITER_LINGER_S: Final = 0.02
#: Loggers that speak for every request or every transition callback (the statechart
#: library narrates its own internals at info); their lines are warnings and up only.
QUIET_LOGGERS: Final = ("aiohttp.access", "transitions")
LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class _Shared:
    """What every record of this process reads: the process-wide ``mxrc`` fields (node,
    state, lease token; replaced on change, never changed in place, so that a record
    captures them by reference, without a copy) and the running pipeline's queue with
    the root handler list a :class:`CycleLogger` expects (``None``: no pipeline)."""

    __slots__ = ("fast_route", "fields")

    def __init__(self) -> None:
        self.fields: Mapping[str, object] = {}
        self.fast_route: tuple[DropOldestQueue, list[logging.Handler]] | None = None


_shared = _Shared()


def set_process_fields(**fields: object) -> None:
    """Set (or with ``None`` remove) process-wide ``mxrc`` fields, by their dotted name
    (``set_process_fields(**{"rt.state": "RUNNING"})``) or keyword (``node="n1"``)."""
    updated = dict(_shared.fields)
    for name, value in fields.items():
        dotted = MXRC_FIELDS.get(name, name)
        if value is None:
            updated.pop(dotted, None)
        else:
            updated[dotted] = value
    _shared.fields = updated


def process_fields() -> Mapping[str, object]:
    return dict(_shared.fields)


#: Pipelines of this process that are running, and the drops of those that stopped:
#: together what ``mxrc_log_dropped_records_total`` exports.
_running: list[LogPipeline] = []
_stopped_drops: list[int] = []


def dropped_records() -> int:
    """Log records this process dropped because its queue was full, since it started."""
    return sum(_stopped_drops) + sum(p.dropped for p in _running)


class CapturedContext(NamedTuple):
    """What the calling thread knew when it logged: gone by the time the writer runs."""

    thread_id: int
    request_id: str | None
    #: Integers as OpenTelemetry holds them (0: none); hex is written by the writer.
    trace_id: int
    span_id: int
    fields: Mapping[str, object]
    error_type: str | None = None
    error_message: str | None = None
    stack_trace: str | None = None


_NOTHING: Final = object()


class DropOldestQueue:
    """A bounded queue for :class:`~logging.handlers.QueueHandler` and
    :class:`~logging.handlers.QueueListener` that never blocks a producer: a full queue
    drops its oldest item and counts it.

    The lock is held only to move items in or out (no I/O, no allocation of note).
    Producers signal the consumer only when it said it was going to sleep for good: an
    emptied queue first lingers ``linger_s`` on the consumer's own timer, unsignalled,
    so a process that logs steadily (ten records every cycle) pays no wake-up per
    burst — the writer drains what a linger collected in one go — and a process that
    stopped logging has, one linger later, a writer with no periodic wake-up at all
    (which matters in mxrc rt, whose threads share the RT CPU's neighbourhood). No
    wake-up is lost: the consumer declares itself idle under the lock, and a producer
    reads that flag under the same lock after adding its item.
    """

    def __init__(self, capacity: int, linger_s: float = WRITER_LINGER_S) -> None:
        if capacity < 1:
            raise ValueError(f"queue capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self.linger_s = linger_s
        self._items: deque[Any] = deque()
        self._last: Any = _NOTHING  # put_last's item (the stdlib's sentinel is None)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = False
        self.dropped = 0
        self.put_total = 0

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: Any) -> None:
        with self._lock:
            if len(self._items) >= self.capacity:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self.put_total += 1
            idle = self._idle
        if idle:
            self._wake.set()

    put = put_nowait

    def put_last(self, item: Any) -> None:
        """Hand ``item`` out after everything queued, displacing nothing, and wake the
        consumer even from a linger: the writer's stop sentinel, so that stopping never
        costs a record nor waits out a linger."""
        with self._lock:
            self._last = item
        self._wake.set()

    def get(self, block: bool = True) -> Any:
        """The oldest item; with ``block``, wait for one (as long as it takes: the
        writer thread's only call)."""
        lingered = self.linger_s <= 0
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                if self._last is not _NOTHING:
                    last, self._last = self._last, _NOTHING
                    return last
                if not block:
                    raise queue.Empty
                self._wake.clear()
                self._idle = lingered
            self._wake.wait(None if lingered else self.linger_s)
            with self._lock:
                self._idle = False
            lingered = True

    def get_nowait(self) -> Any:
        return self.get(block=False)


class CapturingQueueHandler(logging.handlers.QueueHandler):
    """Captures the caller's context and queues the record; formats nothing here."""

    queue: DropOldestQueue

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        message = record.getMessage()
        error_type = error_message = stack = None
        if record.exc_info:
            exc_type, exc, tb = record.exc_info
            if exc_type is not None:
                error_type = exc_type.__qualname__
                error_message = str(exc)
                stack = "".join(traceback.format_exception(exc_type, exc, tb))
        elif record.exc_text:
            stack = record.exc_text
        if record.stack_info:
            stack = (stack or "") + record.stack_info
        fields = _shared.fields
        extra = record.__dict__.get("mxrc")
        if isinstance(extra, Mapping) and extra:
            fields = {**fields, **extra}
        span_context = get_current_span().get_span_context()
        record.mxrc_context = CapturedContext(
            thread_id=threading.get_native_id(),
            request_id=current_request_id(),
            trace_id=span_context.trace_id,
            span_id=span_context.span_id,
            fields=fields,
            error_type=error_type,
            error_message=error_message,
            stack_trace=stack,
        )
        # The writer formats from these; drop what pins frames or mutable arguments.
        record.msg = message
        record.message = message
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return record


# --- the fast entrance: for code that logs every cycle -----------------------------------

_FIELD_NAMES: Final = frozenset(MXRC_FIELDS)


class CycleLogger:
    """A logger for code that runs every cycle: same records, same sinks, a third of the
    caller's cost or less.

    A stdlib ``log.info`` builds a :class:`logging.LogRecord` on the caller (about 20
    attributes, the caller's frame found by walking the stack, the handler's lock): on a
    2-vCPU VM that is about 35 µs a call once a 10 ms sleep has let the caches go cold,
    3-4 % of a 10 ms cycle at ten records per cycle. This logger captures one tuple
    instead — time, level, the formatted message, the calling frame's file, line and
    function, thread, a copy of the context variables (request id, current span), fields
    — and queues it; the writer
    thread builds the record from it, so the ECS document, the journald fields and the
    file line are exactly those of a stdlib call (``tools/bench/logging_overhead.py``
    measures both entrances in one run).

    ``log = CycleLogger("mxrc.app.supervision"); log.info("lag %d", n, rt_cycle=c)``:
    keyword arguments are the ``mxrc`` fields of :func:`mxrc.obs.ecs.mxrc_extra`. The
    level is the named stdlib logger's (``logging.getLogger(name)``).

    When no :class:`LogPipeline` runs, or anything other than the pipeline's handler is
    on the root logger (pytest's ``caplog``, a user's own handler), or the named logger
    has handlers of its own, the call goes through stdlib logging unchanged, so that
    every handler sees every record.
    """

    __slots__ = ("logger", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.logger = logging.getLogger(name)

    def debug(self, msg: str, *args: object, **fields: object) -> None:
        self._log(logging.DEBUG, msg, args, fields)

    def info(self, msg: str, *args: object, **fields: object) -> None:
        self._log(logging.INFO, msg, args, fields)

    def warning(self, msg: str, *args: object, **fields: object) -> None:
        self._log(logging.WARNING, msg, args, fields)

    def error(self, msg: str, *args: object, **fields: object) -> None:
        self._log(logging.ERROR, msg, args, fields)

    def _log(
        self, level: int, msg: str, args: tuple[object, ...], fields: dict[str, object]
    ) -> None:
        logger = self.logger
        if not logger.isEnabledFor(level):
            return
        if fields and not fields.keys() <= _FIELD_NAMES:
            mxrc_extra(**fields)  # raises, naming the unknown field and the known ones
        route = _shared.fast_route
        if (
            route is None
            or logging.root.handlers != route[1]
            or logger.handlers
            or (message := _formatted(msg, args)) is None
        ):
            logger.log(level, msg, *args, extra=mxrc_extra(**fields), stacklevel=3)
            return
        frame = sys._getframe(2)
        code = frame.f_code
        route[0].put_nowait((
            time.time(), level, self.name, message, code.co_filename, frame.f_lineno,
            code.co_name, (threading.get_native_id(), threading.current_thread().name),
            contextvars.copy_context(), _shared.fields, fields,
        ))  # fmt: skip


def _formatted(msg: str, args: tuple[object, ...]) -> str | None:
    """``msg % args`` as stdlib logging merges them (one mapping argument: ``%(x)s``);
    ``None`` when they do not fit, so that stdlib logging reports it (it never raises)."""
    if not args:
        return msg
    one = args[0] if len(args) == 1 else None
    try:
        return msg % (one if isinstance(one, Mapping) and one else args)
    except (TypeError, ValueError, KeyError):
        return None


def _request_and_span() -> tuple[str | None, Span]:
    return current_request_id(), get_current_span()


def materialize(captured: tuple[Any, ...]) -> logging.LogRecord:
    """The stdlib record of a :class:`CycleLogger` capture (in the writer thread)."""
    (created, level, name, message, pathname, lineno, func,
     (native_id, thread_name), context, process, fields) = captured  # fmt: skip
    # the caller's context variables, copied in one step: its request id and span
    request_id, span = context.run(_request_and_span)
    span_context = span.get_span_context()
    record = logging.LogRecord(name, level, pathname, lineno, message, None, None, func)
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    record.relativeCreated = (created - logging._startTime) * 1000  # type: ignore[attr-defined]
    record.threadName = thread_name
    if fields:
        process = {**process, **mxrc_extra(**fields)["mxrc"]}
    record.mxrc_context = CapturedContext(
        thread_id=native_id,
        request_id=request_id,
        trace_id=span_context.trace_id,
        span_id=span_context.span_id,
        fields=process,
    )
    return record


class EcsWriter(logging.handlers.QueueListener):
    """The writer thread: one ECS document per record, rendered for every sink."""

    queue: DropOldestQueue

    def __init__(
        self, queue: DropOldestQueue, *handlers: logging.Handler, process_name: str
    ) -> None:
        super().__init__(queue, *handlers, respect_handler_level=False)
        self.process_name = process_name

    def enqueue_sentinel(self) -> None:
        self.queue.put_last(self._sentinel)  # type: ignore[attr-defined]  # stdlib, untyped

    def prepare(self, record: logging.LogRecord | tuple[Any, ...]) -> logging.LogRecord:
        if isinstance(record, tuple):
            record = materialize(record)
        doc = ecs_document(record, process_name=self.process_name)
        record.ecs = doc
        record.ecs_json = ecs_line(doc)
        return record


class _EcsLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return str(record.__dict__["ecs_json"][:-1].decode())


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return text_line(record.__dict__["ecs"])


class JournaldHandler(logging.Handler):
    """journald's native protocol: fields journalctl can filter on (``-p err``,
    ``MXRC_RT_STATE=SAFE_MODE``, ``TRACE_ID=…``)."""

    def __init__(self, sender: journald.JournalSender) -> None:
        super().__init__()
        self.sender = sender

    def emit(self, record: logging.LogRecord) -> None:
        self.sender.send(journal_fields(record, record.__dict__["ecs"]))

    def close(self) -> None:
        self.sender.close()
        super().close()


@dataclass(frozen=True)
class LogSettings:
    """The ``[logging]`` section (see :mod:`mxrc.config` for the keys' help)."""

    level: int = logging.INFO
    queue_capacity: int = DEFAULT_QUEUE_CAPACITY
    stderr: str = "auto"
    journald: str = "auto"
    file: Path | None = None
    file_max_bytes: int = 10 * 1024 * 1024
    file_backups: int = 5

    @classmethod
    def from_config(cls, config: Any, process_name: str) -> LogSettings:
        file = str(config["logging.file"]).strip()
        path: Path | None = None
        if file:
            path = Path(file.replace("{process}", process_name))
            if not path.is_absolute():
                path = Path(str(config["node.data_dir"])) / path
        return cls(
            level=LEVELS[str(config["logging.level"])],
            queue_capacity=int(config["logging.queue_capacity"]),
            stderr=str(config["logging.stderr"]),
            journald=str(config["logging.journald"]),
            file=path,
            file_max_bytes=int(config["logging.file_max_bytes"]),
            file_backups=int(config["logging.file_backups"]),
        )


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _fileno(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, ValueError, OSError):
        return None


class LogPipeline:
    """Installs the handler on the root logger and runs the writer thread.

    ``with LogPipeline(settings, process_name="mxrc-nonrt"): ...`` or
    :meth:`start`/:meth:`stop`. :meth:`stop` writes what is queued before returning.
    """

    def __init__(
        self,
        settings: LogSettings,
        *,
        process_name: str,
        stderr: TextIO | None = None,
        env: Mapping[str, str] | None = None,
        journal_socket: Path = journald.JOURNAL_SOCKET,
    ) -> None:
        self.settings = settings
        self.process_name = process_name
        self.queue = DropOldestQueue(settings.queue_capacity)
        stream = sys.stderr if stderr is None else stderr
        environment = os.environ if env is None else env
        fd = _fileno(stream)
        use_journald = settings.journald == "on" or (
            settings.journald == "auto"
            and fd is not None
            and journald.running_under_journald(environment, fd)
        )
        stderr_mode = settings.stderr
        if stderr_mode == "auto":
            stderr_mode = "off" if use_journald else ("text" if _isatty(stream) else "ecs")
        handlers: list[logging.Handler] = []
        self.sinks: list[str] = []
        if stderr_mode != "off":
            console = logging.StreamHandler(stream)
            console.setFormatter(_TextFormatter() if stderr_mode == "text" else _EcsLineFormatter())
            handlers.append(console)
            self.sinks.append(f"stderr ({stderr_mode})")
        if settings.file is not None:
            settings.file.parent.mkdir(parents=True, exist_ok=True)
            rotating = logging.handlers.RotatingFileHandler(
                settings.file,
                maxBytes=settings.file_max_bytes,
                backupCount=settings.file_backups,
                encoding="utf-8",
            )
            rotating.setFormatter(_EcsLineFormatter())
            handlers.append(rotating)
            self.sinks.append(
                f"file {settings.file} ({settings.file_max_bytes} bytes × {settings.file_backups})"
            )
        if use_journald:
            handlers.append(JournaldHandler(journald.JournalSender(journal_socket)))
            self.sinks.append("journald (native protocol)")
        self.handlers = handlers
        self.handler = CapturingQueueHandler(self.queue)
        self.writer = EcsWriter(self.queue, *handlers, process_name=process_name)
        self._saved_level: int | None = None
        self._started = False

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    @property
    def reaches_the_user(self) -> bool:
        """Whether a record is seen where the command line's own message would be (on
        stderr, or in the journal where systemd puts stderr)."""
        return any(not isinstance(h, logging.handlers.RotatingFileHandler) for h in self.handlers)

    def report(self, logger: logging.Logger, exc: MxrcError) -> None:
        """Log the error that ends the process (with its fields, so ``journalctl -p err``
        finds it) and mark it so that the command line does not print it again."""
        logger.error("%s", exc)
        if self.reaches_the_user:
            exc.reported = True

    def describe(self) -> str:
        sinks = ", ".join(self.sinks) or "no sink"
        level = logging.getLevelName(self.settings.level).lower()
        return f"logs: {sinks}; level {level}; queue {self.queue.capacity} (drop-oldest)"

    def start(self) -> LogPipeline:
        root = logging.getLogger()
        self._saved_level = root.level
        root.setLevel(self.settings.level)
        root.addHandler(self.handler)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(max(logging.WARNING, self.settings.level))
        self.writer.start()
        self._started = True
        _running.append(self)
        _shared.fast_route = (self.queue, [self.handler])
        return self

    def stop(self) -> None:
        """Detach, write everything still queued, close the sinks."""
        if not self._started:
            return
        self._started = False
        root = logging.getLogger()
        root.removeHandler(self.handler)
        route = _shared.fast_route
        if route is not None and route[0] is self.queue:
            _shared.fast_route = None
        if self._saved_level is not None:
            root.setLevel(self._saved_level)
        self.writer.stop()
        for handler in self.handlers:
            handler.close()
        _running.remove(self)
        _stopped_drops.append(self.dropped)

    def __enter__(self) -> LogPipeline:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
