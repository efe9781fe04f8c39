"""Admin API under load: /health requests/s against a bare aiohttp handler, and what the
load does to the RT cycle's wake-up latency.

    .venv/bin/python tools/bench/api_load.py [--seconds 10] [--quick] [--connections 32]

Part 1 — throughput. One ``mxrc run`` node (nonrt + rt, RUNNING) serves ``/health``;
a bare aiohttp application (one handler returning a fixed small JSON body, same
``aiohttp`` and Python, also a separate process) is the baseline. ``wrk`` (Debian's
package) loads each in alternating blocks, pinned away from the RT CPU, as an operator
would place a monitoring load; the figure is the sum over blocks.

Part 2 — the cycle under API load. Two ``mxrc run`` sessions of the same length, both
RUNNING: one idle, one with ``wrk`` hammering ``/health`` and ``/v1/state`` for the
whole session. The cycle's p99 wake-up latency since start is read from
``/v1/telemetry`` just before each session stops.

Prints one JSON object with both parts, the ratios, the targets (/health ≥ 0.7 × the
bare handler; the cycle p99 changes by < 10 %) and ``target_met``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import emit, progress

from mxrc.drill.ports import free_ports

HEALTH_RATIO_MIN = 0.7
P99_CHANGE_MAX = 0.10
BARE_SERVER = """
import sys
from aiohttp import web
BODY = b'{"status": "healthy", "timestamp": "2026-01-01T00:00:00Z", "checks": {}}'
async def health(request):
    return web.Response(body=BODY, content_type="application/json")
app = web.Application()
app.router.add_get("/health", health)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not answer within {timeout:g} s") from None
            time.sleep(0.1)


