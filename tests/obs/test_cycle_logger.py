"""CycleLogger, the pipeline's entrance for code that logs every cycle: the records it
captures without a LogRecord must be the very documents a stdlib call produces, and
the queue's linger must never lose a wake-up. Real pipeline, real writer thread."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mxrc.obs.correlation import correlated
from mxrc.obs.ecs import mxrc_extra
from mxrc.obs.logs import (
    CycleLogger,
    DropOldestQueue,
    LogPipeline,
    LogSettings,
    line_at,
    set_process_fields,
)
from tests.obs.test_logs import TRACEPARENT, check_ecs, lines_of

MESSAGE = "joint %s lag %d cycles"


@contextlib.contextmanager
def sole_handler(pipeline: LogPipeline) -> Iterator[None]:
    """The pipeline's handler as the root logger's only one, as in an mxrc process:
    pytest's capture handlers (added around each test phase) set aside meanwhile."""
    root = logging.getLogger()
    others = [h for h in root.handlers if h is not pipeline.handler]
    for handler in others:
        root.removeHandler(handler)
    try:
        yield
    finally:
        for handler in others:
            root.addHandler(handler)


class CountingFactory:
    """Counts the LogRecords callers build (the stdlib entrance builds one per call)."""

    def __init__(self) -> None:
        self.made = 0
        self.previous = logging.getLogRecordFactory()

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        self.made += 1
        return self.previous(*args, **kwargs)


def test_a_cycle_logger_record_is_the_document_a_stdlib_call_writes(
    pipeline_lines: tuple[LogPipeline, io.StringIO],
) -> None:
    pipeline, out = pipeline_lines
    stdlib, fast = logging.getLogger("mxrc.test.cycle"), CycleLogger("mxrc.test.cycle")
    factory = CountingFactory()
    logging.setLogRecordFactory(factory)
    set_process_fields(node="n1", rt_state="RUNNING")
    try:
        with sole_handler(pipeline), correlated(request_id="req-9", traceparent=TRACEPARENT):
            stdlib.warning(MESSAGE, "j1", 3, extra=mxrc_extra(rt_cycle=7, lease_token=4))
            fast.warning(MESSAGE, "j1", 3, rt_cycle=7, lease_token=4)
            fast.info("no arguments, no fields")
        with sole_handler(pipeline):
            fast.info("outside the context")
    finally:
        logging.setLogRecordFactory(factory.previous)
        set_process_fields(node=None, rt_state=None)
    pipeline.stop()
    assert factory.made == 1, "the cycle logger built a LogRecord on the caller"
    reference, ours, plain, outside = lines_of(out)
    for doc in (reference, ours, plain, outside):
        check_ecs(doc)

    def comparable(doc: dict[str, Any]) -> dict[str, Any]:
        doc = {k: v for k, v in doc.items() if k != "@timestamp"}
        doc["log"] = {**doc["log"], "origin": {**doc["log"]["origin"], "file": {
            "name": doc["log"]["origin"]["file"]["name"]}}}  # fmt: skip
        return doc

    assert comparable(ours) == comparable(reference)
    assert ours["message"] == "joint j1 lag 3 cycles" and ours["log.level"] == "warning"
    assert ours["log"]["origin"]["function"] == (
        "test_a_cycle_logger_record_is_the_document_a_stdlib_call_writes"
    )
    assert ours["log"]["origin"]["file"]["line"] == reference["log"]["origin"]["file"]["line"] + 1
    assert ours["trace"]["id"] == TRACEPARENT.split("-")[1]
    assert ours["http"] == {"request": {"id": "req-9"}}
    assert ours["mxrc"] == {"node": "n1", "rt": {"state": "RUNNING", "cycle": 7},
                            "lease": {"token": 4}}  # fmt: skip
    assert plain["message"] == "no arguments, no fields" and "trace" in plain
    assert "trace" not in outside and "http" not in outside  # the context was left
    assert outside["mxrc"] == {"node": "n1", "rt": {"state": "RUNNING"}}  # process-wide


def test_without_a_sole_pipeline_every_handler_sees_the_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """pytest's handler on the root logger: the call goes through stdlib logging, with
    the caller's own file, line and function."""
    fast = CycleLogger("mxrc.test.fallback")
    with caplog.at_level(logging.INFO, logger="mxrc.test.fallback"):
        fast.info(MESSAGE, "j2", 5, rt_slot=2)
    (record,) = caplog.records
    assert record.getMessage() == "joint j2 lag 5 cycles"
    assert record.funcName == "test_without_a_sole_pipeline_every_handler_sees_the_record"
    assert record.filename == "test_cycle_logger.py"
    assert record.__dict__["mxrc"] == {"rt.slot": 2}


