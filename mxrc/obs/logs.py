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
import functools
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
import traceback
import types
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

    A put takes no lock: it is one ``deque.append`` (atomic under the GIL) and a read of
    the consumer's idle flag, because a lock is a measurable part of what a cycle pays
    to log (``tools/bench/logging_overhead.py``). Only a drop takes a lock, so that every
    dropped item is counted exactly once however many producers race; producers racing
    at the brim may overfill it by one item each until the next put drops back under
    ``capacity``.

    Producers signal the consumer only when it said it was going to sleep for good: an
    emptied queue first lingers ``linger_s`` on the consumer's own timer, unsignalled,
    so a process that logs steadily (ten records every cycle) pays no wake-up per
    burst — the writer drains what a linger collected in one go — and a process that
    stopped logging has, one linger later, a writer with no periodic wake-up at all
    (which matters in mxrc rt, whose threads share the RT CPU's neighbourhood). No
    wake-up is lost: the consumer clears its event, declares itself idle and only then
    looks at the queue once more; a producer appends and only then reads the flag, so
    one of the two sees the other's write (operations on Python objects are sequentially
    consistent under the GIL).
    """

    def __init__(self, capacity: int, linger_s: float = WRITER_LINGER_S) -> None:
        if capacity < 1:
            raise ValueError(f"queue capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self.linger_s = linger_s
        self._items: deque[Any] = deque()
        self._last: Any = _NOTHING  # put_last's item (the stdlib's sentinel is None)
        self._drop_lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = False
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: Any) -> None:
        items = self._items
        if len(items) >= self.capacity:
            self._drop_to_make_room()
        items.append(item)
        if self._idle:
            self._wake.set()

    put = put_nowait

    def _drop_to_make_room(self) -> None:
        items = self._items
        with self._drop_lock:
            while len(items) >= self.capacity:
                try:
                    items.popleft()
                except IndexError:  # the consumer took the rest meanwhile
                    break
                self.dropped += 1

    def put_last(self, item: Any) -> None:
        """Hand ``item`` out after everything queued, displacing nothing, and wake the
        consumer even from a linger: the writer's stop sentinel, so that stopping never
        costs a record nor waits out a linger."""
        self._last = item
        self._wake.set()

    def get(self, block: bool = True) -> Any:
        """The oldest item; with ``block``, wait for one (as long as it takes: the
        writer thread's only call). There is one consumer."""
        items = self._items
        lingered = self.linger_s <= 0
        while True:
            if items:
                try:
                    return items.popleft()
                except IndexError:  # a producer dropped it to make room
                    continue
            if self._last is not _NOTHING:
                last, self._last = self._last, _NOTHING
                return last
            if not block:
                raise queue.Empty
            self._wake.clear()
            self._idle = lingered
            if items or self._last is not _NOTHING:
                self._idle = False
                continue
            self._wake.wait(None if lingered else self.linger_s)
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
    """A logger for code that runs every cycle: same records, same sinks, a fraction of
    the caller's cost.

    A stdlib ``log.info`` builds a :class:`logging.LogRecord` on the caller (about 20
    attributes, the caller's frame found by walking the stack, the message formatted,
    the handler's lock). After a 10 ms sleep, with the caches cold, each of those steps
    costs several times what it costs in a loop. This logger captures one tuple instead
    — time, level, message and arguments, the calling frame's code and offset, the thread,
    a copy of the context variables (request id, current span), fields — and appends it
    to the queue without a lock; the writer thread builds the record from it, so the ECS
    document, the journald fields and the file line are exactly those of a stdlib call
    (``tools/bench/logging_overhead.py`` measures both entrances in one run). Arguments
    that are ``str``, ``int``, ``float``, ``bool`` or ``None`` are formatted by the
    writer, as they cannot change meanwhile; any other is formatted at once, so that the
    line says what the object was when it was logged. A message its arguments do not
    fit is reported on stderr, as stdlib logging reports it, never raised.

    ``log = CycleLogger("mxrc.app.supervision"); log.info("lag %d", n, rt_cycle=c)``:
    keyword arguments are the ``mxrc`` fields of :func:`mxrc.obs.ecs.mxrc_extra` (an
    unknown one raises ``TypeError`` at the call). The level is the named stdlib
    logger's (``logging.getLogger(name)``).

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
        if route is None or logging.root.handlers != route[1] or logger.handlers:
            logger.log(level, msg, *args, extra=mxrc_extra(**fields), stacklevel=3)
            return
        if args and not _DEFERRED_TYPES.issuperset(map(type, args)):
            message = _formatted(msg, args)
            if message is None:  # stdlib logging reports it (it never raises)
                logger.log(level, msg, *args, extra=mxrc_extra(**fields), stacklevel=3)
                return
            msg, args = message, ()
        frame = sys._getframe(2)
        route[0].put_nowait((
            time.time(), level, self.name, msg, args, frame.f_code, frame.f_lasti,
            threading.current_thread(), contextvars.copy_context(), _shared.fields, fields,
        ))  # fmt: skip


#: Argument types whose ``%`` formatting the writer may do later: immutable, so the
#: text is what it would have been on the caller. Anything else is formatted at once.
_DEFERRED_TYPES: Final = frozenset((str, int, float, bool, type(None)))


def _formatted(msg: str, args: tuple[object, ...]) -> str | None:
    """``msg % args`` as stdlib logging merges them (one mapping argument: ``%(x)s``);
    ``None`` when they do not fit."""
    one = args[0] if len(args) == 1 else None
    try:
        return msg % (one if isinstance(one, Mapping) and one else args)
    except (TypeError, ValueError, KeyError):
        return None


def _request_and_span() -> tuple[str | None, Span]:
    return current_request_id(), get_current_span()


@functools.lru_cache(maxsize=1024)
def line_at(code: types.CodeType, offset: int) -> int:
    """The source line of the instruction at byte ``offset`` in ``code``.

    What ``frame.f_lineno`` says, worked out later: CPython finds ``f_lineno`` by
    reading the function's line table from its start (a cost that grows with the line's
    distance from the function's first), while ``f_lasti`` is a field read, so a
    :class:`CycleLogger` caller captures the offset and the writer looks the line up
    (once per call site).
    """
    for start, end, line in code.co_lines():
        if start <= offset < end and line is not None:
            return line
    return code.co_firstlineno


def materialize(captured: tuple[Any, ...]) -> logging.LogRecord:
    """The stdlib record of a :class:`CycleLogger` capture (in the writer thread)."""
    (created, level, name, msg, args, code, offset, thread, context, process,
     fields) = captured  # fmt: skip
    # the caller's context variables, copied in one step: its request id and span
    request_id, span = context.run(_request_and_span)
    span_context = span.get_span_context()
    lineno = line_at(code, offset)
    record = logging.LogRecord(
        name, level, code.co_filename, lineno, msg, args, None, code.co_name
    )
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    record.relativeCreated = (created - logging._startTime) * 1000  # type: ignore[attr-defined]
    record.threadName = thread.name
    if fields:
        process = {**process, **mxrc_extra(**fields)["mxrc"]}
    record.mxrc_context = CapturedContext(
        thread_id=thread.native_id,
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

    def handle(self, record: logging.LogRecord | tuple[Any, ...]) -> None:
        """Write one record to every sink. A record that cannot be written (a message
        whose arguments do not fit it, formatted here for a :class:`CycleLogger`) is
        reported on stderr as stdlib logging reports it, and the writer goes on: an
        exception here would end the thread and silence the process."""
        if isinstance(record, tuple):
            record = materialize(record)
        try:
            prepared = self.prepare(record)
        except Exception:
            _error_reporter.handleError(record)
            return
        for handler in self.handlers:
            handler.handle(prepared)


#: Reports a record the writer cannot format (``Handler.handleError``: "--- Logging
#: error ---", the traceback, the message and its arguments, on stderr).
_error_reporter = logging.Handler()


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
