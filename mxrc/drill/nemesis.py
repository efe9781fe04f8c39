"""The faults a drill injects. Each one is aimed at the current leader (or its side of
the cluster), returns how to heal it, and says whether the leader is cut off from the
quorum — then it must stop driving on its own, within the TTL, whatever it believes.

A clock step is not among them: leases and deadlines are CLOCK_MONOTONIC on every
node (a wall-clock step cannot move them), and CLOCK_MONOTONIC cannot be stepped for
one process; the event log's wall times would jump, which replay tolerates.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mxrc.drill.cluster import Cluster
from mxrc.drill.network import flap

Heal = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Nemesis:
    name: str
    help: str
    isolates_target: bool
    backends: frozenset[str]
    inject: Callable[[Cluster, str, random.Random], Awaitable[Heal]]


async def _isolate_leader(cluster: Cluster, leader: str, rng: random.Random) -> Heal:
    cluster.net.partition({leader})

    async def heal() -> None:
        cluster.net.heal()

    return heal


async def _split(cluster: Cluster, leader: str, rng: random.Random) -> Heal:
    """The leader plus some followers (still a minority) against the rest."""
    others = [n.node_id for n in cluster.nodes if n.node_id != leader]
    minority_size = (len(cluster.nodes) - 1) // 2  # 3 nodes: the leader alone; 5: two
    cluster.net.partition({leader, *rng.sample(others, minority_size - 1)})

    async def heal() -> None:
        cluster.net.heal()

    return heal


async def _kill_leader(cluster: Cluster, leader: str, rng: random.Random) -> Heal:
    node = cluster.node(leader)
    cluster.kill(node)

    async def heal() -> None:  # as systemd's Restart= would, a little later
        await cluster.start_node(node)

    return heal


async def _pause_leader(cluster: Cluster, leader: str, rng: random.Random) -> Heal:
    node = cluster.node(leader)
    cluster.pause(node)

    async def heal() -> None:
        cluster.resume(node)

    return heal


async def _flap(cluster: Cluster, leader: str, rng: random.Random) -> Heal:
    task = asyncio.create_task(
        flap(cluster.net, {leader}, 0.4, cluster.settings.ttl_s * 2, rng), name="flap"
    )

    async def heal() -> None:
        await task
        cluster.net.heal()

    return heal


async def _etcd_member_down(cluster: Cluster, leader: str, rng: random.Random) -> Heal:
    """The etcd member the leader talks to first stops answering (SIGSTOP): the leader
    must renew through another member, and no failover should be needed."""
    assert cluster.etcd is not None
    index = int(leader.rsplit("-", 1)[1]) - 1
    cluster.etcd.pause(index)

    async def heal() -> None:
        assert cluster.etcd is not None
        cluster.etcd.resume(index)

    return heal


BOTH = frozenset({"etcd", "peers"})
NEMESES: tuple[Nemesis, ...] = (
    Nemesis("isolate-leader", "cut every link of the leader (it keeps running, alone)", True,
            BOTH, _isolate_leader),
    Nemesis("split", "a minority containing the leader against the majority", True, BOTH,
            _split),
    Nemesis("kill-leader", "kill -9 the leader's nonrt and rt, restart them at heal", True,
            BOTH, _kill_leader),
    Nemesis("pause-leader", "SIGSTOP the leader's nonrt longer than the TTL, then SIGCONT",
            True, BOTH, _pause_leader),
    Nemesis("flap", "the leader's links go down and up every ~0.4 s for two TTLs", False,
            BOTH, _flap),
    Nemesis("etcd-member-down", "SIGSTOP the etcd member the leader uses first", False,
            frozenset({"etcd"}), _etcd_member_down),
)  # fmt: skip


def by_name(names: str, backend: str) -> list[Nemesis]:
    """``names``: comma-separated, or ``all`` (those that apply to the backend)."""
    known = {n.name: n for n in NEMESES}
    if names == "all":
        return [n for n in NEMESES if backend in n.backends]
    chosen = []
    for name in (part.strip() for part in names.split(",")):
        if name not in known:
            raise ValueError(f"unknown nemesis {name!r}; known: {', '.join(known)}")
        if backend not in known[name].backends:
            raise ValueError(f"nemesis {name!r} does not apply to the {backend} backend")
        chosen.append(known[name])
    return chosen
