"""The admin API over real HTTP on 127.0.0.1 against the real controller (no RT process:
the node stays in INIT unless an operator sends it to SAFE_MODE, which is enough to
reach every status code but 403; that one is in the pair test with ``mxrc rt``)."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from mxrc.catalog import event_types
from mxrc.service import api
from mxrc.service.openapi import build_document
from mxrc.service.ports import OPERATOR_COMMANDS
from tests.service.api_support import MAX_BODY, Served, parse_traceparent, serve, sse_records

SENT_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"



def same_trace(recorded: str, answered: str) -> bool:
    """The record's traceparent is a span of the request's trace, not the request's."""
    r, a = recorded.split("-"), answered.split("-")
    return r[1] == a[1] and r[2] != a[2] and len(r[2]) == 16 and r[3] == a[3]

def run(tmp: Path, body: Callable[[Served], Awaitable[None]], timeout: float = 60) -> None:
    async def main() -> None:
        async with serve(tmp) as served:
            await body(served)

    asyncio.run(asyncio.wait_for(main(), timeout))


async def error_of(response: Any, status: int) -> dict[str, Any]:
    """The JSON error body of a response that must have ``status``."""
    text = await response.text()
    assert response.status == status, (status, response.status, text)
    assert response.headers["Content-Type"].startswith("application/json"), text
    body: dict[str, Any] = orjson.loads(text)
    assert isinstance(body.get("error"), str) and body["error"], body
    return body


async def all_records(served: Served) -> list[dict[str, Any]]:
    page = await served.json("/v1/events?limit=1000")
    records: list[dict[str, Any]] = page["events"]
    return records


# --- probes, document, page ------------------------------------------------------------


def test_health_is_evaluated_at_most_once_per_max_age(tmp_path: Path) -> None:
    async def main() -> None:
        async with serve(tmp_path, health_max_age_s=0.3) as s:
            calls = 0
            real = s.controller.health

            def counted() -> Any:
                nonlocal calls
                calls += 1
                return real()

            s.controller.health = counted  # type: ignore[method-assign]
            first = await (await s.client.get("/health")).json()
            second = await (await s.client.get("/health")).json()
            assert calls == 1 and first == second  # the same evaluation, timestamp and all
            await asyncio.sleep(0.35)
            third = await (await s.client.get("/health")).json()
            assert calls == 2 and third["timestamp"] > first["timestamp"]

    asyncio.run(asyncio.wait_for(main(), 60))



def test_probes_document_and_page(tmp_path: Path) -> None:
    async def body(s: Served) -> None:
        r = await s.client.get("/health")
        health = await r.json()
        assert r.status == (503 if health["status"] == "unhealthy" else 200), health
        assert health["status"] in ("healthy", "degraded", "unhealthy")
        assert health["timestamp"] and health["checks"]
        for check in health["checks"].values():
            assert check["status"] in ("healthy", "degraded", "unhealthy")
            assert isinstance(check["detail"], str)

        r = await s.client.get("/ready")
        ready = await r.json()
        assert set(ready) == {"ready", "reason"}
        assert r.status == (200 if ready["ready"] else 503)
        assert not ready["ready"]  # INIT: no RT process attached

        r = await s.client.get("/metrics")
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await r.text()
        assert "# TYPE " in text and "# HELP " in text

        r = await s.client.get("/openapi.json")
        assert r.status == 200
        expected = build_document(
            event_types=event_types(),
            commands=OPERATOR_COMMANDS,
            writable_keys={"setpoint": "f64"},
            max_body_bytes=MAX_BODY,
        )
        assert await r.json() == orjson.loads(orjson.dumps(expected))

        r = await s.client.get("/")
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert 'id="state"' in await r.text()
        for path, media in [("/app.js", "text/javascript"), ("/style.css", "text/css")]:
            r = await s.client.get(path)
            assert r.status == 200 and r.headers["Content-Type"].startswith(media)

    run(tmp_path, body)


