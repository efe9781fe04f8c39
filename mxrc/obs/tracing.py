"""OpenTelemetry tracing for nonrt: one provider per process role, a sampler whose ratio
an operator can change while the node runs, and OTLP/HTTP export only when asked for.

Why these choices:

* **Parent-based ratio sampling.** A trace that a sampled caller started (an operator's
  tool sending ``traceparent`` with the sampled flag) is always followed, so a command
  someone is investigating is never cut in half; traces that start here (the node's own
  bus traffic) are kept at ``tracing.sample_ratio`` (default 1 %). Unsampled spans still
  have real ids, so logs and event-log records carry a trace id either way.
* **Adjustable at run time** (:class:`AdjustableRatioSampler`): raising the ratio while
  an incident is live must not need a restart, which would itself change what is being
  looked at.
* **Export off by default.** A controller PC often has no collector; exporting is
  switched on by the standard environment (``OTEL_TRACES_EXPORTER=otlp`` or an
  ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``; see :func:`exporter_choice`), and the OTLP
  exporter then reads the rest of its settings (headers, timeout, compression) from the
  same variables, as every OpenTelemetry SDK does.
* **Its own provider, never the global one**: two controllers in one test process must
  not share a sampler; components take a :class:`~opentelemetry.trace.Tracer`, and one
  that was given none uses the API's no-op tracer (ids still propagate).

The RT cycle is never traced from inside its loop: what it did is recorded afterwards,
from its ring record, by :meth:`Tracing.record_span` with the cycle's own timestamps.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanKind, Tracer
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes, AttributeValue

from mxrc import __version__
from mxrc.errors import ConfigError
from mxrc.obs.correlation import parse_traceparent

TRACER_NAME: Final = "mxrc"
SUPPORTED_PROTOCOL: Final = "http/protobuf"


@functools.cache
def unrecorded_tracer() -> Tracer:
    """The tracer of components built without tracing: every span gets real ids (a
    request still answers with a valid traceparent, a record still carries one), none
    is ever recorded or exported."""
    provider = TracerProvider(sampler=ALWAYS_OFF, shutdown_on_exit=False)
    return provider.get_tracer(TRACER_NAME, __version__)


class AdjustableRatioSampler(Sampler):
    """:class:`TraceIdRatioBased` whose ratio can be replaced while spans are started.

    The delegate is swapped as one reference assignment, so a span being sampled on
    another thread sees either the old or the new ratio, never a mixture.
    """

    def __init__(self, ratio: float) -> None:
        self._delegate = TraceIdRatioBased(check_ratio(ratio))

    @property
    def ratio(self) -> float:
        return float(self._delegate.rate)

    def set_ratio(self, ratio: float) -> None:
        self._delegate = TraceIdRatioBased(check_ratio(ratio))

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        return self._delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"AdjustableRatio{{{self.ratio}}}"


def check_ratio(ratio: float) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"sample ratio must be a number in 0..1, not {ratio!r}")
    return float(ratio)


def exporter_choice(env: Mapping[str, str]) -> str | None:
    """Whether spans are exported, from the standard OTEL_* variables: a sentence saying
    why when they are, None when they are not. Raises :class:`ConfigError` naming the
    variable for a setting this build cannot honour (rather than silently not
    exporting what someone configured)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(name, "").strip()
        if protocol and protocol != SUPPORTED_PROTOCOL:
            raise ConfigError(
                f"{name}={protocol!r}: mxrc exports OTLP over HTTP only; "
                f"use {SUPPORTED_PROTOCOL!r} (or unset it)"
            )
    exporters = [e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    unknown = [e for e in exporters if e not in ("otlp", "none")]
    if unknown:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER={env['OTEL_TRACES_EXPORTER']!r}: mxrc knows 'otlp' and "
            f"'none', not {', '.join(map(repr, unknown))}"
        )
    if "none" in exporters:
        return None
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if "otlp" in exporters:
        return f"OTLP/HTTP to {endpoint or 'http://localhost:4318 (the default)'}"
    if endpoint:
        return f"OTLP/HTTP to {endpoint}"
    return None


