"""The peers backend with real sockets on 127.0.0.1: elections, failover, partitions.

Three real :class:`PeersBackend` instances share one event loop, each driven like the
controller drives its backend (``renew()``, then ``wait_for_change(renew interval)``).
Every report is kept, and each test ends by checking the two properties that matter
across all of them: no two members ever held overlapping leaderships (deadlines are
CLOCK_MONOTONIC, the same clock for every instance in this process), and tokens only
grow. Links are cut with in-test TCP proxies, never with mocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mxrc.drill.ports import free_ports
from mxrc.errors import MxrcError
from mxrc.ha.backend import Leadership
from mxrc.ha.lease import NS_PER_S, LeaseTerms
from mxrc.ha.members import Member
from mxrc.ha.peers import TERM_FILE, PeersBackend, decode_reply, encode_request
from mxrc.ha.peers_rules import Header, Kind, Reply

TERMS = LeaseTerms(ttl_s=1.0, renew_interval_s=0.25, margin_s=0.1)
TIMEOUT_S = 0.15
TTL_NS = round(TERMS.ttl_s * NS_PER_S)
HOST = "127.0.0.1"


def now_ns() -> int:
    return time.monotonic_ns()


async def ask(port: int, kind: Kind, sender: str, term: int, reached: int = 3) -> Reply:
    """One request by hand, as a member would send it."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(encode_request(kind, Header(sender, term, True, reached)))
        line = await asyncio.wait_for(reader.readline(), 1.0)
        return decode_reply(line, now_ns())
    finally:
        writer.close()


