"""mxrc.replay: pure logic on in-memory records, file handling on logs the real
EventLog wrote (tests.logfactory)."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxrc import framing, replay
from mxrc.catalog import load_catalogue
from mxrc.errors import (
    CorruptLogError,
    NotAnMxrcLogError,
    UnknownChartError,
    UnknownEventTypeError,
    UsageError,
)
from mxrc.eventlog import EventLog, LogIdentity
from mxrc.replay import (
    LocatedRecord,
    NodeVerifier,
    RecordFilter,
    RunningInterval,
    TimelineBuilder,
    assemble_timeline,
    find_overlaps,
    format_duration,
    format_time,
    node_at,
    parse_time,
    running_intervals,
)
from mxrc.segments import Record, list_segments
from mxrc.statechart import default_registry
from tests.logfactory import (
    NS,
    T0,
    at,
    boot,
    bring_up,
    crash,
    cycle,
    failover_script,
    lease,
    make_record,
    move,
    records_of,
    reject,
    rt_chart,
    stop,
    trace_id,
    traceparent,
    write_logs,
)

# --------------------------------------------------------------------------- time syntax


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-22T05:30:00Z", T0),
    ("2026-11-22 05:30:00.250", T0 + 250_000_000),
    ("2026-11-22T07:30:00+02:00", T0),
    ("2026-11-22T00:30-0500", T0),
    ("2026-11-22T05:30:00.000000001z", T0 + 1),
    ("2026-11-22T05:30", T0),
    ("2026-11-22", T0 - (5 * 3600 + 30 * 60) * NS),
    ("@1795325400", T0),
    ("@1795325400.5", T0 + NS // 2),
    ("  @1795325400.25  ", T0 + NS // 4),
])
def test_absolute_times(text: str, expected: int) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize(("text", "offset_ns"), [
    ("+90s", 90 * NS), ("+250ms", NS // 4), ("+1.5m", 90 * NS), ("+0s", 0), ("+.5s", NS // 2),
])
def test_relative_times_count_from_the_first_record(text: str, offset_ns: int) -> None:
    first = T0 + 123_456_789
    assert parse_time(text, first_ns=first) == first + offset_ns


@pytest.mark.parametrize(("text", "clock_ns"), [
    ("05:30", 0), ("05:31:02", 62 * NS), ("5:31:02.5", 62 * NS + NS // 2), ("23:59:59Z", None),
])
def test_time_of_day_is_on_the_utc_date_of_the_first_record(text: str,
                                                            clock_ns: int | None) -> None:
    first = at(3600 * 3)  # 08:30 on the same day
    midnight = T0 - (5 * 3600 + 30 * 60) * NS
    expected = T0 + clock_ns if clock_ns is not None else midnight + (24 * 3600 - 1) * NS
    assert parse_time(text, first_ns=first) == expected


@pytest.mark.parametrize("text", [
    "yesterday", "25:00", "2026-13-01T00:00Z", "05:61", "+5h", "+-5s", "@-1", "@abc",
    "2026-11-22T05:30:00+25:00", "", "12",
])
def test_unreadable_times_are_usage_errors_naming_option_and_value(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_time(text, option="--since", first_ns=T0)
    message = str(caught.value)
    assert message.startswith("--since: ") and repr(text) in message
    assert "+<n>s|ms|m" in message and "\n" not in message
    assert caught.value.exit_code == 2


def test_relative_time_without_any_record_is_a_usage_error() -> None:
    assert replay.needs_first_record("+5s") and replay.needs_first_record("05:30")
    assert not replay.needs_first_record("2026-11-22T05:30Z")
    with pytest.raises(UsageError, match="--at"):
        parse_time("+5s", option="--at", first_ns=None)


@given(st.integers(0, 4_102_444_800 * NS))
def test_printed_times_read_back_to_the_millisecond(ns: int) -> None:
    text = format_time(ns)
    assert text.endswith("Z") and len(text) == 24
    assert parse_time(text) == ns - ns % 1_000_000


def test_format_duration() -> None:
    assert format_duration(250 * 1_000_000) == "250ms"
    assert format_duration(12_500 * 1_000_000) == "12.500s"
    assert format_duration((3600 + 2 * 60 + 3) * NS + 456_000_000) == "1h02m03.456s"
    assert format_duration(-2 * NS) == "-2.000s"


# --------------------------------------------------------------------------- filters and merge


def test_record_filter_bounds_are_inclusive_and_combine() -> None:
    rec = make_record("a", 3, "transition", {}, seconds=10, trace=traceparent(7))
    assert RecordFilter().matches(rec)
    assert RecordFilter(since=at(10), until=at(10)).matches(rec)
    assert not RecordFilter(since=at(10) + 1).matches(rec)
    assert not RecordFilter(until=at(10) - 1).matches(rec)
    assert RecordFilter(types=frozenset({"transition", "node_started"})).matches(rec)
    assert not RecordFilter(types=frozenset({"node_started"})).matches(rec)
    assert not RecordFilter(nodes=frozenset({"b"})).matches(rec)
    assert RecordFilter(trace_id=trace_id(7)).matches(rec)
    assert not RecordFilter(trace_id=trace_id(8)).matches(rec)
    untraced = make_record("a", 4, "transition", {})
    assert not RecordFilter(trace_id=trace_id(7)).matches(untraced)


def test_trace_ids_accept_bare_ids_and_whole_traceparents() -> None:
    tid = trace_id(1)
    assert replay.trace_id_of(traceparent(1)) == tid
    assert replay.trace_id_of(None) is None
    assert replay.normalise_trace_id(tid.upper()) == tid
    assert replay.normalise_trace_id(traceparent(1)) == tid
    for bad in ("abc", "g" * 32, "00-short-x-01"):
        with pytest.raises(UsageError, match="--trace-id"):
            replay.normalise_trace_id(bad)


def test_unknown_event_types_are_refused_listing_the_known_ones() -> None:
    assert replay.check_types(["transition"]) == {"transition"}
    with pytest.raises(UsageError) as caught:
        replay.check_types(["transition", "trasition"])
    assert "trasition" in str(caught.value)
    for known in load_catalogue().types:
        assert known in str(caught.value)


def _located(records: list[Record]) -> Iterator[LocatedRecord]:
    return (LocatedRecord(r, Path("x"), i) for i, r in enumerate(records))


def test_merge_orders_by_wall_time_then_node_then_seq() -> None:
    a = [make_record("a", 1, "cycle_status", {}, seconds=1),
         make_record("a", 2, "cycle_status", {}, seconds=3),
         make_record("a", 3, "cycle_status", {}, seconds=3)]
    b = [make_record("b", 1, "cycle_status", {}, seconds=0),
         make_record("b", 2, "cycle_status", {}, seconds=3)]
    merged = [(m.record["node"], m.record["seq"])
              for m in replay.merge_located([_located(b), _located(a)])]
    assert merged == [("b", 1), ("a", 1), ("a", 2), ("a", 3), ("b", 2)]


def test_merge_is_lazy() -> None:
    def endless(node: str) -> Iterator[LocatedRecord]:
        for seq in itertools.count(1):
            yield LocatedRecord(make_record(node, seq, "cycle_status", {}), Path(node), seq)

    merged = replay.merge_located([endless("a"), endless("b")])
    first = [(m.record["node"], m.record["seq"]) for m in itertools.islice(merged, 4)]
    assert first == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]


# --------------------------------------------------------------------------- summaries


def test_summaries_read_like_an_incident_report() -> None:
    def line(step: Record) -> str:
        return replay.summarize(step)

    start = records_of("a", [move("a", "start", "READY", "RUNNING")])[0]
    assert line(start) == "READY → RUNNING  start by console"
    fault = records_of("a", [move("a", "fault", "RUNNING", "SAFE_MODE", cause="restart",
                                  actor="system")])[0]
    assert line(fault).startswith("fault RUNNING → SAFE_MODE cause=restart")
    refused = records_of("a", [reject("a", "start", "INIT")])[0]
    assert line(refused).startswith("rejected start in INIT: illegal (legal: initialized, fault)")
    guarded = records_of("a", [reject("a", "start", "READY", "guard", failed=["is_leader"])])[0]
    assert "rejected start in READY: guard (failed: is_leader)" in line(guarded)
    restart = records_of("a", [boot("a", previous="crash", recovered="RUNNING", replayed=9)])[0]
    assert line(restart).startswith("restart after crash") and "RUNNING" in line(restart)
    assert line(records_of("a", [stop("a", "SIGINT")])[0]) == "stopped (SIGINT)"
    assert "2 deadline misses" in line(records_of("a", [cycle("a", 7, misses=2)])[0])


# --------------------------------------------------------------------------- state at a moment


def _initial(chart: str, version: str) -> str:
    return default_registry().get(chart, version).initial


def test_node_at_folds_up_to_the_moment_and_names_the_cause() -> None:
    records = records_of("a", [*bring_up("a"),
                               move("a", "start", "READY", "RUNNING", at=5, token=4),
                               move("a", "fault", "RUNNING", "SAFE_MODE", cause="lease_lost",
                                    actor="ha", at=9, token=4)])
    before = node_at("a", records, at(-1), _initial)
    assert before.state is None and before.process == "no records yet"
    booted = node_at("a", records, at(0.5), _initial)
    assert booted.state == "INIT" and booted.since_seq is None and booted.process == "up"
    running = node_at("a", records, at(8.999), _initial)
    assert (running.state, running.since_ns, running.since_seq) == ("RUNNING", at(5), 3)
    assert (running.trigger, running.actor, running.token) == ("start", "console", 4)
    faulted = node_at("a", records, at(9), _initial)
    assert (faulted.state, faulted.cause, faulted.actor) == ("SAFE_MODE", "lease_lost", "ha")
    assert faulted.to_dict()["since"] == format_time(at(9))


def test_node_at_stops_reading_after_the_moment() -> None:
    def records() -> Iterator[Record]:
        yield from records_of("a", bring_up("a"))
        raise AssertionError("read past the moment")

    assert node_at("a", records(), at(0), _initial).state == "INIT"


def test_node_at_tells_a_crash_from_a_clean_stop() -> None:
    crashed = records_of("a", [*bring_up("a"), move("a", "start", "READY", "RUNNING"),
                               boot("a", previous="crash", recovered="RUNNING", at=20)])
    gone = node_at("a", crashed, at(10), _initial)
    assert gone.process == "crashed" and gone.restarted_ns == at(20) and gone.last_seq == 3
    assert gone.state == "RUNNING"  # what the log says; the process was not there to act
    stopped = records_of("a", [*bring_up("a"), stop("a"), boot("a", previous="clean",
                                                               recovered="READY", at=20)])
    assert node_at("a", stopped, at(10), _initial).process == "stopped"


def test_node_at_does_not_guess_the_state_of_a_log_that_starts_late() -> None:
    late = records_of("a", [cycle("a", 1)], first_seq=40)
    assert node_at("a", late, at(5), _initial).state is None


# --------------------------------------------------------------------------- RUNNING intervals


def test_running_ends_at_the_transition_out() -> None:
    records = records_of("a", [*bring_up("a"), move("a", "start", "READY", "RUNNING", at=5),
                               cycle("a", 1, at=6), move("a", "stop", "RUNNING", "READY", at=9)])
    assert running_intervals(records) == [RunningInterval("a", at(5), at(9), 3, 5, "transition")]


def test_running_ends_at_the_last_record_before_a_crash() -> None:
    records = records_of("a", [*bring_up("a"), move("a", "start", "READY", "RUNNING", at=5),
                               cycle("a", 1, at=7),
                               boot("a", previous="crash", recovered="RUNNING", at=30),
                               move("a", "fault", "RUNNING", "SAFE_MODE", cause="restart",
                                    actor="system", at=30.5)])
    assert running_intervals(records) == [RunningInterval("a", at(5), at(7), 3, 4, "crash")]


def test_running_ends_at_a_clean_stop_and_at_the_end_of_the_log() -> None:
    stopped = records_of("a", [*bring_up("a"), move("a", "start", "READY", "RUNNING", at=5),
                               stop("a", at=8)])
    assert running_intervals(stopped)[0].end_ns == at(8)
    assert running_intervals(stopped)[0].ended_by == "stopped"
    open_ended = records_of("a", [*bring_up("a"), move("a", "start", "READY", "RUNNING", at=5),
                                  cycle("a", 9, at=11)])
    assert running_intervals(open_ended) == [
        RunningInterval("a", at(5), at(11), 3, 4, "log end")]
    assert running_intervals([]) == []


def test_a_lost_lease_ends_running_at_its_deadline_not_at_the_later_fault() -> None:
    records = records_of("a", [
        *bring_up("a"), lease("a", leader=True, token=7, valid_until=4.8, at=3),
        move("a", "start", "READY", "RUNNING", at=5),
        lease("a", leader=False, token=0, valid_until=9.5, at=10),
        move("a", "fault", "RUNNING", "SAFE_MODE", cause="lease_lost", actor="system", at=10.2),
    ])
    [interval] = running_intervals(records)
    assert (interval.start_ns, interval.end_ns) == (at(5), at(9.5))
    assert interval.ended_by.startswith("transition; lease valid until")
    other = records_of("b", [*bring_up("b"), move("b", "start", "READY", "RUNNING", at=9.7)])
    assert find_overlaps([interval, *running_intervals(other)]) == []  # b began after 9.5
    late = records_of("b", [*bring_up("b"), move("b", "start", "READY", "RUNNING", at=9.4)])
    assert len(find_overlaps([interval, *running_intervals(late)])) == 1


def _iv(node: str, start: float, end: float) -> RunningInterval:
    return RunningInterval(node, at(start), at(end), 1, 2, "transition")


def test_overlaps_between_nodes_are_found_and_touching_counts() -> None:
    found = find_overlaps([_iv("a", 0, 10), _iv("b", 5, 20), _iv("c", 20, 30), _iv("a", 40, 50)])
    pairs = [(o.first.node, o.second.node, o.start_ns, o.end_ns) for o in found]
    assert pairs == [("a", "b", at(5), at(10)), ("b", "c", at(20), at(20))]
    assert "both RUNNING for 5.000s" in found[0].describe()
    assert find_overlaps([_iv("a", 0, 10), _iv("b", 10.001, 20)]) == []
    assert find_overlaps([_iv("a", 0, 10), _iv("a", 5, 20)]) == []  # one node: not a failover


def test_overlap_sweep_keeps_long_intervals_active() -> None:
    found = find_overlaps([_iv("a", 0, 100), _iv("b", 10, 20), _iv("c", 30, 40)])
    assert sorted((o.first.node, o.second.node) for o in found) == [("a", "b"), ("a", "c")]


# --------------------------------------------------------------------------- verification (pure)


def _verify(records: list[Record]) -> NodeVerifier:
    checker = NodeVerifier(records[0]["node"], default_registry().get, load_catalogue())
    for record in records:
        checker.feed(record, "events-x.jsonl")
    return checker


def _messages(checker: NodeVerifier) -> list[str]:
    return [p.describe() for p in checker.problems]


def test_a_clean_log_has_no_problems() -> None:
    checker = _verify(records_of("a", [*bring_up("a"), move("a", "start", "READY", "RUNNING"),
                                       reject("a", "start", "RUNNING"),
                                       move("a", "stop", "RUNNING", "READY")]))
    assert checker.problems == [] and checker.notices == []
    assert (checker.records, checker.transitions) == (5, 3)


def test_an_illegal_transition_is_reported_with_what_the_chart_allows() -> None:
    checker = _verify(records_of("a", [*bring_up("a"), move("a", "reset", "READY", "RUNNING")]))
    [message] = _messages(checker)
    assert "seq 3" in message and "illegal transition reset: READY → RUNNING" in message
    assert rt_chart().ref in message and "start→RUNNING" in message


def test_a_source_that_is_not_the_folded_state_breaks_continuity() -> None:
    checker = _verify(records_of("a", [*bring_up("a"),
                                       move("a", "stop", "RUNNING", "READY")]))
    [message] = _messages(checker)
    assert "seq 3" in message and "was in RUNNING (source)" in message
    assert "the log had it in READY since seq 2" in message


def test_rejections_and_restarts_must_name_the_folded_state_too() -> None:
    checker = _verify(records_of("a", [*bring_up("a"), reject("a", "reset", "SAFE_MODE"),
                                       boot("a", previous="crash", recovered="RUNNING")]))
    messages = _messages(checker)
    assert len(messages) == 2
    assert "seq 3" in messages[0] and "(state)" in messages[0]
    assert "seq 4" in messages[1] and "(recovered_state)" in messages[1]


def test_guards_and_causes_required_by_the_chart() -> None:
    checker = _verify(records_of("a", [
        *bring_up("a"),
        move("a", "start", "READY", "RUNNING", guards={"is_leader": False, "has_quorum": True}),
        move("a", "fault", "RUNNING", "SAFE_MODE", cause=None, actor="rt"),
    ]))
    messages = _messages(checker)
    assert any("guard is_leader was false" in m for m in messages)
    assert any("guard is_healthy was not recorded" in m for m in messages)
    assert any("seq 4" in m and "has no cause" in m for m in messages)


def test_sequence_gaps_and_late_starts() -> None:
    records = records_of("a", [*bring_up("a"), cycle("a", 1), cycle("a", 2)])
    del records[2]
    [message] = _messages(_verify(records))
    assert "seq 4" in message and "records 3-3 are missing" in message
    late = records_of("a", [move("a", "stop", "RUNNING", "READY")], first_seq=12)
    checker = _verify(late)
    assert checker.problems == []  # the state before seq 12 is unknown, so not judged
    assert "start at seq 12" in checker.notices[0]


def test_after_a_gap_continuity_is_not_guessed() -> None:
    records = records_of("a", [*bring_up("a"), move("a", "start", "READY", "RUNNING"),
                               move("a", "stop", "RUNNING", "READY")])
    del records[2]  # the start is lost: the stop's source cannot be checked
    messages = _messages(_verify(records))
    assert len(messages) == 1 and "sequence gap" in messages[0]


def test_schema_violations_are_collected_not_raised() -> None:
    records = records_of("a", bring_up("a"))
    broken = make_record("a", 3, "cycle_status", {"cycle": -1, "slot": 0}, seconds=5)
    messages = _messages(_verify([*records, broken]))
    assert any("payload.cycle" in m for m in messages)
    assert any("'period_ns' is a required property" in m for m in messages)


def test_a_chart_version_this_build_does_not_know_is_a_typed_error() -> None:
    records = records_of("a", bring_up("a"))
    records[1]["chart_hash"] = "0123456789ab"
    with pytest.raises(UnknownChartError):
        _verify(records)


# --------------------------------------------------------------------------- timeline model


def test_timeline_bands_markers_and_downtime_from_records() -> None:
    builder = TimelineBuilder("a")
    for record in records_of("a", [
        *bring_up("a"), move("a", "start", "READY", "RUNNING", at=5),
        reject("a", "reset", "RUNNING", at=6), cycle("a", 1, at=7),
        boot("a", previous="crash", recovered="RUNNING", at=20),
        move("a", "fault", "RUNNING", "SAFE_MODE", cause="restart", actor="system", at=21),
        stop("a", at=30),
    ]):
        builder.feed(record)
    builder.finish()
    bands = [(b.state, b.start_ns, b.end_ns) for b in builder.bands]
    assert bands == [("INIT", at(0), at(1)), ("READY", at(1), at(5)),
                     ("RUNNING", at(5), at(21)), ("SAFE_MODE", at(21), at(30))]
    kinds = [(m.kind, m.seq) for m in builder.markers]
    assert kinds == [("restart", 1), ("command", 2), ("command", 3), ("rejected", 4),
                     ("restart", 6), ("fault", 7), ("stopped", 8)]
    assert [(d.start_ns, d.end_ns, d.reason) for d in builder.downtimes] == [
        (at(7), at(20), "crash")]


def test_timeline_first_state_comes_from_the_first_transition_when_the_log_starts_late() -> None:
    builder = TimelineBuilder("a")
    for record in records_of("a", [cycle("a", 1, at=0),
                                   move("a", "reset", "SAFE_MODE", "READY", at=4)], first_seq=30):
        builder.feed(record)
    builder.finish()
    assert [b.state for b in builder.bands] == ["SAFE_MODE", "READY"]


def test_timeline_of_a_log_without_transitions_starts_in_the_initial_state() -> None:
    records = records_of("a", [cycle("a", 1), cycle("a", 2)])
    knows = TimelineBuilder("a", replay.lenient_initial)
    guesses = TimelineBuilder("a")
    for record in records:
        knows.feed(record)
        guesses.feed(record)
    knows.finish()
    guesses.finish()
    assert [b.state for b in knows.bands] == ["INIT"]
    assert [b.state for b in guesses.bands] == [replay.UNKNOWN_STATE]
    assert replay.lenient_initial("rt", "0123456789ab") is None


def _builders() -> list[TimelineBuilder]:
    made = []
    for node, script in (
        ("a", [*bring_up("a"), move("a", "start", "READY", "RUNNING", at=5),
               move("a", "stop", "RUNNING", "READY", at=20)]),
        ("b", [*bring_up("b", at=1), move("b", "start", "READY", "RUNNING", at=10),
               stop("b", at=12)]),
    ):
        builder = TimelineBuilder(node)
        for record in records_of(node, script):
            builder.feed(record)
        builder.finish()
        made.append(builder)
    return made


def test_assembled_timeline_clips_adds_tails_and_overlaps() -> None:
    whole = assemble_timeline(_builders())
    assert (whole.start_ns, whole.end_ns) == (at(0), at(20))
    assert [(o.first.node, o.second.node) for o in whole.overlaps] == [("a", "b")]
    tails = [b for b in whole.bands if b.tail]
    assert [(b.node, b.state, b.start_ns, b.end_ns) for b in tails] == [
        ("b", "RUNNING", at(12), at(20))]
    assert ("b", at(12), at(20), "stopped") in [
        (d.node, d.start_ns, d.end_ns, d.reason) for d in whole.downtimes]
    cropped = assemble_timeline(_builders(), since=at(6), until=at(9))
    assert (cropped.start_ns, cropped.end_ns) == (at(6), at(9))
    assert all(at(6) <= b.start_ns <= b.end_ns <= at(9) for b in cropped.bands)
    assert cropped.markers == () and cropped.overlaps == ()
    with pytest.raises(UsageError, match="--until"):
        assemble_timeline(_builders(), since=at(9), until=at(6))


# --------------------------------------------------------------------------- real logs on disk


@pytest.fixture
def drill(tmp_path: Path) -> Path:
    return write_logs(tmp_path / "drill", failover_script())


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_kind_of_path_finds_the_same_logs(drill: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(drill.parent)
    a_segment = list_segments(drill / "a" / "eventlog")[0]
    relative = Path("drill") / "a" / "eventlog" / a_segment.name
    for paths in ([drill], [drill / "a", drill / "b"], [drill / "a" / "eventlog", drill / "b"],
                  [a_segment, drill / "b" / "eventlog"], [Path("drill"), drill / "a", relative]):
        logs = replay.open_logs(paths)
        assert [log.node for log in logs] == ["a", "b"], paths
        assert [len(log.segments) for log in logs] == [1, 1]
        assert len(list(replay.iter_records(logs))) == 17


def test_bad_paths(tmp_path: Path, drill: Path) -> None:
    with pytest.raises(UsageError, match="nowhere"):
        replay.open_logs([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAnMxrcLogError, match="no mxrc event log"):
        replay.open_logs([tmp_path / "empty"])
    stray = tmp_path / "notes.jsonl"
    stray.write_text('{"hello": "world"}\n')
    with pytest.raises(NotAnMxrcLogError, match=r"notes\.jsonl"):
        replay.open_logs([stray])
    copy = tmp_path / "copy" / "a"
    copy.mkdir(parents=True)
    for segment in list_segments(drill / "a" / "eventlog"):
        (copy / segment.name).write_bytes(segment.read_bytes())
    with pytest.raises(UsageError, match="two places"):
        replay.open_logs([drill, copy])


def test_records_of_all_nodes_on_one_time_axis(drill: Path) -> None:
    logs = replay.open_logs([drill])
    merged = list(replay.iter_records(logs))
    assert len(merged) == 17
    keys = [(r["wall_ns"], r["node"], r["seq"]) for r in merged]
    assert keys == sorted(keys)
    for node in "ab":
        seqs = [r["seq"] for r in merged if r["node"] == node]
        assert seqs == list(range(1, len(seqs) + 1))


def test_filters_on_real_logs(drill: Path) -> None:
    logs = replay.open_logs([drill])
    window = list(replay.iter_records(logs, since=at(10), until=at(20)))
    assert [r["wall_ns"] for r in window] == [at(10), at(12), at(13), at(20)]
    faults = [r["seq"] for r in replay.iter_records(logs, types=["command_rejected"])]
    assert faults == [6]
    only_b = {r["node"] for r in replay.iter_records(logs, nodes=["b"])}
    assert only_b == {"b"}
    traced = list(replay.iter_records(logs, trace_id=trace_id(0xB2)))
    assert [(r["node"], r["type"]) for r in traced] == [("b", "transition"),
                                                        ("a", "command_rejected")]
    with pytest.raises(UsageError, match="nodes found: a, b"):
        list(replay.iter_records(logs, nodes=["c"]))


def test_state_at_on_real_logs(drill: Path) -> None:
    logs = replay.open_logs([drill])
    at_11 = replay.state_at(logs, at(11))
    assert (at_11["a"].state, at_11["a"].since_seq, at_11["a"].cause) == (
        "SAFE_MODE", 5, "deadline_miss_burst")
    assert (at_11["b"].state, at_11["b"].trigger) == ("READY", "initialized")
    at_45 = replay.state_at(logs, at(45))
    assert at_45["a"].process == "crashed" and at_45["a"].restarted_ns == at(50)
    assert replay.state_at(logs, at(60))["b"].process == "stopped"
    assert replay.first_wall_ns(logs) == at(0)


def test_verify_real_logs_clean_and_with_two_nodes_running(tmp_path: Path, drill: Path) -> None:
    report = replay.verify(replay.open_logs([drill]))
    assert report.ok, [p.describe() for p in report.problems]
    assert (report.nodes, report.records, report.transitions) == (["a", "b"], 17, 9)
    assert report.summary().startswith("ok: 2 node(s) (a, b), 17 records, 9 transitions, "
                                       f"{format_time(at(0))} to {format_time(at(55))}")
    assert [(i.node, i.start_ns, i.end_ns, i.ended_by) for i in report.intervals] == [
        ("a", at(2), at(10), "transition"), ("a", at(31), at(40), "crash"),
        ("b", at(12), at(30), "transition")]
    split = write_logs(tmp_path / "split", [
        *bring_up("a", at=0), *bring_up("b", at=0), move("a", "start", "READY", "RUNNING", at=5),
        move("b", "start", "READY", "RUNNING", at=8), move("a", "stop", "RUNNING", "READY", at=9),
        cycle("b", 1, at=12),
    ])
    bad = replay.verify(replay.open_logs([split]))
    [problem] = bad.problems
    assert problem.node == "a+b" and "both RUNNING for 1.000s" in problem.message
    assert format_time(at(8)) in problem.message


def test_verify_names_the_file_of_an_illegal_transition(tmp_path: Path) -> None:
    root = write_logs(tmp_path / "n", [*bring_up("a"),
                                       move("a", "reset", "READY", "RUNNING", guards={})])
    [problem] = replay.verify(replay.open_logs([root])).problems
    segment = list_segments(root / "a" / "eventlog")[0]
    assert problem.where.startswith(str(segment)) and problem.seq == 3


def test_segments_are_streamed_in_order_and_a_missing_one_is_a_gap(tmp_path: Path) -> None:
    script = [*bring_up("a"), *(cycle("a", n) for n in range(30))]
    root = write_logs(tmp_path / "rot", script, segment_bytes=1024)
    segments = list_segments(root / "a" / "eventlog")
    assert len(segments) >= 3
    logs = replay.open_logs([root])
    assert [r["seq"] for r in replay.iter_records(logs)] == list(range(1, 33))
    assert replay.verify(logs).ok
    segments[1].unlink()
    report = replay.verify(replay.open_logs([root]))
    [gap] = report.problems
    assert "sequence gap" in gap.message and gap.where.startswith(str(segments[2]))


def test_torn_tail_is_a_notice_and_nothing_is_modified(tmp_path: Path) -> None:
    root = write_logs(tmp_path / "torn", [
        *bring_up("a"), move("a", "start", "READY", "RUNNING"), crash("a", torn=b'{"seq":4,"wa'),
    ])
    before = _tree_digest(root)
    logs = replay.open_logs([root])
    assert len(list(replay.iter_records(logs))) == 3
    assert logs[0].torn is not None and logs[0].torn.length == len(b'{"seq":4,"wa')
    report = replay.verify(logs)
    assert report.ok and "torn tail of 12 bytes" in report.notices[0]
    replay.state_at(logs, at(100))
    replay.build_timeline(logs)
    assert _tree_digest(root) == before


def test_a_newest_segment_with_a_torn_header_is_a_notice(tmp_path: Path) -> None:
    root = write_logs(tmp_path / "h", [*bring_up("a"), *(cycle("a", n) for n in range(8))],
                      segment_bytes=1024)
    directory = root / "a" / "eventlog"
    last = list_segments(directory)[-1]
    next_seq = 1 + len(list(replay.iter_records(replay.open_logs([root]))))
    torn = directory / f"events-{next_seq:020d}.jsonl"
    torn.write_bytes(b'{"mxrc_log":1,"no')
    logs = replay.open_logs([root])
    assert logs[0].node == "a" and logs[0].newest == torn.resolve()
    assert len(list(replay.iter_records(logs))) == next_seq - 1
    assert logs[0].torn is not None and logs[0].torn.path == torn.resolve()
    report = replay.verify(logs)
    assert report.ok and "incomplete header" in report.notices[0]
    assert last.exists() and torn.read_bytes() == b'{"mxrc_log":1,"no'


def test_corrupt_and_foreign_records_raise_typed_errors(tmp_path: Path) -> None:
    root = write_logs(tmp_path / "c", [*bring_up("a"), cycle("a", 1)])
    segment = list_segments(root / "a" / "eventlog")[0]
    data = bytearray(segment.read_bytes())
    second_line = data.index(b"\n", data.index(b"\n") + 1) + 1
    data[second_line + 20] ^= 0x01
    segment.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError):
        replay.verify(replay.open_logs([root]))

    root = write_logs(tmp_path / "u", bring_up("a"))
    segment = list_segments(root / "a" / "eventlog")[0]
    record = dict(next(replay.iter_records(replay.open_logs([root]))))
    record.update(seq=3, type="teleport")
    with segment.open("ab") as handle:
        handle.write(framing.encode(record))
    with pytest.raises(UnknownEventTypeError, match="teleport"):
        list(replay.iter_records(replay.open_logs([root])))


def test_a_log_of_an_unknown_chart_version(tmp_path: Path) -> None:
    identity = LogIdentity("a", "rt", "0123456789ab")
    with EventLog.open(tmp_path / "a" / "eventlog", identity) as log:
        log.append("node_started", boot("a").payload)
    logs = replay.open_logs([tmp_path])
    with pytest.raises(UnknownChartError, match="0123456789ab"):
        replay.verify(logs)
    written = next(replay.iter_records(logs))["wall_ns"]  # the real clock wrote this one
    with pytest.raises(UnknownChartError):
        replay.state_at(logs, written + NS)


def test_a_payload_the_fold_cannot_read_is_located(tmp_path: Path) -> None:
    root = write_logs(tmp_path / "p", bring_up("a"))
    segment = list_segments(root / "a" / "eventlog")[0]
    offset = segment.stat().st_size
    record = dict(next(replay.iter_records(replay.open_logs([root]))))
    record.update(seq=3, type="cycle_status", payload={"slot": 1})
    with segment.open("ab") as handle:
        handle.write(framing.encode(record))
    logs = replay.open_logs([root])
    with pytest.raises(CorruptLogError) as caught:
        replay.state_at(logs, at(10**6))
    assert caught.value.path == str(segment) and caught.value.offset == offset
    assert not replay.verify(logs).ok


def test_raw_lines_are_the_stored_bytes(drill: Path) -> None:
    logs = replay.open_logs([drill])
    stored = {line + b"\n" for log in logs for segment in log.segments
              for line in segment.read_bytes().splitlines()[1:]}
    lines = replay.RawLines()
    try:
        raw = [lines.line(item) for item in replay.iter_located(logs)]
    finally:
        lines.close()
    assert len(raw) == 17 and set(raw) == stored
    assert [framing.decode(line)["seq"] for line in raw[:3]] == [1, 1, 2]