def test_every_route_is_documented_and_every_documented_route_exists(tmp_path: Path) -> None:
    async def body(s: Served) -> None:
        served: dict[str, set[str]] = {}
        for route in s.app.router.routes():
            if route.method != "HEAD" and route.resource is not None:
                served.setdefault(route.resource.canonical, set()).add(route.method.lower())
        doc = await s.json("/openapi.json")
        documented = {path: set(item) for path, item in doc["paths"].items()}
        assert served == documented

    run(tmp_path, body)


# --- reads -----------------------------------------------------------------------------


def test_reads(tmp_path: Path) -> None:
    async def body(s: Served) -> None:
        state = await s.json("/v1/state")
        assert state["node"] == "n1" and state["state"] == "INIT"
        assert state["leader"] is True and state["token"] > 0  # the local backend
        assert isinstance(state["lease_remaining_s"], float)
        assert state["rt"]["attached"] is False

        assert await s.json("/v1/telemetry") == {}  # no RT process has reported

        chart = await s.json("/v1/statechart")
        assert chart["current"] == "INIT" and chart["ref"] == s.controller.chart.ref
        assert [st["name"] for st in chart["states"]] == ["INIT", "READY", "RUNNING", "SAFE_MODE"]
        assert {
            "trigger": "start",
            "sources": ["READY"],
            "dest": "RUNNING",
            "guards": ["is_leader", "has_quorum", "is_healthy"],
            "requires_cause": False,
        } in chart["transitions"]
        assert set(chart["guards"]) == {"is_leader", "has_quorum", "is_healthy", "cause_cleared"}
        assert chart["legal_triggers"] == ["initialized", "fault"]

        r1 = await s.client.get("/v1/statechart.svg")
        svg = await r1.read()
        assert r1.status == 200 and r1.headers["Content-Type"] == "image/svg+xml"
        assert svg.lstrip().startswith(b"<?xml") and b"<svg" in svg
        assert b"current: INIT" in svg and b"#08306b" in svg  # the highlighted state
        r2 = await s.client.get("/v1/statechart.svg")
        assert await r2.read() == svg and r2.headers["ETag"] == r1.headers["ETag"]

        store = await s.json("/v1/datastore")
        names = {k["name"]: k for k in store["keys"]}
        assert names["setpoint"]["writer"] == "nonrt" and names["tracking_error"]["writer"] == "rt"

    run(tmp_path, body)


# --- auth ------------------------------------------------------------------------------


BAD_AUTHORIZATIONS = (
    None,
    "",
    "Bearer",
    "Bearer ",
    "Bearer wrong-token",
    "Basic {token}",
    "{token}",
    "Bearer {token}x",
    "Bearer x{token}",
    "Bearer {token_upper}",
    "Token {token}",
)


def test_mutations_need_the_token(tmp_path: Path) -> None:
    async def body(s: Served) -> None:
        before = await all_records(s)
        for authorization in BAD_AUTHORIZATIONS:
            headers = {}
            if authorization is not None:
                headers["Authorization"] = authorization.format(
                    token=s.token, token_upper=s.token.upper()
                )
            for method, path, payload in [
                ("POST", "/v1/commands/safe_mode", b'{"cause": "x"}'),
                ("POST", "/v1/commands/no_such_command", b""),  # auth comes first
                ("PUT", "/v1/datastore/setpoint", b'{"value": 1.0}'),
            ]:
                r = await s.client.request(method, path, data=payload, headers=headers)
                await error_of(r, 401)
                assert r.headers["WWW-Authenticate"] == "Bearer", authorization
        assert await all_records(s) == before  # nothing reached the node
        assert (await s.json("/v1/state"))["state"] == "INIT"

    run(tmp_path, body)


