"""Monitoring probes answered lean: an untraced ``/health``, ``/ready`` or ``/metrics``
gets no span and does not go through the EventBus; a traced one, and every other
request, is traced and reported as before. A real controller and API on loopback, the
real OpenTelemetry SDK sampling everything into its in-memory exporter."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mxrc.obs.tracing import Tracing
from mxrc.service.api import PROBE_PATHS
from mxrc.service.events import ApiRequest
from tests.service.api_support import serve

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SAMPLED = f"00-{TRACE}-00f067aa0ba902b7-01"


@pytest.mark.parametrize("path", sorted(PROBE_PATHS))
def test_an_untraced_probe_skips_span_and_bus_and_a_traced_one_does_not(
    tmp_path: Path, path: str
) -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(service_name="mxrc-test", node="n1", ratio=1.0, exporter=exporter)
    probes: list[ApiRequest] = []

    async def main() -> None:
        async with serve(tmp_path, tracer=tracing.tracer, on_probe=probes.append) as s:
            for _ in range(5):
                r = await s.client.get(path)
                assert r.status in (200, 503)
                assert "traceparent" not in r.headers and "X-Request-Id" not in r.headers
                assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert [(p.method, p.route) for p in probes] == [("GET", path)] * 5
            assert all(p.status in (200, 503) and p.duration_s > 0 for p in probes)
            assert not [q for q in s.requests if q.route == path]

            traced = await s.client.get(path, headers={"traceparent": SAMPLED})
            assert traced.headers["traceparent"].split("-")[1] == TRACE
            assert [q.route for q in s.requests if q.route == path] == [path]
            other = await s.client.get("/v1/state")
            assert other.status == 200 and "traceparent" in other.headers
            assert len(probes) == 5  # neither went to on_probe

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
        assert tracing.flush()
        spans = [(sp.name, sp.context.trace_id) for sp in exporter.get_finished_spans()]
    finally:
        tracing.shutdown()
    assert (f"GET {path}", int(TRACE, 16)) in spans
    assert [name for name, _ in spans].count(f"GET {path}") == 1  # only the traced one
    assert "GET /v1/state" in [name for name, _ in spans]


def test_probes_are_reported_through_on_request_when_no_on_probe_is_given(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with serve(tmp_path) as s:
            await s.client.get("/health")
            await s.client.get("/ready")
            assert [q.route for q in s.requests] == ["/health", "/ready"]

    asyncio.run(asyncio.wait_for(main(), 60))
