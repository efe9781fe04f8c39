"""The controller with a real event log, real shared memory and a real ``mxrc rt`` child.

Each scenario runs the controller on an asyncio loop in the test process (as
``mxrc nonrt`` does) and starts ``python -m mxrc rt`` against the segments it created.
What is checked is the ordering the safety argument rests on, observed from the outside:
the control block as the cycle would read it, at the moment each record becomes durable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mxrc.config import Config, load_config
from mxrc.eventlog import read_records
from mxrc.ha.backend import Leadership
from mxrc.ha.lease import LeaseTerms
from mxrc.rt.controlblock import ControlBlock, Mode
from mxrc.rt.process import segment_names
from mxrc.segments import Record
from mxrc.service.controller import Controller
from mxrc.service.ports import BadInput, NotPermitted
from mxrc.statemachine import TriggerRejected
from tests.configs import TOLERANT_TIMING, merged
from tests.service.api_support import RtChild, write_config

ROOT = Path(__file__).resolve().parents[2]


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def scenario(
    tmp: Path,
    body: Callable[[Controller, RtChild, Config], Awaitable[None]],
    *,
    with_rt: bool = True,
    controller_kwargs: dict[str, Any] | None = None,
    **sections: dict[str, Any],
) -> Controller:
    # Commands and faults are the subject here, not the machine's punctuality; the
    # deadline-miss rule's own test passes its budget and threshold back in.
    config_file = write_config(
        tmp, "n1", merged(TOLERANT_TIMING, {"cycle": {"status_interval_s": 0.2}}, sections)
    )
    config = load_config(config_file)
    rt = RtChild(config_file)
    controller = Controller(config, notice=lambda _line: None, **(controller_kwargs or {}))

    async def main() -> None:
        await controller.start()
        try:
            if with_rt:
                rt.start()
            await body(controller, rt, config)
        finally:
            await controller.stop("test end")
            rt.kill()

    try:
        asyncio.run(asyncio.wait_for(main(), 90))
    finally:
        rt.kill()
    return controller


def control_mode(config: Config) -> tuple[Mode, int, int]:
    name = segment_names(config["rt.shm_prefix"], config.node_id)[0]
    block = ControlBlock.attach(name, directory=Path(config["rt.shm_dir"]))
    try:
        state = block.reader().read()
        assert state is not None
        return Mode(state.mode), state.token, state.deadline_ns
    finally:
        block.close()


def transitions(config: Config) -> list[tuple[str, str, str | None]]:
    return [
        (r["payload"]["trigger"], r["payload"]["dest"], r["payload"]["cause"])
        for r in read_records(config.data_dir / "eventlog")
        if r["type"] == "transition"
    ]


def test_start_is_durable_before_the_block_permits_and_stop_holds_before_the_record(
    tmp_path: Path,
) -> None:
    seen: dict[str, tuple[Mode, int, int]] = {}

    async def body(c: Controller, rt: RtChild, config: Config) -> None:
        def at_record(record: Record) -> None:
            if record["type"] == "transition":
                seen[record["payload"]["trigger"]] = control_mode(config)

        c.node.on_record(at_record)  # runs in the state thread, right after the fsync
        await until(lambda: c.node.state == "READY", 20, "READY once the RT process reports")
        record = await c.command("start", actor="test", cause=None, traceparent="")
        assert record["payload"]["dest"] == "RUNNING"
        mode, token, deadline = control_mode(config)
        assert mode == Mode.RUNNING and token == c.leadership.token > 0
        assert deadline > time.monotonic_ns()
        await until(lambda: bool(c.latest and c.latest.driving), 10, "the cycle driving")
        await c.command("stop", actor="test", cause=None, traceparent="")
        assert control_mode(config)[0] == Mode.READY
        await until(lambda: bool(c.latest and not c.latest.driving), 10, "the cycle holding")

    scenario(tmp_path, body)
    assert seen["start"][0] != Mode.RUNNING, "the block permitted motion before the record"
    assert seen["stop"][0] != Mode.RUNNING, "the block still permitted motion at the record"


def test_killed_rt_faults_to_safe_mode_and_reset_waits_for_it(tmp_path: Path) -> None:
    async def body(c: Controller, rt: RtChild, config: Config) -> None:
        await until(lambda: c.node.state == "READY", 20, "READY")
        await c.command("start", actor="test", cause=None, traceparent="")
        await until(lambda: bool(c.latest and c.latest.driving), 10, "driving")
        rt.kill()
        await until(lambda: c.node.state == "SAFE_MODE", 5, "SAFE_MODE after the RT loss")
        assert control_mode(config)[0] == Mode.SAFE_MODE
        with pytest.raises(TriggerRejected) as refused:
            await c.command("reset", actor="test", cause=None, traceparent="")
        assert refused.value.failed_guards == ["cause_cleared"]
        assert any(cond.startswith("rt_lost") for cond in c.active_conditions())
        rt.start()
        await until(lambda: c.rt_attached, 20, "the RT process back")
        await c.command("reset", actor="test", cause=None, traceparent="")
        assert c.node.state == "READY"

    scenario(tmp_path, body)
    moves = transitions(load_config(tmp_path / "n1.toml"))
    fault = next(m for m in moves if m[0] == "fault")
    assert fault[2] in ("rt_lost", "rt_stopped"), moves


def test_a_clean_rt_stop_while_ready_is_no_fault_but_while_running_it_is(
    tmp_path: Path,
) -> None:
    """``systemctl stop mxrc.target`` after ``mxrc command stop``: the node stays READY,
    refuses to start until the cycle reports again, and the RT process's return is no
    incident. The same clean stop while RUNNING ends motion unasked: a fault."""

    async def body(c: Controller, rt: RtChild, config: Config) -> None:
        await until(lambda: c.node.state == "READY" and c.rt_attached, 20, "READY")
        assert rt.stop() == 0
        await until(lambda: not c.rt_attached, 10, "the RT process reported stopped")
        await asyncio.sleep(float(config["nonrt.rt_silence_s"]) * 1.5)  # no RtLost later
        assert c.node.state == "READY"
        with pytest.raises(TriggerRejected):
            await c.command("start", actor="test", cause=None, traceparent="")
        rt.start()
        await until(lambda: c.rt_attached, 20, "the RT process back")
        await until(lambda: "rt_lost" not in " ".join(c.active_conditions()), 10, "attached")
        assert c.node.state == "READY"
        await c.command("start", actor="test", cause=None, traceparent="")
        await until(lambda: bool(c.latest and c.latest.driving), 10, "driving")
        assert rt.stop() == 0
        await until(lambda: c.node.state == "SAFE_MODE", 10, "SAFE_MODE")

    scenario(tmp_path, body)
    moves = transitions(load_config(tmp_path / "n1.toml"))
    faults = [m for m in moves if m[0] == "fault"]
    assert [f[2] for f in faults] == ["rt_stopped"], moves


def test_deadline_miss_burst_faults_the_node(tmp_path: Path) -> None:
    async def body(c: Controller, rt: RtChild, config: Config) -> None:
        await until(lambda: c.node.state == "READY", 20, "READY")
        await c.command("start", actor="test", cause=None, traceparent="")
        await until(lambda: c.node.state == "SAFE_MODE", 10, "SAFE_MODE on the miss burst")
        assert control_mode(config)[0] == Mode.SAFE_MODE

    scenario(
        tmp_path,
        body,
        rt={"control_law": "tests.service.laws:OverrunningJoint", "budget_us": 500},
        nonrt={"fault_misses": 5},  # the rule under test, at the default budget
    )
    moves = transitions(load_config(tmp_path / "n1.toml"))
    assert ("fault", "SAFE_MODE", "deadline_misses") in moves


class SwitchableBackend:
    """An HA backend whose leadership the test revokes: the interface's contract (what
    ``renew`` returns) is what the controller acts on; etcd and peers backends are
    tested for real separately."""

    name = "switchable"

    def __init__(self) -> None:
        self.leader = True
        self.quorum = True
        self.released = False
        self.terms = LeaseTerms(2.0, 0.05, 0.2)

    async def start(self) -> None:
        return None

    async def renew(self) -> Leadership:
        if not self.quorum:
            return Leadership(False, False, 0, 0, None, "no quorum")
        if not self.leader or self.released:
            return Leadership(False, True, 0, 0, "other", "another node holds the lease")
        return Leadership(True, True, 7, self.terms.deadline_ns(time.monotonic_ns()), "n1", "")

    async def release(self) -> None:
        self.released = True

    def resume(self) -> None:
        self.released = False

    async def wait_for_change(self, timeout_s: float) -> None:
        await asyncio.sleep(timeout_s)

    async def close(self) -> None:
        return None


def test_lease_loss_holds_outputs_before_the_fault_is_journalled(tmp_path: Path) -> None:
    backend = SwitchableBackend()
    seen: list[Mode] = []

    async def body(c: Controller, rt: RtChild, config: Config) -> None:
        def at_record(record: Record) -> None:
            if record["type"] == "transition" and record["payload"]["trigger"] == "fault":
                seen.append(control_mode(config)[0])

        c.node.on_record(at_record)
        await until(lambda: c.node.state == "READY", 20, "READY")
        await c.command("start", actor="test", cause=None, traceparent="")
        backend.leader = False
        await until(lambda: c.node.state == "SAFE_MODE", 5, "SAFE_MODE on lease loss")
        assert backend.released  # a node in SAFE_MODE steps down for a standby
        backend.quorum = False
        await until(lambda: not c.leadership.quorum, 5, "quorum loss seen")
        with pytest.raises(TriggerRejected) as refused:
            await c.command("reset", actor="test", cause=None, traceparent="")
        assert refused.value.failed_guards == ["cause_cleared"]
        assert any(cond.startswith("quorum_lost") for cond in c.active_conditions())
        backend.quorum = True  # a follower with quorum may stand by in READY
        await until(lambda: c.leadership.quorum, 5, "quorum back")
        await c.command("reset", actor="test", cause=None, traceparent="")
        assert (c.node.state, backend.released) == ("READY", False)  # a candidate again
        with pytest.raises(NotPermitted):
            await c.command("start", actor="test", cause=None, traceparent="")

    scenario(
        tmp_path,
        body,
        controller_kwargs={"backend": backend},
        ha={"renew_interval_s": 0.05, "request_timeout_s": 0.04},
    )
    assert seen == [Mode.SAFE_MODE]
    moves = transitions(load_config(tmp_path / "n1.toml"))
    assert ("fault", "SAFE_MODE", "lease_lost") in moves


def test_start_without_leadership_is_403_and_journalled(tmp_path: Path) -> None:
    backend = SwitchableBackend()
    backend.leader = False

    async def body(c: Controller, rt: RtChild, config: Config) -> None:
        await until(lambda: c.node.state == "READY", 20, "READY")
        with pytest.raises(NotPermitted, match="not leader"):
            await c.command("start", actor="test", cause=None, traceparent="")
        assert control_mode(config)[0] == Mode.READY

    scenario(tmp_path, body, controller_kwargs={"backend": backend})
    records = list(read_records(load_config(tmp_path / "n1.toml").data_dir / "eventlog"))
    rejected = [r for r in records if r["type"] == "command_rejected"]
    assert rejected and "is_leader" in rejected[-1]["payload"]["failed_guards"]


def test_critical_key_is_journalled_then_written_and_survives_restart(tmp_path: Path) -> None:
    keys: list[dict[str, str | bool]] = [
        {"name": "setpoint", "type": "f64", "writer": "nonrt", "critical": True},
        {"name": "gains", "type": "f64[3]", "writer": "nonrt", "critical": True},
        {"name": "joint_position", "type": "f64", "writer": "rt"},
        {"name": "tracking_error", "type": "f64", "writer": "rt"},
    ]
    config_file = write_config(tmp_path, "n1")
    with config_file.open("a") as f:
        for key in keys:
            f.write("[[datastore.keys]]\n")
            for field, value in key.items():
                text = ("true" if value else "false") if isinstance(value, bool) else f'"{value}"'
                f.write(f"{field} = {text}\n")
    config = load_config(config_file)

    async def first() -> None:
        c = Controller(config, notice=lambda _line: None)
        await c.start()
        try:
            record = await c.write_key("setpoint", 0.75, actor="test", traceparent="")
            assert record["payload"] == {
                "key": "setpoint",
                "value": 0.75,
                "previous": 0.0,
                "actor": "test",
                "critical": True,
            }
            await c.write_key("gains", [1, 2.5, 3], actor="test", traceparent="")
            with pytest.raises(BadInput) as bad:
                await c.write_key("setpoint", "fast", actor="test", traceparent="")
            assert bad.value.field == "value"
            with pytest.raises(BadInput, match="written by the RT process"):
                await c.write_key("joint_position", 1.0, actor="test", traceparent="")
            with pytest.raises(BadInput, match="unknown key 'nope'"):
                await c.write_key("nope", 1.0, actor="test", traceparent="")
            with pytest.raises(BadInput, match="array of 3 numbers"):
                await c.write_key("gains", [1, 2], actor="test", traceparent="")
        finally:
            await c.stop("test")

    async def second() -> list[Any]:
        c = Controller(config, notice=lambda _line: None)
        await c.start()
        try:
            return [dict(k) for k in c.datastore_view()]
        finally:
            await c.stop("test")

    asyncio.run(first())
    view = {k["name"]: k["value"] for k in asyncio.run(second())}
    assert view["setpoint"] == 0.75 and view["gains"] == [1.0, 2.5, 3.0]


def test_events_paging_and_the_live_stream(tmp_path: Path) -> None:
    streamed: list[Record] = []

    async def body(c: Controller, rt: RtChild, config: Config) -> None:
        async def reader() -> None:
            async for record in c.subscribe():
                streamed.append(record)

        task = asyncio.create_task(reader())
        await asyncio.sleep(0.05)
        for value in (1.0, 2.0, 3.0):
            await c.write_key("setpoint", value, actor="test", traceparent="")
        await until(lambda: len(streamed) >= 3, 5, "three streamed records")
        page = c.events(after=0, limit=2, types=None)
        assert [r["seq"] for r in page] == [1, 2]
        writes = c.events(after=0, limit=100, types=frozenset({"datastore_write"}))
        assert [r["payload"]["value"] for r in writes] == [1.0, 2.0, 3.0]
        task.cancel()

    scenario(tmp_path, body, with_rt=False)
    assert [r["payload"]["value"] for r in streamed if r["type"] == "datastore_write"] == [
        1.0,
        2.0,
        3.0,
    ]
