"""Statechart definitions as data: parsing, validation and version hashing (pure).

A chart file (TOML, in ``statecharts/``) declares states, transitions and the names of
guards; code binds the guard names to predicates (see :mod:`mxrc.statemachine`). Keeping
the chart as data lets ``mxrc replay --verify`` check an old log against exactly the chart
version each record names, and lets a reviewer read the safety logic without code.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from mxrc.errors import ChartDefinitionError, UnknownChartError
from mxrc.resources import data_dir

HASH_LENGTH = 12
_TOP_KEYS = {"name", "initial", "states", "transitions", "guards"}
_STATE_KEYS = {"description", "drives_outputs"}
_TRANSITION_KEYS = {"trigger", "source", "dest", "guards", "requires_cause"}


@dataclass(frozen=True)
class Transition:
    trigger: str
    sources: tuple[str, ...]
    dest: str
    guards: tuple[str, ...] = ()
    requires_cause: bool = False


@dataclass(frozen=True)
class Chart:
    name: str
    initial: str
    states: tuple[str, ...]
    transitions: tuple[Transition, ...]
    guards: Mapping[str, str]
    driving_states: frozenset[str]
    version_hash: str
    descriptions: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def ref(self) -> str:
        """``name@hash``: how logs and messages name one chart version."""
        return f"{self.name}@{self.version_hash}"

    @property
    def triggers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.trigger for t in self.transitions))

    def legal_triggers(self, state: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.trigger for t in self.transitions if state in t.sources))

    def find(self, trigger: str, source: str) -> Transition | None:
        for t in self.transitions:
            if t.trigger == trigger and source in t.sources:
                return t
        return None

    def allows(self, source: str, trigger: str, dest: str) -> bool:
        found = self.find(trigger, source)
        return found is not None and found.dest == dest


def _fail(where: str, problem: str) -> ChartDefinitionError:
    return ChartDefinitionError(f"{where}: {problem}")


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(where, f"expected a list of names, got {value!r}")
    return tuple(value)


def _parse_states(raw: Any, where: str) -> tuple[dict[str, str], set[str]]:
    """Return each state's description and the set of states that drive outputs."""
    if not isinstance(raw, dict) or not raw:
        raise _fail(where, "'states' must be a table with at least one state")
    descriptions: dict[str, str] = {}
    driving: set[str] = set()
    for state, attrs in raw.items():
        if not state.isidentifier():
            raise _fail(where, f"state {state!r} is not an identifier")
        if not isinstance(attrs, dict) or set(attrs) - _STATE_KEYS:
            raise _fail(where, f"states.{state}: allowed keys are {sorted(_STATE_KEYS)}")
        descriptions[state] = str(attrs.get("description", ""))
        if attrs.get("drives_outputs", False) is True:
            driving.add(state)
    return descriptions, driving


def _parse_transition(
    raw: Any, here: str, where: str, states: tuple[str, ...], guards: Mapping[str, str]
) -> Transition:
    if not isinstance(raw, dict):
        raise _fail(where, f"{here} must be a table")
    extra = set(raw) - _TRANSITION_KEYS
    if extra:
        raise _fail(where, f"{here}: unknown key(s) {sorted(extra)}")
    trigger = raw.get("trigger")
    if not isinstance(trigger, str) or not trigger.isidentifier():
        raise _fail(where, f"{here}.trigger must be an identifier, got {trigger!r}")
    here = f"{here} (trigger {trigger!r})"
    sources = _str_list(raw.get("source"), f"{where}: {here}.source")
    dest = raw.get("dest")
    for s in (*sources, dest):
        if s not in states:
            raise _fail(where, f"{here}: unknown state {s!r}; states: {list(states)}")
    named = _str_list(raw.get("guards", []), f"{where}: {here}.guards")
    for g in named:
        if g not in guards:
            raise _fail(where, f"{here}: guard {g!r} is not declared in [guards]")
    requires_cause = raw.get("requires_cause", False)
    if not isinstance(requires_cause, bool):
        raise _fail(where, f"{here}.requires_cause must be true or false")
    return Transition(trigger, sources, str(dest), named, requires_cause)


