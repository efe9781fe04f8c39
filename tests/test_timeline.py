"""The timeline picture: parsed back as XML, checked for what a reader must see."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mxrc import replay, timeline
from mxrc.replay import NS_PER_MS, NS_PER_S, Timeline, TimelineBuilder, assemble_timeline
from mxrc.segments import Record
from tests.logfactory import (
    T0,
    at,
    boot,
    bring_up,
    cycle,
    failover_script,
    move,
    records_of,
    reject,
    stop,
    write_logs,
)

SVG = "{http://www.w3.org/2000/svg}"


def _timeline(*scripts: tuple[str, list[Record]],
              since: int | None = None, until: int | None = None) -> Timeline:
    builders = []
    for node, records in scripts:
        builder = TimelineBuilder(node)
        for record in records:
            builder.feed(record)
        builder.finish()
        builders.append(builder)
    return assemble_timeline(builders, since, until)


def _incident() -> Timeline:
    a = records_of("a", [
        *bring_up("a"), move("a", "start", "READY", "RUNNING", at=5),
        move("a", "fault", "RUNNING", "SAFE_MODE", cause="deadline_miss_burst", actor="rt", at=9),
        reject("a", "start", "SAFE_MODE", at=10),
        boot("a", previous="crash", recovered="SAFE_MODE", at=20), cycle("a", 3, at=22),
    ])
    b = records_of("b", [*bring_up("b", at=0.5), move("b", "start", "READY", "RUNNING", at=8),
                         stop("b", at=15)])
    return _timeline(("a", a), ("b", b))


def _groups(svg: str, cls: str) -> list[ET.Element]:
    root = ET.fromstring(svg.split("\n", 1)[1])
    return [g for g in root.iter(f"{SVG}g") if cls in (g.get("class") or "").split()]


def _title_of(group: ET.Element) -> str:
    found = group.find(f".//{SVG}title")
    assert found is not None and found.text is not None
    return found.text


def test_svg_is_valid_xml_with_bands_and_marks_per_node() -> None:
    svg = timeline.render_svg(_incident())
    assert svg.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<svg')
    lanes = [g.get("data-node") for g in _groups(svg, "lane")]
    assert lanes == ["a", "b"]
    bands = {(g.get("data-node"), g.get("data-state")) for g in _groups(svg, "band")}
    assert {("a", "INIT"), ("a", "READY"), ("a", "RUNNING"), ("a", "SAFE_MODE"),
            ("b", "INIT"), ("b", "READY"), ("b", "RUNNING")} <= bands
    kinds = {(g.get("data-node"), g.get("class")) for g in _groups(svg, "marker")}
    assert {("a", "marker fault"), ("a", "marker rejected"), ("a", "marker restart"),
            ("a", "marker command"), ("b", "marker restart"), ("b", "marker stopped"),
            ("b", "marker command")} == kinds


def test_states_have_their_colours_and_unknown_states_a_neutral_one() -> None:
    svg = timeline.render_svg(_incident())
    for group in _groups(svg, "band"):
        rect = group.find(f"{SVG}rect")
        assert rect is not None
        assert rect.get("fill") == timeline.STATE_COLOURS[group.get("data-state") or ""]
    assert timeline.colour_of("INIT") != timeline.colour_of("RUNNING")
    odd = _timeline(("x", records_of("x", [move("x", "calibrate", "HOMING", "IDLE")])))
    [band, _tail] = _groups(timeline.render_svg(odd), "band")
    rect = band.find(f"{SVG}rect")
    assert rect is not None and rect.get("fill") == timeline.UNKNOWN_COLOUR
    assert band.get("data-state") == "HOMING"


def test_every_mark_explains_itself_in_a_tooltip() -> None:
    svg = timeline.render_svg(_incident())
    [fault] = [g for g in _groups(svg, "marker") if g.get("class") == "marker fault"]
    tip = _title_of(fault)
    assert "cause=deadline_miss_burst" in tip and "seq 4" in tip
    assert replay.format_time(at(9)) in tip
    [rejected] = [g for g in _groups(svg, "marker") if g.get("class") == "marker rejected"]
    assert "rejected start in SAFE_MODE" in _title_of(rejected)
    restarts = [_title_of(g) for g in _groups(svg, "marker") if "restart" in g.get("class", "")]
    assert any("restart after crash" in t for t in restarts)
    downs = {(g.get("data-node"), g.get("data-reason")): _title_of(g)
             for g in _groups(svg, "downtime")}
    assert set(downs) == {("a", "crash"), ("b", "stopped")}
    assert "after a crash" in downs["a", "crash"] and "clean stop" in downs["b", "stopped"]


def test_two_nodes_running_at_once_are_shaded_across_the_lanes() -> None:
    svg = timeline.render_svg(_incident())
    [overlap] = _groups(svg, "overlap")
    assert overlap.get("data-nodes") == "a b"
    assert "INVARIANT VIOLATED" in _title_of(overlap)
    rect = overlap.find(f"{SVG}rect")
    assert rect is not None and float(rect.get("width") or 0) > 2
    calm = _timeline(("a", records_of("a", bring_up("a"))))
    assert _groups(timeline.render_svg(calm), "overlap") == []


def test_the_axis_has_utc_tick_labels_and_the_legend_is_there() -> None:
    svg = timeline.render_svg(_incident())
    root = ET.fromstring(svg.split("\n", 1)[1])
    ticks = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "tick"]
    assert "05:30:00" in ticks and "05:30:20" in ticks
    assert [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "date"] == ["2026-11-22"]
    [legend] = _groups(svg, "legend")
    labels = {t.text for t in legend.iter(f"{SVG}text")}
    assert {"INIT", "READY", "RUNNING", "SAFE_MODE", "fault", "rejected command",
            "process start", "two nodes RUNNING"} <= labels


def test_bands_sit_inside_the_plot_in_time_order() -> None:
    svg = timeline.render_svg(_incident(), width=900)
    xs = []
    for group in _groups(svg, "band"):
        if group.get("data-node") != "a" or "tail" in (group.get("class") or ""):
            continue
        rect = group.find(f"{SVG}rect")
        assert rect is not None
        xs.append((float(rect.get("x") or 0), float(rect.get("width") or 0)))
    assert xs == sorted(xs)
    assert xs[0][0] == pytest.approx(timeline.LEFT)
    assert all(x + w <= 900 - timeline.RIGHT + 0.1 for x, w in xs)


def test_names_are_escaped() -> None:
    odd = _timeline(('<a&"b>', records_of('<a&"b>', bring_up('<a&"b>'))))
    svg = timeline.render_svg(odd, title="R&D <incident>")
    assert [g.get("data-node") for g in _groups(svg, "lane")] == ['<a&"b>']


def test_a_zero_length_window_still_draws() -> None:
    single = _timeline(("a", records_of("a", [boot("a")])))
    assert single.start_ns == single.end_ns
    assert _groups(timeline.render_svg(single), "marker")


@pytest.mark.parametrize(("span_ns", "max_ticks", "step"), [
    (10 * NS_PER_S, 10, NS_PER_S),
    (55 * NS_PER_S, 10, 10 * NS_PER_S),
    (400 * NS_PER_MS, 10, 50 * NS_PER_MS),
    (6 * 3600 * NS_PER_S, 10, 3600 * NS_PER_S),
])
def test_tick_steps_are_round(span_ns: int, max_ticks: int, step: int) -> None:
    assert timeline.tick_step(span_ns, max_ticks) == step


def test_ticks_fall_on_round_utc_times_and_show_the_date_when_it_changes() -> None:
    ticks = timeline.axis_ticks(T0 + 1, T0 + 10 * NS_PER_S, max_ticks=10)
    assert [t.label for t in ticks] == [f"05:30:{s:02d}" for s in range(1, 11)]
    assert all(t.wall_ns % NS_PER_S == 0 for t in ticks)
    midnight = T0 + (18 * 3600 + 30 * 60) * NS_PER_S  # 2026-11-23T00:00Z
    around = timeline.axis_ticks(midnight - 3600 * NS_PER_S, midnight + 3600 * NS_PER_S, 5)
    dated = [(t.label, t.date) for t in around if t.date]
    assert dated == [("23:00", "2026-11-22"), ("00:00", "2026-11-23")]
    fine = timeline.axis_ticks(T0, T0 + 300 * NS_PER_MS, 4)
    assert fine[1].label == "05:30:00.100"


class _Rows(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[str] = []
        self.svgs = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append(dict(attrs).get("class") or "header")
        self.svgs += tag == "svg"


def test_html_page_embeds_the_svg_and_lists_the_marked_events(tmp_path: Path) -> None:
    root = write_logs(tmp_path / "drill", failover_script())
    model = replay.build_timeline(replay.open_logs([root]))
    page = timeline.render_html(model, title="Drill 7")
    parser = _Rows()
    parser.feed(page)
    assert parser.svgs == 1 and "<?xml" not in page
    assert parser.rows[0] == "header"
    assert parser.rows[1:] == [m.kind for m in model.markers]
    assert "fault" in parser.rows and "rejected" in parser.rows
    assert "<title>Drill 7</title>" in page and "Invariant violated" not in page
