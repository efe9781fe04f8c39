"""The live chart against a real event log: durable first, visible after."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from mxrc.catalog import load_catalogue
from mxrc.errors import LogFailedError
from mxrc.eventlog import EventLog, LogIdentity, read_records
from mxrc.segments import Record
from mxrc.statechart import Chart
from mxrc.statemachine import SafetyStateMachine, TriggerRejected
from tests.conftest import Switches


class LogJournal:
    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.states_seen_at_append: list[str] = []
        self.machine: SafetyStateMachine | None = None

    def __call__(
        self, event_type: str, payload: Mapping[str, Any], *, traceparent: str | None
    ) -> Record:
        if self.machine is not None:
            self.states_seen_at_append.append(self.machine.state)
        return self.log.append(event_type, payload, traceparent=traceparent)


@pytest.fixture
def setup(
    tmp_path: Path, rt_chart: Chart, switches: Switches
) -> tuple[SafetyStateMachine, LogJournal]:
    log = EventLog.open(tmp_path / "log", LogIdentity("n1", rt_chart.name, rt_chart.version_hash))
    journal = LogJournal(log)
    machine = SafetyStateMachine(rt_chart, switches.bindings(), journal)
    journal.machine = machine
    return machine, journal


def test_transition_is_durable_before_it_is_visible(
    setup: tuple[SafetyStateMachine, LogJournal],
) -> None:
    machine, journal = setup
    record = machine.fire("initialized")
    assert journal.states_seen_at_append == ["INIT"]  # appended while still INIT
    assert machine.state == "READY"
    on_disk = list(read_records(journal.log.directory))
    assert on_disk == [record]
    assert record["payload"] == {
        "trigger": "initialized",
        "source": "INIT",
        "dest": "READY",
        "cause": None,
        "guards": {},
        "actor": "system",
    }


def test_illegal_trigger_is_rejected_and_logged_not_transitioned(
    setup: tuple[SafetyStateMachine, LogJournal],
) -> None:
    machine, journal = setup
    with pytest.raises(
        TriggerRejected,
        match=r"'start' is not legal in state INIT; legal in INIT: "
        r"initialized, fault",
    ) as info:
        machine.fire("start", actor="console")
    assert machine.state == "INIT"
    assert info.value.legal == ["initialized", "fault"]
    [record] = read_records(journal.log.directory)
    assert record["type"] == "command_rejected"
    assert record["payload"]["reason"] == "illegal"
    assert record["payload"]["actor"] == "console"


def test_failed_guards_are_named_and_recorded(
    setup: tuple[SafetyStateMachine, LogJournal], switches: Switches
) -> None:
    machine, _ = setup
    machine.fire("initialized")
    switches.values["has_quorum"] = False
    switches.values["is_healthy"] = False
    with pytest.raises(TriggerRejected) as info:
        machine.fire("start")
    assert info.value.failed_guards == ["has_quorum", "is_healthy"]
    assert machine.state == "READY"
    switches.values.update(has_quorum=True, is_healthy=True)
    record = machine.fire("start")
    assert record["payload"]["guards"] == {
        "is_leader": True,
        "has_quorum": True,
        "is_healthy": True,
    }
    assert machine.state == "RUNNING"


def test_fault_needs_a_cause(setup: tuple[SafetyStateMachine, LogJournal]) -> None:
    machine, _ = setup
    with pytest.raises(TriggerRejected, match="requires a cause"):
        machine.fire("fault", cause="  ")
    assert machine.fire("fault", cause="estop")["payload"]["cause"] == "estop"
    assert machine.state == "SAFE_MODE"


def test_unknown_trigger_is_rejected(setup: tuple[SafetyStateMachine, LogJournal]) -> None:
    machine, _ = setup
    with pytest.raises(TriggerRejected, match="not a trigger of chart rt"):
        machine.fire("launch")


def test_failed_append_leaves_state_unchanged(setup: tuple[SafetyStateMachine, LogJournal]) -> None:
    machine, journal = setup
    journal.log.close()  # a real closed log: append raises, as after an I/O failure
    with pytest.raises(LogFailedError):
        machine.fire("initialized")
    assert machine.state == "INIT"


def test_records_match_the_event_catalogue(
    setup: tuple[SafetyStateMachine, LogJournal], switches: Switches
) -> None:
    machine, journal = setup
    machine.fire("initialized")
    machine.fire("start", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    switches.values["cause_cleared"] = False
    machine.fire("fault", cause="lease_lost")
    with pytest.raises(TriggerRejected):
        machine.fire("reset")
    catalogue = load_catalogue()
    records = list(read_records(journal.log.directory))
    assert len(records) == 4
    for record in records:
        assert catalogue.problems(record) == []


def test_guard_bindings_must_match_the_chart(rt_chart: Chart, switches: Switches) -> None:
    bindings = switches.bindings()
    del bindings["is_leader"]
    with pytest.raises(ValueError, match=r"missing \['is_leader'\]"):
        SafetyStateMachine(rt_chart, bindings, lambda *a, **k: None)  # type: ignore[arg-type]