def test_the_api_compares_the_token_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request path reaches the token only through hmac.compare_digest."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return bool(real(a, b))

    monkeypatch.setattr(hmac, "compare_digest", spy)

    async def body(s: Served) -> None:
        r = await s.client.post("/v1/commands/start", headers={"Authorization": "Bearer guess"})
        await error_of(r, 401)
        assert calls == [(b"guess", s.token.encode())]

    run(tmp_path, body)


def test_the_token_is_accepted_with_any_scheme_case(tmp_path: Path) -> None:
    async def body(s: Served) -> None:
        r = await s.client.post(
            "/v1/commands/safe_mode", headers={"Authorization": f"bearer {s.token}"}
        )
        assert r.status == 200, await r.text()

    run(tmp_path, body)


# --- commands --------------------------------------------------------------------------


def test_command_status_codes(tmp_path: Path) -> None:
    async def body(s: Served) -> None:
        post = s.client.post
        # 404: not an operator command (the chart's own 'initialized' is not one either)
        for trigger in ("jump", "initialized", "fault"):
            r = await post(f"/v1/commands/{trigger}", headers=s.auth)
            err = await error_of(r, 404)
            assert err["field"] == "trigger" and err["commands"] == list(OPERATOR_COMMANDS)

        # 409: start is illegal in INIT; the rejection is journalled and traced
        r = await post("/v1/commands/start", headers={**s.auth, "traceparent": SENT_TRACE})
        err = await error_of(r, 409)
        assert err["state"] == "INIT" and err["trigger"] == "start" and err["reason"] == "illegal"
        assert err["legal"] == ["initialized", "fault"]
        assert err["legal_commands"] == ["safe_mode"]
        assert err["failed_guards"] == []
        rejected = (await s.json("/v1/events?type=command_rejected"))["events"]
        assert rejected[-1]["seq"] == err["seq"]
        assert rejected[-1]["payload"]["actor"] == "api@127.0.0.1"
        # the record names the transition's span: same trace, child of the request's span
        assert same_trace(rejected[-1]["traceparent"], r.headers["traceparent"])
        assert r.headers["traceparent"].split("-")[1] == SENT_TRACE.split("-")[1]

        # 400, naming the field
        for payload, field in [
            (b"not json", "body"),
            (b"[]", "body"),
            (b'{"cause": 3}', "cause"),
            (b'{"cause": "x", "extra": 1}', "extra"),
        ]:
            r = await post("/v1/commands/safe_mode", data=payload, headers=s.auth)
            assert (await error_of(r, 400))["field"] == field, payload

        # 413
        r = await post("/v1/commands/safe_mode", data=b" " * (MAX_BODY * 2), headers=s.auth)
        assert (await error_of(r, 413))["limit"] == MAX_BODY

        # 200: safe_mode is the chart's fault with the operator's cause
        r = await post(
            "/v1/commands/safe_mode",
            json={"cause": "drill"},
            headers={**s.auth, "traceparent": SENT_TRACE},
        )
        assert r.status == 200, await r.text()
        record = await r.json()
        assert record["type"] == "transition"
        assert record["payload"] == {
            "trigger": "fault",
            "source": "INIT",
            "dest": "SAFE_MODE",
            "cause": "drill",
            "guards": {},
            "actor": "api@127.0.0.1",
        }
        sent = parse_traceparent(SENT_TRACE)
        ours = parse_traceparent(r.headers["traceparent"])
        assert sent is not None and ours is not None
        assert ours.trace_id == sent.trace_id and ours.span_id != sent.span_id
        assert same_trace(record["traceparent"], r.headers["traceparent"])
        assert (await s.json("/v1/state"))["state"] == "SAFE_MODE"

        # 409 by a guard: reset waits for the cause (no RT process) to clear
        r = await post("/v1/commands/reset", headers=s.auth)
        err = await error_of(r, 409)
        assert err["reason"] == "guard" and err["failed_guards"] == ["cause_cleared"]
        assert err["legal"] == ["reset"] and err["legal_commands"] == ["reset"]

        # an invalid traceparent is ignored: a new trace starts
        r = await post("/v1/commands/stop", headers={**s.auth, "traceparent": "00-zz-bad"})
        await error_of(r, 409)
        fresh = parse_traceparent(r.headers["traceparent"])
        assert fresh is not None and fresh.trace_id != sent.trace_id

        # every request was reported with its route pattern
        commands = [q for q in s.requests if q.route == "/v1/commands/{trigger}"]
        assert {q.status for q in commands} == {200, 400, 404, 409, 413}
        assert all(q.method == "POST" and q.duration_s > 0 for q in commands)

    run(tmp_path, body)


