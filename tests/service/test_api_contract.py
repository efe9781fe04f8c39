"""The API's published contract and the request rules it states (no server needed)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from schemathesis.specs.openapi.definitions import OPENAPI_31

from mxrc.catalog import event_types
from mxrc.service.openapi import (
    EVENTS_LIMIT_DEFAULT,
    RequestError,
    build_document,
    key_value_schema,
    parse_command_body,
    parse_events_query,
    parse_last_event_id,
    parse_tracing_body,
    parse_write_body,
)
from tests.service.api_support import parse_traceparent

COMMANDS = ("start", "stop", "reset", "safe_mode")
KNOWN = frozenset({"transition", "command_rejected", "node_started"})
VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# --- traceparent -----------------------------------------------------------------------


def test_valid_traceparent_is_parsed() -> None:
    ctx = parse_traceparent(VALID)
    assert ctx is not None
    assert ctx == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)
    assert ctx.traceparent == VALID
    # a later version may carry more fields; the first four are still understood
    later = parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra")
    assert later is not None and later.traceparent.startswith("00-4bf92f35")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        VALID.upper(),  # hex must be lowercase
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",  # v00 is exactly 55
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
    ],
)
def test_invalid_traceparent_is_ignored(header: str | None) -> None:
    # ignored, not refused: the server span then starts a new trace (test_api_http)
    assert parse_traceparent(header) is None


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"", "body"),
        (b"{}", "sample_ratio"),
        (b'{"sample_ratio": 1.5}', "sample_ratio"),
        (b'{"sample_ratio": -0.1}', "sample_ratio"),
        (b'{"sample_ratio": true}', "sample_ratio"),
        (b'{"sample_ratio": "0.5"}', "sample_ratio"),
        (b'{"sample_ratio": 0.5, "ratio": 1}', "ratio"),
    ],
)
def test_tracing_body_refuses_what_is_not_a_ratio(raw: bytes, field: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_tracing_body(raw)
    assert caught.value.field == field


def test_tracing_body_accepts_the_bounds() -> None:
    assert parse_tracing_body(b'{"sample_ratio": 0}') == 0.0
    assert parse_tracing_body(b'{"sample_ratio": 1}') == 1.0
    assert parse_tracing_body(b'{"sample_ratio": 0.25}') == 0.25


# --- bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "cause"),
    [
        (b"", None),
        (b"  \n", None),
        (b"{}", None),
        (b'{"cause": null}', None),
        (b'{"cause": "maintenance"}', "maintenance"),
    ],
)
def test_command_body_accepted(raw: bytes, cause: str | None) -> None:
    assert parse_command_body(raw) == cause


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"not json", "body"),
        (b"[1, 2]", "body"),
        (b'"cause"', "body"),
        (b'{"cause": 5}', "cause"),
        (b'{"cause": ["x"]}', "cause"),
        (b'{"cause": "' + b"x" * 201 + b'"}', "cause"),
        (b'{"cause": "x", "actor": "me"}', "actor"),
        (b"\xff\xfe", "body"),
    ],
)
def test_command_body_refused_naming_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_command_body(raw)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_write_body() -> None:
    assert parse_write_body(b'{"value": 1.5}') == 1.5
    assert parse_write_body(b'{"value": [1, 2]}') == [1, 2]
    assert parse_write_body(b'{"value": null}') is None
    for raw, field in [
        (b"", "body"),
        (b"{}", "value"),
        (b"1.5", "body"),
        (b'{"value": 1, "key": "x"}', "key"),
        (b"{", "body"),
    ]:
        with pytest.raises(RequestError) as caught:
            parse_write_body(raw)
        assert caught.value.field == field, raw


# --- query -----------------------------------------------------------------------------


def test_events_query_defaults_and_types() -> None:
    q = parse_events_query(None, None, [], KNOWN)
    assert (q.after, q.limit, q.types) == (0, EVENTS_LIMIT_DEFAULT, None)
    q = parse_events_query("7", "1000", ["transition,command_rejected", "node_started"], KNOWN)
    assert (q.after, q.limit) == (7, 1000)
    assert q.types == KNOWN
    assert parse_events_query("0", "1", ["transition"], KNOWN).types == frozenset({"transition"})


@pytest.mark.parametrize(
    ("after", "limit", "types", "field"),
    [
        ("-1", None, [], "after"),
        ("x", None, [], "after"),
        ("1.5", None, [], "after"),
        ("", None, [], "after"),
        (None, "0", [], "limit"),
        (None, "1001", [], "limit"),
        (None, "ten", [], "limit"),
        (None, "99999999999999999999999", [], "limit"),
        (None, None, ["transition,bogus"], "type"),
        (None, None, [","], "type"),
    ],
)
def test_events_query_refused_naming_the_parameter(
    after: str | None, limit: str | None, types: list[str], field: str
) -> None:
    with pytest.raises(RequestError) as caught:
        parse_events_query(after, limit, types, KNOWN)
    assert caught.value.field == field
    if field == "type" and types != [","]:
        assert "bogus" in caught.value.message and "transition" in caught.value.message


def test_stream_resume_point() -> None:
    assert parse_last_event_id(None, None) is None
    assert parse_last_event_id("12", "3") == 12  # the reconnecting EventSource wins
    assert parse_last_event_id(None, "3") == 3
    assert parse_last_event_id(" ", "3") == 3
    with pytest.raises(RequestError) as caught:
        parse_last_event_id("abc", None)
    assert caught.value.field == "Last-Event-ID"
    with pytest.raises(RequestError) as caught:
        parse_last_event_id("12", "-3")  # an ignored parameter is still checked
    assert caught.value.field == "after"


# --- the document ----------------------------------------------------------------------


def document() -> dict[str, Any]:
    return build_document(
        event_types=event_types(),
        commands=COMMANDS,
        writable_keys={"setpoint": "f64", "gains": "f64[3]", "mode": "i64", "armed": "bool"},
        max_body_bytes=4096,
    )


def test_document_is_valid_openapi_3_1() -> None:
    doc = orjson.loads(orjson.dumps(document()))  # plain JSON, as served
    assert doc["openapi"] == "3.1.0"
    errors = sorted(Draft202012Validator(OPENAPI_31).iter_errors(doc), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_every_reference_resolves() -> None:
    doc = document()
    registry: Registry[Any] = Registry().with_resource(
        "urn:doc", Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    resolver = registry.resolver("urn:doc")
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs
    for ref in refs:
        resolver.lookup(ref)  # raises if dangling


def test_document_states_the_error_responses() -> None:
    paths = document()["paths"]
    command = paths["/v1/commands/{trigger}"]["post"]
    assert set(command["responses"]) == {"200", "400", "401", "403", "404", "409", "413"}
    assert command["security"] == [{"bearer": []}]
    put = paths["/v1/datastore/{key}"]["put"]
    assert {"200", "400", "401", "413"} <= set(put["responses"])
    assert "security" not in paths["/v1/state"]["get"]
    schemas = document()["components"]["schemas"]
    rejected = schemas["CommandRejected"]
    assert {"error", "state", "legal", "failed_guards"} <= set(rejected["required"])
    assert schemas["FieldError"]["required"] == ["error", "field"]
    types = paths["/v1/events"]["get"]["parameters"][2]
    assert types["name"] == "type" and types["explode"] is True
    assert set(schemas["EventType"]["enum"]) == set(event_types())


def test_write_schemas_follow_the_nodes_keys() -> None:
    doc = document()
    put = doc["paths"]["/v1/datastore/{key}"]["put"]
    assert put["parameters"][0]["schema"] == {"enum": ["armed", "gains", "mode", "setpoint"]}
    value = Draft202012Validator(doc["components"]["schemas"]["WriteBody"]["properties"]["value"])
    for ok in (1.5, 7, [1.0, 2, 3.5], True):
        assert value.is_valid(ok), ok
    for bad in ("high", [1.0, 2.0], None, {"v": 1}):
        assert not value.is_valid(bad), bad
    one = build_document(
        event_types=event_types(),
        commands=COMMANDS,
        writable_keys={"setpoint": "f64", "speed": "f64"},
        max_body_bytes=4096,
    )
    assert one["components"]["schemas"]["WriteBody"]["properties"]["value"] == {"type": "number"}
    assert key_value_schema("i64") == {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
    assert key_value_schema("f64[2]")["maxItems"] == 2
    with pytest.raises(ValueError, match="str"):
        key_value_schema("str")
