"""The etcd backend against a real etcd on loopback (and its pure decision, without one)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from mxrc.ha.backend import Leadership
from mxrc.ha.etcd import EtcdBackend, KeySeen, etcd_ttl, outcome
from mxrc.ha.lease import LeaseTerms
from tests.ha.etcd_support import EtcdCluster, etcd

__all__ = ["etcd"]  # the fixture, imported for the tests below

TERMS = LeaseTerms(ttl_s=2.0, renew_interval_s=0.25, margin_s=0.2)
KEY = "/mxrc-test/cell-1/leader"


# --- pure --------------------------------------------------------------------------------


def test_outcome_of_a_round() -> None:
    won = outcome(
        "n1", won=True, seen=KeySeen("n1", 42, 7), my_token=0, started_ns=1_000, terms=TERMS
    )
    assert (won.leader, won.quorum, won.token, won.holder) == (True, True, 42, "n1")
    assert won.deadline_ns == 1_000 + 1_800_000_000  # start + TTL - margin, never later
    other = outcome(
        "n1", won=False, seen=KeySeen("n2", 50, 9), my_token=0, started_ns=0, terms=TERMS
    )
    assert not other.leader and other.quorum and other.holder == "n2" and other.token == 0
    free = outcome("n1", won=False, seen=KeySeen(None, 0, 0), my_token=0, started_ns=0, terms=TERMS)
    assert not free.leader and free.holder is None
    expired = outcome(
        "n1", won=False, seen=KeySeen("n1", 42, 7), my_token=42, started_ns=0, terms=TERMS
    )
    assert not expired.leader and "expired" in expired.detail


def test_etcd_ttl_rounds_up() -> None:
    assert [etcd_ttl(t) for t in (0.3, 1.0, 1.5, 2.0)] == [1, 1, 2, 2]


# --- against a real etcd ------------------------------------------------------------------


def backend(cluster: EtcdCluster, node: str, timeout_s: float = 0.2) -> EtcdBackend:
    return EtcdBackend(node, cluster.endpoints, KEY, TERMS, timeout_s)


@contextlib.asynccontextmanager
async def two_nodes(cluster: EtcdCluster) -> AsyncIterator[tuple[EtcdBackend, EtcdBackend]]:
    """node-a and node-b on the same etcd, both started, both closed afterwards."""
    a, b = backend(cluster, "node-a"), backend(cluster, "node-b")
    for x in (a, b):
        await x.start()
    try:
        yield a, b
    finally:
        for x in (a, b):
            await x.close()


async def until(
    check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, every_s: float = 0.05
) -> float:
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(every_s)
    return time.monotonic() - start


def test_one_leader_token_is_the_create_revision_and_follower_names_it(
    etcd: EtcdCluster,
) -> None:
    async def main() -> None:
        async with two_nodes(etcd) as (a, b):
            first = await a.renew()
            second = await b.renew()
            assert first.leader and first.quorum and first.token > 0
            assert not second.leader and second.quorum and second.holder == "node-a"
            before = time.monotonic_ns()
            again = await a.renew()  # renewal keeps the token and moves the deadline on
            after = time.monotonic_ns()
            assert again.leader and again.token == first.token
            # counted from the renewal's start: within the call, never after it
            assert before + 1_800_000_000 <= again.deadline_ns <= after + 1_800_000_000
            assert again.deadline_ns > first.deadline_ns

    asyncio.run(asyncio.wait_for(main(), 30))


def test_follower_takes_over_after_the_leader_stops_renewing_with_a_higher_token(
    etcd: EtcdCluster,
) -> None:
    async def main() -> None:
        async with two_nodes(etcd) as (a, b):
            lead = await a.renew()
            assert lead.leader
            silent_at = time.monotonic_ns()  # a stops renewing: crashed, frozen, cut off
            taken: Leadership | None = None

            async def b_leads() -> bool:
                nonlocal taken
                taken = await b.renew()
                return taken.leader

            await until(b_leads, 6.0, "node-b leads after node-a's lease ran out")
            assert taken is not None and taken.token > lead.token
            # etcd let b in only after a's own deadline had passed: never an overlap.
            assert time.monotonic_ns() > lead.deadline_ns
            assert time.monotonic_ns() - silent_at >= TERMS.ttl_s * 1e9 * 0.9

    asyncio.run(asyncio.wait_for(main(), 30))


def test_release_hands_over_at_once_and_the_watch_wakes_the_follower(etcd: EtcdCluster) -> None:
    async def main() -> None:
        async with two_nodes(etcd) as (a, b):
            lead = await a.renew()
            assert lead.leader and not (await b.renew()).leader
            await asyncio.sleep(0.3)  # the watch is established
            released_at = time.monotonic()
            await a.release()
            await b.wait_for_change(TERMS.ttl_s)  # woken by the deletion, not the timeout
            woke_after = time.monotonic() - released_at
            taken = await b.renew()
            assert taken.leader and taken.token > lead.token
            assert woke_after < 1.0, woke_after
            assert not (await a.renew()).leader  # a stays down until resume()
            a.resume()
            assert not (await a.renew()).leader  # b holds it now

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_restarted_node_never_inherits_its_old_token(etcd: EtcdCluster) -> None:
    async def main() -> None:
        old = backend(etcd, "node-a")
        await old.start()
        first = await old.renew()
        assert first.leader
        await old.close()  # a crash: the key stays until its lease runs out
        new = backend(etcd, "node-a")
        await new.start()
        try:
            seen = await new.renew()  # finds its old key: clears it, does not adopt it
            assert not seen.leader

            async def leads() -> bool:
                return (await new.renew()).leader

            await until(leads, 3.0, "the restarted node leads again")
            assert new.token > first.token
        finally:
            await new.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_frozen_etcd_keeps_the_old_deadline_then_drops_the_lead(etcd: EtcdCluster) -> None:
    async def main() -> None:
        a = backend(etcd, "node-a", timeout_s=0.15)
        await a.start()
        try:
            lead = await a.renew()
            assert lead.leader
            etcd.pause(0)  # SIGSTOP: connections stay open, nothing answers
            try:
                started = time.monotonic()
                held = await a.renew()
                assert time.monotonic() - started < 0.5  # bounded by the request timeout
                assert held.leader and held.deadline_ns == lead.deadline_ns  # never extended
                assert "failed" in held.detail
                while time.monotonic_ns() <= lead.deadline_ns:
                    await asyncio.sleep(0.1)
                gone = await a.renew()
                assert not gone.leader and not gone.quorum and gone.deadline_ns == 0
                assert "unreachable" in gone.detail
            finally:
                etcd.resume(0)

            async def leads() -> bool:
                return (await a.renew()).leader

            await until(leads, 8.0, "leadership again once etcd answers")
        finally:
            await a.close()

    asyncio.run(asyncio.wait_for(main(), 40))


@pytest.mark.parametrize("size", [3])
def test_three_member_cluster_survives_one_member_down(tmp_path: object, size: int) -> None:
    from pathlib import Path

    cluster = EtcdCluster(Path(str(tmp_path)) / "etcd3", size)
    cluster.start()

    async def main() -> None:
        a = EtcdBackend("node-a", cluster.endpoints, KEY, TERMS, 0.3)
        await a.start()
        try:
            assert (await a.renew()).leader
            cluster.pause(0)  # the member a talks to first goes silent

            async def leads() -> bool:
                return (await a.renew()).leader

            await until(leads, 6.0, "a renews through another member")
        finally:
            await a.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 40))
    finally:
        cluster.stop()
