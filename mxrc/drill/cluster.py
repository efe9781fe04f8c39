"""A local cluster for failover drills: N controller nodes as real processes, their
coordination service, the fenced actuator, and a proxy for every link between them.

Each node is the pair systemd would run — ``mxrc nonrt`` and ``mxrc rt`` — with its own
data directory under the drill's output, its own admin API port and its own shared
memory. Every path from a node to the coordination service goes through a
:class:`mxrc.drill.links.Link` owned by this process, so a nemesis can cut exactly the
links it means to:

* **peers**: one link per *directed* pair of nodes (node-1 reaches node-2 only through
  ``node-1>node-2``); each node's ``ha.members`` names the link, not the peer.
* **etcd**: one etcd member per node; node *i* reaches every member through its own
  links ``node-i>etcd-j`` (its own member first). etcd members talk to each other
  directly: their peer URLs are advertised cluster-wide, so no per-link proxy can sit
  between two members. A drill therefore partitions nodes *from* etcd, and pauses or
  stops members; it does not split etcd itself.

The actuator is the robot: every node can always reach it (a partition between
controllers does not unplug the robot), which is what makes it the judge.

Everything started here is stopped by PID in :meth:`Cluster.stop`, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

from mxrc.drill.etcd import EtcdCluster, free_ports
from mxrc.drill.links import Links
from mxrc.errors import MxrcError

NONRT_START_S: Final = 30.0
ACTUATOR_START_S: Final = 10.0
STOP_WAIT_S: Final = 15.0
HTTP_TIMEOUT_S: Final = 2.0


@dataclass(frozen=True)
class DrillSettings:
    """What a drill varies; everything else in the nodes' configuration is fixed here."""

    backend: str = "etcd"
    size: int = 3
    ttl_s: float = 2.0
    renew_interval_s: float = 0.5
    margin_s: float = 0.2
    request_timeout_s: float = 0.3
    auto_start: bool = True
    period_ms: float = 5.0  # N RT cycles share one CPU on a small machine


@dataclass
class DrillNode:
    node_id: str
    data_dir: Path
    config: Path
    api_port: int
    peer_port: int
    nonrt: subprocess.Popen[bytes] | None = None
    rt: subprocess.Popen[bytes] | None = None
    token: str = ""
    paused: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def pids(self) -> list[int]:
        return [p.pid for p in (self.nonrt, self.rt) if p is not None and p.poll() is None]


