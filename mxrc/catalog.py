"""The event catalogue: which event types exist, and their JSON Schemas (``events/``).

The writer refuses a type the catalogue does not list, the reader reports one, and
``mxrc replay --verify`` and the tests validate records against the schemas, so the
files in ``events/`` are the one definition of what a log may contain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
from jsonschema import Draft202012Validator

from mxrc.resources import data_dir

_TYPE_SUFFIX = ".schema.json"


@dataclass(frozen=True)
class Schema:
    """One schema, twice: ``fast`` (compiled by fastjsonschema, ~20x faster) answers
    "valid?" for every record of a large log; ``full`` (jsonschema) explains every
    violation of the rare invalid one."""

    fast: Callable[[Any], Any]
    full: Draft202012Validator

    def errors(self, value: Any) -> list[Any]:
        try:
            self.fast(value)
        except fastjsonschema.JsonSchemaException:
            return list(self.full.iter_errors(value))
        return []


@dataclass(frozen=True)
class Catalogue:
    envelope: Schema
    segment_header: Schema
    payloads: Mapping[str, Schema]

    @property
    def types(self) -> frozenset[str]:
        return frozenset(self.payloads)

    def problems(self, record: Mapping[str, Any]) -> list[str]:
        """Every schema violation of ``record`` (without its crc), as readable lines."""
        found = [_describe(e) for e in self.envelope.errors(record)]
        schema = self.payloads.get(str(record.get("type")))
        if schema is None:
            found.append(f"type: {record.get('type')!r} is not in the event catalogue")
        elif isinstance(record.get("payload"), dict):
            found += [_describe(e, "payload") for e in schema.errors(record["payload"])]
        return found


def _describe(error: Any, prefix: str = "") -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    where = (prefix + path).lstrip(".") or "(record)"
    return f"{where}: {error.message}"


def _load(path: Path) -> Schema:
    schema = orjson.loads(path.read_bytes())
    Draft202012Validator.check_schema(schema)
    return Schema(fastjsonschema.compile(schema), Draft202012Validator(schema))


@cache
def load_catalogue(root: Path | None = None) -> Catalogue:
    root = root or data_dir("events")
    types_dir = root / "types"
    payloads = {
        p.name[: -len(_TYPE_SUFFIX)]: _load(p) for p in sorted(types_dir.glob("*" + _TYPE_SUFFIX))
    }
    return Catalogue(
        envelope=_load(root / "record.schema.json"),
        segment_header=_load(root / "segment-header.schema.json"),
        payloads=payloads,
    )


def event_types() -> frozenset[str]:
    return load_catalogue().types
