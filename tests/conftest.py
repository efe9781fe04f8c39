"""Shared fixtures: real directories, real nodes (no fakes: fsync hits the real disk)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mxrc.config import build_config
from mxrc.node import Node
from mxrc.obs.logs import process_fields, set_process_fields
from mxrc.statechart import Chart, default_registry


@pytest.fixture(autouse=True)
def _process_log_fields() -> Iterator[None]:
    """Every Controller a test runs sets the process-wide log fields (node, state, lease
    token) as a real process does; each test leaves them as it found them, so a test
    that checks a record's fields does not see a lease taken by an earlier test."""
    saved = process_fields()
    yield
    set_process_fields(**{**dict.fromkeys(process_fields()), **saved})


@pytest.fixture
def rt_chart() -> Chart:
    return default_registry().get("rt")


class Switches:
    """Guard values a test flips (the predicates are real callables bound by name)."""

    def __init__(self) -> None:
        self.values = {
            "is_leader": True,
            "has_quorum": True,
            "is_healthy": True,
            "cause_cleared": True,
        }

    def bindings(self) -> dict[str, Callable[[], bool]]:
        return {name: self._reader(name) for name in self.values}

    def _reader(self, name: str) -> Callable[[], bool]:
        return lambda: self.values[name]


@pytest.fixture
def switches() -> Switches:
    return Switches()


@pytest.fixture
def make_node(tmp_path: Path, rt_chart: Chart, switches: Switches) -> Iterator[Callable[..., Node]]:
    started: list[Node] = []

    def make(data_dir: Path | None = None, **config: object) -> Node:
        doc: dict[str, dict[str, object]] = {"node": {"data_dir": str(data_dir or tmp_path / "n")}}
        for dotted, value in config.items():
            section, key = dotted.split("__", 1)
            doc.setdefault(section, {})[key] = value
        node = Node(build_config(doc), rt_chart, switches.bindings())
        started.append(node)
        return node

    yield make
    for node in started:
        if node._log is not None:
            node._log.close()
        node._lock.release()
