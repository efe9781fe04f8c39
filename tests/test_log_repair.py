"""``mxrc log repair`` and ``mxrc run`` on damaged logs, as a user meets them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mxrc.eventlog import read_records
from mxrc.segments import list_segments

MXRC = [sys.executable, "-m", "mxrc"]


def make_node_log(data: Path) -> None:
    out = subprocess.run(
        [*MXRC, "run", "--data-dir", str(data), "--duration", "0.5"],
        input="start\nstop\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr


def corrupt_middle(data: Path) -> tuple[Path, int]:
    [segment] = list_segments(data / "eventlog")
    raw = bytearray(segment.read_bytes())
    lines = raw.split(b"\n")
    offset = len(lines[0]) + 1 + len(lines[1]) + 1  # header, first record, then the victim
    raw[offset + 5] ^= 0x01
    segment.write_bytes(bytes(raw))
    return segment, offset


def test_run_refuses_a_corrupt_log_and_points_at_repair(tmp_path: Path) -> None:
    data = tmp_path / "var"
    make_node_log(data)
    segment, offset = corrupt_middle(data)
    before = segment.read_bytes()
    out = subprocess.run(
        [*MXRC, "run", "--data-dir", str(data), "--duration", "0.2"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 4
    assert f"corrupt record at byte offset {offset}" in out.stderr
    assert "mxrc log repair" in out.stderr
    assert segment.read_bytes() == before


def test_repair_reports_then_cuts_only_when_asked(tmp_path: Path) -> None:
    data = tmp_path / "var"
    make_node_log(data)
    segment, offset = corrupt_middle(data)
    before = segment.read_bytes()
    ask = subprocess.run(
        [*MXRC, "log", "repair", str(data)], capture_output=True, text=True, timeout=30
    )
    assert ask.returncode == 4
    assert "--truncate-corrupt" in ask.stderr and "would remove" in ask.stderr
    assert segment.read_bytes() == before

    cut = subprocess.run(
        [*MXRC, "log", "repair", str(data), "--truncate-corrupt"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cut.returncode == 0, cut.stderr
    assert segment.stat().st_size == offset
    kept = (data / "eventlog" / "broken").glob("*.corrupt")
    assert [p.read_bytes() for p in kept] == [before[offset:]]
    assert [r["seq"] for r in read_records(data / "eventlog")] == [1]
    again = subprocess.run(
        [*MXRC, "run", "--data-dir", str(data), "--duration", "0.2"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert again.returncode == 0, again.stderr


def test_repair_truncates_a_torn_tail(tmp_path: Path) -> None:
    data = tmp_path / "var"
    make_node_log(data)
    [segment] = list_segments(data / "eventlog")
    whole = segment.read_bytes()
    segment.write_bytes(whole + b'{"seq":999,"wall_')
    out = subprocess.run(
        [*MXRC, "log", "repair", str(data)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert "torn tail of 17 bytes" in out.stdout
    assert segment.read_bytes() == whole