def test_disabled_levels_cost_nothing_and_bad_input_is_named(
    pipeline_lines: tuple[LogPipeline, io.StringIO],
    capsys: pytest.CaptureFixture[str],
) -> None:
    pipeline, out = pipeline_lines
    fast = CycleLogger("mxrc.test.bad")
    with sole_handler(pipeline):
        fast.debug("below the pipeline's level (info)")  # neither queued nor written
        with pytest.raises(TypeError, match="unknown field 'rt_cylce'; fields: node, rt_st"):
            fast.info("typo", rt_cylce=3)
        fast.info("two placeholders %d %d", 1)  # as stdlib: reported on stderr, not raised
        fast.info("after the bad one")
    pipeline.stop()
    assert [d["message"] for d in lines_of(out)] == ["after the bad one"]
    assert "--- Logging error ---" in capsys.readouterr().err


def test_arguments_are_those_of_the_moment_of_the_call(
    pipeline_lines: tuple[LogPipeline, io.StringIO],
) -> None:
    """Immutable arguments are formatted by the writer, anything else at the call: a
    list changed right after the call is logged as it was."""
    pipeline, out = pipeline_lines
    fast = CycleLogger("mxrc.test.args")
    joints = ["j1"]
    with sole_handler(pipeline):
        fast.info("joints %s, gain %.2f, %s, %s, %d%%", joints, 0.5, None, True, 7)
        fast.info("joints %s", joints)
        joints.append("j2")
        fast.info("%(joint)s by name", {"joint": "j3"})
        fast.info("100% literal, no arguments")
    pipeline.stop()
    assert [d["message"] for d in lines_of(out)] == [
        "joints ['j1'], gain 0.50, None, True, 7%",
        "joints ['j1']",
        "j3 by name",
        "100% literal, no arguments",
    ]


def test_the_line_is_found_from_the_instruction_offset() -> None:
    """What the writer works out from ``f_lasti`` is ``f_lineno``, also far into a long
    function and in a frame further up."""
    namespace: dict[str, Any] = {"sys": sys}
    body = "".join(f"    x{i} = {i}\n" for i in range(400))
    tail = "    frame = sys._getframe(0)\n    return frame.f_code, frame.f_lasti, frame.f_lineno\n"
    exec(f"def long():\n{body}{tail}", namespace)
    code, offset, lineno = namespace["long"]()
    assert lineno == 403 and line_at(code, offset) == lineno
    here = sys._getframe(0)
    assert line_at(here.f_code, here.f_lasti) == here.f_lineno
    up = sys._getframe(1)
    assert line_at(up.f_code, up.f_lasti) == up.f_lineno


def test_a_flood_from_threads_is_counted_exactly() -> None:
    """Four threads log through the lock-free put into a queue of 64 that a slow sink
    (1 ms per record) keeps full: every record is written or counted as dropped, once."""

    class SlowStream(io.StringIO):
        def write(self, text: str) -> int:
            time.sleep(0.001)
            return super().write(text)

    out = SlowStream()
    pipeline = LogPipeline(
        LogSettings(stderr="ecs", journald="off", queue_capacity=64),
        process_name="mxrc-test",
        stderr=out,
    )
    per_thread, threads = 2000, 4
    fast = CycleLogger("mxrc.test.flood")

    def flood(n: int) -> None:
        for i in range(per_thread):
            fast.info("t%d record %d", n, i, rt_slot=n)

    with pipeline, sole_handler(pipeline):
        workers = [threading.Thread(target=flood, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
    written = lines_of(out)
    assert pipeline.dropped > 0
    assert len(written) + pipeline.dropped == per_thread * threads
    newest = {doc["message"] for doc in written[-threads:]}
    assert any(m.endswith(f"record {per_thread - 1}") for m in newest)


def test_a_lingering_writer_is_woken_for_the_stop_and_an_idle_one_by_a_put() -> None:
    sentinel = object()
    got: list[object] = []

    def consume(q: DropOldestQueue, n: int) -> None:
        for _ in range(n):
            got.append(q.get())

    lingering = DropOldestQueue(4, linger_s=60.0)  # a linger far past the test
    consumer = threading.Thread(target=consume, args=(lingering, 1))
    consumer.start()
    time.sleep(0.05)
    lingering.put_last(sentinel)
    consumer.join(5)
    assert not consumer.is_alive() and got == [sentinel]

    got.clear()
    idle = DropOldestQueue(4, linger_s=0.01)
    consumer = threading.Thread(target=consume, args=(idle, 2))
    consumer.start()
    idle.put_nowait("first")  # taken at once or after the linger
    time.sleep(0.3)  # long past the linger: the consumer sleeps until signalled
    idle.put_nowait("second")
    consumer.join(5)
    assert not consumer.is_alive(), "a put did not wake the idle consumer"
    assert got == ["first", "second"]
