"""The log pipeline: ECS documents, drop-oldest queue, sinks, correlation ids.

Real threads, real files, a real datagram socket standing in for journald's (the real
journald is exercised under the test systemd: tests/systemd)."""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import ecs_logging
import pytest

from mxrc.obs.correlation import correlated, current_request_id, current_traceparent
from mxrc.obs.ecs import (
    ECS_VERSION,
    ecs_document,
    journal_fields,
    mxrc_extra,
    syslog_priority,
)
from mxrc.obs.logs import (
    CapturingQueueHandler,
    DropOldestQueue,
    LogPipeline,
    LogSettings,
    dropped_records,
    set_process_fields,
)
from tests.obs.test_journald import decode

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{SPAN}-01"
ISO_MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
#: ecs-logging's rule: only these keys are written dotted; every other field nests.
TOP_LEVEL_DOTTED = {"log.level", "ecs.version"}


def check_ecs(doc: dict[str, Any]) -> None:
    """The ecs-logging specification's rules for one document."""
    keys = list(doc)
    assert keys[:4] == ["@timestamp", "log.level", "message", "ecs.version"], keys
    assert ISO_MS_UTC.match(doc["@timestamp"]), doc["@timestamp"]
    assert doc["log.level"] in {"debug", "info", "warning", "error", "critical"}
    assert isinstance(doc["message"], str)
    assert doc["ecs.version"] == ECS_VERSION

    def no_dots(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if path == "" and key in TOP_LEVEL_DOTTED | {"@timestamp"}:
                    continue
                assert "." not in key, f"dotted key {path}{key}: nest it"
                no_dots(value, f"{path}{key}.")

    no_dots(doc, "")
    assert isinstance(doc["process"]["pid"], int) and doc["process"]["pid"] > 0
    assert isinstance(doc["process"]["thread"]["id"], int)
    assert isinstance(doc["log"]["origin"]["file"]["line"], int)
    assert doc["service"]["name"] == "mxrc"
    if "trace" in doc:
        assert re.fullmatch(r"[0-9a-f]{32}", doc["trace"]["id"])
        assert re.fullmatch(r"[0-9a-f]{16}", doc["span"]["id"])


def lines_of(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_records_are_ecs_documents_with_the_callers_context(
    pipeline_lines: tuple[LogPipeline, io.StringIO],
) -> None:
    pipeline, out = pipeline_lines
    log = logging.getLogger("mxrc.test.ecs")
    set_process_fields(node="n1", rt_state="READY")
    try:
        with correlated(request_id="req-7", traceparent=TRACEPARENT):
            log.info("cycle %d at slot %d", 12, 3, extra=mxrc_extra(rt_cycle=12, rt_slot=3))
        log.warning("no context here")
        try:
            raise ValueError("bad gain")
        except ValueError:
            log.exception("gain refused")
    finally:
        set_process_fields(node=None, rt_state=None)
    pipeline.stop()
    first, second, third = lines_of(out)
    for doc in (first, second, third):
        check_ecs(doc)
        assert doc["process"]["name"] == "mxrc-test"
        assert doc["log"]["logger"] == "mxrc.test.ecs"
    assert first["message"] == "cycle 12 at slot 3" and first["log.level"] == "info"
    assert first["trace"] == {"id": TRACE} and first["span"] == {"id": SPAN}
    assert first["http"] == {"request": {"id": "req-7"}}
    assert first["mxrc"] == {"node": "n1", "rt": {"state": "READY", "cycle": 12, "slot": 3}}
    assert first["process"]["thread"]["id"] == threading.get_native_id()
    assert "trace" not in second and "http" not in second  # the context was restored
    assert third["log.level"] == "error" and third["error"]["type"] == "ValueError"
    assert third["error"]["message"] == "bad gain"
    assert "Traceback" in third["error"]["stack_trace"]


def test_the_document_agrees_with_the_ecs_logging_reference() -> None:
    """The same record through the reference formatter: the fields both write agree."""
    record = logging.LogRecord(
        "mxrc.test.ref", logging.WARNING, "/x/plant.py", 42, "joint %s", ("j1",), None, "step"
    )
    reference = json.loads(ecs_logging.StdlibFormatter().format(record))
    handler = CapturingQueueHandler(DropOldestQueue(4))
    ours = ecs_document(handler.prepare(record), process_name="mxrc-test")
    check_ecs(ours)
    for key in ("@timestamp", "log.level", "message", "ecs.version"):
        assert ours[key] == reference[key], key
    assert ours["log"]["logger"] == reference["log"]["logger"]
    assert ours["log"]["origin"] == reference["log"]["origin"]
    assert ours["process"]["pid"] == reference["process"]["pid"]


def test_drop_oldest_under_a_flooded_queue_keeps_the_newest_and_counts() -> None:
    q = DropOldestQueue(8)
    for i in range(20):
        q.put_nowait(i)
    assert q.dropped == 12 and len(q) == 8
    assert [q.get_nowait() for _ in range(8)] == list(range(12, 20))


def test_a_flooded_pipeline_never_blocks_and_counts_every_drop(tmp_path: Path) -> None:
    """The writer is slowed down for real (a sink that takes 1 ms per record); the
    callers flood it from four threads. Nothing blocks, the newest records survive,
    and written + dropped == logged."""

    class SlowStream(io.StringIO):
        def write(self, text: str) -> int:
            time.sleep(0.001)
            return super().write(text)

    out = SlowStream()
    before = dropped_records()
    pipeline = LogPipeline(
        LogSettings(stderr="ecs", journald="off", queue_capacity=64),
        process_name="mxrc-test", stderr=out,
    )
    per_thread, threads = 2000, 4
    worst: list[float] = []
    with pipeline:
        log = logging.getLogger("mxrc.test.flood")

        def flood(n: int) -> None:
            slowest = 0.0
            for i in range(per_thread):
                t = time.perf_counter()
                log.info("t%d record %d", n, i)
                slowest = max(slowest, time.perf_counter() - t)
            worst.append(slowest)

        workers = [threading.Thread(target=flood, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
    dropped = pipeline.dropped  # after stop: stopping itself must not cost a record
    written = lines_of(out)
    assert dropped > 0
    assert len(written) + dropped == per_thread * threads
    assert dropped_records() - before == dropped  # what nonrt exports as a metric
    # never blocked on the writer: a put is far below the sink's 1 ms per record
    assert max(worst) < 0.5
    last = {doc["message"] for doc in written[-threads:]}
    assert any(m.endswith(f"record {per_thread - 1}") for m in last)  # newest kept


def test_rotating_file_sink_writes_one_json_object_per_line(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "mxrc-test.log"
    settings = LogSettings(stderr="off", journald="off", file=path, file_max_bytes=4096,
                           file_backups=2)  # fmt: skip
    with LogPipeline(settings, process_name="mxrc-test", stderr=io.StringIO()):
        log = logging.getLogger("mxrc.test.file")
        for i in range(200):
            log.info("line %d %s", i, "x" * 40)
    files = sorted(path.parent.iterdir())
    assert [f.name for f in files] == ["mxrc-test.log", "mxrc-test.log.1", "mxrc-test.log.2"]
    for f in files:
        assert f.stat().st_size <= 4096 + 400
        for line in f.read_text().splitlines():
            check_ecs(json.loads(line))
    assert json.loads(path.read_text().splitlines()[-1])["message"].startswith("line 199 ")


def test_journald_sink_sends_native_fields(tmp_path: Path) -> None:
    """journald's socket is a datagram socket: one bound here receives what the sink
    sends, decoded with the native protocol's rules."""
    path = tmp_path / "journal.socket"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(5)
    try:
        settings = LogSettings(stderr="off", journald="on")
        with LogPipeline(settings, process_name="mxrc-test", journal_socket=path), \
                correlated(traceparent=TRACEPARENT):  # fmt: skip
            logging.getLogger("mxrc.test.journal").error(
                "lease lost\nsecond line", extra=mxrc_extra(lease_token=7, datastore_key="kp")
            )
        fields = {k: v.decode() for k, v in decode(server.recv(1 << 20)).items()}
    finally:
        server.close()
    assert fields["MESSAGE"] == "lease lost\nsecond line"
    assert fields["PRIORITY"] == "3" and fields["SYSLOG_IDENTIFIER"] == "mxrc-test"
    assert fields["TRACE_ID"] == TRACE and fields["SPAN_ID"] == SPAN
    assert fields["MXRC_LEASE_TOKEN"] == "7" and fields["MXRC_DATASTORE_KEY"] == "kp"
    assert fields["LOGGER"] == "mxrc.test.journal" and fields["CODE_FUNC"]


def test_journal_fields_map_levels_to_syslog_priorities() -> None:
    assert [syslog_priority(level) for level in (50, 40, 30, 20, 10, 5)] == [2, 3, 4, 6, 7, 7]
    record = logging.LogRecord("mxrc.x", logging.INFO, "/a/b.py", 3, "hi", None, None)
    handler = CapturingQueueHandler(DropOldestQueue(4))
    prepared = handler.prepare(record)
    fields = journal_fields(prepared, ecs_document(prepared, process_name="mxrc-rt"))
    assert fields["PRIORITY"] == "6" and fields["SYSLOG_IDENTIFIER"] == "mxrc-rt"
    assert "TRACE_ID" not in fields  # no trace: no field, rather than an empty one


def test_auto_sinks_follow_the_terminal_and_journald() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    text = LogPipeline(LogSettings(), process_name="mxrc-test", stderr=Tty(), env={})
    assert text.sinks == ["stderr (text)"]
    piped = LogPipeline(LogSettings(), process_name="mxrc-test", stderr=io.StringIO(), env={})
    assert piped.sinks == ["stderr (ecs)"]


def test_correlated_restores_the_previous_ids_even_on_error() -> None:
    assert current_request_id() is None and current_traceparent() is None
    with correlated(request_id="outer", traceparent=TRACEPARENT):
        seen: list[str | None] = []

        def inner() -> None:
            with correlated(request_id="inner"):
                seen.append(current_request_id())
                raise RuntimeError

        with pytest.raises(RuntimeError):
            inner()
        assert seen == ["inner"]
        assert current_request_id() == "outer"
        assert current_traceparent() == TRACEPARENT
    assert current_request_id() is None and current_traceparent() is None
    with correlated(traceparent="00-not-a-trace"):  # ignored, as W3C asks
        assert current_traceparent() is None


def test_unknown_mxrc_fields_are_refused_at_the_call_site() -> None:
    with pytest.raises(TypeError, match="unknown field 'rt_mode'"):
        mxrc_extra(rt_mode=1)
