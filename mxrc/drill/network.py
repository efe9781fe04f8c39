"""The network a drill's nodes share, and how a nemesis partitions it.

Two ways to build it, one interface (:class:`Network`):

* :class:`NamespaceNetwork` (root): every node in its own network namespace with a
  veth into one bridge, its own address, its own etcd member beside it. A partition is
  a neighbour entry pointing at a MAC address nobody has, set on both sides: packets
  to the other side leave and are lost, silently, exactly as on a cut cable (no
  refused connections, only timeouts). It needs nothing but iproute2: the kernels
  these drills run on may lack the traffic-control actions and netfilter modules. With
  etcd members inside the namespaces, a partition splits etcd itself too.
* :class:`ProxyNetwork` (anyone): everything on loopback, every path from one node to
  another node's service through a :class:`mxrc.drill.links.Link` proxy that can black
  hole its bytes. etcd members cannot be split from each other this way (their peer
  URLs are advertised cluster-wide), so a partitioned node loses every etcd member,
  its own included: etcd's quorum stays with the other side.

Addresses: the nodes' own services (admin API, peers port, etcd member) listen on
:meth:`Network.host_of`; :meth:`Network.reach` is the address one node uses for
another's port (the same address in namespaces, a proxy otherwise). Names are derived
from the drill's pid so that two drills never collide, and :meth:`Network.close`
removes everything it made.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
from collections.abc import Iterable
from typing import Final, Protocol

from mxrc.drill.links import Links
from mxrc.errors import MxrcError

BOGUS_MAC: Final = "02:00:00:00:00:01"  # locally administered; no interface has it


class Network(Protocol):
    kind: str
    name: str  # what its interfaces and namespaces are called (to find leftovers)

    async def start(self, nodes: list[str]) -> None: ...

    def host_of(self, node: str) -> str: ...

    async def reach(self, src: str, dst: str, port: int, service: str) -> tuple[str, int]: ...

    def prefix(self, node: str) -> tuple[str, ...]: ...

    @property
    def actuator_host(self) -> str: ...

    def partition(self, side: Iterable[str]) -> None: ...

    def heal(self) -> None: ...

    async def close(self) -> None: ...


async def flap(
    net: Network, side: set[str], period_s: float, duration_s: float, rng: random.Random
) -> None:
    """Partition and heal ``side`` in turns (a bad cable); always ends healed."""
    loop = asyncio.get_running_loop()
    end = loop.time() + duration_s
    try:
        while loop.time() < end:
            net.partition(side)
            await asyncio.sleep(period_s * rng.uniform(0.5, 1.5))
            net.heal()
            await asyncio.sleep(period_s * rng.uniform(0.5, 1.5))
    finally:
        net.heal()


class ProxyNetwork:
    kind = "proxies"
    name = ""

    def __init__(self) -> None:
        self.links = Links()
        self.nodes: list[str] = []

    async def start(self, nodes: list[str]) -> None:
        self.nodes = list(nodes)

    def host_of(self, node: str) -> str:
        return "127.0.0.1"

    async def reach(self, src: str, dst: str, port: int, service: str) -> tuple[str, int]:
        """A proxy per (node, service of a node); ``service`` is ``peers`` or ``etcd``."""
        name = f"{src}>{dst}/{service}"
        if name not in self.links:
            await self.links.add(name, ("127.0.0.1", port))
        return "127.0.0.1", self.links.get(name).port

    def prefix(self, node: str) -> tuple[str, ...]:
        return ()

    @property
    def actuator_host(self) -> str:
        return "127.0.0.1"

    def _crosses(self, name: str, side: set[str]) -> bool:
        path, _, service = name.partition("/")
        src, _, dst = path.partition(">")
        if service == "etcd":  # etcd's quorum stays with the other side: every member
            return src in side
        return (src in side) != (dst in side)

    def partition(self, side: Iterable[str]) -> None:
        chosen = set(side)
        self.links.cut(lambda link: self._crosses(link.name, chosen))

    def heal(self) -> None:
        self.links.heal_all()

    async def close(self) -> None:
        await self.links.close()


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise MxrcError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")


class NamespaceNetwork:
    kind = "namespaces"

    def __init__(self, tag: int | None = None) -> None:
        tag = os.getpid() if tag is None else tag
        self.tag = tag % 100000
        self.subnet = ""  # chosen at start, among the ones no interface uses
        self.bridge = self.name = f"mxd{self.tag}"
        self.nodes: list[str] = []
        self.addresses: dict[str, str] = {}
        self._cuts: set[tuple[str, str]] = set()
        self._made: list[str] = []  # namespaces, for close()

    @staticmethod
    def available() -> bool:
        """Root with iproute2: what building namespaces and veths needs."""
        return os.geteuid() == 0 and shutil.which("ip") is not None

    def _ns(self, node: str) -> str:
        return f"mxd{self.tag}-{node}"

    async def start(self, nodes: list[str]) -> None:
        self.nodes = list(nodes)
        await asyncio.to_thread(self._build)

    def _free_subnet(self) -> str:
        """A 10.213.N.0/24 that no address on this host is in: two drills sharing one
        subnet would each route the other's nodes into their own bridge."""
        used = subprocess.run(
            ["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=False
        ).stdout
        for step in range(250):
            candidate = f"10.213.{(self.tag + step) % 250 + 1}"
            if f" {candidate}." not in used:
                return candidate
        raise MxrcError("no free 10.213.N.0/24 subnet for the drill's bridge")

    def _build(self) -> None:
        self.subnet = self._free_subnet()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, node in enumerate(self.nodes, start=1):
            ns, host_end = self._ns(node), f"{self.bridge}v{i}"
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", host_end, "master", self.bridge, "up")
            address = f"{self.subnet}.{10 + i}"
            self.addresses[node] = address
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def host_of(self, node: str) -> str:
        return self.addresses[node]

    async def reach(self, src: str, dst: str, port: int, service: str) -> tuple[str, int]:
        return self.addresses[dst], port

    def prefix(self, node: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self._ns(node))

    @property
    def actuator_host(self) -> str:
        return f"{self.subnet}.1"

    def partition(self, side: Iterable[str]) -> None:
        chosen = set(side)
        for a in self.nodes:
            for b in self.nodes:
                if (a in chosen) != (b in chosen) and (a, b) not in self._cuts:
                    _ip("-n", self._ns(a), "neigh", "replace", self.addresses[b], "lladdr",
                        BOGUS_MAC, "nud", "permanent", "dev", "eth0")  # fmt: skip
                    self._cuts.add((a, b))

    def heal(self) -> None:
        for a, b in sorted(self._cuts):
            # the entry goes; ARP finds the real neighbour again on the next packet
            subprocess.run(
                ["ip", "-n", self._ns(a), "neigh", "del", self.addresses[b], "dev", "eth0"],
                capture_output=True,
                check=False,
            )
        self._cuts.clear()

    async def close(self) -> None:
        """After the processes in the namespaces were stopped: namespaces (their veths
        go with them), then the bridge."""
        for i, ns in enumerate(self._made, start=1):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
            # A namespace can outlive its name for a while (sockets still closing);
            # deleting our end of the veth now removes the pair either way.
            subprocess.run(
                ["ip", "link", "del", f"{self.bridge}v{i}"], capture_output=True, check=False
            )
        self._made.clear()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
