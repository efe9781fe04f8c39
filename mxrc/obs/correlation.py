"""Correlation ids that follow the work, not the thread: request id and trace context.

One request of the admin API becomes a statechart transition on the state thread, a
durable record on the flusher thread, a control-block write and a bus event; an
engineer reading the logs afterwards needs every line of that story to carry the same
ids. Both ids live in :mod:`contextvars`, so they follow ``await`` and are copied into
threads that are started with the caller's context (``contextvars.copy_context().run``),
and nothing has to pass them by hand.

The trace context is OpenTelemetry's own (the current span in
:mod:`opentelemetry.context`), so spans, logs and the traceparent written into records
cannot disagree; a traceparent that arrives from outside a span (a bus event decoded from
the ring, a record being replayed) is put there as a non-recording remote parent by
:func:`correlated`. The request id is ours: ``X-Request-Id`` of the API request.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Final, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

_request_id: ContextVar[str | None] = ContextVar("mxrc_request_id", default=None)
_TRACEPARENT: Final = re.compile(
    r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$"
)
_REQUEST_ID: Final = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
#: Ids only need to be unique, not secret: no system call per request.
_random = random.Random()


class TraceIds(NamedTuple):
    """The ids a log line or a record carries (lower-case hex, W3C widths)."""

    trace_id: str
    span_id: str
    sampled: bool

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


def parse_traceparent(value: str | None) -> SpanContext | None:
    """A W3C ``traceparent`` as a remote span context; None when absent or invalid.

    Rules of W3C Trace Context level 1: lowercase hex, version ``ff`` forbidden, all-zero
    trace or parent ids invalid, version 00 exactly 55 characters; a later version may
    append fields after a dash, which are ignored. An invalid header is to be ignored by
    a receiver (a new trace begins), never refused."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip())
    if match is None:
        return None
    version, trace_hex, span_hex, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(flags, 16)))


def ids_of(span_context: SpanContext) -> TraceIds | None:
    """Hex ids of a span context; None for the invalid (no trace) context."""
    if not span_context.is_valid:
        return None
    return TraceIds(
        f"{span_context.trace_id:032x}",
        f"{span_context.span_id:016x}",
        span_context.trace_flags.sampled,
    )


def current_ids() -> TraceIds | None:
    """The trace context the caller runs under, or None outside any trace."""
    return ids_of(trace.get_current_span().get_span_context())


def current_traceparent() -> str | None:
    ids = current_ids()
    return None if ids is None else ids.traceparent


def current_request_id() -> str | None:
    return _request_id.get()


def new_request_id() -> str:
    return f"{_random.getrandbits(64) or 1:016x}"


def accept_request_id(header: str | None) -> str:
    """The caller's ``X-Request-Id`` when it is a sane token, else a fresh one (a header
    is echoed back and logged, so it must not carry newlines or kilobytes)."""
    if header and _REQUEST_ID.match(header):
        return header
    return new_request_id()


@contextmanager
def correlated(*, request_id: str | None = None, traceparent: str | None = None) -> Iterator[None]:
    """Run the block under these ids and restore the previous ones afterwards (also on
    an exception). A ``None`` argument leaves that id as it is; an invalid traceparent
    is ignored, as W3C asks of a receiver."""
    request_token = _request_id.set(request_id) if request_id is not None else None
    parent = parse_traceparent(traceparent)
    context_token = (
        otel_context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
        if parent is not None
        else None
    )
    try:
        yield
    finally:
        if context_token is not None:
            otel_context.detach(context_token)
        if request_token is not None:
            _request_id.reset(request_token)
