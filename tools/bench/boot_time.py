"""How long mxrc.target takes to come up under a real systemd, with the units as
rendered and with ``DefaultDependencies=no`` added to them.

    .venv/bin/python tools/bench/boot_time.py [--runs 5]

Each run boots a fresh systemd (the host's, as PID 1 of new namespaces: see
mxrc.systemd.sandbox), starts mxrc.target and measures from ``systemctl start``
until all three services report active (Type=notify: nonrt and the monitor once
READY=1, rt once its cycle runs). Needs root. Prints one JSON
object; the figure and its baseline (the default dependencies) come from the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import emit, progress

from mxrc.config import load_config
from mxrc.drill.ports import free_ports
from mxrc.systemd.sandbox import NamespacedSystemd, available, relax_for_code_location
from mxrc.systemd.units import host_placement, load_templates, render, unit_values

SERVICES = ("mxrc-nonrt.service", "mxrc-rt.service", "mxrc-monitor.service")


def units_for(work: Path, default_dependencies: bool) -> dict[str, str]:
    (work / "var").mkdir(parents=True)
    config_path = work / "mxrc.toml"
    config_path.write_text(
        f'[node]\ndata_dir = "{work / "var"}"\n[rt]\nshm_prefix = "mxrc-boot{os.getpid()}"\n'
        f'[api]\nport = {free_ports(1)[0]}\n[systemd]\nuser = "root"\ngroup = "root"\n'
        f"monitor_port = {free_ports(1)[0]}\n"
    )
    config = load_config(config_path)
    units = render(load_templates(), unit_values(config, config_path, host_placement(config)))
    units.pop("journald-mxrc.conf")
    if not default_dependencies:
        for name in units:
            units[name] += "\n[Unit]\nDefaultDependencies=no\n"
    relax_for_code_location(units, [Path(sys.executable).resolve(), Path(sys.prefix)])
    return units


def one_run(root: Path, default_dependencies: bool) -> float:
    work = root / f"run-{time.monotonic_ns()}"
    system = NamespacedSystemd(work / "systemd", units_for(work, default_dependencies))
    system.start()
    try:
        started = time.monotonic()
        system.systemctl("start", "mxrc.target")
        while True:
            states = [system.systemctl("is-active", u, check=False).stdout.strip()
                      for u in SERVICES]  # fmt: skip
            if all(s == "active" for s in states):
                return time.monotonic() - started
            if time.monotonic() - started > 30:
                raise TimeoutError(f"mxrc.target not up within 30 s: {states}")
            time.sleep(0.01)
    finally:
        system.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    why = available()
    if why is not None:
        progress(f"boot_time: {why}")
        return 2
    root = Path(f"/var/lib/mxrc-boot-bench-{os.getpid()}")  # outside /tmp (PrivateTmp=)
    result: dict[str, Any] = {"benchmark": "boot_time", "runs": args.runs}
    try:
        for label, default in (("default_dependencies", True), ("default_dependencies_no", False)):
            times = []
            for i in range(args.runs):
                progress(f"{label}: run {i + 1}/{args.runs}")
                times.append(one_run(root, default))
            result[label] = {
                "median_s": round(statistics.median(times), 3),
                "min_s": round(min(times), 3),
                "max_s": round(max(times), 3),
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = result["default_dependencies"]["median_s"]
    result["ratio_no_default_dependencies"] = round(
        result["default_dependencies_no"]["median_s"] / base, 3
    )
    result["measured"] = "systemctl start mxrc.target → all three services active"
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
