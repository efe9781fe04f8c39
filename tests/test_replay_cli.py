"""``mxrc replay`` end to end on logs the real EventLog wrote (tests.logfactory)."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mxrc import cli, framing, replay_cli
from mxrc.errors import MxrcError
from mxrc.eventlog import EventLog, LogIdentity
from mxrc.replay import format_time
from mxrc.segments import list_segments
from tests.logfactory import (
    Step,
    at,
    boot,
    bring_up,
    crash,
    cycle,
    failover_script,
    move,
    trace_id,
    write_logs,
)

SVG = "{http://www.w3.org/2000/svg}"


def _parser() -> argparse.ArgumentParser:
    """Only the replay sub-command, as cli.main registers it."""
    parser = argparse.ArgumentParser(prog="mxrc")
    replay_cli.add_parser(parser.add_subparsers(required=True))
    return parser


def mxrc_replay(*argv: object) -> int:
    args = _parser().parse_args(["replay", *map(str, argv)])
    try:
        return int(args.func(args))
    except MxrcError as exc:
        print(f"mxrc: {exc}", file=__import__("sys").stderr)
        return exc.exit_code


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_logs(tmp_path_factory.mktemp("replay") / "drill", failover_script())


def _digest(root: Path) -> str:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


# --------------------------------------------------------------------------- listing


def test_table_is_aligned_and_reads_like_a_report(drill: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert mxrc_replay(drill) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[0], lines[1:]
    assert header.split() == ["TIME", "(UTC)", "NODE", "SEQ", "TYPE", "EVENT", "TOKEN", "TRACE"]
    assert len(rows) == 17
    for column in ("NODE", "TYPE", "EVENT"):
        start = header.index(column)
        assert all(row[start - 2 : start] == "  " and row[start] != " " for row in rows), column
    assert rows[0].startswith(f"{format_time(at(0))}  a ")
    assert any("READY → RUNNING  start by console" in r for r in rows)
    assert any("fault RUNNING → SAFE_MODE cause=restart" in r for r in rows)
    assert any("rejected start in SAFE_MODE: illegal (legal: reset)" in r for r in rows)
    traced = next(r for r in rows if "start by console" in r and " b " in r)
    assert traced.endswith(trace_id(0xB2)[:8])


def test_filters_combine(drill: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = mxrc_replay(drill, "--since", "+10s", "--until", "05:30:30", "--type",
                       "transition", "--type", "command_rejected,node_stopped", "--node", "a")
    assert code == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[2] for r in rows] == ["5", "6", "7"]
    assert mxrc_replay(drill, "--trace-id", trace_id(0xB2).upper()) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [(r.split()[1], r.split()[3]) for r in rows] == [("b", "transition"),
                                                           ("a", "command_rejected")]
    assert mxrc_replay(drill, "--since", "@1795325454", "--format", "json") == 0
    assert [r["seq"] for r in json.loads(capsys.readouterr().out)["records"]] == [6]


def test_json_is_one_document_of_the_records(drill: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert mxrc_replay(drill, "--format", "json", "--node", "b") == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["seq"] for r in doc["records"]] == [1, 2, 3, 4, 5, 6]
    assert all(r["node"] == "b" and "crc" not in r for r in doc["records"])


def test_jsonl_lines_are_the_stored_lines(drill: Path, capfdbinary: pytest.CaptureFixture[bytes]
                                          ) -> None:
    assert mxrc_replay(drill, "--format", "jsonl") == 0
    out = capfdbinary.readouterr().out
    lines = out.splitlines(keepends=True)
    stored = {line for d in ("a", "b") for seg in list_segments(drill / d / "eventlog")
              for line in seg.read_bytes().splitlines(keepends=True)[1:]}
    assert len(lines) == 17 and set(lines) == stored
    walls = [framing.decode(line)["wall_ns"] for line in lines]
    assert walls == sorted(walls)


def test_nothing_matching_is_said_on_stderr(drill: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert mxrc_replay(drill, "--type", "datastore_write", "--node", "a") == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].startswith("TIME (UTC)")
    assert "no records match" in captured.err


# --------------------------------------------------------------------------- --at


def test_at_table_names_state_since_and_cause(drill: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert mxrc_replay(drill, "--at", "2026-11-22T07:30:45+02:00") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"state at {format_time(at(45))}"
    a_row = next(line for line in lines if line.startswith("a "))
    assert "RUNNING" in a_row and format_time(at(31)) in a_row and "start by console" in a_row
    assert f"crashed after seq 9, restarted {format_time(at(50))}" in a_row
    b_row = next(line for line in lines if line.startswith("b "))
    assert "READY" in b_row and "stop by console" in b_row


def test_at_json_and_jsonl(drill: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert mxrc_replay(drill, "--at", "+10.5s", "--format", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["at"] == format_time(at(10.5))
    a = next(n for n in doc["nodes"] if n["node"] == "a")
    assert (a["state"], a["since_seq"], a["trigger"], a["cause"], a["actor"]) == (
        "SAFE_MODE", 5, "fault", "deadline_miss_burst", "rt")
    assert mxrc_replay(drill, "--at", "05:29", "--format", "jsonl") == 0
    nodes = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(n["node"], n["state"], n["process"]) for n in nodes] == [
        ("a", None, "no records yet"), ("b", None, "no records yet")]


# --------------------------------------------------------------------------- --verify


def test_verify_clean_prints_one_summary_line(drill: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert mxrc_replay(drill, "--verify") == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    assert out[0].startswith("ok: 2 node(s) (a, b), 17 records, 9 transitions")
    assert "(55.000s)" in out[0]


def test_verify_lists_every_problem_and_exits_1(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    root = write_logs(tmp_path / "bad", [
        *bring_up("a", at=0), *bring_up("b", at=0),
        move("a", "start", "READY", "RUNNING", at=2),
        move("b", "reset", "READY", "RUNNING", guards={}, at=3),
        move("a", "stop", "SAFE_MODE", "READY", at=4),
        cycle("b", 1, at=6),
    ])
    assert mxrc_replay(root, "--verify") == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("FAILED: 4 problem(s): 2 node(s) (a, b)")
    a_seg, b_seg = (str(list_segments(root / n / "eventlog")[0]) for n in "ab")
    assert out[0].startswith(a_seg) and "node a seq 4" in out[0] and "SAFE_MODE (source)" in out[0]
    assert out[1].startswith(a_seg) and "node a seq 4: illegal transition stop" in out[1]
    assert out[2].startswith(b_seg) and "node b seq 3: illegal transition reset" in out[2]
    assert out[3].startswith("invariant: node a+b: nodes a and b were both RUNNING for 1.000s")
    assert mxrc_replay(root, "--verify", "--format", "json") == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert [(p["node"], p["seq"]) for p in doc["problems"]] == [
        ("a", 4), ("a", 4), ("b", 3), ("a+b", None)]


def test_verify_one_node_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_logs(tmp_path / "one", [*bring_up("a"), move("a", "stop", "SAFE_MODE", "READY")])
    assert mxrc_replay(root, "--verify", "--format", "jsonl") == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["seq"] == 3 and lines[0]["node"] == "a"
    assert lines[-1]["ok"] is False


def test_torn_tail_is_a_notice_and_the_log_is_left_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_logs(tmp_path / "torn", [*bring_up("a"), crash("a", torn=b'{"seq":3,"wall')])
    before = _digest(root)
    assert mxrc_replay(root, "--verify") == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("ok: 1 node(s)")
    assert "notice" in captured.err and "torn tail of 14 bytes" in captured.err
    assert mxrc_replay(root) == 0
    assert "torn tail" in capsys.readouterr().err
    assert mxrc_replay(root, "--timeline", tmp_path / "t.svg") == 0
    assert _digest(root) == before


# --------------------------------------------------------------------------- --timeline


def test_timeline_svg_and_html(drill: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    svg = tmp_path / "incident.svg"
    assert mxrc_replay(drill, "--timeline", svg, "--since", "+1s") == 0
    assert f"wrote {svg}: 2 node(s)" in capsys.readouterr().out
    root = ET.parse(svg).getroot()
    nodes = {g.get("data-node") for g in root.iter(f"{SVG}g") if "band" in (g.get("class") or "")}
    assert nodes == {"a", "b"}
    html_file = tmp_path / "incident.html"
    assert mxrc_replay(drill, "--timeline", html_file, "--node", "a") == 0
    page = html_file.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    marked = [s for s in failover_script() if isinstance(s, Step) and s.node == "a"
              and s.type not in ("cycle_status", "datastore_write")]
    assert page.count('<tr class="') == len(marked) == 9


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("argv", "code", "needle"), [
    (["--type", "trasition"], 2, "known types: command_rejected"),
    (["--node", "z"], 2, "nodes found: a, b"),
    (["--since", "noon"], 2, "--since: cannot read 'noon'"),
    (["--until", "+5s", "--since", "+9s"], 2, "is before --since"),
    (["--at", "05:30", "--type", "transition"], 2, "--at shows"),
    (["--verify", "--since", "05:30"], 2, "--verify checks whole logs"),
    (["--timeline", "t.png"], 2, "must end in .svg or .html"),
    (["--timeline", "t.svg", "--format", "json"], 2, "drop --format"),
    (["--timeline", "t.svg", "--trace-id", "0" * 32], 2, "--timeline draws"),
    (["--trace-id", "xyz"], 2, "32 hex digits"),
])
def test_usage_errors(drill: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                      code: int, needle: str) -> None:
    assert mxrc_replay(drill, *argv) == code
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_bad_inputs_have_their_exit_codes(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert mxrc_replay(tmp_path / "missing") == 2
    assert "missing: no such file or directory" in capsys.readouterr().err
    stray = tmp_path / "stray.jsonl"
    stray.write_text("hello\n")
    assert mxrc_replay(stray) == 3
    root = write_logs(tmp_path / "corrupt", [*bring_up("a"), cycle("a", 1)])
    segment = list_segments(root / "a" / "eventlog")[0]
    data = bytearray(segment.read_bytes())
    data[data.index(b'"seq":2') + 6] = ord("7")
    segment.write_bytes(bytes(data))
    assert mxrc_replay(root) == 4
    assert "corrupt record at byte offset" in capsys.readouterr().err
    identity = LogIdentity("x", "rt", "0123456789ab")
    with EventLog.open(tmp_path / "old" / "x" / "eventlog", identity) as log:
        log.append("node_started", boot("x").payload)
    assert mxrc_replay(tmp_path / "old", "--verify") == 6
    assert "rt@0123456789ab" in capsys.readouterr().err


def test_unknown_event_type_exits_5(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_logs(tmp_path / "u", bring_up("a"))
    segment = list_segments(root / "a" / "eventlog")[0]
    line = segment.read_bytes().splitlines()[-1]
    record = framing.decode(line)
    record.update(seq=3, type="teleport")
    with segment.open("ab") as handle:
        handle.write(framing.encode(record))
    assert mxrc_replay(root) == 5
    assert "teleport" in capsys.readouterr().err


# --------------------------------------------------------------------------- progress and help


def test_progress_decision() -> None:
    big = replay_cli.PROGRESS_MIN_BYTES
    assert replay_cli.want_progress(big, True, None)
    assert not replay_cli.want_progress(big - 1, True, None)
    assert not replay_cli.want_progress(big, False, None)
    assert replay_cli.want_progress(0, False, True)
    assert not replay_cli.want_progress(big, True, False)
    assert not replay_cli.want_progress(big, True, None, listing_on_tty=True)
    assert replay_cli.want_progress(0, True, True, listing_on_tty=True)


def test_forced_progress_bar_goes_to_stderr(drill: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert mxrc_replay(drill, "--progress", "--format", "json") == 0
    captured = capsys.readouterr()
    assert "reading logs" in captured.err
    json.loads(captured.out)  # the bar never mixes into standard output
    assert mxrc_replay(drill, "--no-progress") == 0
    assert capsys.readouterr().err == ""


def test_table_widths_come_from_the_first_rows() -> None:
    out = io.StringIO()
    table = replay_cli.Table(out, ["A", "N", "LAST"], right=[1], sample=2)
    table.row(["x", 5, "end"])
    table.row(["longer", 10, "y"])
    table.row(["much longer than the sample", 7, "z"])
    table.close()
    assert out.getvalue().splitlines() == [
        "A        N  LAST",
        "x        5  end",
        "longer  10  y",
        "much longer than the sample   7  z",
    ]


def test_help_teaches_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["replay", "--help"])
    text = capsys.readouterr().out
    for option in ("--at", "--since", "--until", "--type", "--node", "--trace-id", "--format",
                   "--verify", "--timeline", "--progress", "--no-progress"):
        assert option in text
    assert text.count("mxrc replay ") >= 4 and "+90s" in text and "exit codes" in text


def test_registered_in_the_mxrc_command(drill: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["replay", str(drill), "--verify"]) == 0
    assert capsys.readouterr().out.startswith("ok: 2 node(s)")
    assert cli.main(["replay", str(drill), "--until", "25:00"]) == 2
