"""The fencing rule, the datagram and record formats, and the checker, on plain values."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxrc.drill import fencing
from mxrc.drill.fencing import Decision, Fence, MalformedError, Write


def w(node: str, token: int, cycle: int = 0, value: float = 0.0) -> Write:
    return Write(node, token, cycle, value, 123)


# --- the rule ------------------------------------------------------------------------


def test_fence_accepts_the_same_or_a_newer_token_and_refuses_an_older_one() -> None:
    fence = Fence()
    assert fence.decide(w("a", 1)) == Decision(True, "")
    assert fence.decide(w("a", 1)).accepted  # one leadership sends many commands
    assert fence.decide(w("b", 5)).accepted
    assert fence.decide(w("a", 3)) == Decision(False, "stale token 3 < 5")
    assert fence.highest == 5  # a refusal leaves the state as it was
    assert fence.decide(w("b", 5)).accepted


def test_fence_refuses_a_command_without_a_lease() -> None:
    fence = Fence()
    assert fence.decide(w("a", 0)) == Decision(False, "no lease: token 0 < 1")
    assert fence.decide(w("a", -2)) == Decision(False, "no lease: token -2 < 1")
    assert fence.highest == 0


def test_a_fence_started_from_a_recovered_token_refuses_below_it() -> None:
    fence = Fence(4)
    assert fence.decide(w("a", 3)).reason == "stale token 3 < 4"
    assert fence.decide(w("a", 4)).accepted


# --- datagrams -----------------------------------------------------------------------


def test_datagram_round_trip_through_the_senders_template() -> None:
    node = 'cell "3" 100%'
    data = fencing.datagram_template(node) % (7, 1200, -1.25e-7, 99)
    assert fencing.parse_datagram(data) == Write(node, 7, 1200, -1.25e-7, 99)
    again = fencing.encode_datagram(Write("n", 1, 2, 3.0, 4))
    assert fencing.parse_datagram(again) == Write("n", 1, 2, 3.0, 4)


def test_an_integer_value_is_read_as_a_float() -> None:
    data = b'{"node":"a","token":1,"cycle":2,"value":3,"sent_mono_ns":4}'
    value = fencing.parse_datagram(data).value
    assert value == 3.0 and isinstance(value, float)


GOOD: dict[str, Any] = {"node": "a", "token": 1, "cycle": 2, "value": 0.5, "sent_mono_ns": 4}


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'{"node":"a","token":1,"cycle":2,"value":1e999,"sent_mono_ns":4}', "not JSON"),
        (orjson.dumps({**GOOD, "node": ""}), "'node' must be a string"),
        (orjson.dumps({**GOOD, "node": "x" * 129}), "'node' must be a string"),
        (orjson.dumps({**GOOD, "node": 3}), "'node' must be a string"),
        (orjson.dumps({**GOOD, "token": "1"}), "'token' must be an integer, got '1'"),
        (orjson.dumps({**GOOD, "token": True}), "'token' must be an integer, got True"),
        (orjson.dumps({**GOOD, "token": 1.0}), "'token' must be an integer"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "cycle"}), "'cycle' must be"),
        (orjson.dumps({**GOOD, "sent_mono_ns": None}), "'sent_mono_ns' must be"),
        (orjson.dumps({**GOOD, "value": "0.5"}), "'value' must be a finite number"),
        (orjson.dumps({**GOOD, "value": False}), "'value' must be a finite number"),
    ],
)
def test_malformed_datagrams_say_what_is_wrong(data: bytes, why: str) -> None:
    with pytest.raises(MalformedError) as caught:
        fencing.parse_datagram(data)
    assert str(caught.value).startswith("malformed: ")
    assert why in str(caught.value)


def test_the_template_refuses_a_node_id_no_actuator_would_accept() -> None:
    with pytest.raises(ValueError, match="node id"):
        fencing.datagram_template("")
    with pytest.raises(ValueError, match="node id"):
        fencing.datagram_template("x" * 129)


# --- records -------------------------------------------------------------------------


class Record:
    """A record as an actuator would write it: the line functions and the real rule."""

    def __init__(self, highest: int = 0) -> None:
        self.lines: list[dict[str, Any]] = []
        self.fence = Fence(highest)
        self.t = 1_000
        self.counts = {"accepted": 0, "rejected": 0, "malformed": 0}

    def start(self, pid: int = 10) -> None:
        self.fence = Fence(fencing.highest_token(self.lines))
        self.counts = dict.fromkeys(self.counts, 0)
        self.lines.append(
            fencing.start_line(
                wall_ns=self.t,
                mono_ns=self.t,
                pid=pid,
                host="127.0.0.1",
                port=9,
                highest_token=self.fence.highest,
            )
        )

    def write(self, node: str, token: int, decision: Decision | None = None) -> None:
        """Decided by the fence, or with the ``decision`` given (a doctored record)."""
        self.t += 10
        write = w(node, token, cycle=self.t)
        decided = self.fence.decide(write)
        decision = decision or decided
        self.counts["accepted" if decision.accepted else "rejected"] += 1
        self.lines.append(
            fencing.write_line(wall_ns=self.t, mono_ns=self.t + 5, write=write, decision=decision)
        )

    def malformed(self) -> None:
        self.t += 10
        self.counts["rejected"] += 1
        self.counts["malformed"] += 1
        self.lines.append(
            fencing.malformed_line(
                wall_ns=self.t,
                mono_ns=self.t,
                reason="malformed: not JSON",
                raw=b"\xff" * 300,
                peer="127.0.0.1:5",
            )
        )

    def summary(self) -> None:
        self.lines.append(
            fencing.summary_line(
                wall_ns=self.t,
                mono_ns=self.t,
                signal="SIGTERM",
                highest_token=self.fence.highest,
                **self.counts,
            )
        )

    def as_bytes(self) -> list[bytes]:
        return [fencing.encode_line(line) for line in self.lines]


def failover() -> Record:
    """a drives with 1, b takes over with 2, a (deposed) keeps trying, b hands to c."""
    r = Record()
    r.start()
    for _ in range(3):
        r.write("a", 1)
    r.write("b", 2)
    r.write("a", 1)
    r.write("b", 2)
    r.malformed()
    r.write("c", 3)
    r.write("b", 2)
    r.summary()
    return r


def test_checker_summarises_a_clean_failover() -> None:
    s = fencing.check(fencing.parse_record(failover().as_bytes()))
    assert s.ok and s.violations == []
    assert (s.accepted, s.rejected, s.malformed, s.unreadable) == (6, 3, 1, 0)
    assert s.lines == 11 and s.highest_token == 3
    assert {n: (c.accepted, c.rejected) for n, c in s.per_node.items()} == {
        "a": (3, 1),
        "b": (2, 1),
        "c": (1, 0),
    }
    assert s.tokens_seen == [1, 2, 3]
    assert s.tokens_accepted == [1, 2, 3]
    spans = [(d.node, d.token, d.writes, d.first_line, d.last_line) for d in s.drove]
    assert spans == [("a", 1, 3, 2, 4), ("b", 2, 2, 5, 7), ("c", 3, 1, 9, 9)]
    a = s.drove[0]
    assert (a.first_wall_ns, a.last_wall_ns) == (1_010, 1_030)
    assert (a.first_mono_ns, a.last_mono_ns) == (1_015, 1_035)
    assert [(life.line, life.pid, life.clean_exit, life.complete) for life in s.lives] == [
        (1, 10, True, True)
    ]
    doc = s.to_json()
    assert orjson.loads(orjson.dumps(doc)) == doc  # JSON all the way down
    assert doc["ok"] is True and doc["per_node"]["a"] == {"accepted": 3, "rejected": 1}


def test_checker_catches_a_stale_write_that_was_accepted() -> None:
    r = Record()
    r.start()
    r.write("a", 1)
    r.write("b", 2)
    r.write("a", 1, decision=Decision(True))  # a broken actuator let the deposed one through
    r.write("b", 2)
    s = fencing.check(r.lines)
    assert not s.ok
    assert [(v.kind, v.line, v.node, v.token) for v in s.violations] == [
        ("stale_accepted", 4, "a", 1)
    ]
    assert s.violations[0].detail == "token 1 accepted after token 2"
    assert s.to_json()["ok"] is False


def test_checker_catches_one_token_used_by_two_nodes() -> None:
    r = Record()
    r.start()
    r.write("a", 4)
    r.write("b", 4)  # the fence cannot tell them apart: the HA layer gave out 4 twice
    r.write("a", 4)
    r.write("b", 4)
    s = fencing.check(r.lines)
    assert [(v.kind, v.line, v.node, v.token) for v in s.violations] == [
        ("shared_token", 3, "b", 4)  # once per (token, second node)
    ]
    assert "also accepted from 'a'" in s.violations[0].detail
    assert s.tokens_accepted == [4]
    assert [(d.node, d.token, d.writes) for d in s.drove] == [("a", 4, 2), ("b", 4, 2)]


def test_checker_catches_an_accepted_write_without_a_lease() -> None:
    r = Record()
    r.start()
    r.write("a", 0, decision=Decision(True))
    assert [v.kind for v in fencing.check(r.lines).violations] == ["unleased_accepted"]


def test_rejected_stale_writes_are_no_violation() -> None:
    r = Record()
    r.start()
    r.write("b", 9)
    for token in (1, 5, 8):
        r.write("a", token)
    s = fencing.check(r.lines)
    assert s.ok and (s.accepted, s.rejected) == (1, 3)
    assert s.tokens_seen == [9, 1, 5, 8] and s.tokens_accepted == [9]


def test_the_rule_holds_across_actuator_lives() -> None:
    r = Record()
    r.start(pid=10)
    r.write("a", 1)
    r.write("b", 2)
    # killed: no summary; the next life recovers 2 from the record
    r.start(pid=11)
    assert r.lines[-1]["highest_token"] == 2
    r.write("a", 1)  # refused by the recovered fence
    r.write("b", 2)
    r.summary()
    s = fencing.check(r.lines)
    assert s.ok and (s.accepted, s.rejected) == (3, 1)
    assert [(x.pid, x.highest_at_start, x.clean_exit, x.complete) for x in s.lives] == [
        (10, 0, False, False),
        (11, 2, True, True),
    ]
    # an actuator that forgot across the restart is caught by the checker
    forgetful = Record()
    forgetful.start(pid=10)
    forgetful.write("b", 2)
    forgetful.lines.append({**r.lines[0], "pid": 11})
    forgetful.fence = Fence()
    forgetful.write("a", 1)
    assert [v.kind for v in fencing.check(forgetful.lines).violations] == ["stale_accepted"]


def test_a_summary_whose_counts_differ_marks_the_life_incomplete() -> None:
    r = failover()
    del r.lines[3]  # a lost line
    (life,) = fencing.check(r.lines).lives
    assert life.clean_exit and not life.complete


def test_unreadable_lines_keep_their_numbers() -> None:
    lines = failover().as_bytes()
    lines.insert(2, b'{"kind":"write","node":"a","tok')  # a torn line, ended by a restart
    lines.insert(3, b"[]\n")
    s = fencing.check(fencing.parse_record(lines))
    assert s.unreadable == 2 and s.lines == 13
    assert s.drove[0].first_line == 2 and s.drove[0].last_line == 6
    torn = list(fencing.parse_record(lines))[2]
    assert torn == {"kind": "unreadable", "text": '{"kind":"write","node":"a","tok'}


def test_a_write_line_without_its_fields_is_unreadable_not_a_crash() -> None:
    s = fencing.check([{"kind": "write", "node": "a"}, {"kind": "surprise"}, {}])
    assert s.unreadable == 3 and s.accepted == 0 and s.ok


def test_highest_token_comes_from_accepted_writes_and_recovered_values() -> None:
    r = Record()
    r.start()
    r.write("a", 3)
    r.write("a", 1)
    assert fencing.highest_token(r.lines) == 3
    assert fencing.highest_token([{"kind": "start", "highest_token": 8}]) == 8
    refused = fencing.write_line(
        wall_ns=0, mono_ns=0, write=w("z", 50), decision=Decision(False, "x")
    )
    assert fencing.highest_token([refused]) == 0  # a refused token grants nothing
    assert fencing.highest_token([]) == 0


def test_malformed_line_keeps_only_the_start_of_the_datagram() -> None:
    line = fencing.malformed_line(wall_ns=1, mono_ns=2, reason="r", raw=b"a" * 1000, peer="p")
    assert len(line["raw"]) == fencing.RAW_KEEP_BYTES
    assert line["accepted"] is False and line["token"] is None


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(min_value=-1, max_value=12)),
        max_size=60,
    )
)
def test_whatever_arrives_a_record_made_by_the_rule_has_no_stale_write(
    arrivals: list[tuple[str, int]],
) -> None:
    r = Record()
    r.start()
    for node, token in arrivals:
        r.write(node, token)
    s = fencing.check(r.lines)
    assert not [v for v in s.violations if v.kind != "shared_token"]
    accepted = [line["token"] for line in r.lines[1:] if line["accepted"]]
    assert accepted == sorted(accepted) and all(t >= 1 for t in accepted)
    assert s.tokens_accepted == sorted(set(accepted))