def test_errors_outside_the_routes_are_json(tmp_path: Path) -> None:
    async def body(s: Served) -> None:
        r = await s.client.get("/v1/nothing-here")
        assert "/v1/nothing-here" in (await error_of(r, 404))["error"]
        r = await s.client.delete("/v1/state")
        await error_of(r, 405)
        assert "GET" in r.headers["Allow"]
        r = await s.client.get("/v1/commands/start")
        await error_of(r, 405)
        assert [q.route for q in s.requests][-3:] == ["unmatched"] * 3

    run(tmp_path, body)


# --- data store ------------------------------------------------------------------------


def test_datastore_writes(tmp_path: Path) -> None:
    async def body(s: Served) -> None:
        put = s.client.put
        r = await put("/v1/datastore/setpoint", json={"value": 1.25}, headers=s.auth)
        assert r.status == 200, await r.text()
        record = await r.json()
        assert record["type"] == "datastore_write"
        assert record["payload"]["key"] == "setpoint" and record["payload"]["value"] == 1.25
        assert record["payload"]["actor"] == "api@127.0.0.1"
        assert same_trace(record["traceparent"], r.headers["traceparent"])
        keys = {k["name"]: k["value"] for k in (await s.json("/v1/datastore"))["keys"]}
        assert keys["setpoint"] == 1.25

        for path, payload, field in [
            ("/v1/datastore/joint_position", b'{"value": 1.0}', "key"),  # the RT side's key
            ("/v1/datastore/no_such_key", b'{"value": 1.0}', "key"),
            ("/v1/datastore/setpoint", b'{"value": "high"}', "value"),
            ("/v1/datastore/setpoint", b'{"value": true}', "value"),
            ("/v1/datastore/setpoint", b"{}", "value"),
            ("/v1/datastore/setpoint", b'{"value": 1, "unit": "m"}', "unit"),
            ("/v1/datastore/setpoint", b"", "body"),
            ("/v1/datastore/setpoint", b"{oops", "body"),
        ]:
            r = await put(path, data=payload, headers=s.auth)
            assert (await error_of(r, 400))["field"] == field, (path, payload)
        r = await put("/v1/datastore/setpoint", data=b"[" * (MAX_BODY + 1), headers=s.auth)
        await error_of(r, 413)

    run(tmp_path, body)


# --- events ----------------------------------------------------------------------------