def wrk(
    url: str, seconds: float, connections: int, cpu: int, paths: list[str] | None = None
) -> tuple[float, int]:
    """Requests/s and non-2xx answers of one wrk run pinned to ``cpu``."""
    command = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s"]
    with tempfile.TemporaryDirectory(prefix="mxrc-wrk-") as tmp:
        if paths:
            script = Path(tmp) / "paths.lua"
            script.write_text(
                "local paths = {" + ",".join(f'"{p}"' for p in paths) + "}\n"
                "local i = 0\nrequest = function()\n  i = i % #paths + 1\n"
                "  return wrk.format('GET', paths[i])\nend\n"
            )
            command += ["-s", str(script)]
        out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if match is None:
        raise SystemExit(f"could not read wrk's output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx and paths is None:
        progress(f"warning: {non2xx.group(1)} non-2xx responses from {url}")
    return float(match.group(1)), int(non2xx.group(1)) if non2xx else 0


_HEALTH_CHANGES = re.compile(
    r'^mxrc_health_check_changes_total\{check="(\w+)",status="(\w+)"\} (\S+)$', re.M
)


def health_changes(url: str) -> dict[str, int]:
    """A node's ``mxrc_health_check_changes_total``, as ``"check → status": count``."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {f"{c} → {s}": int(float(n)) for c, s, n in _HEALTH_CHANGES.findall(text)}


def changes_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in sorted(after.items()) if n - before.get(k, 0)}


class Node:
    """One ``mxrc run`` in a temporary directory, started RUNNING."""

    def __init__(self, work: Path) -> None:
        self.work = work
        (work / "shm").mkdir(parents=True, exist_ok=True)
        config = work / "mxrc.toml"
        config.write_text(
            f'[rt]\nshm_dir = "{work / "shm"}"\nshm_prefix = "mxrc-bench{os.getpid()}"\n'
            "[api]\nport = 0\n"
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mxrc",
                "run",
                "--config",
                str(config),
                "--data-dir",
                str(work / "var"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        announce = work / "var" / "nonrt.json"
        while not announce.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("mxrc run did not come up (run it by hand to see why)")
            time.sleep(0.1)
        info = json.loads(announce.read_text())
        self.url = str(info["api"])
        self.token = Path(info["token_file"]).read_text().strip()
        self._wait_state("READY")
        request = urllib.request.Request(
            self.url + "/v1/commands/start",
            method="POST",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        urllib.request.urlopen(request, timeout=10).close()
        self._wait_state("RUNNING")

    def get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            result: dict[str, Any] = json.loads(r.read())
            return result

    def _wait_state(self, state: str) -> None:
        deadline = time.monotonic() + 60
        while self.get("/v1/state")["state"] != state:
            if time.monotonic() > deadline:
                raise SystemExit(f"the node never reached {state}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def session_p99(work: Path, seconds: float, load: bool, connections: int, cpu: int) -> float:
    node = Node(work)
    try:
        if load:
            wrk(node.url, seconds, connections, cpu, ["/health", "/v1/state"])
        else:
            time.sleep(seconds)
        telemetry = node.get("/v1/telemetry")
        return float(telemetry["wake_p99_us"])
    finally:
        node.stop()


def health_throughput(
    work: Path, seconds: float, blocks: int, connections: int, rt_cpu: int, load_cpu: int
) -> dict[str, Any]:
    """Part 1: ``/health`` of a RUNNING node against a bare aiohttp handler."""
    cpus = sorted(os.sched_getaffinity(0))
    (port,) = free_ports(1)
    # The bare server gets the CPUs mxrc nonrt places itself on (every CPU but the RT
    # one), so that both serve from the same CPUs as wrk's neighbour.
    nonrt_cpus = ",".join(str(c) for c in cpus if c != rt_cpu) or str(rt_cpu)
    bare = subprocess.Popen(
        ["taskset", "-c", nonrt_cpus, sys.executable, "-c", BARE_SERVER, str(port)]
    )
    node = None
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        node = Node(work)
        mxrc_rps = bare_rps = 0.0
        mxrc_non2xx = 0
        changes_before = health_changes(node.url)
        for block in range(blocks):
            progress(f"  block {block + 1}/{blocks}")
            rps, non2xx = wrk(node.url + "/health", seconds, connections, load_cpu)
            mxrc_rps += rps
            mxrc_non2xx += non2xx
            bare_rps += wrk(
                f"http://127.0.0.1:{port}/health", seconds, connections, load_cpu
            )[0]
        changes = changes_between(changes_before, health_changes(node.url))
    finally:
        bare.send_signal(signal.SIGTERM)
        bare.wait(10)
        if node is not None:
            node.stop()
    mxrc_rps /= blocks
    bare_rps /= blocks
    ratio = mxrc_rps / bare_rps if bare_rps else 0.0
    return {
        "mxrc_requests_per_s": round(mxrc_rps, 1),
        "bare_aiohttp_requests_per_s": round(bare_rps, 1),
        "ratio": round(ratio, 3),
        # 503s are /health saying unhealthy; the changes say which check and how often
        "mxrc_non_2xx": mxrc_non2xx,
        "mxrc_health_changes": changes,
        "target": f">= {HEALTH_RATIO_MIN}",
        "target_met": ratio >= HEALTH_RATIO_MIN,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each block")
    parser.add_argument("--blocks", type=int, default=2, help="alternating blocks per side")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--quick", action="store_true", help="2 s blocks, one each (smoke)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        progress("wrk (and taskset) are needed: run tools/setup (Debian packages wrk, util-linux)")
        return 2
    seconds, blocks = (2.0, 1) if args.quick else (args.seconds, args.blocks)
    cpus = sorted(os.sched_getaffinity(0))
    rt_cpu = cpus[-1]
    load_cpu = cpus[0]
    result: dict[str, Any] = {
        "benchmark": "api_load",
        "block_seconds": seconds,
        "blocks": blocks,
        "connections": args.connections,
        "rt_cpu": rt_cpu,
        "wrk_cpu": load_cpu,
    }
    with tempfile.TemporaryDirectory(prefix="mxrc-api-bench-") as tmp:
        work = Path(tmp)
        progress("part 1: /health vs a bare aiohttp handler")
        result["health"] = health_throughput(
            work / "throughput", seconds, blocks, args.connections, rt_cpu, load_cpu
        )
        progress("part 2: cycle p99 wake-up latency, idle vs API under load")
        idle: list[float] = []
        loaded: list[float] = []
        for block in range(blocks):
            progress(f"  block {block + 1}/{blocks}")
            idle.append(
                session_p99(work / f"idle{block}", seconds, False, args.connections, load_cpu)
            )
            loaded.append(
                session_p99(work / f"load{block}", seconds, True, args.connections, load_cpu)
            )
    idle_p99 = sum(idle) / len(idle)
    loaded_p99 = sum(loaded) / len(loaded)
    change = (loaded_p99 - idle_p99) / idle_p99 if idle_p99 else 0.0
    result["cycle_wake_p99_us"] = {
        "idle": [round(v, 1) for v in idle],
        "api_under_load": [round(v, 1) for v in loaded],
        "idle_mean": round(idle_p99, 1),
        "api_under_load_mean": round(loaded_p99, 1),
        "change": round(change, 3),
        "target": f"< {P99_CHANGE_MAX:.0%}",
        "target_met": change < P99_CHANGE_MAX,
    }
    result["target_met"] = result["health"]["target_met"] and change < P99_CHANGE_MAX
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