def _version_hash(
    name: str,
    initial: str,
    states: tuple[str, ...],
    driving: set[str],
    guards: Mapping[str, str],
    transitions: list[Transition],
) -> str:
    """Hash of the behaviour only: prose (descriptions, comments) does not change it."""
    behaviour = {
        "name": name,
        "initial": initial,
        "states": list(states),
        "driving": sorted(driving),
        "guards": sorted(guards),
        "transitions": [
            [t.trigger, list(t.sources), t.dest, list(t.guards), t.requires_cause]
            for t in transitions
        ],
    }
    digest = hashlib.sha256(orjson.dumps(behaviour, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return digest[:HASH_LENGTH]


def parse_chart(doc: Mapping[str, Any], where: str = "<chart>") -> Chart:
    """Validate a decoded chart document; errors name the file and the bad key."""
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise _fail(where, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    name = doc.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise _fail(where, f"'name' must be an identifier, got {name!r}")
    descriptions, driving = _parse_states(doc.get("states"), where)
    states = tuple(descriptions)
    initial = doc.get("initial")
    if not isinstance(initial, str) or initial not in descriptions:
        raise _fail(
            where, f"'initial' is {initial!r}, which is not a state; states: {list(states)}"
        )
    guards = doc.get("guards", {})
    if not isinstance(guards, dict) or not all(isinstance(v, str) for v in guards.values()):
        raise _fail(where, "'guards' must be a table of guard name = description")
    raw_transitions = doc.get("transitions")
    if not isinstance(raw_transitions, list) or not raw_transitions:
        raise _fail(where, "'transitions' must be a non-empty array of tables")
    transitions: list[Transition] = []
    seen: set[tuple[str, str]] = set()
    for i, raw in enumerate(raw_transitions):
        t = _parse_transition(raw, f"transitions[{i}]", where, states, guards)
        for s in t.sources:
            if (t.trigger, s) in seen:
                raise _fail(
                    where, f"transitions[{i}]: a second transition for {t.trigger!r} from {s!r}"
                )
            seen.add((t.trigger, s))
        transitions.append(t)
    return Chart(
        name=name,
        initial=initial,
        states=states,
        transitions=tuple(transitions),
        guards=dict(guards),
        driving_states=frozenset(driving),
        version_hash=_version_hash(name, initial, states, driving, guards, transitions),
        descriptions=descriptions,
    )


def load_chart_file(path: Path) -> Chart:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ChartDefinitionError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ChartDefinitionError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_chart(doc, str(path))


@dataclass(frozen=True)
class ChartRegistry:
    """Every chart version this build knows: the current ones and ``history/``."""

    current: Mapping[str, Chart]
    by_ref: Mapping[str, Chart]

    def get(self, name: str, version_hash: str | None = None) -> Chart:
        if version_hash is None:
            if name not in self.current:
                raise UnknownChartError(f"no chart named {name!r}; known: {sorted(self.current)}")
            return self.current[name]
        chart = self.by_ref.get(f"{name}@{version_hash}")
        if chart is None:
            known = sorted(r for r in self.by_ref if r.startswith(name + "@"))
            raise UnknownChartError(
                f"chart version {name}@{version_hash} is not known to this mxrc "
                f"(known versions of {name!r}: {known or 'none'}); "
                "the log was written by a different build: add that chart to statecharts/history/"
            )
        return chart


def load_registry(root: Path | None = None) -> ChartRegistry:
    root = root or data_dir("statecharts")
    current = {c.name: c for c in map(load_chart_file, sorted(root.glob("*.toml")))}
    history = [load_chart_file(p) for p in sorted((root / "history").glob("*.toml"))]
    return ChartRegistry(current, {c.ref: c for c in (*history, *current.values())})


@cache
def default_registry() -> ChartRegistry:
    return load_registry()
