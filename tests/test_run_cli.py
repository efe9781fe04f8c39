"""``mxrc run`` as a user runs it: a real process, real signals, real files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mxrc.eventlog import read_records

MXRC = [sys.executable, "-m", "mxrc"]


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:  # clean up by PID whatever a test left running
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def spawn(procs: list[subprocess.Popen[str]], *args: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [*MXRC, "run", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(p)
    return p


def wait_for_state(data: Path, state: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = data / "eventlog"
        if log.is_dir():
            try:
                if any(
                    r["type"] == "transition" and r["payload"]["dest"] == state
                    for r in read_records(log)
                ):
                    return
            except Exception:  # the writer may be mid-append; retry
                pass
        time.sleep(0.05)
    raise AssertionError(f"{data} never reached {state}")


def test_scripted_session_logs_every_step(tmp_path: Path) -> None:
    data = tmp_path / "var"
    script = "start\ninject overtemp\nreset\nclear overtemp\nreset\nstart\nstop\nfly\n"
    out = subprocess.run(
        [*MXRC, "run", "--data-dir", str(data), "--duration", "1.5"],
        input=script,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "stand-in" in out.stdout and str(data.resolve()) in out.stdout
    assert "guard(s) cause_cleared false" in out.stdout
    assert "unknown command 'fly'" in out.stdout
    records = list(read_records(data / "eventlog"))
    moves = [
        (r["payload"]["source"], r["payload"]["dest"]) for r in records if r["type"] == "transition"
    ]
    assert moves == [
        ("INIT", "READY"),
        ("READY", "RUNNING"),
        ("RUNNING", "SAFE_MODE"),
        ("SAFE_MODE", "READY"),
        ("READY", "RUNNING"),
        ("RUNNING", "READY"),
    ]
    types = [r["type"] for r in records]
    assert types[0] == "node_started" and types[-1] == "node_stopped"
    assert "command_rejected" in types and "cycle_status" in types
    assert records[-1]["payload"]["reason"] == "duration elapsed"


def test_sigkill_while_running_comes_back_in_safe_mode(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    data = tmp_path / "var"
    p = spawn(procs, "--data-dir", str(data))
    assert p.stdin is not None
    p.stdin.write("start\n")
    p.stdin.flush()
    wait_for_state(data, "RUNNING")
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    out = subprocess.run(
        [*MXRC, "run", "--data-dir", str(data), "--duration", "0.3"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "RUNNING → SAFE_MODE (fault by system, cause: restart)" in out.stdout
    records = list(read_records(data / "eventlog"))
    boots = [r for r in records if r["type"] == "node_started"]
    assert [b["payload"]["previous_shutdown"] for b in boots] == ["first_boot", "crash"]
    after_crash = records[records.index(boots[1]) + 1]
    assert after_crash["payload"]["cause"] == "restart"


def test_sigterm_shuts_down_cleanly(tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    data = tmp_path / "var"
    p = spawn(procs, "--data-dir", str(data))
    wait_for_state(data, "READY")
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=10) == 0
    records = list(read_records(data / "eventlog"))
    assert records[-1]["type"] == "node_stopped"
    assert records[-1]["payload"]["reason"] == "SIGTERM"


def test_second_run_on_same_data_dir_is_refused(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    data = tmp_path / "var"
    first = spawn(procs, "--data-dir", str(data))
    wait_for_state(data, "READY")
    second = subprocess.run(
        [*MXRC, "run", "--data-dir", str(data), "--duration", "1"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 9
    assert f"in use by another mxrc (pid {first.pid}" in second.stderr
    assert second.stderr.count("\n") == 1


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "mxrc.toml"
    config.write_text("[eventlog]\nsegment_bytes = 10\n")
    out = subprocess.run(
        [*MXRC, "run", "--config", str(config), "--data-dir", str(tmp_path / "var")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 8
    assert "eventlog.segment_bytes: 10 must be ≥ 4096" in out.stderr
    assert not (tmp_path / "var").exists()


def test_chart_draw_highlights_the_current_state(tmp_path: Path) -> None:
    svg = tmp_path / "rt.svg"
    out = subprocess.run(
        [*MXRC, "chart", "draw", "--state", "SAFE_MODE", "-o", str(svg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    text = svg.read_text()
    assert "<svg" in text and "current: SAFE_MODE" in text
    # the highlighted node is drawn with the thick border colour, and only that one
    assert text.count('stroke="#08306b"') == 1
    bad = subprocess.run(
        [*MXRC, "chart", "draw", "--state", "FLYING"], capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 2 and "'FLYING' is not a state" in bad.stderr


def test_chart_check_reports_the_bad_trigger(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'name = "x"\ninitial = "A"\n[states.A]\n[[transitions]]\ntrigger = "go"\n'
        'source = ["A"]\ndest = "B"\n'
    )
    out = subprocess.run(
        [*MXRC, "chart", "check", str(bad)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 7
    assert "trigger 'go'" in out.stderr and "unknown state 'B'" in out.stderr
