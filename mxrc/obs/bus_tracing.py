"""Spans for the EventBus: an event published, processed by the observers, or dropped.

The bus decouples producers from observers in time (an event waits in the queue), so
one span cannot cover both: ``bus.publish <Event>`` is a short PRODUCER span at the
moment of publication, child of the event's own trace context (a command's
traceparent, carried by the ring record or the event-log record) or else of whatever
was current; ``bus.process <Event>`` is a CONSUMER span around the observers' work,
child of the publish span, and current while they run, so their log lines and any span
they start join the trace; ``bus.drop <Event>`` marks an event that a full queue
displaced before any observer saw it. A command an operator traces is followed
through the bus; the steady stream of untraced cycle status events makes no spans.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Tracer

from mxrc.obs.correlation import correlated, parse_traceparent
from mxrc.service.events import BusEvent, traceparent_of

SYSTEM: Final = "mxrc.bus"


def _context(span_context: SpanContext | None) -> Context | None:
    if span_context is None or not span_context.is_valid:
        return None
    return trace.set_span_in_context(NonRecordingSpan(span_context))


class BusTracing:
    """A :class:`mxrc.service.bus.BusInstrument` that makes spans.

    The bus joins traces, it does not start them: an event gets spans only when it
    belongs to a sampled trace (its own traceparent, or the span current where it was
    published — an API request's). Untraced events (the cycle's status ten times a
    second, an unsampled request) only get their context restored for the observers,
    as with the default instrument: a span costs several µs even unsampled
    (``tools/bench/tracing_cost.py``), and under API load that cost filled the queue.
    """

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    def published(self, event: BusEvent) -> SpanContext | None:
        parent = parse_traceparent(traceparent_of(event))
        if parent is None:
            current = trace.get_current_span().get_span_context()
            parent = current if current.is_valid else None
        if parent is None or not parent.trace_flags.sampled:
            return None
        name = type(event).__name__
        span = self.tracer.start_span(
            f"bus.publish {name}",
            context=_context(parent),
            kind=SpanKind.PRODUCER,
            attributes={"messaging.system": SYSTEM, "mxrc.event.type": name},
        )
        span.end()
        return span.get_span_context()

    def processing(self, event: BusEvent, carrier: Any) -> AbstractContextManager[object]:
        if carrier is None:
            return correlated(traceparent=traceparent_of(event))
        return self._process(event, carrier)

    @contextmanager
    def _process(self, event: BusEvent, carrier: Any) -> Iterator[object]:
        name = type(event).__name__
        with self.tracer.start_as_current_span(
            f"bus.process {name}",
            context=_context(carrier if isinstance(carrier, SpanContext) else None),
            kind=SpanKind.CONSUMER,
            attributes={"messaging.system": SYSTEM, "mxrc.event.type": name},
        ) as span:
            yield span

    def dropped(self, event: BusEvent, carrier: Any) -> None:
        if carrier is None:
            return
        name = type(event).__name__
        span = self.tracer.start_span(
            f"bus.drop {name}",
            context=_context(carrier if isinstance(carrier, SpanContext) else None),
            kind=SpanKind.INTERNAL,
            attributes={
                "messaging.system": SYSTEM,
                "mxrc.event.type": name,
                "mxrc.bus.drop_reason": "queue_full",
            },
            start_time=time.time_ns(),
        )
        span.end()
