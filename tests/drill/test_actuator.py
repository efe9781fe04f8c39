"""The fenced actuator as a drill runs it: a real process, real datagrams, real signals,
and the drill control law commanding it from a cycle's ``step``."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import orjson
import pytest

from mxrc.drill import fencing
from mxrc.drill.fenced_joint import FencedJoint
from mxrc.errors import ConfigError
from mxrc.rt.control import load_control_law
from mxrc.rt.cycle import CycleInfo
from mxrc.rt.plant import SimulatedJoint
from tests.drill import (
    actuators,
    check,
    closed_udp_port,
    command,
    read_record,
    writes,
)

FENCED_JOINT = "mxrc.drill.fenced_joint:FencedJoint"
PERIOD_S = 0.001


def test_stale_token_is_rejected_recorded_and_still_rejected_after_a_restart(
    tmp_path: Path,
) -> None:
    record = tmp_path / "actuator.jsonl"
    node_a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    node_b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with actuators(tmp_path) as group:
            act = group.start(record)
            assert act.host == "127.0.0.1" and act.port > 0
            for cycle in range(3):
                act.send(command("node-a", 1, cycle), node_a)
            act.wait_writes(3)  # a leadership at a time, as in a failover
            for cycle in range(3):
                act.send(command("node-b", 2, cycle), node_b)
            act.wait_writes(6)
            act.send(command("node-a", 1, 99), node_a)  # the deposed leader, still trying
            lines = act.wait_writes(7)
            assert [(e["node"], e["token"], e["accepted"]) for e in lines] == [
                *[("node-a", 1, True)] * 3,
                *[("node-b", 2, True)] * 3,
                ("node-a", 1, False),
            ]
            assert lines[-1]["reason"] == "stale token 1 < 2"
            assert lines[-1]["cycle"] == 99
            assert all(e["mono_ns"] >= e["sent_mono_ns"] for e in lines)  # one machine

            code, out, err = act.stop(signal.SIGTERM)
            assert code == 0, err
            assert "stopped (SIGTERM): 6 accepted, 1 rejected" in out
            entries = read_record(record)
            assert entries[0]["kind"] == "start" and entries[0]["pid"] == act.proc.pid
            assert entries[-1] == {
                **entries[-1],
                "kind": "summary",
                "signal": "SIGTERM",
                "accepted": 6,
                "rejected": 1,
                "malformed": 0,
                "highest_token": 2,
            }
            assert record.read_bytes().endswith(b"}\n")

            again = group.start(record)  # same record: the fence is recovered from it
            assert again.entries()[-1]["highest_token"] == 2
            again.send(command("node-a", 1, 100), node_a)
            again.send(command("node-b", 2, 100), node_b)
            again.send(command("node-c", 3, 0))
            later = again.wait_writes(10)[7:]
            assert [(e["token"], e["accepted"], e["reason"]) for e in later] == [
                (1, False, "stale token 1 < 2"),
                (2, True, ""),
                (3, True, ""),
            ]
            code, _, err = again.stop(signal.SIGINT)
            assert code == 0, err
    finally:
        node_a.close()
        node_b.close()

    code, summary, _ = check(record)
    assert code == 0
    assert summary["ok"] is True and summary["violations"] == []
    assert (summary["accepted"], summary["rejected"]) == (8, 2)
    assert summary["tokens_accepted"] == [1, 2, 3]
    assert summary["per_node"]["node-a"] == {"accepted": 3, "rejected": 2}
    assert [(d["node"], d["token"], d["writes"]) for d in summary["drove"]] == [
        ("node-a", 1, 3),
        ("node-b", 2, 4),
        ("node-c", 3, 1),
    ]
    assert [(life["clean_exit"], life["complete"]) for life in summary["lives"]] == [
        (True, True),
        (True, True),
    ]


def test_malformed_datagrams_are_recorded_and_the_server_carries_on(tmp_path: Path) -> None:
    record = tmp_path / "actuator.jsonl"
    good = orjson.loads(command("n", 1, 1))
    bad = [
        b"not json",
        b"",
        b"[1,2,3]",
        orjson.dumps({**good, "token": "7"}),
        orjson.dumps({**good, "token": True}),
        orjson.dumps({**good, "node": None}),
        b"\xff\xfe" * 10,
        b" " * 5000,
    ]
    with actuators(tmp_path) as group:
        act = group.start(record)
        for data in bad:
            act.send(data)
        act.send(command("n", 1, 2))
        lines = act.wait_writes(len(bad) + 1)
        assert [e["kind"] for e in lines] == ["malformed"] * len(bad) + ["write"]
        assert all(not e["accepted"] and e["reason"].startswith("malformed: ") for e in lines[:-1])
        assert "'token' must be an integer, got '7'" in lines[3]["reason"]
        assert "5000 bytes" in lines[-2]["reason"]
        assert lines[0]["raw"] == "not json" and lines[0]["peer"].startswith("127.0.0.1:")
        assert lines[-1]["accepted"] is True
        code, out, _ = act.stop(signal.SIGTERM)
        assert code == 0
        assert f"1 accepted, {len(bad)} rejected ({len(bad)} malformed)" in out
    assert read_record(record)[-1]["malformed"] == len(bad)
    code, summary, _ = check(record)
    assert code == 0 and summary["malformed"] == len(bad)


def test_keeps_up_with_three_nodes_at_a_hundred_commands_a_second(tmp_path: Path) -> None:
    record = tmp_path / "actuator.jsonl"
    # node-2 led with token 5, node-1 with 6, node-0 leads now with 7; the deposed two
    # keep sending, as nodes that have not noticed yet would
    nodes = [
        (f"node-{i}", 7 - i, socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) for i in range(3)
    ]
    try:
        with actuators(tmp_path) as group:
            act = group.start(record)
            start = time.monotonic()
            for cycle in range(100):  # one second of a drill: 300 commands
                for node, token, sock in reversed(nodes):
                    act.send(command(node, token, cycle), sock)
                time.sleep(max(0.0, start + (cycle + 1) / 100 - time.monotonic()))
            lines = act.wait_writes(300, timeout=5)
            assert len(lines) == 300
            lag = max(e["mono_ns"] - e["sent_mono_ns"] for e in lines)
            assert lag < 500_000_000, f"a command waited {lag / 1e6:.1f} ms"
            assert act.stop(signal.SIGTERM)[0] == 0
    finally:
        for _, _, sock in nodes:
            sock.close()
    code, summary, _ = check(record)
    assert code == 0
    assert (summary["accepted"], summary["rejected"]) == (102, 198)
    assert summary["per_node"]["node-0"] == {"accepted": 100, "rejected": 0}
    assert summary["tokens_accepted"] == [5, 6, 7]
    assert [(d["node"], d["writes"]) for d in summary["drove"]] == [
        ("node-2", 1),
        ("node-1", 1),
        ("node-0", 100),
    ]


def test_check_exit_codes(tmp_path: Path) -> None:
    def line(node: str, token: int, accepted: bool) -> dict[str, object]:
        write = fencing.Write(node, token, 0, 0.0, 0)
        decision = fencing.Decision(accepted, "" if accepted else "x")
        return fencing.write_line(wall_ns=1, mono_ns=1, write=write, decision=decision)

    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(
        b"".join(fencing.encode_line(e) for e in (line("a", 1, True), line("b", 2, True)))
    )
    stale = tmp_path / "stale.jsonl"  # doctored: the deposed leader got through
    stale.write_bytes(clean.read_bytes() + fencing.encode_line(line("a", 1, True)))

    code, summary, _ = check(clean)
    assert code == 0 and summary["ok"] is True
    code, summary, _ = check(stale)
    assert code == 1 and summary["ok"] is False
    assert [(v["kind"], v["line"], v["node"]) for v in summary["violations"]] == [
        ("stale_accepted", 3, "a")
    ]
    code, summary, err = check(tmp_path / "missing.jsonl")
    assert code == 2 and summary == {} and "cannot read record" in err


def test_a_torn_last_line_is_ended_and_its_token_recovered_from_the_rest(
    tmp_path: Path,
) -> None:
    record = tmp_path / "actuator.jsonl"
    accepted = fencing.write_line(
        wall_ns=1,
        mono_ns=1,
        write=fencing.Write("a", 4, 0, 0.0, 0),
        decision=fencing.ACCEPTED,
    )
    record.write_bytes(fencing.encode_line(accepted) + b'{"kind":"write","node":"a","tok')
    with actuators(tmp_path) as group:
        act = group.start(record)
        act.send(command("b", 3, 0))
        act.send(command("a", 4, 1))
        lines = act.wait_writes(3)
        assert [(e["token"], e["accepted"]) for e in lines[1:]] == [(3, False), (4, True)]
        assert act.stop(signal.SIGTERM)[0] == 0
    code, summary, _ = check(record)
    assert code == 0 and summary["unreadable"] == 1 and summary["lines"] == 6


def test_a_second_actuator_on_the_same_record_is_refused(tmp_path: Path) -> None:
    record = tmp_path / "actuator.jsonl"
    with actuators(tmp_path) as group:
        act = group.start(record)
        second = group.spawn("--record", str(record))
        _, err = second.communicate(timeout=30)
        assert second.returncode == 9
        assert "another actuator is recording to this file" in err
        assert act.proc.poll() is None
        assert act.stop(signal.SIGTERM)[0] == 0
    assert [e["kind"] for e in read_record(record)] == ["start", "summary"]


def test_bad_listen_address_is_a_usage_error(tmp_path: Path) -> None:
    with actuators(tmp_path) as group:
        proc = group.spawn("--listen", "localhost", "--record", str(tmp_path / "r.jsonl"))
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 2 and "expected HOST:PORT" in err


# --- the drill control law -----------------------------------------------------------


def drive(law: SimulatedJoint, info: CycleInfo, cycles: int) -> list[float]:
    """``cycles`` cycles of the law as the cycle runs it; the outputs of each cycle."""
    outputs = []
    for _ in range(cycles):
        info.tick += 1
        law.step(info)
        outputs.append(law.voltage)
    return outputs


def test_fenced_joint_commands_reach_the_actuator_with_its_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "actuator.jsonl"
    with actuators(tmp_path) as group:
        act = group.start(record)
        monkeypatch.setenv("MXRC_ACTUATOR", act.address)
        monkeypatch.setenv("MXRC_NODE_ID", "node-a")
        law = load_control_law(FENCED_JOINT, PERIOD_S)  # as mxrc rt loads it
        assert isinstance(law, FencedJoint)
        try:
            info = CycleInfo(int(PERIOD_S * 1e9))
            law.fencing_token = 7  # what the cycle sets before resume()
            law.resume()
            outputs = drive(law, info, 300)
            lines = act.wait_writes(30)
            assert law.sent == 30 and law.status()["actuator_sent"] == 30
            assert all(e["node"] == "node-a" and e["token"] == 7 and e["accepted"] for e in lines)
            assert [e["cycle"] for e in lines] == list(range(10, 301, 10))  # every 10th
            assert [e["value"] for e in lines] == outputs[9::10]
            assert any(v != 0.0 for v in outputs[9::10])

            law.hold_safe()  # holding: nothing goes out
            drive(law, info, 100)
            assert law.sent == 30
        finally:
            law.close()

        deposed = FencedJoint(PERIOD_S, actuator=act.address, node_id="node-b", send_every=5)
        try:
            deposed.fencing_token = 6
            deposed.resume()
            drive(deposed, info, 10)
            late = act.wait_writes(32)[30:]
            assert [(e["node"], e["accepted"], e["reason"]) for e in late] == [
                ("node-b", False, "stale token 6 < 7")
            ] * 2
        finally:
            deposed.close()
        assert act.stop(signal.SIGTERM)[0] == 0
    assert len(writes(read_record(record))) == 32


def test_fenced_joint_never_raises_when_the_actuator_is_absent() -> None:
    law = FencedJoint(PERIOD_S, actuator=f"127.0.0.1:{closed_udp_port()}", node_id="n")
    try:
        law.fencing_token = 1
        law.resume()
        drive(law, CycleInfo(1_000_000), 500)
        status = law.status()
        attempts = (
            status["actuator_sent"]
            + status["actuator_send_refused"]
            + status["actuator_send_full"]
            + status["actuator_send_failed"]
        )
        assert attempts == 50
        assert status["actuator_send_refused"] > 0  # the ICMP errors were counted
    finally:
        law.close()


def test_fenced_joint_without_an_actuator_is_the_simulated_joint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MXRC_ACTUATOR", raising=False)
    monkeypatch.delenv("MXRC_NODE_ID", raising=False)
    fenced = load_control_law(FENCED_JOINT, PERIOD_S)
    plain = SimulatedJoint(PERIOD_S)
    assert isinstance(fenced, FencedJoint)
    assert drive(fenced, CycleInfo(1_000_000), 700) == drive(plain, CycleInfo(1_000_000), 700)
    assert fenced.status() == plain.status()
    assert fenced.sent == 0


@pytest.mark.parametrize(
    ("env", "why"),
    [
        ({"MXRC_ACTUATOR": "127.0.0.1:9"}, "MXRC_ACTUATOR is set but MXRC_NODE_ID is not"),
        ({"MXRC_ACTUATOR": "nowhere", "MXRC_NODE_ID": "n"}, "expected HOST:PORT"),
        ({"MXRC_ACTUATOR": "127.0.0.1:99999", "MXRC_NODE_ID": "n"}, "expected HOST:PORT"),
    ],
)
def test_a_bad_drill_environment_is_reported_at_start_up(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], why: str
) -> None:
    monkeypatch.delenv("MXRC_NODE_ID", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=why):
        load_control_law(FENCED_JOINT, PERIOD_S)
