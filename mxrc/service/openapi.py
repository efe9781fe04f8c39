"""The admin API's contract: the OpenAPI 3.1 document and the request rules it states.

The document and the parsing of what a client sends (query parameters, JSON bodies,
the W3C ``traceparent`` header) live together so that what is published and what is
enforced cannot drift apart; the HTTP layer (:mod:`mxrc.service.api`) only maps the
outcome to status codes. Nothing here touches the node, which keeps it testable alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from mxrc import __version__
from mxrc.resources import data_dir

EVENTS_LIMIT_DEFAULT: Final = 100
EVENTS_LIMIT_MAX: Final = 1000
CAUSE_MAX_CHARS: Final = 200
MAX_SEQ: Final = 2**63 - 1
HEALTH_STATUSES: Final = ("healthy", "degraded", "unhealthy")


class RequestError(Exception):
    """A request the API refuses before the node sees it (400, naming ``field``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# --- bodies -------------------------------------------------------------------------------


def _json_object(raw: bytes, *, required: bool) -> dict[str, Any] | None:
    if not raw.strip():
        if required:
            raise RequestError("body", "a JSON object is required")
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError("body", f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RequestError("body", f"expected a JSON object, got {type(doc).__name__}")
    return doc


def _no_other_fields(doc: Mapping[str, Any], allowed: Iterable[str]) -> None:
    extra = sorted(set(doc) - set(allowed))
    if extra:
        raise RequestError(extra[0], f"unknown field; allowed: {', '.join(allowed)}")


def parse_command_body(raw: bytes) -> str | None:
    """``POST /v1/commands/{trigger}``: optional ``{"cause": str}``; the cause or None."""
    doc = _json_object(raw, required=False)
    if doc is None:
        return None
    _no_other_fields(doc, ("cause",))
    cause = doc.get("cause")
    if cause is None:
        return None
    if not isinstance(cause, str):
        raise RequestError("cause", f"expected a string, got {type(cause).__name__}")
    if len(cause) > CAUSE_MAX_CHARS:
        raise RequestError("cause", f"at most {CAUSE_MAX_CHARS} characters")
    return cause


def parse_write_body(raw: bytes) -> Any:
    """``PUT /v1/datastore/{key}``: ``{"value": ...}``; the value (its type is the key's
    business, checked by the node)."""
    doc = _json_object(raw, required=True)
    assert doc is not None
    _no_other_fields(doc, ("value",))
    if "value" not in doc:
        raise RequestError("value", "required")
    return doc["value"]


def parse_tracing_body(raw: bytes) -> float:
    """``PUT /v1/tracing``: ``{"sample_ratio": 0..1}``."""
    doc = _json_object(raw, required=True)
    assert doc is not None
    _no_other_fields(doc, ("sample_ratio",))
    if "sample_ratio" not in doc:
        raise RequestError("sample_ratio", "required (a number in 0..1)")
    ratio = doc["sample_ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
        raise RequestError("sample_ratio", f"must be a number in 0..1, got {ratio!r}")
    return float(ratio)


# --- query --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventsQuery:
    after: int
    limit: int
    types: frozenset[str] | None


def _integer(name: str, raw: str | None, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    text = raw.strip()
    if len(text) > 40 or not re.fullmatch(r"[+-]?[0-9]+", text):
        raise RequestError(name, f"expected an integer, got {raw!r}")
    value = int(text)
    if not low <= value <= high:
        raise RequestError(name, f"{value} is out of range ({low}..{high})")
    return value


def parse_events_query(
    after: str | None, limit: str | None, types: Sequence[str], known: frozenset[str]
) -> EventsQuery:
    """``GET /v1/events``: ``after`` ≥ 0, ``limit`` 1..1000, ``type`` repeated or
    comma-separated (each one a known event type)."""
    wanted = {t.strip() for value in types for t in value.split(",") if t.strip()}
    unknown = sorted(wanted - known)
    if unknown:
        raise RequestError(
            "type", f"unknown event type(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    if types and not wanted:
        raise RequestError("type", "empty; give one or more event types")
    return EventsQuery(
        after=_integer("after", after, 0, 0, MAX_SEQ),
        limit=_integer("limit", limit, EVENTS_LIMIT_DEFAULT, 1, EVENTS_LIMIT_MAX),
        types=frozenset(wanted) if wanted else None,
    )


def parse_last_event_id(header: str | None, after: str | None) -> int | None:
    """Where an event stream resumes: the ``Last-Event-ID`` an ``EventSource`` sends on
    reconnection wins over ``?after=`` (both must be valid); None means "new records
    only"."""
    query = None if after is None else _integer("after", after, 0, 0, MAX_SEQ)
    if header is not None and header.strip():
        return _integer("Last-Event-ID", header, 0, 0, MAX_SEQ)
    return query


# --- the document -------------------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Mapping[str, Any], description: str, **headers: Any) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": dict(schema)}},
    }
    if headers:
        response["headers"] = headers
    return response


def _error(description: str, schema: str = "Error") -> dict[str, Any]:
    return _json(_ref(schema), description)


def _record_schema() -> dict[str, Any]:
    """The event catalogue's own envelope schema, so a record in a response is held to
    exactly the rules the log is."""
    schema = orjson.loads((data_dir("events") / "record.schema.json").read_bytes())
    for key in ("$schema", "$id"):
        schema.pop(key, None)
    return dict(schema)


_TRACE_HEADER: Final = {
    "description": "W3C trace context of this request (a new span of the caller's trace "
    "when a valid traceparent was sent, else a new trace); also recorded in the record.",
    "schema": {"type": "string", "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"},
}


def _schemas(
    event_types: Sequence[str], commands: Sequence[str], write_value: Mapping[str, Any]
) -> dict[str, Any]:
    nullable_str = {"type": ["string", "null"]}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
        },
        "FieldError": {
            "type": "object",
            "required": ["error", "field"],
            "properties": {
                "error": {"type": "string"},
                "field": {"type": "string", "description": "the parameter or body field at fault"},
            },
        },
        "TooLarge": {
            "type": "object",
            "required": ["error", "limit"],
            "properties": {"error": {"type": "string"}, "limit": {"type": "integer"}},
        },
        "UnknownCommand": {
            "type": "object",
            "required": ["error", "field", "commands"],
            "properties": {
                "error": {"type": "string"},
                "field": {"const": "trigger"},
                "commands": {"type": "array", "items": {"enum": list(commands)}},
            },
        },
        "NotPermitted": {
            "type": "object",
            "required": ["error", "reason"],
            "properties": {
                "error": {"type": "string"},
                "reason": {"type": "string", "description": "the permission guards that failed"},
            },
        },
        "CommandRejected": {
            "type": "object",
            "required": [
                "error",
                "trigger",
                "state",
                "reason",
                "legal",
                "legal_commands",
                "failed_guards",
                "seq",
            ],
            "properties": {
                "error": {"type": "string"},
                "trigger": {"type": "string", "description": "the chart trigger refused"},
                "state": {"type": "string"},
                "reason": {"enum": ["illegal", "guard", "invalid"]},
                "legal": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "chart triggers legal in this state",
                },
                "legal_commands": {
                    "type": "array",
                    "items": {"enum": list(commands)},
                    "description": "the same, as operator commands",
                },
                "failed_guards": {"type": "array", "items": {"type": "string"}},
                "seq": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "the command_rejected record in the event log",
                },
            },
        },
        "Record": _record_schema(),
        "Health": {
            "type": "object",
            "required": ["status", "timestamp", "checks"],
            "properties": {
                "status": {"enum": list(HEALTH_STATUSES)},
                "timestamp": {"type": "string", "format": "date-time"},
                "checks": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["status", "detail"],
                        "properties": {
                            "status": {"enum": list(HEALTH_STATUSES)},
                            "detail": {"type": "string"},
                        },
                    },
                },
            },
        },
        "Readiness": {
            "type": "object",
            "required": ["ready", "reason"],
            "additionalProperties": False,
            "properties": {"ready": {"type": "boolean"}, "reason": {"type": "string"}},
        },
        "State": {
            "type": "object",
            "required": [
                "node",
                "state",
                "since",
                "since_seq",
                "cycle",
                "slot",
                "leader",
                "quorum",
                "token",
                "lease_remaining_s",
                "legal_triggers",
                "last_seq",
                "rt",
            ],
            "properties": {
                "node": {"type": "string"},
                "chart": {"type": "string"},
                "state": {"type": "string"},
                "since": {**nullable_str, "description": "ISO 8601 time the state was entered"},
                "since_seq": {"type": ["integer", "null"]},
                "cause": nullable_str,
                "cycle": {"type": "integer", "minimum": 0},
                "slot": {"type": "integer", "minimum": 0},
                "leader": {"type": "boolean"},
                "quorum": {"type": "boolean"},
                "holder": nullable_str,
                "token": {"type": "integer", "minimum": 0, "description": "fencing token"},
                "lease_remaining_s": {"type": ["number", "null"]},
                "ha_backend": {"type": "string"},
                "legal_triggers": {"type": "array", "items": {"type": "string"}},
                "active_conditions": {"type": "array", "items": {"type": "string"}},
                "last_seq": {"type": "integer", "minimum": 0},
                "rt": {
                    "type": "object",
                    "required": ["attached", "driving"],
                    "properties": {
                        "attached": {"type": "boolean"},
                        "driving": {"type": "boolean"},
                    },
                },
            },
        },
        "Telemetry": {
            "description": "The latest cycle figures; an empty object before the RT process "
            "reported.",
            "anyOf": [
                {"type": "object", "maxProperties": 0},
                {
                    "type": "object",
                    "required": [
                        "cycle",
                        "slot",
                        "wake_p99_us",
                        "misses",
                        "tracking_error",
                        "joint_position",
                        "driving",
                        "t",
                    ],
                    "properties": {
                        "cycle": {"type": "integer", "minimum": 0},
                        "slot": {"type": "integer", "minimum": 0},
                        "wake_p99_us": {"type": "number"},
                        "misses": {"type": "integer", "minimum": 0},
                        "tracking_error": {"type": "number"},
                        "joint_position": {"type": "number"},
                        "driving": {"type": "boolean"},
                        "t": nullable_str,
                    },
                },
            ],
        },
        "Statechart": {
            "type": "object",
            "required": [
                "name",
                "ref",
                "version_hash",
                "initial",
                "states",
                "transitions",
                "guards",
                "current",
                "legal_triggers",
            ],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "ref": {"type": "string"},
                "version_hash": {"type": "string", "pattern": "^[0-9a-f]{12}$"},
                "initial": {"type": "string"},
                "states": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "description", "drives_outputs"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string"},
                            "description": {"type": "string"},
                            "drives_outputs": {"type": "boolean"},
                        },
                    },
                },
                "transitions": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["trigger", "sources", "dest", "guards", "requires_cause"],
                        "additionalProperties": False,
                        "properties": {
                            "trigger": {"type": "string"},
                            "sources": {"type": "array", "items": {"type": "string"}},
                            "dest": {"type": "string"},
                            "guards": {"type": "array", "items": {"type": "string"}},
                            "requires_cause": {"type": "boolean"},
                        },
                    },
                },
                "guards": {
                    "type": "object",
                    "description": "guard name → what it means",
                    "additionalProperties": {"type": "string"},
                },
                "current": {"type": "string"},
                "legal_triggers": {"type": "array", "items": {"type": "string"}},
            },
        },
        "EventsPage": {
            "type": "object",
            "required": ["events", "next_after"],
            "additionalProperties": False,
            "properties": {
                "events": {"type": "array", "items": _ref("Record")},
                "next_after": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "pass as 'after' for the next page (the last seq returned, "
                    "or the request's 'after' when none was)",
                },
            },
        },
        "DataStore": {
            "type": "object",
            "required": ["keys"],
            "additionalProperties": False,
            "properties": {
                "keys": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "type", "writer", "critical", "value"],
                        "properties": {
                            "name": {"type": "string"},
                            "type": {"type": "string"},
                            "writer": {"enum": ["nonrt", "rt"]},
                            "critical": {"type": "boolean"},
                            "value": _ref("KeyValue"),
                        },
                    },
                }
            },
        },
        "KeyValue": {
            "description": "f64 / i64: a number; bool; f64[N]: an array of N numbers",
            "type": ["number", "boolean", "array", "null"],
            "items": {"type": "number"},
        },
        "CommandBody": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "cause": {
                    "type": ["string", "null"],
                    "maxLength": CAUSE_MAX_CHARS,
                    "description": "why (recorded; safe_mode defaults to 'operator')",
                }
            },
        },
        "WriteBody": {
            "type": "object",
            "required": ["value"],
            "additionalProperties": False,
            "properties": {"value": dict(write_value)},
        },
        "TracingBody": {
            "type": "object",
            "required": ["sample_ratio"],
            "additionalProperties": False,
            "properties": {"sample_ratio": {"type": "number", "minimum": 0, "maximum": 1}},
        },
        "Tracing": {
            "type": "object",
            "required": ["sample_ratio", "parent_based", "export"],
            "properties": {
                "sample_ratio": {"type": "number", "minimum": 0, "maximum": 1},
                "parent_based": {"type": "boolean"},
                "export": {"type": ["string", "null"]},
            },
        },
        "EventType": {"enum": list(event_types)},
        "StreamEvent": {
            "type": "object",
            "required": ["id", "data"],
            "properties": {
                "id": {"type": "string", "pattern": "^[1-9][0-9]*$"},
                "event": {"const": "message"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": _ref("Record"),
                },
                "retry": {"type": "integer", "minimum": 0},
            },
        },
    }


