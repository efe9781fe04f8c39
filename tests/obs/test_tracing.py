"""Tracing: the adjustable parent-based sampler, export rules, spans, bus spans.

The real OpenTelemetry SDK throughout; spans are collected by the SDK's own in-memory
exporter (the OTLP/HTTP path is tested end to end in test_trace_end_to_end.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mxrc.errors import ConfigError
from mxrc.obs.bus_tracing import BusTracing
from mxrc.obs.correlation import current_ids
from mxrc.obs.tracing import AdjustableRatioSampler, Tracing, exporter_choice, span
from mxrc.service.bus import EventBus
from mxrc.service.events import BusEvent, RingDrops, RtFault

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SAMPLED = f"00-{TRACE}-00f067aa0ba902b7-01"
UNSAMPLED = f"00-{TRACE}-00f067aa0ba902b7-00"


_made: list[Tracing] = []


@pytest.fixture(autouse=True)
def _shut_down_tracing() -> Iterator[None]:
    """Each Tracing starts a BatchSpanProcessor thread: stop the ones a test made, so
    that none keeps waking up (and allocating) under later tests."""
    yield
    while _made:
        _made.pop().shutdown()


def tracing(ratio: float) -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    made = Tracing(service_name="mxrc-test", node="n1", ratio=ratio, exporter=exporter)
    _made.append(made)
    return made, exporter


def finished(t: Tracing, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    assert t.flush()
    return list(exporter.get_finished_spans())


def test_the_ratio_changes_at_run_time_and_sampled_parents_are_always_followed() -> None:
    t, exporter = tracing(0.0)
    for _ in range(50):
        with span(t.tracer, "root at 0"):
            pass
    with span(t.tracer, "child of a sampled caller", parent=SAMPLED):
        pass
    t.set_ratio(1.0)
    with span(t.tracer, "root at 1"):
        pass
    with span(t.tracer, "child of an unsampled caller", parent=UNSAMPLED):
        pass
    names = [s.name for s in finished(t, exporter)]
    assert names == ["child of a sampled caller", "root at 1"]
    assert t.ratio == 1.0 and "AdjustableRatio{1.0}" in t.sampler.get_description()


def test_a_ratio_between_keeps_about_that_share_of_new_traces() -> None:
    t, exporter = tracing(0.25)
    for _ in range(2000):
        with span(t.tracer, "root"):
            pass
    assert 400 <= len(finished(t, exporter)) <= 600


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.5", float("nan")])
def test_a_ratio_outside_0_1_is_refused(bad: object) -> None:
    sampler = AdjustableRatioSampler(0.5)
    with pytest.raises(ValueError, match=r"a number in 0\.\.1"):
        sampler.set_ratio(bad)  # type: ignore[arg-type]
    assert sampler.ratio == 0.5


def test_unsampled_spans_still_carry_ids_for_logs_and_records() -> None:
    t, _ = tracing(0.0)
    with span(t.tracer, "root"):
        ids = current_ids()
    assert ids is not None and not ids.sampled and len(ids.trace_id) == 32


def test_an_exception_sets_error_status_and_is_recorded() -> None:
    t, exporter = tracing(1.0)
    with pytest.raises(KeyError), span(t.tracer, "fails", {"mxrc.key": "kp", "none": None}):
        raise KeyError("kp")
    (failed,) = finished(t, exporter)
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes is not None and dict(failed.attributes) == {"mxrc.key": "kp"}
    assert [e.name for e in failed.events] == ["exception"]


def test_a_recorded_span_keeps_its_own_times_and_parent() -> None:
    t, exporter = tracing(0.0)
    start = time.time_ns() - 5_000_000
    t.record_span("rt.cycle apply RUNNING", parent=SAMPLED, start_ns=start, end_ns=start + 1234,
                  attributes={"mxrc.rt.cycle": 7})  # fmt: skip
    t.record_span("not sampled", parent=UNSAMPLED, start_ns=start, end_ns=start + 1)
    (recorded,) = finished(t, exporter)
    assert (recorded.start_time, recorded.end_time) == (start, start + 1234)
    assert recorded.parent is not None and f"{recorded.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert f"{recorded.context.trace_id:032x}" == TRACE


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "OTLP/HTTP to http://localhost:4318 (the default)"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "OTLP/HTTP to http://c:4318"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/v1/traces"},
         "OTLP/HTTP to http://t/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, None),
    ],
)
def test_export_is_off_unless_the_standard_environment_asks(
    env: dict[str, str], expected: str | None
) -> None:
    assert exporter_choice(env) == expected


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ],
)
def test_an_export_setting_that_cannot_be_honoured_is_refused(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        exporter_choice(env)


def test_the_bus_makes_publish_process_and_drop_spans_in_the_events_trace() -> None:
    t, exporter = tracing(0.0)  # only the traced event's spans are sampled
    seen: list[str | None] = []

    async def main() -> None:
        bus = EventBus(2, instrument=BusTracing(t.tracer))

        def observer(_event: BusEvent) -> None:
            ids = current_ids()
            seen.append(None if ids is None else ids.trace_id)

        bus.subscribe("test", observer)
        fault = RtFault(1, 1, "lease_expired", 2, 3, -1, 3, traceparent=SAMPLED)
        bus.publish(RtFault(0, 0, "token_changed", 2, 3, 0, 3, traceparent=SAMPLED))
        bus.publish(fault)
        bus.publish(RingDrops(2, 1, 1))  # displaces the first fault: a drop span
        runner = asyncio.create_task(bus.run())
        assert await bus.drain(5.0)
        runner.cancel()

    asyncio.run(main())
    spans = finished(t, exporter)
    by_name = {s.name: s for s in spans}
    assert set(by_name) == {"bus.publish RtFault", "bus.process RtFault", "bus.drop RtFault"}
    publishes = [s for s in spans if s.name == "bus.publish RtFault"]
    assert len(publishes) == 2 and all(s.kind == SpanKind.PRODUCER for s in publishes)
    process = by_name["bus.process RtFault"]
    assert process.kind == SpanKind.CONSUMER and process.parent is not None
    assert process.parent.span_id in {s.context.span_id for s in publishes}
    drop = by_name["bus.drop RtFault"]
    assert drop.attributes is not None and drop.attributes["mxrc.bus.drop_reason"] == "queue_full"
    # the observer ran inside the process span: its logs carry the event's trace id
    assert seen[0] == TRACE and len(seen) == 2