class Link:
    """A TCP proxy that one member uses to reach another; the test cuts it by refusing
    connections or by swallowing every byte (a black hole: accepted, never answered)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "pass"
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._accept, HOST, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self, how: str) -> None:
        self.mode = how
        if how == "refuse" and self._server is not None:
            self._server.close()
            self._server = None
        self._drop()

    async def heal(self) -> None:
        self.mode = "pass"
        self._drop()
        if self._server is None:
            await self.open()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._drop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _drop(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            if self.mode == "blackhole":
                while await reader.read(4096):
                    pass
                return
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
            self._writers.add(up_writer)
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
        except OSError:
            return
        finally:
            writer.close()
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        finally:
            dst.close()


@dataclass(frozen=True)
class Report:
    node: str
    called_ns: int
    returned_ns: int
    lead: Leadership


@dataclass
class Cluster:
    """Members node-1 … node-n; with ``proxied``, each member reaches each other one
    through its own :class:`Link`, keyed (from, to)."""

    root: Path
    size: int = 3
    proxied: bool = False
    ids: list[str] = field(init=False)
    ports: dict[str, int] = field(init=False)
    links: dict[tuple[str, str], Link] = field(default_factory=dict)
    backends: dict[str, PeersBackend] = field(default_factory=dict)
    drivers: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    reports: list[Report] = field(default_factory=list)
    released: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = [f"node-{i}" for i in range(1, self.size + 1)]
        self.ports = dict(zip(self.ids, free_ports(self.size, HOST), strict=True))

    def members(self, me: str) -> tuple[Member, ...]:
        def port(other: str) -> int:
            if other == me or not self.proxied:
                return self.ports[other]
            return self.links[me, other].port

        return tuple(Member(m, HOST, port(m)) for m in self.ids)

    async def start(self) -> None:
        if self.proxied:
            for a in self.ids:
                for b in self.ids:
                    if a != b:
                        self.links[a, b] = link = Link(self.ports[b])
                        await link.open()
        for node in self.ids:
            await self.start_node(node)

    async def start_node(self, node: str) -> PeersBackend:
        backend = PeersBackend(node, self.members(node), TERMS, self.root / node / "ha", TIMEOUT_S)
        await backend.start()
        self.backends[node] = backend
        self.drivers[node] = asyncio.create_task(self._drive(node, backend))
        return backend

    async def _drive(self, node: str, backend: PeersBackend) -> None:
        while True:
            called = now_ns()
            lead = await backend.renew()
            self.reports.append(Report(node, called, now_ns(), lead))
            await backend.wait_for_change(TERMS.renew_interval_s)

    async def crash(self, node: str) -> None:
        """Stop a member without a release: its grants stay with the voters."""
        task = self.drivers.pop(node)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self.backends.pop(node).close()

    async def release(self, node: str) -> None:
        self.released.setdefault(node, []).append(now_ns())
        await self.backends[node].release()

    async def close(self) -> None:
        for node in list(self.drivers):
            await self.crash(node)
        for link in self.links.values():
            await link.close()

    # ------------------------------------------------------------------ observing

    def latest(self, node: str) -> Report:
        return [r for r in self.reports if r.node == node][-1]

    def leads(self, after_ns: int = 0) -> list[Report]:
        return [r for r in self.reports if r.lead.leader and r.called_ns > after_ns]

    async def until(self, what: Callable[[], object], timeout_s: float, why: str) -> None:
        limit = now_ns() + round(timeout_s * NS_PER_S)
        while not what():
            if now_ns() > limit:
                pytest.fail(f"not within {timeout_s} s: {why}")
            await asyncio.sleep(0.01)

    async def first_leader(
        self, after_ns: int, timeout_s: float, other_than: str | None = None
    ) -> Report:
        def found() -> list[Report]:
            return [r for r in self.leads(after_ns) if r.node != other_than]

        await self.until(found, timeout_s, "a leader")
        return found()[0]

    def check_invariants(self) -> None:
        """Never two members leading at once; tokens only grow, one member per token.

        A leadership counts from when ``renew()`` returned it until its deadline, cut
        short only by an explicit ``release()`` (the caller stops trusting it first).
        """
        windows: list[tuple[str, int, int, int]] = []
        for r in self.leads():
            cut = [t for t in self.released.get(r.node, []) if t >= r.returned_ns]
            end = min([r.lead.deadline_ns, *cut])
            windows.append((r.node, r.returned_ns, end, r.lead.token))
            assert r.lead.quorum and r.lead.holder == r.node and r.lead.deadline_ns > r.called_ns
        for i, (a, a_start, a_end, a_token) in enumerate(windows):
            for b, b_start, b_end, b_token in windows[i + 1 :]:
                if a != b:
                    assert not (a_start < b_end and b_start < a_end), (
                        f"{a} (token {a_token}) and {b} (token {b_token}) overlap"
                    )
        by_token: dict[int, str] = {}
        last = 0
        for r in sorted(self.leads(), key=lambda r: r.returned_ns):
            assert r.lead.token >= last, f"token went back from {last} to {r.lead.token}"
            last = r.lead.token
            assert by_token.setdefault(r.lead.token, r.node) == r.node, "two leaders, one token"


def run(
    tmp_path: Path, scenario: Callable[[Cluster], Awaitable[None]], proxied: bool = False
) -> None:
    async def main() -> None:
        cluster = Cluster(tmp_path, proxied=proxied)
        try:
            await cluster.start()
            await scenario(cluster)
            cluster.check_invariants()
        finally:
            await cluster.close()

    asyncio.run(asyncio.wait_for(main(), 25))


async def settle_on(cluster: Cluster, node: str, after_ns: int, timeout_s: float) -> Report:
    """Wait for ``node`` to lead, then for every other member to follow it with quorum."""
    first = await cluster.first_leader(after_ns, timeout_s)
    assert first.node == node, first.lead.detail

    def followed() -> bool:
        latest = [cluster.latest(n) for n in cluster.backends]
        return all(
            r.lead.quorum and r.lead.holder == node and r.lead.leader == (r.node == node)
            for r in latest
        )

    await cluster.until(followed, 2.0, f"everyone following {node}")
    return first


# ---------------------------------------------------------------------- scenarios


def test_the_highest_id_leads_and_a_successor_takes_over_after_the_ttl(tmp_path: Path) -> None:
    async def scenario(cluster: Cluster) -> None:
        began = now_ns()
        first = await settle_on(cluster, "node-3", began, TERMS.ttl_s + 1.5)
        assert first.lead.token == 1
        assert first.returned_ns - began >= TTL_NS  # nobody stands while quiet
        await asyncio.sleep(3 * TERMS.renew_interval_s)
        assert {r.node for r in cluster.leads()} == {"node-3"}
        token = cluster.latest("node-3").lead.token
        assert token == first.lead.token  # renewals keep the term

        await cluster.crash("node-3")
        crashed = now_ns()
        # node-1 still holds node-3's lease and votes for nobody else meanwhile.
        sent = now_ns()
        status = await ask(cluster.ports["node-1"], Kind.STATUS, "node-2", 0)
        assert status.lease is not None and status.lease.holder == "node-3"
        lease_ends = sent + (status.lease.expiry_ns - now_ns())
        refused = await ask(cluster.ports["node-1"], Kind.VOTE, "node-2", status.header.term + 1)
        assert not refused.ok and "holds a lease for node-3" in refused.reason

        budget = TERMS.ttl_s + TERMS.renew_interval_s + 0.5
        successor = await cluster.first_leader(crashed, budget)
        assert successor.node == "node-2"
        assert successor.lead.token > token
        assert successor.returned_ns >= lease_ends  # node-1's vote came after its lease

    run(tmp_path, scenario)


def test_a_restarted_member_keeps_its_term_and_sits_out_one_ttl(tmp_path: Path) -> None:
    async def scenario(cluster: Cluster) -> None:
        await settle_on(cluster, "node-3", 0, TERMS.ttl_s + 1.5)
        token = cluster.latest("node-3").lead.token
        await cluster.crash("node-3")
        on_disk = int((tmp_path / "node-3" / "ha" / TERM_FILE).read_text())
        assert on_disk >= token

        restarted = now_ns()
        await cluster.start_node("node-3")
        status = await ask(cluster.ports["node-3"], Kind.STATUS, "node-1", 0)
        assert status.header.term >= token  # the term did not go back
        quiet = await ask(cluster.ports["node-3"], Kind.VOTE, "node-1", status.header.term + 1)
        assert not quiet.ok and "quiet after start-up" in quiet.reason

        back = await cluster.first_leader(restarted, TERMS.ttl_s + 1.5)
        assert back.node == "node-3"  # node-2 deferred to it, node-1 too
        assert back.lead.token > token
        assert back.called_ns >= restarted + TTL_NS
        early = [r for r in cluster.reports if r.node == "node-3" and r.called_ns > restarted]
        early = [r for r in early if r.called_ns < restarted + TTL_NS]
        assert early and all("quiet after start-up" in r.lead.detail for r in early)

    run(tmp_path, scenario)


def test_release_hands_over_well_before_the_ttl_and_stays_down(tmp_path: Path) -> None:
    async def scenario(cluster: Cluster) -> None:
        await settle_on(cluster, "node-3", 0, TERMS.ttl_s + 1.5)
        token = cluster.latest("node-3").lead.token
        released = now_ns()
        await cluster.release("node-3")
        successor = await cluster.first_leader(released, 0.5 * TERMS.ttl_s)
        assert successor.node == "node-2"
        assert successor.lead.token > token

        await asyncio.sleep(TERMS.ttl_s)
        assert [r.node for r in cluster.leads(released)] == ["node-2"] * len(
            cluster.leads(released)
        )
        assert "stepped down" in cluster.latest("node-3").lead.detail

        cluster.backends["node-3"].resume()
        resumed = now_ns()
        await asyncio.sleep(3 * TERMS.renew_interval_s)
        assert {r.node for r in cluster.leads(resumed)} == {"node-2"}  # no pre-emption
        follower = cluster.latest("node-3").lead
        assert follower.holder == "node-2" and follower.quorum and not follower.leader

    run(tmp_path, scenario)


def test_a_cut_off_leader_stops_leading_and_does_not_depose_its_successor(
    tmp_path: Path,
) -> None:
    async def scenario(cluster: Cluster) -> None:
        await settle_on(cluster, "node-3", 0, TERMS.ttl_s + 1.5)
        token = cluster.latest("node-3").lead.token
        for other in ("node-1", "node-2"):
            await cluster.links["node-3", other].cut("blackhole")  # accepts, never answers
            await cluster.links[other, "node-3"].cut("refuse")
        cut = now_ns()

        budget = TERMS.ttl_s + TERMS.renew_interval_s + TIMEOUT_S + 0.5
        successor = await cluster.first_leader(cut, budget, other_than="node-3")
        assert successor.node == "node-2" and successor.lead.token > token
        held = [r for r in cluster.leads(cut) if r.node == "node-3"]
        # node-3 may go on reporting the lease a majority granted, never a later one
        assert len({r.lead.deadline_ns for r in held}) <= 1
        assert all("lease held" in r.lead.detail for r in held)
        old_deadline = held[0].lead.deadline_ns if held else 0

        def alone() -> list[Report]:
            return [
                r for r in cluster.reports
                if r.node == "node-3" and r.called_ns > max(cut, old_deadline)
            ]  # fmt: skip

        # Rounds past the old deadline too, where a node cut off must not stand.
        await cluster.until(lambda: len(alone()) >= 5, 3.0, "five rounds of node-3 alone")
        assert "term given up" in " ".join(r.lead.detail for r in alone())
        alone_reports = alone()
        assert not any(r.lead.leader for r in alone_reports)
        assert not any(r.lead.quorum for r in alone_reports)
        assert cluster.backends["node-3"].state is not None
        assert cluster.backends["node-3"].state.term == token  # it never stood alone
        # Two black-holed peers cost one request timeout per round, not one each: asked
        # one after the other, a round would take two (0.30 s; it takes about 0.152).
        slowest = max(r.returned_ns - r.called_ns for r in alone_reports)
        assert TIMEOUT_S * NS_PER_S <= slowest < 2 * TIMEOUT_S * NS_PER_S

        for link in cluster.links.values():
            await link.heal()
        healed = now_ns()
        await cluster.until(
            lambda: (
                cluster.latest("node-3").called_ns > healed
                and cluster.latest("node-3").lead.holder == "node-2"
            ),
            1.0,
            "node-3 following node-2",
        )
        await asyncio.sleep(4 * TERMS.renew_interval_s)
        # after the cut: node-3 only under its old, unextended deadline, then node-2 alone
        assert {(r.node, r.lead.token) for r in cluster.leads(cut)} <= {
            ("node-2", successor.lead.token),
            ("node-3", token),
        }
        assert {r.lead.deadline_ns for r in cluster.leads(cut) if r.node == "node-3"} <= {
            old_deadline
        }
        assert cluster.latest("node-2").lead.leader
        returned = cluster.latest("node-3").lead
        assert returned.quorum and returned.holder == "node-2" and not returned.leader

    run(tmp_path, scenario, proxied=True)


# ---------------------------------------------------------------------- edges


def test_a_single_member_leads_alone_and_refuses_garbage(tmp_path: Path) -> None:
    async def main() -> None:
        (port,) = free_ports(1)
        backend = PeersBackend("solo", (Member("solo", HOST, port),), TERMS, tmp_path, TIMEOUT_S)
        await backend.start()
        try:
            began = now_ns()
            lead = await backend.renew()
            assert not lead.leader and lead.quorum and "quiet" in lead.detail
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b'{"kind": "vote"}\n')
            assert b"bad request" in await asyncio.wait_for(reader.readline(), 1.0)
            writer.close()
            stranger = await ask(port, Kind.VOTE, "node-9", 99)
            assert not stranger.ok and "not another configured member" in stranger.reason
            await asyncio.sleep(TERMS.ttl_s + 0.01 - (now_ns() - began) / NS_PER_S)
            lead = await backend.renew()
            assert (
                lead.leader and lead.token == 1 and lead.detail == "leader of term 1 with 1/1 votes"
            )
        finally:
            await backend.close()
        assert (tmp_path / TERM_FILE).read_text() == "1\n"

    asyncio.run(asyncio.wait_for(main(), 10))


def test_wait_for_change_returns_early_for_a_vote_request_only(tmp_path: Path) -> None:
    async def main() -> None:
        port, absent = free_ports(2)
        members = (Member("node-1", HOST, port), Member("node-2", HOST, absent))
        backend = PeersBackend("node-1", members, TERMS, tmp_path, TIMEOUT_S)
        await backend.start()
        try:
            await backend.renew()  # clears the news, as every round does
            waiting = asyncio.create_task(backend.wait_for_change(0.3))
            await ask(port, Kind.STATUS, "node-2", 0)  # nothing worth a round
            await asyncio.sleep(0.1)
            assert not waiting.done()
            await waiting
            await backend.renew()
            began = now_ns()
            waiting = asyncio.create_task(backend.wait_for_change(5.0))
            await ask(port, Kind.VOTE, "node-2", 1)
            await asyncio.wait_for(waiting, 1.0)
            assert now_ns() - began < 0.5 * NS_PER_S
        finally:
            await backend.close()

    asyncio.run(asyncio.wait_for(main(), 10))


def test_start_names_the_address_it_cannot_listen_on(tmp_path: Path) -> None:
    async def main() -> None:
        with socket.socket() as taken:
            taken.bind((HOST, 0))
            taken.listen()
            port = taken.getsockname()[1]
            members = (Member("node-1", HOST, port), Member("node-2", HOST, 1))
            backend = PeersBackend("node-1", members, TERMS, tmp_path, TIMEOUT_S)
            with pytest.raises(MxrcError, match=f"cannot listen on {HOST}:{port}"):
                await backend.start()
            await backend.close()
        with pytest.raises(MxrcError, match=r"\('node-7'\) is not in ha.members"):
            await PeersBackend("node-7", members, TERMS, tmp_path, TIMEOUT_S).start()

    asyncio.run(asyncio.wait_for(main(), 10))
