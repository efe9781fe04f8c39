"""The live safety statechart: a chart definition loaded into ``transitions``.

Ordering is the point of this module. For a transition, ``transitions`` evaluates the
guards (conditions), then runs the ``before`` callback, then changes state. The
``before`` callback is the durable append of the ``transition`` record, so the new state
exists in memory only after it is on disk; if the append raises, the state is unchanged
and the error reaches the caller. A trigger that is illegal now, malformed, or stopped by
a guard is journalled as ``command_rejected`` and raised as :class:`TriggerRejected`,
never recorded as a transition.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, Protocol

from transitions import EventData, Machine

from mxrc.errors import MxrcError
from mxrc.segments import Record
from mxrc.statechart import Chart


class Journal(Protocol):
    """Durable append: returns the record once it is on disk."""

    def __call__(
        self, event_type: str, payload: Mapping[str, Any], *, traceparent: str | None
    ) -> Record: ...


class TriggerRejected(MxrcError):
    """A trigger the chart refused; the rejection is already in the event log."""

    exit_code = 1

    def __init__(self, record: Record) -> None:
        payload = record["payload"]
        super().__init__(payload["message"])
        self.record = record
        self.trigger: str = payload["trigger"]
        self.state: str = payload["state"]
        self.reason: str = payload["reason"]
        self.legal: list[str] = payload["legal"]
        self.failed_guards: list[str] = payload["failed_guards"]


class _Model:
    state: str


class SafetyStateMachine:
    """Owns the current state; every change goes through :meth:`fire`."""

    def __init__(
        self,
        chart: Chart,
        guards: Mapping[str, Callable[[], bool]],
        journal: Journal,
        *,
        initial: str | None = None,
    ) -> None:
        missing = sorted(set(chart.guards) - set(guards))
        extra = sorted(set(guards) - set(chart.guards))
        if missing or extra:
            raise ValueError(
                f"guard bindings do not match chart {chart.ref}: "
                f"missing {missing or 'none'}, not in the chart {extra or 'none'}"
            )
        start = initial or chart.initial
        if start not in chart.states:
            raise ValueError(f"initial state {start!r} is not a state of chart {chart.ref}")
        self.chart = chart
        self._guards = dict(guards)
        self._journal = journal
        self._lock = threading.Lock()
        self._listeners: list[Callable[[Record], None]] = []
        self._model = _Model()
        self._machine = Machine(
            model=self._model,
            states=list(chart.states),
            initial=start,
            transitions=[
                {
                    "trigger": t.trigger,
                    "source": list(t.sources),
                    "dest": t.dest,
                    "conditions": [self._condition(g) for g in t.guards],
                    "before": self._append_transition,
                }
                for t in chart.transitions
            ],
            send_event=True,
            auto_transitions=False,
            ignore_invalid_triggers=False,
        )

    @property
    def state(self) -> str:
        return self._model.state

    def legal_triggers(self) -> tuple[str, ...]:
        return self.chart.legal_triggers(self.state)

    def on_transition(self, listener: Callable[[Record], None]) -> None:
        """Call ``listener(record)`` after each transition, once the state has changed."""
        self._listeners.append(listener)

    def fire(
        self,
        trigger: str,
        *,
        cause: str | None = None,
        actor: str = "system",
        traceparent: str | None = None,
    ) -> Record:
        """Apply ``trigger``; return the durable ``transition`` record or raise
        :class:`TriggerRejected` (after journalling the rejection)."""
        with self._lock:
            state = self.state
            candidate = self.chart.find(trigger, state)
            if candidate is None:
                known = trigger in self.chart.triggers
                what = (
                    f"{trigger!r} is not legal in state {state}"
                    if known
                    else (f"{trigger!r} is not a trigger of chart {self.chart.name}")
                )
                self._reject(trigger, "illegal", what, [], actor, traceparent)
            if candidate.requires_cause and not (cause and cause.strip()):
                self._reject(
                    trigger, "invalid", f"{trigger!r} requires a cause", [], actor, traceparent
                )
            verdicts = {g: bool(self._guards[g]()) for g in candidate.guards}
            appended: list[Record] = []
            fired = self._model.trigger(  # type: ignore[attr-defined]
                trigger,
                guards=verdicts,
                cause=cause,
                actor=actor,
                traceparent=traceparent,
                appended=appended,
            )
            if not fired:
                failed = [g for g, ok in verdicts.items() if not ok]
                what = f"{trigger!r} refused in state {state}: guard(s) {', '.join(failed)} false"
                self._reject(trigger, "guard", what, failed, actor, traceparent)
            [record] = appended  # by _append_transition, before the state changed
        for listener in self._listeners:
            listener(record)
        return record

    @staticmethod
    def _condition(guard: str) -> Callable[[EventData], bool]:
        def check(event: EventData) -> bool:
            return bool(event.kwargs["guards"][guard])

        check.__name__ = guard
        return check

    def _append_transition(self, event: EventData) -> None:
        transition = event.transition
        assert transition is not None
        kw = event.kwargs
        record = self._journal(
            "transition",
            {
                "trigger": event.event.name,
                "source": transition.source,
                "dest": transition.dest,
                "cause": kw["cause"],
                "guards": kw["guards"],
                "actor": kw["actor"],
            },
            traceparent=kw["traceparent"],
        )
        kw["appended"].append(record)

    def _reject(
        self,
        trigger: str,
        reason: str,
        what: str,
        failed: list[str],
        actor: str,
        traceparent: str | None,
    ) -> NoReturn:
        legal = list(self.legal_triggers())
        record = self._journal(
            "command_rejected",
            {
                "trigger": trigger,
                "state": self.state,
                "reason": reason,
                "legal": legal,
                "failed_guards": failed,
                "actor": actor,
                "message": f"{what}; legal in {self.state}: {', '.join(legal) or 'none'}",
            },
            traceparent=traceparent,
        )
        raise TriggerRejected(record)
