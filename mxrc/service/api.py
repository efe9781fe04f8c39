"""The admin API: a thin HTTP translation of :class:`mxrc.service.ports.AdminBackend`.

Every decision about state is the backend's; this layer only authenticates mutating
calls, validates what clients send (rules in :mod:`mxrc.service.openapi`, which also
publishes them), maps the backend's refusals to status codes, and streams the event
log. Every error body is JSON with ``error`` (and ``field`` when one input is at
fault), so a script never has to parse prose to know what to fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from mxrc.catalog import event_types
from mxrc.diagram import render
from mxrc.obs.correlation import TraceIds, accept_request_id, correlated, ids_of
from mxrc.obs.tracing import span, unrecorded_tracer
from mxrc.segments import Record
from mxrc.service.auth import bearer_matches
from mxrc.service.events import ApiRequest
from mxrc.service.openapi import (
    RequestError,
    build_document,
    parse_command_body,
    parse_events_query,
    parse_last_event_id,
    parse_tracing_body,
    parse_write_body,
)
from mxrc.service.ports import OPERATOR_COMMANDS, AdminBackend, BadInput, NotPermitted
from mxrc.statemachine import TriggerRejected

log = logging.getLogger(__name__)

WEB_DIR: Final = Path(__file__).with_name("web")
HEARTBEAT_S: Final = 15.0
STREAM_BACKFILL_PAGE: Final = 1000
RECORD_KEYS: Final = tuple(Record.__annotations__)
#: The operator's name for a chart trigger, where it has one.
COMMAND_OF_TRIGGER: Final = {"fault": "safe_mode"} | {c: c for c in OPERATOR_COMMANDS}
PAGE_FILES: Final = {
    "/": ("index.html", "text/html"),
    "/app.js": ("app.js", "text/javascript"),
    "/style.css": ("style.css", "text/css"),
}
PAGE_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
UNMATCHED_ROUTE: Final = "unmatched"

_TRACE: Final = web.RequestKey("trace", TraceIds)
#: The status of a streamed response once its headers went out (it may end by cancellation).
_SENT: Final = web.RequestKey("sent_status", int)
#: Reported for a request whose client went away before any response was sent.
CLIENT_CLOSED: Final = 499

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error response: status, a JSON body with ``error``, optional extra headers."""

    def __init__(
        self, status: int, error: str, headers: Mapping[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(error)
        self.status = status
        self.body = {"error": error, **extra}
        self.headers = dict(headers or {})


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def record_json(record: Record) -> dict[str, Any]:
    """Exactly the envelope the event catalogue defines (a checksum field, if the record
    came straight from a segment, means nothing to a client)."""
    return {key: record[key] for key in RECORD_KEYS}  # type: ignore[literal-required]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class AdminApi:
    """The handlers and the little state they share (SVG cache, open streams)."""

    def __init__(
        self,
        backend: AdminBackend,
        *,
        token: str,
        max_body_bytes: int,
        health_max_age_s: float = 0.0,
    ) -> None:
        if not token:
            raise ValueError("the admin API needs a non-empty token")
        self.backend = backend
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.event_types = event_types()
        self.document = orjson.dumps(
            build_document(
                event_types=self.event_types,
                commands=OPERATOR_COMMANDS,
                writable_keys={
                    str(k["name"]): str(k["type"])
                    for k in backend.datastore_view()
                    if k["writer"] == "nonrt"
                },
                max_body_bytes=max_body_bytes,
            )
        )
        self.closing = asyncio.Event()
        self._svg: dict[str, asyncio.Future[bytes]] = {}
        self.health_max_age_s = health_max_age_s
        self._health: tuple[float, int, bytes] | None = None

    # ------------------------------------------------------------------ plumbing

    def authorize(self, request: web.Request) -> None:
        """Mutating calls only: reads change nothing and stay open to dashboards."""
        if not bearer_matches(request.headers.get("Authorization"), self.token):
            raise ApiError(
                401,
                "this call changes the node: send 'Authorization: Bearer <token>' with the "
                "token from the node's api.token_file",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @staticmethod
    def actor(request: web.Request) -> str:
        return f"api@{request.remote or 'unknown'}"

    # ------------------------------------------------------------------ probes

    async def health(self, request: web.Request) -> web.Response:
        """Evaluated at most once per ``health_max_age_s``: a load balancer or a scrape
        storm then costs the node one evaluation, not one per request. The body's
        ``timestamp`` is when it was evaluated."""
        now = time.monotonic()
        cached = self._health
        if cached is None or now - cached[0] >= self.health_max_age_s:
            report = self.backend.health()
            status = 503 if str(report.status) == "unhealthy" else 200
            cached = (now, status, orjson.dumps(report.to_json(now_iso())))
            self._health = cached
        return web.Response(body=cached[2], status=cached[1], content_type="application/json")

    async def ready(self, request: web.Request) -> web.Response:
        readiness = self.backend.readiness()
        body = {"ready": readiness.ready, "reason": readiness.reason}
        return json_response(body, 200 if readiness.ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.backend.registry),
            headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4},
        )

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self.document, content_type="application/json")

    async def page(self, request: web.Request) -> web.FileResponse:
        name, media = PAGE_FILES[request.path]
        headers = {"Cache-Control": "no-cache", "Content-Type": f"{media}; charset=utf-8"}
        if name.endswith(".html"):
            headers["Content-Security-Policy"] = PAGE_POLICY
        return web.FileResponse(WEB_DIR / name, headers=headers)

    # ------------------------------------------------------------------ reads

    async def state(self, request: web.Request) -> web.Response:
        return json_response(dict(self.backend.state_view()))

    async def telemetry(self, request: web.Request) -> web.Response:
        return json_response(dict(self.backend.telemetry()))

    async def statechart(self, request: web.Request) -> web.Response:
        chart = self.backend.chart
        current = str(self.backend.state_view()["state"])
        return json_response(
            {
                "name": chart.name,
                "ref": chart.ref,
                "version_hash": chart.version_hash,
                "initial": chart.initial,
                "states": [
                    {
                        "name": s,
                        "description": chart.descriptions.get(s, ""),
                        "drives_outputs": s in chart.driving_states,
                    }
                    for s in chart.states
                ],
                "transitions": [
                    {
                        "trigger": t.trigger,
                        "sources": list(t.sources),
                        "dest": t.dest,
                        "guards": list(t.guards),
                        "requires_cause": t.requires_cause,
                    }
                    for t in chart.transitions
                ],
                "guards": dict(chart.guards),
                "current": current,
                "legal_triggers": list(chart.legal_triggers(current)),
            }
        )

    async def statechart_svg(self, request: web.Request) -> web.Response:
        current = str(self.backend.state_view()["state"])
        try:
            svg = await self._render_svg(current)
        except RuntimeError as exc:
            raise ApiError(503, str(exc)) from None
        return web.Response(
            body=svg,
            content_type="image/svg+xml",
            headers={"Cache-Control": "no-cache", "ETag": f'"{self.backend.chart.ref}-{current}"'},
        )

    def _render_svg(self, state: str) -> asyncio.Future[bytes]:
        """One Graphviz run per state for the life of the process (the chart is fixed),
        off the event loop; concurrent requests share the run in flight."""
        cached = self._svg.get(state)
        if cached is not None and not (cached.done() and cached.exception() is not None):
            return cached
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, render, self.backend.chart, "svg", state)
        self._svg[state] = future
        return future

    async def events(self, request: web.Request) -> web.Response:
        query = parse_events_query(
            request.query.get("after"),
            request.query.get("limit"),
            request.query.getall("type", []),
            self.event_types,
        )
        records = self.backend.events(after=query.after, limit=query.limit, types=query.types)
        return json_response(
            {
                "events": [record_json(r) for r in records],
                "next_after": records[-1]["seq"] if records else query.after,
            }
        )

    async def datastore(self, request: web.Request) -> web.Response:
        return json_response({"keys": [dict(k) for k in self.backend.datastore_view()]})

    # ------------------------------------------------------------------ the live stream

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events, one per record. The subscription starts before the
        backfill (what a reconnecting client missed), so no record falls between them;
        duplicates are dropped by sequence number."""
        resume = parse_last_event_id(
            request.headers.get("Last-Event-ID"), request.query.get("after")
        )
        subscription = self.backend.subscribe()
        pending: asyncio.Future[Record] = asyncio.ensure_future(anext(subscription))
        closing: asyncio.Future[Any] = asyncio.ensure_future(self.closing.wait())
        await asyncio.sleep(0)  # let the subscription register before reading the backlog
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                "traceparent": request[_TRACE].traceparent,
            }
        )
        try:
            await response.prepare(request)
            request[_SENT] = response.status
            await response.write(b"retry: 2000\n\n")
            last = 0 if resume is None else await self._backfill(response, resume)
            while not closing.done():
                waiters: set[asyncio.Future[Any]] = {pending, closing}
                done, _ = await asyncio.wait(
                    waiters, timeout=HEARTBEAT_S, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    await response.write(b": heartbeat\n\n")
                    continue
                if pending not in done:
                    break  # the server is shutting down
                try:
                    record = pending.result()
                except StopAsyncIteration:
                    break  # the node stopped
                pending = asyncio.ensure_future(anext(subscription))
                if record["seq"] > last:
                    await response.write(sse_event(record))
                    last = record["seq"]
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away
        finally:
            await _close_subscription(subscription, pending, closing)
        return response

    async def _backfill(self, response: web.StreamResponse, after: int) -> int:
        while True:
            records = self.backend.events(after=after, limit=STREAM_BACKFILL_PAGE, types=None)
            for record in records:
                await response.write(sse_event(record))
                after = record["seq"]
            if len(records) < STREAM_BACKFILL_PAGE:
                return after

    # ------------------------------------------------------------------ writes

    async def command(self, request: web.Request) -> web.Response:
        self.authorize(request)
        trigger = request.match_info["trigger"]
        if trigger not in OPERATOR_COMMANDS:
            raise ApiError(
                404,
                f"{trigger!r} is not a command; commands: {', '.join(OPERATOR_COMMANDS)}",
                field="trigger",
                commands=list(OPERATOR_COMMANDS),
            )
        cause = parse_command_body(await request.read())
        try:
            record = await self.backend.command(
                trigger,
                actor=self.actor(request),
                cause=cause,
                traceparent=request[_TRACE].traceparent,
            )
        except TriggerRejected as exc:
            raise ApiError(
                409,
                str(exc),
                trigger=exc.trigger,
                state=exc.state,
                reason=exc.reason,
                legal=exc.legal,
                legal_commands=[
                    COMMAND_OF_TRIGGER[t] for t in exc.legal if t in COMMAND_OF_TRIGGER
                ],
                failed_guards=exc.failed_guards,
                seq=exc.record["seq"],
            ) from None
        except NotPermitted as exc:
            raise ApiError(403, str(exc), reason=exc.reason) from None
        return json_response(record_json(record))

    async def tracing(self, request: web.Request) -> web.Response:
        return json_response(self.backend.tracing_view())

    async def set_tracing(self, request: web.Request) -> web.Response:
        self.authorize(request)
        ratio = parse_tracing_body(await request.read())
        return json_response(self.backend.set_sample_ratio(ratio, actor=self.actor(request)))

    async def write_key(self, request: web.Request) -> web.Response:
        self.authorize(request)
        value = parse_write_body(await request.read())
        record = await self.backend.write_key(
            request.match_info["key"],
            value,
            actor=self.actor(request),
            traceparent=request[_TRACE].traceparent,
        )
        return json_response(record_json(record))


def sse_event(record: Record) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (record["seq"], orjson.dumps(record_json(record)))


async def _close_subscription(
    subscription: AsyncIterator[Record], *futures: asyncio.Future[Any]
) -> None:
    for future in futures:
        future.cancel()
    await asyncio.wait(futures)  # the generator must be idle before it can be closed
    for future in futures:
        if not future.cancelled():
            future.exception()  # retrieved, so the loop does not report it
    aclose = getattr(subscription, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


# ---------------------------------------------------------------------- middlewares


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


#: Monitoring probes: polled hard by load balancers and scrapers, and answered from
#: state the node already has, so they skip what only helps requests that do something.
PROBE_PATHS: Final = frozenset({"/health", "/ready", "/metrics"})


def _observe(
    on_request: Callable[[ApiRequest], None] | None,
    on_probe: Callable[[ApiRequest], None] | None,
    max_body_bytes: int,
    tracer: Tracer,
) -> Any:
    """The one middleware (each aiohttp middleware layer costs every request, and
    ``/health`` is polled hard): every request, whatever happened inside, runs in a
    SERVER span (child of the caller's ``traceparent`` when valid, else a new trace) and
    under its request id (the caller's ``X-Request-Id``, else a new one), so the
    backend's spans and log lines join it; it is reported once (metrics), carries both
    ids back in its headers, and every failure is answered by :func:`answer` as JSON.

    Except a probe (:data:`PROBE_PATHS`) that brings no ``traceparent``: it gets no span
    and no request id (nothing it does logs or traces), and it is reported to
    ``on_probe`` at once instead of through ``on_request`` (the EventBus). A load
    balancer polling ``/health`` thousands of times a second would otherwise cost a
    span and a bus event per poll, which is most of the price of a cached ``/health``
    and buys nothing: no trace is wanted and no observer but the metrics cares. A probe
    with a ``traceparent`` is traced."""

    async def probe(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await answer(request, handler, max_body_bytes)
            status = response.status
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            return response
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            if on_probe is not None:
                event = ApiRequest(request.method, request.path, status,
                                   time.perf_counter() - started)  # fmt: skip
                try:
                    on_probe(event)
                except Exception:
                    log.exception("on_probe observer failed for %s", event)

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PROBE_PATHS and "traceparent" not in request.headers:
            return await probe(request, handler)
        started = time.perf_counter()
        route = _route_of(request)
        request_id = accept_request_id(request.headers.get("X-Request-Id"))
        status = 500
        with (
            correlated(request_id=request_id),
            span(
                tracer,
                f"{request.method} {route}",
                {"http.request.method": request.method, "http.route": route,
                 "url.path": request.path},
                kind=SpanKind.SERVER,
                parent=request.headers.get("traceparent"),
            ) as server,
        ):
            ids = ids_of(server.get_span_context())
            request[_TRACE] = ids or TraceIds("0" * 32, "0" * 16, False)
            try:
                response = await answer(request, handler, max_body_bytes)
                status = response.status
            except asyncio.CancelledError:
                status = request.get(_SENT, CLIENT_CLOSED)
                raise
            else:
                if not response.prepared:
                    response.headers["traceparent"] = request[_TRACE].traceparent
                    response.headers["X-Request-Id"] = request_id
                    response.headers.setdefault("X-Content-Type-Options", "nosniff")
                return response
            finally:
                server.set_attribute("http.response.status_code", status)
                if status >= 500:
                    server.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
                if on_request is not None:
                    event = ApiRequest(
                        request.method, route, status, time.perf_counter() - started
                    )
                    try:
                        on_request(event)
                    except Exception:
                        log.exception("on_request observer failed for %s", event)

    return observe


_ENTITY_HEADERS: Final = frozenset({"content-type", "content-length", "content-encoding"})


def error_response(exc: Exception, request: web.Request, max_body_bytes: int) -> ApiError:
    """What the client is told about ``exc``; an unexpected one is logged with its
    traceback here and reported as a 500 without it."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RequestError | BadInput):
        return ApiError(400, str(exc), field=exc.field)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return ApiError(
            413, f"request body larger than {max_body_bytes} bytes", limit=max_body_bytes
        )
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in _ENTITY_HEADERS}
        message = exc.reason
        if exc.status == 404:
            message = f"no such resource: {request.path} (see /openapi.json)"
        elif exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        return ApiError(exc.status, message, headers)
    log.error("admin API: %s %s failed", request.method, request.path, exc_info=exc)
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}")


