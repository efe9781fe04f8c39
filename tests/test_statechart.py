from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from mxrc.errors import ChartDefinitionError, UnknownChartError
from mxrc.resources import data_dir
from mxrc.statechart import Chart, load_registry, parse_chart


def rt_doc() -> dict[str, Any]:
    return tomllib.loads((data_dir("statecharts") / "rt.toml").read_text())


def test_rt_chart_has_the_designed_shape(rt_chart: Chart) -> None:
    assert rt_chart.states == ("INIT", "READY", "RUNNING", "SAFE_MODE")
    assert rt_chart.initial == "INIT"
    assert rt_chart.allows("INIT", "initialized", "READY")
    assert rt_chart.allows("READY", "start", "RUNNING")
    assert rt_chart.allows("RUNNING", "stop", "READY")
    assert rt_chart.allows("RUNNING", "fault", "SAFE_MODE")
    assert rt_chart.allows("SAFE_MODE", "reset", "READY")
    assert not rt_chart.allows("SAFE_MODE", "start", "RUNNING")
    assert not rt_chart.allows("INIT", "start", "RUNNING")
    start = rt_chart.find("start", "READY")
    assert start is not None and set(start.guards) == {"is_leader", "has_quorum", "is_healthy"}
    fault = rt_chart.find("fault", "READY")
    assert fault is not None and fault.requires_cause
    assert rt_chart.driving_states == frozenset({"RUNNING"})
    assert rt_chart.legal_triggers("READY") == ("start", "fault")


def test_hash_ignores_prose_but_not_behaviour() -> None:
    base = parse_chart(rt_doc())
    prose = rt_doc()
    prose["states"]["READY"]["description"] = "reworded"
    prose["guards"]["is_leader"] = "reworded too"
    assert parse_chart(prose).version_hash == base.version_hash
    behaviour = rt_doc()
    behaviour["transitions"][1]["guards"] = ["is_leader"]
    assert parse_chart(behaviour).version_hash != base.version_hash


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["transitions"][0].update(dest="READDY"), r"trigger 'initialized'.*'READDY'"),
        (
            lambda d: d["transitions"][1].update(guards=["is_god"]),
            r"guard 'is_god' is not declared",
        ),
        (lambda d: d.update(initial="BOOT"), r"'initial' is 'BOOT'"),
        (lambda d: d["transitions"][2].update(trigger="st op"), r"transitions\[2\]\.trigger"),
        (
            lambda d: d["transitions"].append(dict(d["transitions"][2])),
            r"second transition for 'stop'",
        ),
        (lambda d: d["states"]["READY"].update(colour="blue"), r"states\.READY"),
        (lambda d: d.update(extra=1), r"unknown key"),
        (lambda d: d["transitions"][3].update(requires_cause="yes"), r"requires_cause"),
    ],
)
def test_malformed_chart_names_what_is_wrong(mutate: Any, message: str) -> None:
    doc = rt_doc()
    mutate(doc)
    with pytest.raises(ChartDefinitionError, match=message):
        parse_chart(doc, "bad.toml")


def test_registry_knows_history_and_rejects_unknown_versions(tmp_path: Path) -> None:
    (tmp_path / "history").mkdir()
    current = rt_doc()
    old = rt_doc()
    old["transitions"][1]["guards"] = ["is_leader"]
    (tmp_path / "rt.toml").write_text((data_dir("statecharts") / "rt.toml").read_text())
    old_text = (
        (data_dir("statecharts") / "rt.toml")
        .read_text()
        .replace('guards = ["is_leader", "has_quorum", "is_healthy"]', 'guards = ["is_leader"]')
    )
    (tmp_path / "history" / "rt-old.toml").write_text(old_text)
    registry = load_registry(tmp_path)
    old_hash = parse_chart(old).version_hash
    assert registry.get("rt", old_hash).find("start", "READY").guards == ("is_leader",)  # type: ignore[union-attr]
    assert registry.get("rt").version_hash == parse_chart(current).version_hash
    with pytest.raises(UnknownChartError, match=r"rt@000000000000 is not known"):
        registry.get("rt", "000000000000")


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    from mxrc.statechart import load_chart_file

    bad = tmp_path / "x.toml"
    bad.write_text("name = \n")
    with pytest.raises(ChartDefinitionError, match=r"x\.toml: not valid TOML"):
        load_chart_file(bad)
