"""The etcd backend: a leader key bound to an etcd lease, created only if absent.

The production choice, and the one that scales past a handful of nodes: etcd's Raft
already gives a linearizable store with a majority, so this backend only has to use it
the way etcd's own election recipe does.

* **Acquire**: grant a lease (TTL whole seconds, at least ``ha.lease_ttl_s``), then one
  transaction: *if the leader key's create revision is 0 (absent), put our node id
  bound to that lease*. The key's create revision is the **fencing token**: etcd's
  revision only grows, so every new leadership gets a higher token than any before.
* **Renew**: keep the lease alive, then one transaction that checks the key still has
  our value *and* our create revision. A lease that came back with TTL 0, or a key that
  changed, is leadership lost.
* **Quorum** is what a successful linearizable request proves: etcd answered only
  because a majority of its members agreed. A timeout or an unreachable member is
  "no quorum" (this node cannot tell a dead cluster from a partition, and need not).
* **Deadline**: renewal *start* + TTL − margin (:mod:`mxrc.ha.lease`). etcd starts its
  own countdown when the keep-alive *arrives*, later than our start, and counts the
  full (rounded-up) TTL, so our deadline always falls before anyone else can take the
  key.
* A **watch** on the key wakes the lease loop when the key is deleted or changes
  hands, so a follower takes over as soon as etcd lets it rather than a renew
  interval later.

The ``aetcd`` client is used (asyncio, maintained; ``etcd3`` from PyPI does not import
with protobuf 7, which the OTLP exporter needs). Every call is bounded by
``ha.request_timeout_s``; on a failure the next round tries the next endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aetcd

from mxrc.ha.backend import NO_LEADERSHIP, Leadership
from mxrc.ha.lease import LeaseTerms
from mxrc.ha.members import parse_address

log = logging.getLogger(__name__)

#: Pause before re-establishing a failed watch (it is an optimisation: renewals go on).
WATCH_RETRY_S = 0.5


@dataclass(frozen=True)
class KeySeen:
    """The leader key as one transaction saw it (``create_revision`` 0: absent)."""

    holder: str | None
    create_revision: int
    lease: int


def etcd_ttl(ttl_s: float) -> int:
    """etcd leases are whole seconds; rounding *up* keeps our deadline the earlier one."""
    return max(1, math.ceil(ttl_s))


def outcome(
    me: str, *, won: bool, seen: KeySeen, my_token: int, started_ns: int, terms: LeaseTerms
) -> Leadership:
    """What one successful round (etcd answered) means. Pure: the whole decision."""
    if won:
        return Leadership(
            True,
            True,
            seen.create_revision,
            terms.deadline_ns(started_ns),
            me,
            f"etcd: leader (leader key revision {seen.create_revision})",
        )
    if seen.create_revision == 0:
        return Leadership(False, True, 0, 0, None, "etcd: no leader (the key is free)")
    if seen.holder == me and seen.create_revision == my_token:
        # Our key, but the lease did not renew in time: treat as lost, never as ours.
        return Leadership(False, True, 0, 0, me, "etcd: our lease expired")
    return Leadership(
        False,
        True,
        0,
        0,
        seen.holder,
        f"etcd: follower; {seen.holder} leads (leader key revision {seen.create_revision})",
    )


class EtcdBackend:
    name = "etcd"

    def __init__(
        self,
        node_id: str,
        endpoints: Sequence[str],
        key: str,
        terms: LeaseTerms,
        request_timeout_s: float,
    ) -> None:
        self.node_id = node_id
        self.endpoints = [parse_address(e) for e in endpoints]
        self.key = key.encode()
        self.terms = terms
        self.timeout_s = request_timeout_s
        self.ttl = etcd_ttl(terms.ttl_s)
        self.token = 0  # the create revision of our key while we lead; 0 otherwise
        self.lease_id = 0
        self.lease_granted_ns = 0
        self.released = False
        self.last: Leadership = NO_LEADERSHIP
        self._endpoint = 0
        self._client: aetcd.Client | None = None
        self._changed = asyncio.Event()
        self._watch_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ connection

    def _connect(self) -> aetcd.Client:
        if self._client is None:
            host, port = self.endpoints[self._endpoint]
            self._client = aetcd.Client(host=host, port=port, timeout=self.timeout_s)
        return self._client

    async def _drop_connection(self) -> None:
        """After a failure: close this client; the next round tries the next endpoint."""
        client, self._client = self._client, None
        self._endpoint = (self._endpoint + 1) % len(self.endpoints)
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), self.timeout_s)

    @property
    def endpoint(self) -> str:
        host, port = self.endpoints[self._endpoint]
        return f"{host}:{port}"

    async def start(self) -> None:
        """Nothing to wait for: an unreachable etcd at start is a follower without
        quorum (reported by :meth:`renew`), not a reason to refuse to start."""
        self._watch_task = asyncio.create_task(self._watch(), name="etcd-watch")

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch_task
        await self._drop_connection()

    # ------------------------------------------------------------------ rounds

    async def renew(self) -> Leadership:
        started = time.monotonic_ns()
        if self.released:
            return Leadership(False, True, 0, 0, None, "etcd: stepped down")
        try:
            async with asyncio.timeout(self.timeout_s * 2):  # at most two calls per round
                self.last = await self._round(started)
                return self.last
        except Exception as exc:  # an outage of any kind: never raises (see HaBackend)
            endpoint = self.endpoint
            await self._drop_connection()
            return self._failed_round(endpoint, exc, time.monotonic_ns())

    def _failed_round(self, endpoint: str, exc: Exception, now_ns: int) -> Leadership:
        """A leader whose renewal failed keeps the deadline it already had (never a later
        one): one lost round is not a fault, and the cycle stops at that deadline by
        itself if no renewal succeeds before it."""
        what = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        last = self.last
        if self.token and last.leader and last.deadline_ns > now_ns:
            left = (last.deadline_ns - now_ns) / 1e9
            return Leadership(
                True,
                True,
                self.token,
                last.deadline_ns,
                self.node_id,
                f"etcd: renewal via {endpoint} failed ({what}); lease held {left:.2f} s more",
            )
        self.token = 0
        self.lease_id = 0
        self.last = Leadership(False, False, 0, 0, None, f"etcd {endpoint} unreachable: {what}")
        return self.last

    async def _round(self, started_ns: int) -> Leadership:
        client = self._connect()
        if self.token:
            alive = await self._keep_alive(client)
            seen, ours = await self._check(client)
            won = alive and ours
            token = self.token
            if not won:
                self.token = 0
                self.lease_id = 0
            return outcome(
                self.node_id,
                won=won,
                seen=seen,
                my_token=token,
                started_ns=started_ns,
                terms=self.terms,
            )
        seen, won = await self._try_acquire(client, started_ns)
        if won:
            self.token = seen.create_revision
        elif seen.holder == self.node_id:
            await self._clear_stale_key(client, seen)
        return outcome(
            self.node_id,
            won=won,
            seen=seen,
            my_token=self.token,
            started_ns=started_ns,
            terms=self.terms,
        )

    async def _keep_alive(self, client: aetcd.Client) -> bool:
        reply = await client.refresh_lease(self.lease_id)
        return reply is not None and int(reply.TTL) > 0

    async def _check(self, client: aetcd.Client) -> tuple[KeySeen, bool]:
        tx = client.transactions
        ours, responses = await client.transaction(
            compare=[
                tx.value(self.key) == self.node_id.encode(),
                tx.create(self.key) == self.token,
            ],
            success=[tx.get(self.key)],
            failure=[tx.get(self.key)],
        )
        return _seen(responses[0]), bool(ours)

    async def _try_acquire(self, client: aetcd.Client, now_ns: int) -> tuple[KeySeen, bool]:
        """A follower's lease is nobody's until the put succeeds; it is granted afresh
        once it may have run out (half a TTL), so the put never names an expired one."""
        if not self.lease_id or now_ns - self.lease_granted_ns > self.ttl * 500_000_000:
            lease = await client.lease(self.ttl)
            self.lease_id, self.lease_granted_ns = int(lease.id), now_ns
        tx = client.transactions
        won, responses = await client.transaction(
            compare=[tx.create(self.key) == 0],
            success=[
                tx.put(self.key, self.node_id.encode(), lease=self.lease_id),
                tx.get(self.key),
            ],
            failure=[tx.get(self.key)],
        )
        return _seen(responses[-1]), bool(won)

    async def _clear_stale_key(self, client: aetcd.Client, seen: KeySeen) -> None:
        """The key names us but is not our current leadership (a previous life of this
        node, before a restart): delete exactly that key, so the next leadership, ours
        or another's, gets a new, higher token instead of inheriting the old one."""
        tx = client.transactions
        await client.transaction(
            compare=[tx.create(self.key) == seen.create_revision],
            success=[tx.delete(self.key)],
            failure=[],
        )
        self._changed.set()

    # ------------------------------------------------------------------ hand-off

    async def release(self) -> None:
        """Delete our key (only if it is still ours) and revoke the lease: a follower's
        watch fires and it takes over at once, without waiting out the TTL."""
        self.released = True
        token, lease_id, self.token, self.lease_id = self.token, self.lease_id, 0, 0
        if not token:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.timeout_s * 2):
                client = self._connect()
                tx = client.transactions
                await client.transaction(
                    compare=[tx.create(self.key) == token],
                    success=[tx.delete(self.key)],
                    failure=[],
                )
                await client.revoke_lease(lease_id)

    def resume(self) -> None:
        self.released = False

    # ------------------------------------------------------------------ watch

    async def wait_for_change(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        self._changed.clear()

    async def _watch(self) -> None:
        """Wake the lease loop on any change of the leader key. Best effort: while etcd
        is unreachable the loop simply renews on its interval."""
        while True:
            try:
                client = self._connect()
                watch = await asyncio.wait_for(client.watch(self.key), self.timeout_s * 4)
                async for _event in watch:
                    self._changed.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("etcd watch on %s ended: %s", self.endpoint, exc)
            await asyncio.sleep(WATCH_RETRY_S)


def _seen(kvs: Any) -> KeySeen:
    """A transaction's ``get`` result: a list of (value, meta) pairs, empty if absent."""
    if not kvs:
        return KeySeen(None, 0, 0)
    value, meta = kvs[0]
    return KeySeen(
        bytes(value).decode(errors="replace"), int(meta.create_revision), int(meta.lease)
    )
