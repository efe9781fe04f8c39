"""What tracing costs per event, at 0 %, 1 % and 100 % sampling, against no tracing.

    .venv/bin/python tools/bench/tracing_cost.py [--events 20000] [--rounds 5] [--quick]

An "event" is one traced unit of nonrt's work as an admin API request makes it: a
SERVER span (the root, where the ratio decides) with one EventBus event published in
it and dispatched to an observer (one that does nothing, so the figure is the bus and
tracing alone). The bus spans follow the root's decision (the bus joins sampled traces,
it starts none). The baseline is the same event on a bus without tracing and no span.
Tracing is mxrc's own: a real OpenTelemetry SDK provider with the parent-based
adjustable sampler at each ratio, :class:`~mxrc.obs.bus_tracing.BusTracing`, and a
BatchSpanProcessor feeding an exporter that discards what it is given (named as such:
the network is not what is measured, and the exporter runs on the processor's thread).
The second figure is one ``span()`` around nothing, the unit every traced path pays.

Rounds alternate the modes so that drift hits each; the median round is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchutil import emit, progress
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from mxrc.obs.bus_tracing import BusTracing
from mxrc.obs.tracing import Tracing, span
from mxrc.service.bus import BusInstrument, EventBus
from mxrc.service.events import ApiRequest, BusEvent

RATIOS = (0.0, 0.01, 1.0)


class DiscardingExporter(SpanExporter):
    """Accepts every batch and keeps nothing (a stand-in for a collector)."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def bus_ns_per_event(tracing: Tracing | None, events: int) -> float:
    instrument: BusInstrument | None = None if tracing is None else BusTracing(tracing.tracer)

    async def main() -> float:
        bus = EventBus(events + 1, instrument=instrument)

        def observer(_event: BusEvent) -> None:
            return None

        bus.subscribe("noop", observer)
        event = ApiRequest("GET", "/v1/state", 200, 0.001)
        runner = asyncio.create_task(bus.run())
        await asyncio.sleep(0)
        t = time.perf_counter_ns()
        if tracing is None:
            for _ in range(events):
                bus.publish(event)
        else:
            tracer = tracing.tracer
            for _ in range(events):
                with span(tracer, "GET /v1/state", kind=SpanKind.SERVER):
                    bus.publish(event)
        assert await bus.drain(60.0)
        took = time.perf_counter_ns() - t
        runner.cancel()
        return took / events

    return asyncio.run(main())


def span_ns(tracing: Tracing, spans: int) -> float:
    tracer = tracing.tracer
    t = time.perf_counter_ns()
    for _ in range(spans):
        with span(tracer, "bench"):
            pass
    return (time.perf_counter_ns() - t) / spans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20000, help="events per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per mode")
    parser.add_argument("--quick", action="store_true", help="smoke run (2000 events, 2 rounds)")
    args = parser.parse_args(argv)
    events, rounds = (2000, 2) if args.quick else (args.events, args.rounds)
    exporters = {r: DiscardingExporter() for r in RATIOS}
    tracings = {
        r: Tracing(service_name="mxrc-bench", node="bench", ratio=r, exporter=exporters[r])
        for r in RATIOS
    }
    bus: dict[str, list[float]] = {"none": [], **{f"{r:g}": [] for r in RATIOS}}
    spans: dict[str, list[float]] = {f"{r:g}": [] for r in RATIOS}
    for round_ in range(rounds):
        progress(f"round {round_ + 1}/{rounds}")
        bus["none"].append(bus_ns_per_event(None, events))
        for r in RATIOS:
            bus[f"{r:g}"].append(bus_ns_per_event(tracings[r], events))
            spans[f"{r:g}"].append(span_ns(tracings[r], events))
    for t in tracings.values():
        t.shutdown()
    baseline = statistics.median(bus["none"])
    result: dict[str, Any] = {
        "events_per_round": events,
        "rounds": rounds,
        "bus_event_us": {mode: statistics.median(v) / 1000 for mode, v in bus.items()},
        "tracing_added_us_per_event": {
            f"{r:g}": (statistics.median(bus[f"{r:g}"]) - baseline) / 1000 for r in RATIOS
        },
        "span_us": {mode: statistics.median(v) / 1000 for mode, v in spans.items()},
        "spans_exported": {f"{r:g}": e.spans for r, e in exporters.items()},
        "exporter": "discarding (in process, after the SDK's BatchSpanProcessor)",
    }
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
