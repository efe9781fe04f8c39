"""A local cluster for failover drills: N controller nodes as real processes, their
coordination service, the fenced actuator, and the network between them.

Each node is the pair systemd would run — ``mxrc nonrt`` and ``mxrc rt`` — with its own
data directory under the drill's output, its own admin API and its own shared memory,
placed "on" its host by :class:`mxrc.drill.network.Network` (a network namespace of
its own when run as root, loopback behind link proxies otherwise). For the etcd
backend each node has an etcd member beside it.

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

from mxrc.drill.etcd import EtcdCluster
from mxrc.drill.network import NamespaceNetwork, Network, ProxyNetwork
from mxrc.drill.ports import free_ports
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
    network: str = "auto"  # namespaces (root), proxies, or auto: namespaces when root


@dataclass
class DrillNode:
    node_id: str
    data_dir: Path
    config: Path
    api_port: int
    peer_port: int
    host: str = "127.0.0.1"
    prefix: tuple[str, ...] = ()
    nonrt: subprocess.Popen[bytes] | None = None
    rt: subprocess.Popen[bytes] | None = None
    token: str = ""
    paused: bool = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    def pids(self) -> list[int]:
        return [p.pid for p in (self.nonrt, self.rt) if p is not None and p.poll() is None]


@dataclass
class Cluster:
    out: Path
    settings: DrillSettings
    seed: int = 0
    nodes: list[DrillNode] = field(default_factory=list)
    net: Network = field(default_factory=ProxyNetwork)
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
        self.net = choose_network(self.settings.network)
        size = self.settings.size
        ids = [f"node-{i + 1}" for i in range(size)]
        await self.net.start(ids)
        self._start_actuator()
        ports = free_ports(2 * size)
        for i, node_id in enumerate(ids):
            directory = self.out / node_id
            directory.mkdir(exist_ok=True)
            self.nodes.append(
                DrillNode(node_id, directory, directory / "mxrc.toml", ports[2 * i],
                          ports[2 * i + 1], self.net.host_of(node_id), self.net.prefix(node_id))
            )  # fmt: skip
        if self.settings.backend == "etcd":
            self.etcd = EtcdCluster(
                self.out / "etcd", size, [n.host for n in self.nodes],
                [n.prefix for n in self.nodes],
            )  # fmt: skip
            await asyncio.to_thread(self.etcd.start)
        for node in self.nodes:
            node.config.write_text(await self._config_text(node))
        for node in self.nodes:
            await self.start_node(node)

    def _start_actuator(self) -> None:
        announce = self.out / "actuator.json"
        announce.unlink(missing_ok=True)
        log = (self.out / "actuator.log").open("ab")
        self.actuator = subprocess.Popen(
            [sys.executable, "-m", "mxrc", "actuator", "--listen",
             f"{self.net.actuator_host}:0", "--record", str(self.actuator_record),
             "--announce", str(announce)],
            stdout=log, stderr=log,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + ACTUATOR_START_S
        while not announce.exists():
            if self.actuator.poll() is not None or time.monotonic() > deadline:
                raise MxrcError(f"the actuator did not start: see {self.out / 'actuator.log'}")
            time.sleep(0.05)
        self.actuator_port = int(orjson.loads(announce.read_bytes())["port"])

    async def _config_text(self, node: DrillNode) -> str:
        s = self.settings
        members: list[str] = []
        endpoints: list[str] = ["127.0.0.1:2379"]
        if s.backend == "peers":
            for other in self.nodes:
                if other is node:
                    members.append(f"{node.node_id}={node.host}:{node.peer_port}")
                else:
                    host, port = await self.net.reach(
                        node.node_id, other.node_id, other.peer_port, "peers"
                    )
                    members.append(f"{other.node_id}={host}:{port}")
        else:
            assert self.etcd is not None
            own = self.nodes.index(node)
            order = [own, *(i for i in range(len(self.nodes)) if i != own)]
            endpoints = []
            for i in order:
                host, port = await self.net.reach(
                    node.node_id, self.nodes[i].node_id, self.etcd.members[i].client_port,
                    "etcd",
                )  # fmt: skip
                endpoints.append(f"{host}:{port}")
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
            "[api]", f'host = "{node.host}"', f"port = {node.api_port}",
            "[health]", "miss_rate_unhealthy = 0.05",
            "",
        ])  # fmt: skip

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
        env = {
            "MXRC_ACTUATOR": f"{self.net.actuator_host}:{self.actuator_port}",
            "MXRC_NODE_ID": node.node_id,
        }
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
                [*node.prefix, sys.executable, "-m", "mxrc", *args],
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
        try:
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
        finally:
            try:
                if self.etcd is not None:
                    self.etcd.stop()
            finally:
                await self.net.close()  # whatever failed before: no namespace stays behind
                if self._session is not None:
                    await self._session.close()


def choose_network(kind: str) -> Network:
    """``namespaces`` (needs root and iproute2), ``proxies``, or ``auto``: namespaces
    where they can be made, proxies otherwise."""
    if kind == "proxies" or (kind == "auto" and not NamespaceNetwork.available()):
        return ProxyNetwork()
    if not NamespaceNetwork.available():
        raise MxrcError("network namespaces need root and iproute2 ('ip'); use proxies")
    return NamespaceNetwork()


async def _reap(proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STOP_WAIT_S
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
