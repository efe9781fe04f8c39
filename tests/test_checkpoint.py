"""Checkpoints and recovery, on real files: recovery must always equal a full replay."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxrc.checkpoint import list_checkpoints, read_checkpoint, recover, write_checkpoint
from mxrc.eventlog import read_records
from mxrc.node import Node
from mxrc.nodestate import NodeState
from mxrc.statemachine import TriggerRejected
from tests.conftest import Switches


def full_replay(log_dir: Path) -> NodeState:
    state = NodeState()
    for record in read_records(log_dir):
        state.apply(record)
    return state


def crash(node: Node) -> None:
    """What a killed process leaves: no node_stopped, lock released by the kernel."""
    assert node._log is not None
    node._log.close()
    node._log = None
    node._lock.release()


steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("fire"),
            st.sampled_from(["initialized", "start", "stop", "fault", "reset", "bogus"]),
            st.sampled_from([None, "estop", "lease_lost"]),
        ),
        st.tuples(st.just("cycle"), st.integers(0, 10**9), st.integers(0, 9)),
        st.tuples(
            st.just("data"),
            st.sampled_from(["kp", "setpoint", "limit"]),
            st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.booleans()),
        ),
        st.tuples(
            st.just("guard"), st.sampled_from(["is_healthy", "cause_cleared"]), st.booleans()
        ),
        st.tuples(st.just("checkpoint"), st.none(), st.none()),
        st.tuples(st.just("restart"), st.booleans(), st.none()),
        st.tuples(st.just("damage_newest_checkpoint"), st.integers(0, 400), st.none()),
    ),
    max_size=40,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(script=steps)
def test_recovery_equals_full_replay(
    script: list[tuple[str, object, object]], make_node: Callable[..., Node], switches: Switches
) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="mxrc-prop-"))
    try:
        node = make_node(data_dir)
        node.start()
        for kind, a, b in script:
            if kind == "fire":
                with contextlib.suppress(TriggerRejected):
                    node.fire(str(a), cause=b if isinstance(b, str) else None)
            elif kind == "cycle":
                node.journal(
                    "cycle_status",
                    {"cycle": a, "slot": b, "period_ns": 1_000_000, "deadline_misses": 0},
                )
            elif kind == "data":
                node.journal(
                    "datastore_write", {"key": a, "value": b, "previous": None, "actor": "test"}
                )
            elif kind == "guard":
                switches.values[str(a)] = bool(b)
            elif kind == "checkpoint":
                node.checkpoint()
            elif kind == "damage_newest_checkpoint":
                newest = list_checkpoints(node.layout.checkpoints)
                raw = newest[0].read_bytes() if newest else b""
                if raw:  # an already emptied checkpoint stays empty
                    cut = int(a) % len(raw)  # type: ignore[call-overload]
                    newest[0].write_bytes(raw[:cut])
            elif kind == "restart":
                was_running = node.state == "RUNNING"
                if a:
                    node.stop("test restart")
                else:
                    crash(node)
                node = make_node(data_dir)
                report = node.start()
                if not a and was_running:
                    assert report.restart_fault and node.state == "SAFE_MODE"
        layout = node.layout
        assert node._log is not None
        last = node._log.last_seq
        recovered = recover(layout.eventlog, layout.checkpoints, last).state
        assert recovered == full_replay(layout.eventlog)
        assert recovered == node.snapshot()
        assert recovered.position("rt", "INIT").state == node.state
        node.stop("end of example")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_crash_while_running_recovers_into_safe_mode_and_logs_it(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = make_node()
    node.start()
    node.fire("initialized")
    node.fire("start")
    crash(node)
    node = make_node()
    report = node.start()
    assert report.previous_shutdown == "crash" and report.recovered_state == "RUNNING"
    assert node.state == "SAFE_MODE"
    records = list(read_records(node.layout.eventlog))
    started, fault = records[-2:]
    assert started["type"] == "node_started"
    assert started["payload"]["previous_shutdown"] == "crash"
    assert fault["payload"] == {
        "trigger": "fault",
        "source": "RUNNING",
        "dest": "SAFE_MODE",
        "cause": "restart",
        "guards": {},
        "actor": "system",
    }


def test_clean_stop_while_running_stops_first(make_node: Callable[..., Node]) -> None:
    node = make_node()
    node.start()
    node.fire("initialized")
    node.fire("start")
    node.stop("SIGTERM")
    types = [(r["type"], r["payload"].get("dest")) for r in read_records(node.layout.eventlog)]
    assert types[-2:] == [("transition", "READY"), ("node_stopped", None)]
    node = make_node()
    assert node.start().previous_shutdown == "clean"
    assert node.state == "READY"


def test_checkpoint_written_on_every_transition(make_node: Callable[..., Node]) -> None:
    node = make_node()
    node.start()
    record = node.fire("initialized")
    newest = read_checkpoint(list_checkpoints(node.layout.checkpoints)[0])
    assert newest.last_seq == record["seq"]
    assert newest.charts["rt"].state == "READY"


def test_checkpoint_ahead_of_log_is_not_trusted(
    tmp_path: Path, make_node: Callable[..., Node]
) -> None:
    node = make_node()
    node.start()
    node.fire("initialized")
    state = node.snapshot()
    node.stop("test")
    forged = NodeState.from_dict(state.to_dict())
    forged.last_seq = 10_000
    forged.cycle = 999
    write_checkpoint(node.layout.checkpoints, forged)
    notices: list[str] = []
    recovery = recover(
        node.layout.eventlog,
        node.layout.checkpoints,
        log_last_seq=state.last_seq + 1,
        notice=notices.append,
    )
    assert recovery.state.cycle != 999
    assert any("ahead of the event log" in n for n in notices)


def test_damaged_checkpoint_falls_back_to_older(make_node: Callable[..., Node]) -> None:
    node = make_node()
    node.start()
    node.fire("initialized")
    node.fire("fault", cause="estop")
    node.stop("test")
    newest = list_checkpoints(node.layout.checkpoints)[0]
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    newest.write_bytes(bytes(raw))
    assert node._log is None
    from mxrc.eventlog import EventLog, LogIdentity

    with EventLog.open(
        node.layout.eventlog, LogIdentity("node-1", "rt", node.chart.version_hash)
    ) as log:
        last = log.last_seq
    recovery = recover(node.layout.eventlog, node.layout.checkpoints, last)
    assert recovery.checkpoint is not None and recovery.checkpoint != newest
    assert recovery.skipped and "checksum mismatch" in recovery.skipped[0]
    assert recovery.state == full_replay(node.layout.eventlog)


def test_checkpoint_write_is_atomic_rename(tmp_path: Path) -> None:
    state = NodeState(last_seq=5, cycle=3)
    path = write_checkpoint(tmp_path, state)
    assert read_checkpoint(path) == state
    assert not list(tmp_path.glob(".*.tmp"))
    path.write_bytes(path.read_bytes().replace(b'"cycle":3', b'"cycle":4'))
    with pytest.raises(ValueError, match="checksum mismatch"):
        read_checkpoint(path)