_VECTOR = re.compile(r"^f64\[([0-9]+)\]$")


def key_value_schema(key_type: str) -> dict[str, Any]:
    """The JSON a client sends for a data-store key of ``key_type`` (f64, i64, bool,
    f64[N])."""
    if key_type == "f64":
        return {"type": "number"}
    if key_type == "i64":
        return {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
    if key_type == "bool":
        return {"type": "boolean"}
    vector = _VECTOR.match(key_type)
    if vector is None:
        raise ValueError(f"unknown data-store key type {key_type!r}")
    n = int(vector.group(1))
    return {"type": "array", "items": {"type": "number"}, "minItems": n, "maxItems": n}


def _write_schemas(writable: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The key parameter and the body's value, as precise as this node's keys allow: a
    client generating valid requests from the document only writes keys that exist,
    with values of their type (one schema per type when the types differ)."""
    if not writable:
        return {"type": "string"}, _ref("KeyValue")
    values = list({orjson.dumps(key_value_schema(t)): t for t in writable.values()})
    schemas = [orjson.loads(v) for v in values]
    value = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    return {"enum": sorted(writable)}, value


def build_document(
    *,
    event_types: Iterable[str],
    commands: Sequence[str],
    writable_keys: Mapping[str, str],
    max_body_bytes: int,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document served at ``/openapi.json``; ``writable_keys`` maps each
    data-store key clients may write to its type."""
    types = sorted(event_types)
    key_param, write_value = _write_schemas(writable_keys)
    trace_param = {
        "name": "traceparent",
        "in": "header",
        "required": False,
        "description": "W3C trace context; an invalid one is ignored and a new trace begun",
        "schema": {"type": "string"},
    }
    too_large = _error(f"body larger than {max_body_bytes} bytes", "TooLarge")
    unauthorized = {
        **_error("missing or wrong bearer token"),
        "headers": {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}},
    }
    text = {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}}

    def static(media: str, summary: str) -> dict[str, Any]:
        return {
            "get": {
                "summary": summary,
                "tags": ["page"],
                "responses": {
                    "200": {
                        "description": summary,
                        "content": {media: {"schema": {"type": "string"}}},
                    }
                },
            }
        }

    def get(summary: str, schema: str, **extra: Any) -> dict[str, Any]:
        return {
            "get": {
                "summary": summary,
                "responses": {"200": _json(_ref(schema), summary, traceparent=_TRACE_HEADER)},
                **extra,
            }
        }

    paths: dict[str, Any] = {
        "/": {
            "get": {"summary": "the operator's page", "tags": ["page"], "responses": {"200": text}}
        },
        "/app.js": static("text/javascript", "the page's script"),
        "/style.css": static("text/css", "the page's style sheet"),
        "/health": {
            "get": {
                "summary": "health checks; 503 when any is unhealthy",
                "tags": ["probes"],
                "responses": {
                    "200": _json(
                        {
                            "allOf": [
                                _ref("Health"),
                                {"properties": {"status": {"enum": ["healthy", "degraded"]}}},
                            ]
                        },
                        "healthy or degraded",
                    ),
                    "503": _json(
                        {
                            "allOf": [
                                _ref("Health"),
                                {"properties": {"status": {"const": "unhealthy"}}},
                            ]
                        },
                        "unhealthy",
                    ),
                },
            }
        },
        "/ready": {
            "get": {
                "summary": "whether this node can serve its role now",
                "tags": ["probes"],
                "responses": {
                    "200": _json(
                        {"allOf": [_ref("Readiness"), {"properties": {"ready": {"const": True}}}]},
                        "ready",
                    ),
                    "503": _json(
                        {"allOf": [_ref("Readiness"), {"properties": {"ready": {"const": False}}}]},
                        "not ready, and why",
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format)",
                "tags": ["probes"],
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "this document",
                "tags": ["probes"],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document")},
            }
        },
        "/v1/state": get("the node's safety state, leadership and RT status", "State"),
        "/v1/telemetry": get("the latest cycle figures", "Telemetry"),
        "/v1/statechart": get("the chart definition and the current state", "Statechart"),
        "/v1/statechart.svg": {
            "get": {
                "summary": "the chart drawn by Graphviz, the current state highlighted",
                "responses": {
                    "200": {
                        "description": "SVG picture",
                        "content": {"image/svg+xml": {"schema": {"type": "string"}}},
                    },
                    "503": _error("Graphviz is not available"),
                },
            }
        },
        "/v1/events": {
            "get": {
                "summary": "event-log records after a sequence number, oldest first",
                "parameters": [
                    {
                        "name": "after",
                        "in": "query",
                        "description": "return records with seq > after",
                        "schema": {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": MAX_SEQ,
                            "default": 0,
                        },
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": EVENTS_LIMIT_MAX,
                            "default": EVENTS_LIMIT_DEFAULT,
                        },
                    },
                    {
                        "name": "type",
                        "in": "query",
                        "description": "only these event types (repeat the parameter, or "
                        "separate with commas)",
                        "style": "form",
                        "explode": True,
                        "schema": {"type": "array", "items": _ref("EventType")},
                    },
                ],
                "responses": {
                    "200": _json(_ref("EventsPage"), "one page of records"),
                    "400": _error("a parameter is malformed or out of range", "FieldError"),
                },
            }
        },
        "/v1/events/stream": {
            "get": {
                "summary": "Server-Sent Events: every new record (id = seq); comment "
                "heartbeats every 15 s",
                "parameters": [
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "description": "resume after this seq (sent by EventSource on reconnect)",
                        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "description": "first send the records after this seq",
                        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "event stream; the schema describes each event (its "
                        "'data' is one Record as JSON, its 'id' the record's seq)",
                        "content": {"text/event-stream": {"schema": _ref("StreamEvent")}},
                    },
                    "400": _error("Last-Event-ID or after is malformed", "FieldError"),
                },
            }
        },
        "/v1/datastore": get("every data-store key and its value", "DataStore"),
        "/v1/datastore/{key}": {
            "put": {
                "summary": "write a data-store key the non-RT side owns (journalled first)",
                "security": [{"bearer": []}],
                "parameters": [
                    {"name": "key", "in": "path", "required": True, "schema": key_param},
                    trace_param,
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("WriteBody")}},
                },
                "responses": {
                    "200": _json(
                        _ref("Record"),
                        "the durable datastore_write record",
                        traceparent=_TRACE_HEADER,
                    ),
                    "400": _error(
                        "bad body, unknown or RT-side key, or a value of the wrong type",
                        "FieldError",
                    ),
                    "401": unauthorized,
                    "413": too_large,
                },
            }
        },
        "/v1/tracing": {
            "get": {
                "summary": "the trace sampler's ratio and where spans are exported",
                "responses": {"200": _json(_ref("Tracing"), "the tracing settings")},
            },
            "put": {
                "summary": "change the sample ratio of new traces at run time",
                "description": "Parent-based: a caller's sampled trace is always followed; "
                "the ratio applies to traces that start in this node. Not persisted: "
                "tracing.sample_ratio applies again after a restart.",
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("TracingBody")}},
                },
                "responses": {
                    "200": _json(_ref("Tracing"), "the tracing settings now in force"),
                    "400": _error("bad body or a ratio outside 0..1", "FieldError"),
                    "401": unauthorized,
                    "413": too_large,
                },
            },
        },
        "/v1/commands/{trigger}": {
            "post": {
                "summary": "send an operator command to the safety statechart",
                "description": f"Commands: {', '.join(commands)} (safe_mode is the chart's "
                "fault trigger, cause 'operator' unless given).",
                "security": [{"bearer": []}],
                "parameters": [
                    {
                        "name": "trigger",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": list(commands)},
                        "description": "one of the commands; anything else is 404",
                    },
                    trace_param,
                ],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("CommandBody")}},
                },
                "responses": {
                    "200": _json(
                        _ref("Record"), "the durable transition record", traceparent=_TRACE_HEADER
                    ),
                    "400": _error("malformed body", "FieldError"),
                    "401": unauthorized,
                    "403": _error(
                        "this node may not do it (not leader with quorum)", "NotPermitted"
                    ),
                    "404": _error("not an operator command", "UnknownCommand"),
                    "409": _error("refused by the statechart (journalled)", "CommandRejected"),
                    "413": too_large,
                },
            }
        },
    }
    for item in paths.values():
        for operation in item.values():
            operation.setdefault("tags", ["v1"])
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mxrc admin API",
            "version": __version__,
            "description": "Read-only GETs are open; POST and PUT need "
            "'Authorization: Bearer <token>'. Every error body is JSON with 'error' "
            "(and 'field' when one parameter or body field is at fault).",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(types, commands, write_value),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the token in api.token_file",
                }
            },
        },
    }
