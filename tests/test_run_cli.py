"""``mxrc run`` as a user runs it: a real process, real signals, real files."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mxrc.eventlog import read_records
from mxrc.rt import sched
from tests.configs import TOLERANT_TIMING, Sections, merged, toml_text

MXRC = [sys.executable, "-m", "mxrc"]


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:  # clean up by PID whatever a test left running
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
    for pid in CHILDREN:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    CHILDREN.clear()


CHILDREN: list[int] = []


def node_config(tmp: Path) -> Path:
    """Loopback API on any free port, segments in the test's own directory; timing
    tolerant (see tests.configs: these tests are about the commands, not the VM)."""
    (tmp / "shm").mkdir(exist_ok=True)
    path = tmp / "mxrc.toml"
    own: Sections = {
        "rt": {
            "shm_dir": str(tmp / "shm"),
            "shm_prefix": f"mxrc-run{os.getpid()}",
            "hold_dma_latency": False,
        },
        "api": {"port": 0},
        "nonrt": {"rt_silence_s": 0.5},
    }
    path.write_text(toml_text(merged(TOLERANT_TIMING, own)))
    return path


def spawn(procs: list[subprocess.Popen[str]], tmp: Path, *args: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [*MXRC, "run", "--config", str(node_config(tmp)), "--data-dir", str(tmp / "var"), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(p)
    return p


class Api:
    """The admin API of a running node, found through ``<data>/nonrt.json``."""

    def __init__(self, data: Path, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = json.loads((data / "nonrt.json").read_text())
                break
            except (FileNotFoundError, json.JSONDecodeError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"no {data / 'nonrt.json'} after {timeout} s") from None
                time.sleep(0.05)
        self.url = info["api"]
        self.nonrt_pid = info["pid"]
        CHILDREN.append(self.nonrt_pid)
        self.token = Path(info["token_file"]).read_text().strip()

    def get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            result: dict[str, Any] = json.loads(r.read())
            return result

    def text(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return str(r.read().decode())

    def post(self, path: str) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            self.url + path,
            method="POST",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def wait_startable(self, timeout: float = 30.0) -> None:
        """READY and /ready answering 200: the start guard (is_healthy) holds. READY
        alone comes with the first cycle record, before the first seconds' deadline-miss
        rate has settled, and a start then is (rightly) refused."""
        self.wait_state("READY", timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=10):
                    return
            except urllib.error.HTTPError as e:
                if time.monotonic() > deadline:
                    raise AssertionError(f"never ready: {e.read()!r}") from None
            time.sleep(0.05)

    def wait_state(self, state: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            view = self.get("/v1/state")
            if view["state"] == state:
                return view
            if time.monotonic() > deadline:
                raise AssertionError(f"state {view['state']}, never {state}: {view}")
            time.sleep(0.05)


def running_node(
    procs: list[subprocess.Popen[str]], tmp: Path
) -> tuple[subprocess.Popen[str], Api]:
    """``mxrc run`` started, its node READY, then started by an operator: RUNNING."""
    p = spawn(procs, tmp)
    api = Api(tmp / "var")
    api.wait_startable()
    api.post("/v1/commands/start")
    api.wait_state("RUNNING")
    return p, api


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_run_starts_both_processes_and_stops_them_cleanly(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    p = spawn(procs, tmp_path)
    api = Api(tmp_path / "var")
    api.wait_startable()
    status, body = api.post("/v1/commands/start")
    assert status in (200, 202), body
    view = api.wait_state("RUNNING")
    assert view["leader"] and view["token"] >= 1
    rt_cpu = max(sched.online_cpus())  # rt.cpu = -1: the machine's last online CPU
    if len(os.sched_getaffinity(0)) > 1:  # nonrt (every thread) keeps off the RT CPU
        for tid in os.listdir(f"/proc/{api.nonrt_pid}/task"):
            assert rt_cpu not in os.sched_getaffinity(int(tid)), tid
    deadline = time.monotonic() + 10
    while not api.get("/v1/telemetry").get("driving"):
        assert time.monotonic() < deadline, "the cycle never drove outputs"
        time.sleep(0.05)
    # Probes are counted straight into the metrics (not through the bus), like the rest.
    exposition = api.text("/metrics")
    assert re.search(r'mxrc_api_requests_total\{[^}]*route="/ready"[^}]*\} [1-9]', exposition)
    assert re.search(r'mxrc_api_requests_total\{[^}]*route="/v1/state"[^}]*\} [1-9]', exposition)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=40)
    assert p.returncode == 0, err
    assert api.url in out and str((tmp_path / "var").resolve()) in out
    assert "api-token" in out
    assert not alive(api.nonrt_pid), "nonrt was not reaped"
    records = list(read_records(tmp_path / "var" / "eventlog"))
    moves = [
        (r["payload"]["source"], r["payload"]["dest"], r["payload"]["trigger"])
        for r in records
        if r["type"] == "transition"
    ]
    assert moves == [
        ("INIT", "READY", "initialized"),
        ("READY", "RUNNING", "start"),
        ("RUNNING", "READY", "stop"),
    ]
    assert records[-1]["type"] == "node_stopped"
    started = next(r for r in records if r["type"] == "node_started")
    assert started["payload"]["previous_shutdown"] == "first_boot"


def test_dead_rt_child_is_reported_and_the_node_goes_to_safe_mode(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    p, api = running_node(procs, tmp_path)
    rt_pids = [
        int(pid)
        for pid in subprocess.run(
            ["pgrep", "-f", f"mxrc rt --node-id node-1 --config {tmp_path}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
    ]
    assert len(rt_pids) == 1, rt_pids
    os.kill(rt_pids[0], signal.SIGKILL)
    view = api.wait_state("SAFE_MODE", timeout=10)
    assert view["cause"] in ("rt_lost", "rt_stopped")
    p.send_signal(signal.SIGTERM)
    out, _err = p.communicate(timeout=40)
    assert f"mxrc rt (pid {rt_pids[0]}) exited" in out


def test_dead_nonrt_stops_the_run_and_the_restart_comes_back_in_safe_mode(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    p, api = running_node(procs, tmp_path)
    os.kill(api.nonrt_pid, signal.SIGKILL)
    out, _err = p.communicate(timeout=40)
    assert p.returncode == 1
    assert f"mxrc nonrt (pid {api.nonrt_pid}) exited with code -9" in out
    (tmp_path / "var" / "nonrt.json").unlink(missing_ok=True)
    again = spawn(procs, tmp_path)
    api = Api(tmp_path / "var")
    view = api.wait_state("SAFE_MODE")
    assert view["cause"] == "restart"
    again.send_signal(signal.SIGTERM)
    again.communicate(timeout=40)
    records = list(read_records(tmp_path / "var" / "eventlog"))
    boots = [r["payload"]["previous_shutdown"] for r in records if r["type"] == "node_started"]
    assert boots == ["first_boot", "crash"]


def test_mxrc_command_drives_the_running_node_and_reports_refusals(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    data = tmp_path / "var"

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MXRC, "command", *args, "--data-dir", str(data)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    nobody = command("start")
    assert nobody.returncode == 10 and "no node is running on" in nobody.stderr
    p = spawn(procs, tmp_path)
    api = Api(data)
    api.wait_startable()
    started = command("start")
    if started.returncode:
        try:
            urllib.request.urlopen(api.url + "/health", timeout=5)
        except urllib.error.HTTPError as e:
            raise AssertionError((started.stderr, e.read())) from None
    assert started.returncode == 0, started.stderr
    assert "start: READY → RUNNING" in started.stdout
    assert api.get("/v1/state")["state"] == "RUNNING"
    again = command("start")  # illegal in RUNNING: the API's 409, said as it is
    assert again.returncode == 1 and "start refused (409)" in again.stderr
    stopped = command("safe_mode", "--cause", "guard door open")
    assert stopped.returncode == 0 and "RUNNING → SAFE_MODE" in stopped.stdout
    assert api.get("/v1/state")["cause"] == "guard door open"
    again_safe = command("safe_mode", "--cause", "mxrc-rt.service failed")  # idempotent
    assert again_safe.returncode == 0 and "already in SAFE_MODE" in again_safe.stdout
    assert api.get("/v1/state")["cause"] == "guard door open"  # the first cause stands
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=40)


def test_second_run_on_same_data_dir_is_refused(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    first = spawn(procs, tmp_path)
    api = Api(tmp_path / "var")
    api.wait_state("READY")
    second = subprocess.run(
        [*MXRC, "run", "--data-dir", str(tmp_path / "var"), "--duration", "1"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 9
    assert f"in use by another mxrc (pid {first.pid}" in second.stderr
    assert second.stderr.count("\n") == 1
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=40)


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