@dataclass
class Cluster:
    out: Path
    settings: DrillSettings
    seed: int = 0
    nodes: list[DrillNode] = field(default_factory=list)
    links: Links = field(default_factory=Links)
    etcd: EtcdCluster | None = None
    actuator: subprocess.Popen[bytes] | None = None
    actuator_port: int = 0
    _session: aiohttp.ClientSession | None = None

    @property
    def actuator_record(self) -> Path:
        return self.out / "actuator.jsonl"

    def node(self, node_id: str) -> DrillNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        )
        self._start_actuator()
        size = self.settings.size
        ports = free_ports(2 * size)
        for i in range(size):
            node_id = f"node-{i + 1}"
            directory = self.out / node_id
            directory.mkdir(exist_ok=True)
            self.nodes.append(
                DrillNode(node_id, directory, directory / "mxrc.toml", ports[2 * i],
                          ports[2 * i + 1])
            )  # fmt: skip
        if self.settings.backend == "etcd":
            self.etcd = EtcdCluster(self.out / "etcd", size)
            await asyncio.to_thread(self.etcd.start)
        await self._start_links()
        for node in self.nodes:
            node.config.write_text(self._config_text(node))
        for node in self.nodes:
            await self.start_node(node)

    def _start_actuator(self) -> None:
        announce = self.out / "actuator.json"
        announce.unlink(missing_ok=True)
        log = (self.out / "actuator.log").open("ab")
        self.actuator = subprocess.Popen(
            [sys.executable, "-m", "mxrc", "actuator", "--listen", "127.0.0.1:0",
             "--record", str(self.actuator_record), "--announce", str(announce)],
            stdout=log, stderr=log,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + ACTUATOR_START_S
        while not announce.exists():
            if self.actuator.poll() is not None or time.monotonic() > deadline:
                raise MxrcError(f"the actuator did not start: see {self.out / 'actuator.log'}")
            time.sleep(0.05)
        self.actuator_port = int(orjson.loads(announce.read_bytes())["port"])

    async def _start_links(self) -> None:
        for a in self.nodes:
            if self.settings.backend == "peers":
                targets = [(f"{a.node_id}>{b.node_id}", b.peer_port) for b in self.nodes
                           if b is not a]  # fmt: skip
            elif self.etcd is not None:
                targets = [(f"{a.node_id}>{m.name}", m.client_port) for m in self.etcd.members]
            else:
                targets = []
            for name, port in targets:
                await self.links.add(name, ("127.0.0.1", port))

    def link_names(self) -> list[str]:
        return [link.name for link in self.links]

    def links_of(self, node_id: str) -> list[str]:
        """Every link into or out of ``node_id`` (peers), or to etcd (etcd)."""
        return [
            name for name in self.link_names()
            if name.startswith(f"{node_id}>") or name.endswith(f">{node_id}")
        ]  # fmt: skip

    def _config_text(self, node: DrillNode) -> str:
        s = self.settings
        if s.backend == "peers":
            members = [
                f"{other.node_id}=127.0.0.1:{self._peer_port_seen_by(node, other)}"
                for other in self.nodes
            ]
            endpoints: list[str] = ["127.0.0.1:2379"]
        else:
            members = []
            assert self.etcd is not None
            own = int(node.node_id.rsplit("-", 1)[1]) - 1
            order = [self.etcd.members[own], *(m for i, m in enumerate(self.etcd.members)
                                               if i != own)]  # fmt: skip
            endpoints = [
                f"127.0.0.1:{self.links.get(f'{node.node_id}>{m.name}').port}" for m in order
            ]
        return "\n".join([
            "[node]", f'id = "{node.node_id}"', f'data_dir = "{node.data_dir}"',
            "[cycle]", f"period_ms = {s.period_ms}", "status_interval_s = 0.5",
            "[rt]", "priority = 50", f"budget_us = {int(s.period_ms * 800)}",
            "hold_dma_latency = false", 'control_law = "mxrc.drill.fenced_joint:FencedJoint"',
            f'shm_prefix = "drill{os.getpid()}"',
            "[nonrt]", "rt_silence_s = 1.5", "fault_misses = 50",
            "[ha]", f'backend = "{s.backend}"', f"lease_ttl_s = {s.ttl_s}",
            f"renew_interval_s = {s.renew_interval_s}", f"safety_margin_s = {s.margin_s}",
            f"request_timeout_s = {s.request_timeout_s}",
            f"auto_start = {'true' if s.auto_start else 'false'}",
            f"members = {orjson.dumps(members).decode()}",
            f"etcd_endpoints = {orjson.dumps(endpoints).decode()}",
            f'etcd_prefix = "/mxrc-drill-{self.seed}-{os.getpid()}"', 'cell = "drill"',
            "[api]", f"port = {node.api_port}",
            "[health]", "miss_rate_unhealthy = 0.05",
            "",
        ])  # fmt: skip

    def _peer_port_seen_by(self, node: DrillNode, other: DrillNode) -> int:
        """A node listens on its own port and reaches every other one through a link."""
        if other is node:
            return node.peer_port
        return self.links.get(f"{node.node_id}>{other.node_id}").port

    # ------------------------------------------------------------------ node processes

    async def start_node(self, node: DrillNode) -> None:
        """nonrt first (it creates the shared memory and opens the API), then rt — the
        order the units encode."""
        announce = node.data_dir / "nonrt.json"
        announce.unlink(missing_ok=True)
        node.nonrt = self._spawn(node, "nonrt", ["nonrt", "--config", str(node.config)])
        deadline = time.monotonic() + NONRT_START_S
        while not announce.exists():
            if node.nonrt.poll() is not None or time.monotonic() > deadline:
                raise MxrcError(
                    f"{node.node_id}: mxrc nonrt did not start: see {node.data_dir / 'nonrt.log'}"
                )
            await asyncio.sleep(0.05)
        node.token = (node.data_dir / "api-token").read_text().strip()
        env = {"MXRC_ACTUATOR": f"127.0.0.1:{self.actuator_port}", "MXRC_NODE_ID": node.node_id}
        node.rt = self._spawn(
            node, "rt", ["rt", "--node-id", node.node_id, "--config", str(node.config)], env
        )
        node.paused = False

    @staticmethod
    def _spawn(
        node: DrillNode, role: str, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (node.data_dir / f"{role}.log").open("ab")
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "mxrc", *args],
                stdout=log,
                stderr=log,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        finally:
            log.close()

    def kill(self, node: DrillNode) -> None:
        """kill -9 both processes of a node (a power cut of the controller, or a crash)."""
        for proc in (node.nonrt, node.rt):
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait(10)

    def pause(self, node: DrillNode) -> None:
        """SIGSTOP the non-RT process (a GC pause, a swap storm): the cycle runs on."""
        if node.nonrt is not None and node.nonrt.poll() is None:
            os.kill(node.nonrt.pid, signal.SIGSTOP)
            node.paused = True

    def resume(self, node: DrillNode) -> None:
        if node.nonrt is not None and node.nonrt.poll() is None:
            os.kill(node.nonrt.pid, signal.SIGCONT)
        node.paused = False

    # ------------------------------------------------------------------ API

    async def state(self, node: DrillNode) -> dict[str, Any] | None:
        """The node's ``/v1/state``, or None when it does not answer (down, paused)."""
        if node.paused or self._session is None:
            return None
        try:
            async with self._session.get(node.url + "/v1/state") as r:
                if r.status != 200:
                    return None
                view: dict[str, Any] = await r.json()
                return view
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    async def command(self, node: DrillNode, trigger: str) -> int:
        """POST a command as an operator would; the HTTP status (0: no answer)."""
        if node.paused or self._session is None:
            return 0
        try:
            async with self._session.post(
                f"{node.url}/v1/commands/{trigger}",
                headers={"Authorization": f"Bearer {node.token}"},
            ) as r:
                return r.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            return 0

    async def views(self) -> dict[str, dict[str, Any] | None]:
        states = await asyncio.gather(*(self.state(n) for n in self.nodes))
        return {n.node_id: s for n, s in zip(self.nodes, states, strict=True)}

    # ------------------------------------------------------------------ stop

    async def stop(self) -> None:
        """Clean stop of every node (nonrt first, as the units do), then the actuator,
        etcd and the links; SIGKILL for anything that does not stop in time."""
        for node in self.nodes:
            self.resume(node)
        for role in ("nonrt", "rt"):
            procs = [getattr(n, role) for n in self.nodes]
            for proc in procs:
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                if proc is not None:
                    await _reap(proc)
        if self.actuator is not None and self.actuator.poll() is None:
            self.actuator.send_signal(signal.SIGTERM)
            await _reap(self.actuator)
        if self.etcd is not None:
            self.etcd.stop()
        await self.links.close()
        if self._session is not None:
            await self._session.close()


async def _reap(proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STOP_WAIT_S
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