def test_events_paging_and_filters(tmp_path: Path) -> None:
    async def body(s: Served) -> None:
        await s.client.post("/v1/commands/safe_mode", headers=s.auth)
        for value in (1.0, 2.0, 3.0):
            await s.client.put("/v1/datastore/setpoint", json={"value": value}, headers=s.auth)
        for _ in range(3):
            await s.client.post("/v1/commands/reset", headers=s.auth)  # 409, journalled
        everything = await all_records(s)
        seqs = [r["seq"] for r in everything]
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 8

        paged: list[int] = []
        after = 0
        while True:
            page = await s.json(f"/v1/events?after={after}&limit=3")
            assert len(page["events"]) <= 3
            if not page["events"]:
                assert page["next_after"] == after
                break
            paged += [r["seq"] for r in page["events"]]
            assert page["next_after"] == page["events"][-1]["seq"]
            after = page["next_after"]
        assert paged == seqs

        default = await s.json("/v1/events")
        assert [r["seq"] for r in default["events"]] == seqs  # fewer than the default 100
        assert set(default["events"][0]) == set(api.RECORD_KEYS)

        repeated = await s.json("/v1/events?type=transition&type=datastore_write")
        commas = await s.json("/v1/events?type=transition,datastore_write")
        assert repeated == commas
        assert {r["type"] for r in repeated["events"]} == {"transition", "datastore_write"}
        assert len(repeated["events"]) == 4
        only = await s.json(f"/v1/events?type=command_rejected&after={seqs[-3] - 1}&limit=2")
        assert [r["seq"] for r in only["events"]] == seqs[-3:-1]

        for query, field in [
            ("type=transition,teleport", "type"),
            ("type=", "type"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=many", "limit"),
            ("after=-1", "after"),
            ("after=1e3", "after"),
        ]:
            r = await s.client.get(f"/v1/events?{query}")
            err = await error_of(r, 400)
            assert err["field"] == field, query
            if "teleport" in query:
                assert "teleport" in err["error"]
        assert len((await s.json("/v1/events?limit=1000"))["events"]) == len(seqs)
        assert (await s.json("/v1/events?limit=1"))["next_after"] == 1

    run(tmp_path, body)


def test_event_stream_delivers_a_commanded_transition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "HEARTBEAT_S", 0.2)

    async def body(s: Served) -> None:
        stream = await s.client.get("/v1/events/stream")
        assert stream.status == 200
        assert stream.headers["Content-Type"] == "text/event-stream"
        r = await s.client.post("/v1/commands/safe_mode", json={"cause": "sse"}, headers=s.auth)
        record = await r.json()
        [(event_id, data)] = await sse_records(stream, 1, 10)
        assert event_id == record["seq"] == data["seq"]
        assert data == record  # the same record, as the log holds it
        [(lease_id, lease)] = await sse_records(stream, 1, 10)  # SAFE_MODE: step down
        assert lease_id == record["seq"] + 1 and lease["type"] == "lease"
        assert lease["payload"]["leader"] is False
        # heartbeats keep idle connections open through proxies
        comment = await asyncio.wait_for(stream.content.readuntil(b": heartbeat\n\n"), 5)
        assert comment.endswith(b": heartbeat\n\n")
        stream.close()

        # a reconnecting EventSource sends Last-Event-ID: what it missed comes first
        resumed = await s.client.get(
            "/v1/events/stream", headers={"Last-Event-ID": str(record["seq"] - 2)}
        )
        got = await sse_records(resumed, 2, 10)
        assert [i for i, _ in got] == [record["seq"] - 1, record["seq"]]
        await s.client.put("/v1/datastore/setpoint", json={"value": 4.5}, headers=s.auth)
        [_, (live_id, live)] = await sse_records(resumed, 2, 10)
        assert live_id == record["seq"] + 2 and live["type"] == "datastore_write"
        resumed.close()

        via_query = await s.client.get(f"/v1/events/stream?after={record['seq']}")
        [(first_id, _)] = await sse_records(via_query, 1, 10)
        assert first_id == record["seq"] + 1
        via_query.close()

        r = await s.client.get("/v1/events/stream", headers={"Last-Event-ID": "yesterday"})
        assert (await error_of(r, 400))["field"] == "Last-Event-ID"

    run(tmp_path, body)


def test_event_stream_ends_cleanly_on_server_shutdown(tmp_path: Path) -> None:
    async def body(s: Served) -> None:
        stream = await s.client.get("/v1/events/stream")
        assert stream.status == 200
        await asyncio.wait_for(stream.content.readuntil(b"\n\n"), 5)  # the retry line
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(s.client.server.close(), 10)
        rest = await asyncio.wait_for(stream.content.read(), 5)
        assert rest == b"" and loop.time() - started < 5
        assert s.requests[-1].route == "/v1/events/stream" and s.requests[-1].status == 200

    run(tmp_path, body)