async def answer(
    request: web.Request, handler: Handler, max_body_bytes: int
) -> web.StreamResponse:
    """Every failure becomes a JSON body with ``error``; nothing reaches the client as
    an HTML page or a stack trace."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = error_response(exc, request, max_body_bytes)
    except Exception as exc:
        error = error_response(exc, request, max_body_bytes)
    return json_response(error.body, error.status, error.headers)


# ---------------------------------------------------------------------- the application


def build_app(
    backend: AdminBackend,
    *,
    token: str,
    max_body_bytes: int,
    on_request: Callable[[ApiRequest], None] | None = None,
    health_max_age_s: float = 0.0,
    tracer: Tracer | None = None,
    on_probe: Callable[[ApiRequest], None] | None = None,
) -> web.Application:
    """The admin API and the operator's page for one node, ready for an AppRunner.
    ``tracer``: where request spans go (default: no-op, trace ids still propagate).
    ``on_probe``: where untraced probes are reported, synchronously on the event loop
    (default: ``on_request``); see :func:`_observe`."""
    api = AdminApi(
        backend, token=token, max_body_bytes=max_body_bytes, health_max_age_s=health_max_age_s
    )
    app = web.Application(
        client_max_size=max_body_bytes,
        middlewares=[
            _observe(
                on_request,
                on_request if on_probe is None else on_probe,
                max_body_bytes,
                tracer or unrecorded_tracer(),
            )
        ],
    )

    async def on_shutdown(_app: web.Application) -> None:
        api.closing.set()  # open event streams end instead of holding the shutdown up

    app.on_shutdown.append(on_shutdown)
    for path in PAGE_FILES:
        app.router.add_get(path, api.page)
    app.router.add_get("/health", api.health)
    app.router.add_get("/ready", api.ready)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/openapi.json", api.openapi)
    app.router.add_get("/v1/state", api.state)
    app.router.add_get("/v1/telemetry", api.telemetry)
    app.router.add_get("/v1/statechart", api.statechart)
    app.router.add_get("/v1/statechart.svg", api.statechart_svg)
    app.router.add_get("/v1/events", api.events)
    app.router.add_get("/v1/events/stream", api.stream)
    app.router.add_get("/v1/datastore", api.datastore)
    app.router.add_put("/v1/datastore/{key}", api.write_key)
    app.router.add_post("/v1/commands/{trigger}", api.command)
    app.router.add_get("/v1/tracing", api.tracing)
    app.router.add_put("/v1/tracing", api.set_tracing)
    return app
