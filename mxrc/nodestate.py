"""The folded state of one node: what its event log says, record by record (pure).

Recovery, checkpoints and replay all use :meth:`NodeState.apply`, so "recover from a
checkpoint plus the tail" and "replay everything" are the same computation by
construction, and a property test checks they agree. The fold trusts the log: whether a
transition was legal is ``mxrc replay --verify``'s question, not the fold's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mxrc.segments import Record


@dataclass
class ChartPosition:
    """Where a chart is and how it got there (the event that put it there)."""

    state: str
    since_wall_ns: int | None = None
    since_seq: int | None = None
    trigger: str | None = None
    cause: str | None = None
    actor: str | None = None


@dataclass
class NodeState:
    node: str | None = None
    last_seq: int = 0
    last_wall_ns: int | None = None
    charts: dict[str, ChartPosition] = field(default_factory=dict)
    token: int = 0
    cycle: int = 0
    slot: int = 0
    deadline_misses: int = 0
    critical: dict[str, Any] = field(default_factory=dict)
    boots: int = 0
    process_up: bool = False
    rejected_commands: int = 0

    def position(self, chart: str, initial: str) -> ChartPosition:
        """The chart's position, or its initial state if the log never moved it."""
        return self.charts.get(chart) or ChartPosition(initial)

    def apply(self, record: Record) -> None:
        kind = record["type"]
        payload = record["payload"]
        self.node = record["node"]
        self.last_seq = record["seq"]
        self.last_wall_ns = record["wall_ns"]
        self.token = record["token"]
        if kind == "transition":
            self.charts[record["chart"]] = ChartPosition(
                state=payload["dest"],
                since_wall_ns=record["wall_ns"],
                since_seq=record["seq"],
                trigger=payload["trigger"],
                cause=payload["cause"],
                actor=payload["actor"],
            )
        elif kind == "cycle_status":
            self.cycle = payload["cycle"]
            self.slot = payload["slot"]
            self.deadline_misses = payload["deadline_misses"]
        elif kind == "datastore_write" and payload.get("critical", True):
            self.critical[payload["key"]] = payload["value"]
        elif kind == "node_started":
            self.boots += 1
            self.process_up = True
        elif kind == "node_stopped":
            self.process_up = False
        elif kind == "command_rejected":
            self.rejected_commands += 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeState:
        fields = dict(data)
        fields["charts"] = {k: ChartPosition(**v) for k, v in data["charts"].items()}
        fields["critical"] = dict(data["critical"])
        return cls(**fields)
