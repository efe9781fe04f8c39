"""``mxrc monitor``: the mxrc units as Prometheus sees them (port 9558).

Every second it asks systemd (``systemctl show``, the same view an operator has) for
the units' state, restart count, CPU time and memory, and reads the NUMA placement of
their main processes (``/proc/<pid>/numa_maps``: pages on the nodes of the CPUs the
process may run on are local). A scrape serves the latest snapshot, so a slow systemd
never stalls Prometheus. Parsing and the metric families are pure; only
:class:`UnitSampler` runs commands and reads /proc.

When ``systemctl show`` fails the unit families go empty, which a dashboard cannot
tell from units that were never there; so ``mxrc_monitor_systemctl_up`` says whether
the last one worked, the failure and the recovery are each logged once (journald under
systemd), and the watchdog is not pinged while it lasts, so systemd restarts a monitor
that cannot see the units.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mxrc.obs.logs import LogPipeline, LogSettings
from mxrc.rt.cpu import node_of_cpu, read_nodes, read_numa_pages
from mxrc.service.notify import Notifier

DEFAULT_UNITS: Final = ("mxrc-nonrt.service", "mxrc-rt.service", "mxrc.target")
UNIT_STATES: Final = ("active", "reloading", "inactive", "failed", "activating", "deactivating")
PROPERTIES: Final = ("Id", "ActiveState", "NRestarts", "CPUUsageNSec", "MemoryCurrent", "MainPID")
REFRESH_S: Final = 1.0

log = logging.getLogger("mxrc.monitor")


@dataclass(frozen=True)
class UnitFacts:
    name: str
    state: str
    restarts: int
    cpu_ns: int | None  # None: systemd does not account it (no cpu controller)
    memory_bytes: int | None
    main_pid: int


@dataclass(frozen=True)
class Placement:
    local_pages: int
    remote_pages: int
    remote_ratio: float


def _number(text: str | None) -> int | None:
    """systemd prints ``[not set]`` or 2^64-1 for what it does not account."""
    if text is None or not text.isdigit():
        return None
    value = int(text)
    return None if value >= 2**64 - 1 else value


def parse_show(text: str) -> list[UnitFacts]:
    """``systemctl show UNIT… -p …`` output: one block of ``Key=value`` per unit."""
    facts = []
    for block in text.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" not in props:
            continue
        facts.append(
            UnitFacts(
                props["Id"],
                props.get("ActiveState", "unknown"),
                _number(props.get("NRestarts")) or 0,
                _number(props.get("CPUUsageNSec")),
                _number(props.get("MemoryCurrent")),
                _number(props.get("MainPID")) or 0,
            )
        )
    return facts


def families(
    facts: Sequence[UnitFacts], placement: Mapping[str, Placement]
) -> Iterator[Metric]:
    """The exported metric families (names and units as Prometheus conventions ask)."""
    state = GaugeMetricFamily(
        "systemd_unit_state", "1 for the unit's current state, 0 for the others",
        labels=["name", "state"],
    )  # fmt: skip
    restarts = CounterMetricFamily(
        "systemd_unit_restart", "Restarts systemd made (NRestarts)", labels=["name"]
    )
    cpu = CounterMetricFamily(
        "systemd_unit_cpu_seconds", "CPU time of the unit (CPUUsageNSec)", labels=["name"]
    )
    memory = GaugeMetricFamily(
        "systemd_unit_memory_bytes", "Memory of the unit (MemoryCurrent)", labels=["name"]
    )
    pages = GaugeMetricFamily(
        "mxrc_numa_pages", "Pages of the unit's main process by NUMA locality",
        labels=["name", "locality"],
    )  # fmt: skip
    ratio = GaugeMetricFamily(
        "mxrc_numa_remote_ratio", "Fraction of the main process's pages on remote nodes",
        labels=["name"],
    )  # fmt: skip
    for f in facts:
        for s in UNIT_STATES:
            state.add_metric([f.name, s], 1.0 if f.state == s else 0.0)
        restarts.add_metric([f.name], float(f.restarts))
        if f.cpu_ns is not None:
            cpu.add_metric([f.name], f.cpu_ns / 1e9)
        if f.memory_bytes is not None:
            memory.add_metric([f.name], float(f.memory_bytes))
        where = placement.get(f.name)
        if where is not None:
            pages.add_metric([f.name, "local"], float(where.local_pages))
            pages.add_metric([f.name, "remote"], float(where.remote_pages))
            ratio.add_metric([f.name], where.remote_ratio)
    yield from (state, restarts, cpu, memory, pages, ratio)


class UnitSampler(Collector):
    """Refreshes the snapshot every :data:`REFRESH_S`; :meth:`collect` serves it."""

    def __init__(self, units: Sequence[str], systemctl: Sequence[str] = ("systemctl",)) -> None:
        self.units = list(units)
        self.systemctl = list(systemctl)
        self.facts: list[UnitFacts] = []
        self.placement: dict[str, Placement] = {}
        self.error = ""
        self._lock = threading.Lock()
        self.nodes = read_nodes()

    def refresh(self) -> None:
        result = subprocess.run(
            [*self.systemctl, "show", *self.units, "-p", ",".join(PROPERTIES)],
            capture_output=True, text=True, timeout=5, check=False,
        )  # fmt: skip
        facts = parse_show(result.stdout) if result.returncode == 0 else []
        placement = {f.name: p for f in facts if f.main_pid and (p := self._place(f.main_pid))}
        error = ""
        if result.returncode != 0:
            error = result.stderr.strip() or f"exit status {result.returncode}"
        with self._lock:
            previous = self.error
            self.facts, self.placement, self.error = facts, placement, error
        if error and error != previous:
            log.warning(
                "`systemctl show` failed, so the unit metrics are absent until it works "
                "(mxrc_monitor_systemctl_up 0): %s", error,
            )  # fmt: skip
        elif previous and not error:
            log.info("`systemctl show` works again: exporting %d units", len(facts))

    def _place(self, pid: int) -> Placement | None:
        pages = read_numa_pages(pid)
        if pages is None:
            return None
        try:
            cpus = os.sched_getaffinity(pid)
        except OSError:
            return None
        local = {node_of_cpu(self.nodes, c) for c in cpus} - {None}
        local_pages, remote_pages, ratio = pages.split(n for n in local if n is not None)
        return Placement(local_pages, remote_pages, ratio)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            facts, placement, error = list(self.facts), dict(self.placement), self.error
        up = GaugeMetricFamily(
            "mxrc_monitor_systemctl_up", "1 when the last `systemctl show` worked, else 0"
        )
        up.add_metric([], 0.0 if error else 1.0)
        yield up
        yield from families(facts, placement)


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "monitor",
        help="export the mxrc units' state, restarts, CPU, memory and NUMA placement",
        description=(
            "Serve Prometheus metrics of the mxrc systemd units (systemd_unit_state, "
            "systemd_unit_restart_total, systemd_unit_cpu_seconds_total, "
            "systemd_unit_memory_bytes, mxrc_numa_pages, mxrc_numa_remote_ratio), "
            "refreshed every second from `systemctl show`."
        ),
        epilog="example:\n  mxrc monitor --port 9558 && curl -s localhost:9558/metrics",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (127.0.0.1)")
    parser.add_argument("--port", type=int, default=9558, help="listen port (9558)")
    parser.add_argument(
        "--units", default=",".join(DEFAULT_UNITS), help="comma-separated units to watch"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with LogPipeline(LogSettings(), process_name="mxrc-monitor"):
        return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    sampler = UnitSampler([u for u in args.units.split(",") if u])
    registry = CollectorRegistry()
    registry.register(sampler)
    sampler.refresh()
    start_http_server(args.port, addr=args.host, registry=registry)
    notifier = Notifier.from_environment()
    status = f"exporting {len(sampler.units)} units on {args.host}:{args.port}"
    log.info("mxrc monitor: %s (%s)", status, ", ".join(sampler.units))
    notifier.ready(status)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    interval = notifier.watchdog_interval_s
    last_ping = time.monotonic()
    while not stop.wait(REFRESH_S):
        sampler.refresh()
        if interval and time.monotonic() - last_ping >= interval and not sampler.error:
            notifier.watchdog()
            last_ping = time.monotonic()
    notifier.stopping("stopping")
    log.info("mxrc monitor: stopping")
    return 0
