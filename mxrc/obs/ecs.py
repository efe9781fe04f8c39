"""Log records as ECS documents, and the same facts as journald fields: pure functions.

A record is built once (in the log writer thread, :mod:`mxrc.obs.logs`) and then
rendered three ways — an ECS JSON line (stderr, the rotating file: ready for a file
shipper), journald fields, a terminal line — so the three can never tell different
stories. The shape follows the ecs-logging specification: ``@timestamp``, ``log.level``,
``message`` and ``ecs.version`` first and dotted, everything else nested (``process``
→ ``thread`` → ``id``). mxrc's own facts live under ``mxrc`` (:data:`MXRC_FIELDS`), one
namespace so they cannot collide with a future ECS field.

Why orjson instead of the ``ecs-logging`` package: the same document costs about a
tenth of the time (``tools/bench/logging_overhead.py`` measures both in one run), and
the writer thread shares the non-RT CPUs with the admin API.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Final

import orjson

ECS_VERSION: Final = "1.6.0"
SERVICE_NAME: Final = "mxrc"

#: mxrc's own fields (under ``mxrc`` in the document, ``MXRC_*`` in the journal). The
#: keyword spelling (``rt_state``) is what :func:`mxrc_extra` takes.
MXRC_FIELDS: Final = {
    "node": "node",
    "rt_state": "rt.state",
    "rt_cycle": "rt.cycle",
    "rt_slot": "rt.slot",
    "lease_token": "lease.token",
    "datastore_key": "datastore.key",
    "numa_node": "numa.node",
}

#: syslog priorities (what journald's PRIORITY and ``journalctl -p`` use).
PRIORITY_CRITICAL, PRIORITY_ERROR, PRIORITY_WARNING, PRIORITY_INFO, PRIORITY_DEBUG = 2, 3, 4, 6, 7


def mxrc_extra(**fields: object) -> dict[str, dict[str, object]]:
    """``extra=`` for a logging call: ``log.info("...", extra=mxrc_extra(rt_cycle=12))``.
    Unknown names are refused here, at the call site, not silently dropped later."""
    out: dict[str, object] = {}
    for name, value in fields.items():
        dotted = MXRC_FIELDS.get(name)
        if dotted is None:
            raise TypeError(
                f"mxrc_extra: unknown field {name!r}; fields: {', '.join(MXRC_FIELDS)}"
            )
        if value is not None:
            out[dotted] = value
    return {"mxrc": out}


def level_name(levelno: int) -> str:
    """ECS ``log.level``: the stdlib name in lower case (``warning``); a custom level
    between two standard ones takes the lower standard name."""
    for threshold, name in (
        (logging.CRITICAL, "critical"),
        (logging.ERROR, "error"),
        (logging.WARNING, "warning"),
        (logging.INFO, "info"),
    ):
        if levelno >= threshold:
            return name
    return "debug"


def syslog_priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return PRIORITY_CRITICAL
    if levelno >= logging.ERROR:
        return PRIORITY_ERROR
    if levelno >= logging.WARNING:
        return PRIORITY_WARNING
    if levelno >= logging.INFO:
        return PRIORITY_INFO
    return PRIORITY_DEBUG


def iso_timestamp(created: float) -> str:
    """UTC, millisecond precision, ``Z``: the form ECS and Elasticsearch's date type
    take without a format hint."""
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _nest(flat: Mapping[str, object]) -> dict[str, Any]:
    """``{"rt.state": "RUNNING", "node": "n1"}`` → ``{"rt": {"state": ...}, "node": ...}``."""
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        head, _, tail = dotted.partition(".")
        if tail:
            out.setdefault(head, {})[tail] = value
        else:
            out[head] = value
    return out


def ecs_document(record: logging.LogRecord, *, process_name: str) -> dict[str, Any]:
    """The ECS document of a record prepared by the log handler (message already merged
    with its arguments, context captured on the calling thread: see
    :class:`mxrc.obs.logs.CapturedContext`)."""
    ctx = getattr(record, "mxrc_context", None)
    doc: dict[str, Any] = {
        "@timestamp": iso_timestamp(record.created),
        "log.level": level_name(record.levelno),
        "message": record.getMessage(),
        "ecs.version": ECS_VERSION,
        "log": {
            "logger": record.name,
            "origin": {
                "file": {"name": record.filename, "line": record.lineno},
                "function": record.funcName,
            },
        },
        "process": {
            "pid": record.process,
            "name": process_name,
            "thread": {
                "id": ctx.thread_id if ctx is not None else record.thread,
                "name": record.threadName,
            },
        },
        "service": {"name": SERVICE_NAME},
    }
    if ctx is None:
        return doc
    if ctx.trace_id and ctx.span_id:
        doc["trace"] = {"id": f"{ctx.trace_id:032x}"}
        doc["span"] = {"id": f"{ctx.span_id:016x}"}
    if ctx.request_id is not None:
        doc["http"] = {"request": {"id": ctx.request_id}}
    if ctx.error_type is not None:
        doc["error"] = {
            "type": ctx.error_type,
            "message": ctx.error_message,
            "stack_trace": ctx.stack_trace,
        }
    if ctx.fields:
        doc["mxrc"] = _nest(ctx.fields)
    return doc


def ecs_line(doc: Mapping[str, Any]) -> bytes:
    """One JSON object per line (a value orjson cannot encode is rendered with str)."""
    return orjson.dumps(doc, default=str, option=orjson.OPT_APPEND_NEWLINE)


def _flatten(prefix: str, value: object, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(f"{prefix}_{key}", inner, out)
    else:
        out[prefix] = str(value)


def journal_fields(record: logging.LogRecord, doc: Mapping[str, Any]) -> dict[str, str]:
    """journald fields for the document: the well-known ones journalctl filters on
    (MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, CODE_*, TID) plus TRACE_ID, SPAN_ID and
    every ``mxrc`` field as ``MXRC_<PATH>`` (``mxrc.rt.state`` → ``MXRC_RT_STATE``).
    A traceback goes into MESSAGE after the message, as journalctl shows it."""
    message = str(doc["message"])
    error = doc.get("error")
    if error is not None and error.get("stack_trace"):
        message = f"{message}\n{error['stack_trace']}"
    process = doc["process"]
    fields: dict[str, str] = {
        "MESSAGE": message,
        "PRIORITY": str(syslog_priority(record.levelno)),
        "SYSLOG_IDENTIFIER": str(process["name"]),
        "CODE_FILE": record.pathname,
        "CODE_LINE": str(record.lineno),
        "CODE_FUNC": record.funcName,
        "LOGGER": record.name,
        "TID": str(process["thread"]["id"]),
        "THREAD_NAME": str(process["thread"]["name"]),
        "ECS_VERSION": ECS_VERSION,
    }
    if "trace" in doc:
        fields["TRACE_ID"] = str(doc["trace"]["id"])
        fields["SPAN_ID"] = str(doc["span"]["id"])
    if "http" in doc:
        fields["MXRC_REQUEST_ID"] = str(doc["http"]["request"]["id"])
    if error is not None:
        fields["ERROR_TYPE"] = str(error["type"])
    if "mxrc" in doc:
        flat: dict[str, str] = {}
        _flatten("MXRC", doc["mxrc"], flat)
        fields.update({k.upper(): v for k, v in flat.items()})
    return fields


def text_line(doc: Mapping[str, Any]) -> str:
    """What a person at a terminal reads: time, level, logger, message, the short trace
    id when there is one, and the traceback below."""
    stamp = str(doc["@timestamp"])[11:23]
    line = f"{stamp} {str(doc['log.level']).upper():<8} {doc['log']['logger']}: {doc['message']}"
    if "trace" in doc:
        line += f" [trace {str(doc['trace']['id'])[:8]}]"
    error = doc.get("error")
    if error is not None and error.get("stack_trace"):
        line += "\n" + str(error["stack_trace"]).rstrip("\n")
    return line