def _clean(attributes: Mapping[str, AttributeValue | None] | None) -> dict[str, AttributeValue]:
    """Attributes without the ``None`` values (OpenTelemetry refuses them, and a missing
    fact is better absent than spelt "None")."""
    if not attributes:
        return {}
    return {k: v for k, v in attributes.items() if v is not None}


def _parent(traceparent: str | None) -> Context | None:
    span_context = parse_traceparent(traceparent)
    if span_context is None:
        return None
    return trace.set_span_in_context(NonRecordingSpan(span_context))


@contextmanager
def span(
    tracer: Tracer,
    name: str,
    attributes: Mapping[str, AttributeValue | None] | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: str | None = None,
) -> Iterator[Span]:
    """A span made current for the block: child of ``parent`` (a traceparent) when given,
    else of the current span. An exception leaving the block is recorded on the span and
    sets its status to ERROR (then propagates)."""
    with tracer.start_as_current_span(
        name,
        context=_parent(parent),
        kind=kind,
        attributes=_clean(attributes),
        record_exception=True,
        set_status_on_exception=True,
    ) as current:
        yield current


def wall_ns_from_monotonic(mono_ns: int) -> int:
    """A CLOCK_MONOTONIC time (what the cycle stamps its records with) on the wall clock
    that spans use, by the offset between the two clocks now."""
    return mono_ns + (time.time_ns() - time.monotonic_ns())


class Tracing:
    """The provider, sampler and (optional) exporter of one process role."""

    def __init__(
        self,
        *,
        service_name: str,
        node: str,
        ratio: float,
        env: Mapping[str, str] | None = None,
        exporter: SpanExporter | None = None,
    ) -> None:
        environment = os.environ if env is None else env
        self.sampler = AdjustableRatioSampler(ratio)
        resource = Resource.create(
            {
                "service.name": service_name,
                "service.namespace": "mxrc",
                "service.instance.id": node,
                "service.version": __version__,
            }
        )
        self.provider = TracerProvider(
            sampler=ParentBased(self.sampler), resource=resource, shutdown_on_exit=False
        )
        self.export: str | None = None
        if exporter is None:
            self.export = exporter_choice(environment)
            if self.export is not None:
                # Imported only when exporting: it pulls in protobuf and requests.
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
                    OTLPSpanExporter,
                )

                exporter = OTLPSpanExporter()
        else:
            self.export = f"to {type(exporter).__name__}"
        if exporter is not None:
            self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer: Tracer = self.provider.get_tracer(TRACER_NAME, __version__)

    @property
    def ratio(self) -> float:
        return self.sampler.ratio

    def set_ratio(self, ratio: float) -> None:
        self.sampler.set_ratio(ratio)

    def describe(self) -> str:
        exported = f"exported {self.export}" if self.export else "not exported"
        return f"tracing: sample ratio {self.ratio:g} (parent-based), spans {exported}"

    def record_span(
        self,
        name: str,
        *,
        parent: str | None,
        start_ns: int,
        end_ns: int,
        attributes: Mapping[str, AttributeValue | None] | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> Span:
        """A span of work that happened elsewhere (the RT cycle), with its own wall-clock
        times, as a child of ``parent``. Sampled by the same rule as any span, so the
        cycle's part of a sampled command is recorded and the rest costs nothing."""
        recorded = self.tracer.start_span(
            name, context=_parent(parent), kind=kind, attributes=_clean(attributes),
            start_time=start_ns,
        )
        recorded.end(end_time=max(end_ns, start_ns))
        return recorded

    def flush(self, timeout_s: float = 5.0) -> bool:
        return bool(self.provider.force_flush(int(timeout_s * 1000)))

    def shutdown(self) -> None:
        """Export what is pending (the batch processor's final flush), then stop."""
        self.provider.shutdown()
