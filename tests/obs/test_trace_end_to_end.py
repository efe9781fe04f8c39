"""One trace across the process boundary, received by a real OTLP/HTTP endpoint.

``mxrc run`` (real nonrt and RT processes, real shared memory) exports its spans with
the OpenTelemetry OTLP/HTTP exporter, configured only by the standard environment, to a
receiver in this test: a real HTTP server decoding the real protobuf messages. An
operator's command sent with a sampled ``traceparent`` must come back as one trace:
the API's server span, the statechart transition, the event-log append and the cycle
acting on the new mode (recorded by nonrt from the cycle's ring record, with the
cycle's own cycle number), and the event-log record and the log lines of the same
story carry the same trace id. The sample ratio is then changed through the API and
obeyed by the next traces.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from mxrc.eventlog import read_records
from tests.test_run_cli import MXRC, Api, node_config

WAIT_S = 30.0


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    service: str


class Receiver:
    """An OTLP/HTTP traces endpoint (``POST /v1/traces``, protobuf) on loopback."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = self.path == "/v1/traces" and (
                    self.headers["Content-Type"] == "application/x-protobuf"
                )
                if ok:
                    receiver.add(ExportTraceServiceRequest.FromString(body))
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    attributes = {
                        a.key: getattr(a.value, a.value.WhichOneof("value") or "string_value")
                        for a in s.attributes
                    }
                    with self.lock:
                        self.spans.append(
                            ReceivedSpan(
                                s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                                s.name, s.kind, attributes, resource.get("service.name", ""),
                            )
                        )

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, trace_id: str, name: str) -> list[ReceivedSpan]:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            spans = self.trace(trace_id)
            if any(s.name == name for s in spans):
                return spans
            time.sleep(0.05)
        raise AssertionError(f"no span {name!r} in trace {trace_id}: {self.trace(trace_id)}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def request(api: Api, method: str, path: str, body: bytes | None = None,
            traceparent: str | None = None) -> tuple[int, dict[str, Any], str]:
    headers = {"Authorization": f"Bearer {api.token}", "Content-Type": "application/json"}
    if traceparent:
        headers["traceparent"] = traceparent
    req = urllib.request.Request(api.url + path, data=body, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, json.loads(r.read()), r.headers["traceparent"]


def one(spans: list[ReceivedSpan], predicate: Callable[[ReceivedSpan], bool]) -> ReceivedSpan:
    found = [s for s in spans if predicate(s)]
    assert len(found) == 1, found
    return found[0]


def log_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_command_is_one_trace_from_the_api_to_the_cycle(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = node_config(tmp_path)
    config.write_text(
        config.read_text() + '[logging]\nfile = "logs/{process}.log"\nstderr = "off"\n'
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    data = tmp_path / "var"
    p = subprocess.Popen(
        [*MXRC, "run", "--config", str(config), "--data-dir", str(data)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, cwd=Path(__file__).parents[2],
    )
    try:
        api = Api(data)
        api.wait_startable()
        assert api.get("/v1/tracing") == {
            "sample_ratio": 0.01, "parent_based": True,
            "export": f"OTLP/HTTP to {receiver.endpoint}",
        }

        # 1. A sampled caller's command: followed end to end whatever the ratio.
        trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
        status, record, answered = request(
            api, "POST", "/v1/commands/start", traceparent=f"00-{trace_id}-{caller_span}-01"
        )
        assert status == 200 and answered.split("-")[1] == trace_id
        spans = receiver.wait_for(trace_id, "rt.cycle apply RUNNING")
        assert {s.service for s in spans} == {"mxrc-nonrt"}
        server = one(spans, lambda s: s.name == "POST /v1/commands/{trigger}")
        assert server.parent_id == caller_span and server.kind == 2  # SPAN_KIND_SERVER
        assert server.attributes["http.response.status_code"] == 200
        chart = one(spans, lambda s: s.name == "statechart start")
        assert chart.parent_id == server.span_id
        append = one(spans, lambda s: s.name == "eventlog.append"
                     and s.attributes["mxrc.event.type"] == "transition")
        assert append.parent_id == chart.span_id
        assert append.attributes["mxrc.eventlog.seq"] == record["seq"]
        cycle = one(spans, lambda s: s.name == "rt.cycle apply RUNNING")
        assert cycle.parent_id == chart.span_id  # the context nonrt wrote with the mode
        assert cycle.attributes["mxrc.rt.driving"] is True
        assert cycle.attributes["mxrc.rt.cycle"] > 0
        assert cycle.attributes["mxrc.lease.token"] == record["token"]
        # the durable record names the transition's span
        assert record["traceparent"] == f"00-{trace_id}-{chart.span_id}-01"

        # 2. Ratio 0 through the API: a trace that starts here is not recorded.
        status, view, _ = request(api, "PUT", "/v1/tracing", b'{"sample_ratio": 0}')
        assert status == 200 and view["sample_ratio"] == 0.0
        _, _, unsampled = request(api, "POST", "/v1/commands/stop")
        assert unsampled.endswith("-00")
        api.wait_startable()
        # 3. Ratio 1: the next one is, without any traceparent from the caller.
        request(api, "PUT", "/v1/tracing", b'{"sample_ratio": 1}')
        _, started, sampled = request(api, "POST", "/v1/commands/start")
        assert sampled.endswith("-01")
        later = sampled.split("-")[1]
        receiver.wait_for(later, "rt.cycle apply RUNNING")
        # exported after the unsampled command's spans would have been: none came
        assert receiver.trace(unsampled.split("-")[1]) == []
        assert started["traceparent"].split("-")[1] == later
    finally:
        p.terminate()
        p.wait(timeout=30)

    # The log file (ECS JSON lines) tells the same story under the same trace id.
    lines = log_lines(data / "logs" / "mxrc-nonrt.log")
    transition = [line for line in lines if line["message"].startswith("start: READY → RUNNING")]
    assert transition and transition[0]["trace"]["id"] == trace_id
    assert transition[0]["mxrc"]["rt"]["state"] == "RUNNING"
    applied = [
        line for line in lines
        if line["message"].startswith("RT cycle") and "applied RUNNING" in line["message"]
        and line.get("trace", {}).get("id") == trace_id
    ]
    assert applied and applied[0]["mxrc"]["rt"]["cycle"] == cycle.attributes["mxrc.rt.cycle"]
    assert {line["process"]["name"] for line in lines} >= {"mxrc-nonrt"}
    records = list(read_records(data / "eventlog"))
    assert any(r["traceparent"] and trace_id in r["traceparent"] for r in records)
