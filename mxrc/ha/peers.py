"""The peers backend: the members elect a leader among themselves, no external store.

For a cell of a few controllers that must not depend on an etcd cluster. The decisions
(bully preference, votes, leases, terms) are in :mod:`mxrc.ha.peers_rules` and are
pure; this module carries them over the network and makes terms durable.

* **Wire**: one JSON object per line over TCP; one connection per request, closed after
  the reply, so a late answer can never be taken for the next one. Every message
  carries the sender's node id and term: a member's address may be a proxy, so who
  speaks is never read from the socket.
* **Rounds**: each :meth:`PeersBackend.renew` sends one request to every peer at once
  (``renew`` while leading, ``vote`` when standing, ``status`` otherwise) and waits at
  most ``ha.request_timeout_s``: a peer that accepts and never answers costs one
  timeout per round, never more.
* **Durability**: ``<data-dir>/ha/peers-term`` holds the highest term seen. A vote is
  answered, and a candidacy sent, only after its term is on disk (atomic replace and
  fsync, on a writer thread so the event loop never waits for the disk), so fencing
  tokens only grow across restarts. Grants are not kept: a restarted node sits out one
  TTL instead, until any grant it gave in its previous run has run out.
* **Missed majority**: a leader's round without a majority of acknowledgements reports
  ``leader=False`` and deadline 0 at once (see :class:`~mxrc.ha.peers_rules.PeerState`);
  the deadline is only ever extended by a round a majority acknowledged.
* Followers report token 0 and name the leader they know of in ``holder``, as the
  other backends do.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from mxrc.errors import MxrcError
from mxrc.fsutil import atomic_write
from mxrc.ha.backend import Leadership
from mxrc.ha.lease import LeaseTerms
from mxrc.ha.members import Member
from mxrc.ha.peers_rules import Grant, Header, Kind, Outcome, PeerState, Plan, Reply

TERM_FILE = "peers-term"

_T = TypeVar("_T")


# ---------------------------------------------------------------------- wire format


def _field(obj: dict[str, Any], key: str, kind: type[_T]) -> _T:
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{key!r} missing or not a {kind.__name__}")
    return value


def _object(line: bytes) -> dict[str, Any]:
    value = orjson.loads(line)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    if "error" in value:
        raise ValueError(f"refused: {value['error']}")
    return value


def _header(obj: dict[str, Any]) -> Header:
    return Header(
        _field(obj, "from", str),
        _field(obj, "term", int),
        _field(obj, "competing", bool),
        _field(obj, "reached", int),
    )


def _header_fields(header: Header) -> dict[str, Any]:
    return {
        "from": header.sender,
        "term": header.term,
        "competing": header.competing,
        "reached": header.reached,
    }


def encode_request(kind: Kind, header: Header) -> bytes:
    return orjson.dumps({"kind": kind.value, **_header_fields(header)}) + b"\n"


def decode_request(line: bytes) -> tuple[Kind, Header]:
    """ValueError names what is wrong (the reply says it to the sender)."""
    obj = _object(line)
    return Kind(_field(obj, "kind", str)), _header(obj)


def encode_reply(reply: Reply, now_ns: int) -> bytes:
    """Leases travel as time *remaining*: monotonic clocks of two machines share no
    origin, only a rate."""
    lease = reply.lease
    body: dict[str, Any] = {**_header_fields(reply.header), "ok": reply.ok, "reason": reply.reason}
    body["lease"] = (
        None
        if lease is None
        else {"holder": lease.holder, "term": lease.term, "remaining_ns": lease.expiry_ns - now_ns}
    )
    return orjson.dumps(body) + b"\n"


def decode_reply(line: bytes, now_ns: int) -> Reply:
    obj = _object(line)
    raw = obj.get("lease")
    lease = None
    if raw is not None:
        if not isinstance(raw, dict):
            raise ValueError("'lease' is not an object")
        lease = Grant(
            _field(raw, "holder", str),
            _field(raw, "term", int),
            now_ns + _field(raw, "remaining_ns", int),
        )
    return Reply(_header(obj), _field(obj, "ok", bool), _field(obj, "reason", str), lease)


def _describe(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    return str(exc.strerror or exc)


def load_term(path: Path) -> int:
    if not path.exists():
        return 0
    text = path.read_text(encoding="ascii", errors="replace").strip()
    if not text.isdigit():
        raise MxrcError(
            f"{path}: expected the highest peers term seen (a number), found {text[:40]!r}; "
            "restore it or remove the file only if no actuator remembers a higher token"
        )
    return int(text)


# ---------------------------------------------------------------------- backend


class PeersBackend:
    """:class:`~mxrc.ha.backend.HaBackend` over the configured members themselves."""

    name = "peers"

    def __init__(
        self,
        node_id: str,
        members: Sequence[Member],
        terms: LeaseTerms,
        directory: Path,
        request_timeout_s: float,
    ) -> None:
        self.node_id = node_id
        self.members = tuple(members)
        self.peers = tuple(m for m in self.members if m.node_id != node_id)
        self.terms = terms
        self.path = directory / TERM_FILE
        self.timeout_s = request_timeout_s
        self.state: PeerState | None = None
        self._durable = 0  # the term on disk; written only by the writer thread
        self._writer: ThreadPoolExecutor | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()
        self._closed = False

    async def start(self) -> None:
        me = next((m for m in self.members if m.node_id == self.node_id), None)
        if me is None:
            listed = ", ".join(m.node_id for m in self.members) or "none"
            raise MxrcError(
                f"peers backend: this node ({self.node_id!r}) is not in ha.members ({listed})"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            term = load_term(self.path)
        except OSError as exc:
            raise MxrcError(f"peers backend: cannot read {self.path}: {exc}") from None
        self._durable = term
        self.state = PeerState(
            self.node_id, [m.node_id for m in self.members], self.terms, term, time.monotonic_ns()
        )
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mxrc-peers-term")
        try:
            self._server = await asyncio.start_server(self._serve, me.host, me.port)
        except OSError as exc:
            self._writer.shutdown()
            self._writer = self.state = None
            raise MxrcError(
                f"peers backend: cannot listen on {me.address} ({self.node_id}'s entry in "
                f"ha.members): {exc.strerror or exc}"
            ) from None

    # ------------------------------------------------------------------ durability

    def _write_term(self, term: int) -> None:
        """On the writer thread, so writes are in order and never overlap."""
        if term > self._durable:
            atomic_write(self.path, f"{term}\n".encode())
            self._durable = term

    async def _persist(self, state: PeerState) -> None:
        """Return once the state's current term is on disk (OSError if it cannot be)."""
        if state.term > self._durable and self._writer is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._writer, self._write_term, state.term)

    async def _persist_or_say(self, state: PeerState, lead: Leadership) -> Leadership:
        """An adopted term that cannot be made durable does not stop this round (the
        votes we answer and the candidacies we send are made durable on their own)."""
        try:
            await self._persist(state)
        except OSError as exc:
            return dataclasses.replace(
                lead, detail=f"{lead.detail}; term {state.term} not durable: {exc}"
            )
        return lead

    # ------------------------------------------------------------------ rounds

    async def renew(self) -> Leadership:
        state = self.state
        if state is None or self._closed:
            return Leadership(False, False, 0, 0, None, "peers backend not running")
        self._changed.clear()
        started = time.monotonic_ns()
        plan = state.plan(started)
        header = dataclasses.replace(state.header(), term=plan.term)
        if plan.kind is Kind.VOTE:
            failed = await self._durable_candidacy(state, plan)
            if failed is not None:
                return failed
        request = encode_request(plan.kind, header)
        outcomes = await asyncio.gather(*(self._ask(m, request) for m in self.peers))
        lead = state.conclude(plan, outcomes, started, time.monotonic_ns())
        return await self._persist_or_say(state, lead)

    async def _durable_candidacy(self, state: PeerState, plan: Plan) -> Leadership | None:
        """Our own vote is on disk before anyone is asked for theirs."""
        try:
            await self._persist(state)
        except OSError as exc:
            why = f"cannot make term {plan.term} durable in {self.path}: {exc}"
        else:
            if state.term == plan.term:
                return None
            why = f"term {state.term} seen while standing for {plan.term}"
        state.abandon(plan, time.monotonic_ns())
        return Leadership(False, False, 0, 0, None, f"not standing: {why}")

    async def _ask(self, member: Member, request: bytes) -> Outcome:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                reader, writer = await asyncio.open_connection(member.host, member.port)
                writer.write(request)
                await writer.drain()
                line = await reader.readline()
            if not line:
                return Outcome(member.node_id, None, "closed without a reply")
            return Outcome(member.node_id, decode_reply(line, time.monotonic_ns()))
        except TimeoutError:
            return Outcome(member.node_id, None, "timeout")
        except OSError as exc:
            return Outcome(member.node_id, None, _describe(exc))
        except ValueError as exc:
            return Outcome(member.node_id, None, f"bad reply: {exc}")
        finally:
            if writer is not None:
                writer.close()

    # ------------------------------------------------------------------ serving

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            while not self._closed:
                async with asyncio.timeout(self.terms.ttl_s):  # idle or stuck: drop it
                    line = await reader.readline()
                if not line:
                    return
                answer, keep = await self._answer(line)
                async with asyncio.timeout(self.timeout_s):
                    writer.write(answer)
                    await writer.drain()
                if not keep:
                    return
        except (TimeoutError, OSError, ValueError):
            return  # the asking side counts it as a failed request
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)

    async def _answer(self, line: bytes) -> tuple[bytes, bool]:
        state = self.state
        if state is None:
            return orjson.dumps({"error": "not started"}) + b"\n", False
        try:
            kind, header = decode_request(line)
        except ValueError as exc:
            return orjson.dumps({"error": f"bad request: {exc}"}) + b"\n", False
        reply, wake = state.handle(kind, header, time.monotonic_ns())
        try:
            await self._persist(state)
        except OSError as exc:
            if kind is Kind.VOTE and reply.ok:  # a vote counts only once it is durable
                reply = dataclasses.replace(
                    reply, ok=False, reason=f"cannot make term {state.term} durable: {exc}"
                )
        if wake:
            self._changed.set()
        return encode_reply(reply, time.monotonic_ns()), True

    # ------------------------------------------------------------------ the rest

    async def release(self) -> None:
        """Step down and tell every voter to drop its grant for us, so a successor can
        win at once. The caller stops trusting the last deadline *before* this call
        (the controller holds outputs first): the grants behind it are gone after it."""
        state = self.state
        if state is None or self._closed:
            return
        request = encode_request(Kind.RELEASE, state.release())
        await asyncio.gather(*(self._ask(m, request) for m in self.peers))

    def resume(self) -> None:
        if self.state is not None:
            self.state.resume()

    async def wait_for_change(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._changed.wait()

    async def close(self) -> None:
        self._closed = True
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._writer is not None:
            self._writer.shutdown(wait=True)  # a term being written still reaches the disk
            self._writer = None
