"""Network links between drill processes on one machine, as loopback TCP proxies.

A failover drill runs several controller nodes as processes on one host, where every
packet goes over loopback and nothing can fail in between. To test what the HA layer
does when the network misbehaves, each directed link (the connections node A opens to
node B) goes through a :class:`Link`: a proxy on ``127.0.0.1`` that the drill runner
can switch, without root and without touching the nodes, between

* ``up`` — bytes pass both ways, flow control included: a slow reader slows the writer
  down through the proxy, as it would through a real network;
* ``cut`` — a partition (a pulled cable, a dead switch, a firewall that drops
  silently): nothing passes and nothing tells either end. Connections stay open, new
  ones are accepted and go nowhere, so clients find out the only way real ones do, by
  their own timeouts;
* ``dropped`` — the peer's host is reachable but its service is gone (a crashed
  process, a ``REJECT`` rule): every connection is reset and new connects are refused,
  so clients find out at once.

A link carries whole TCP connections, so a cut stops both directions of the
connections it carries: a one-way partition of a TCP connection is no use to either
end (its acknowledgements need the other way). One-way partitions between two nodes
are modelled with two links, A→B and B→A, cut independently.

Black hole rather than stall. A cut link keeps reading from both ends and throws the
bytes away. A real partition would instead let the sender's socket buffer fill until
its writes block; here writes keep succeeding. The black hole was chosen because it
keeps the proxy's behaviour the same whatever the kernel buffer sizes are and never
holds a node's writer hostage to the proxy; the price is that a drill cannot use a cut
to test a node's own bounding of its send queue. Bytes the proxy had already handed
to the kernel before a cut (at most a socket buffer and one write buffer) still
arrive: they were "on the wire" when the cable was pulled.

Healing. New connections work at once. An existing connection whose bytes were
swallowed by a cut (either way, an end-of-stream included, or an end that closed
during the cut) can no longer be a valid TCP stream, so heal resets both of its ends:
a real connection that lost data in a partition is either retransmitted (which a
black hole cannot do) or times out, and the peer answers the next segment with a
reset. A connection that carried nothing during the cut is intact and simply carries
on, as an idle TCP connection survives a short partition; one accepted during the cut
is connected through at heal, as a client's retransmitted SYN gets through.

All buffers are bounded (the transport write-buffer limits plus one read per
direction), and :meth:`Link.close` leaves no socket and no task behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = ["LISTEN_HOST", "Link", "LinkStats", "Links", "Mode", "Selector"]

log = logging.getLogger(__name__)

#: Links only ever listen on loopback: they stand for a network between local processes.
LISTEN_HOST: Final = "127.0.0.1"
#: Write-buffer high-water mark per connection end; above it the opposite end stops
#: being read, so a slow reader pushes back on the writer instead of growing a buffer.
HIGH_WATER: Final = 64 * 1024
#: How long the proxy tries to reach the target for one accepted connection.
CONNECT_TIMEOUT_S: Final = 5.0
#: Listen backlog: connections the kernel completes before the proxy accepts them.
BACKLOG: Final = 128
#: Connections accepted per readiness callback, so one busy link cannot starve others.
ACCEPT_BATCH: Final = 32
#: Pause before accepting again after the process ran out of descriptors.
ACCEPT_RETRY_S: Final = 0.1
#: Prefix of every task name this module creates (drill runners and tests look for
#: leftovers by it).
TASK_PREFIX: Final = "mxrc.drill.links"

Mode = Literal["up", "cut", "dropped"]
#: Which links a group operation applies to: one name, several names, or a predicate.
Selector = str | Iterable[str] | Callable[["Link"], bool]

_LINGER_RST: Final = struct.pack("ii", 1, 0)


@dataclass(slots=True)
class LinkStats:
    """What went through a link, and what it did, for the drill's report."""

    accepted: int = 0
    #: Accepted connections the proxy could not connect through to the target.
    connect_failures: int = 0
    #: Connections the link reset itself: by drop, by heal after a loss, by close, or
    #: because the target could not be reached.
    resets: int = 0
    bytes_to_target: int = 0
    bytes_to_client: int = 0
    discarded_to_target: int = 0
    discarded_to_client: int = 0
    cuts: int = 0
    drops: int = 0
    heals: int = 0

    @property
    def forwarded(self) -> int:
        return self.bytes_to_target + self.bytes_to_client

    @property
    def discarded(self) -> int:
        return self.discarded_to_target + self.discarded_to_client


def _reset_socket(sock: socket.socket) -> None:
    """Close so the peer gets a reset, as from a host that forgot the connection."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    sock.close()


def _reset_transport(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    if isinstance(transport, asyncio.Transport):
        transport.abort()
    else:
        transport.close()


class _End(asyncio.Protocol):
    """One socket of a proxied connection: the client's or the target's."""

    def __init__(self, conn: _Conn, *, is_client: bool) -> None:
        self.conn = conn
        self.is_client = is_client
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.eof = False  # the far side sent end-of-stream; nothing more to read
        self.writing_paused = False  # our write buffer is above the high-water mark

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.open = True
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self.conn.made(self)

    def data_received(self, data: bytes) -> None:
        self.conn.received(self, data)

    def eof_received(self) -> bool:
        self.eof = True
        self.conn.eof_received(self)
        return True  # keep the other direction open: TCP half-close

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.conn.apply_flow()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.conn.apply_flow()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.conn.lost(self, exc)

    def set_reading(self, on: bool) -> None:
        if not self.open or self.eof or self.transport is None:
            return
        if on:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    def reset(self) -> None:
        if self.open and self.transport is not None:
            _reset_transport(self.transport)

    def close(self) -> None:
        if self.open and self.transport is not None:
            self.transport.close()


class _Conn:
    """One client connection through a link and, once connected, its target side."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.client = _End(self, is_client=True)
        self.upstream: _End | None = None
        self.task: asyncio.Task[None] | None = None
        #: Bytes, an end-of-stream or a close were swallowed by a cut: not a valid
        #: stream any more.
        self.damaged = False
        self.closed = False
        self.finished = False

    # --- lifecycle ---------------------------------------------------------------

    def adopt(self, sock: socket.socket) -> None:
        self._spawn(self._adopt(sock), "accept")

    def connect(self) -> None:
        self._spawn(self._connect(), "connect")

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.get_running_loop().create_task(
            coro, name=f"{TASK_PREFIX}:{self.link.name}:{what}"
        )
        self.task = task
        self.link._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.link._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("link %s: connection task failed", self.link.name, exc_info=exc)
            self.reset()
        self._maybe_finish()

    async def _adopt(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(lambda: self.client, sock)
        except BaseException:
            _reset_socket(sock)
            raise
        if self.link.mode == "up" and not self.closed:
            await self._connect()

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        upstream = _End(self, is_client=False)
        host, port = self.link.target
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await loop.create_connection(lambda: upstream, host, port)
        except (OSError, TimeoutError):
            # The target is down: the client, whose connect already succeeded, gets
            # the nearest thing to a refusal.
            self.link.stats.connect_failures += 1
            self.reset()

    def made(self, end: _End) -> None:
        if self.closed or self.link.mode == "dropped":
            end.reset()
            return
        if not end.is_client:
            self.upstream = end
        self.apply_flow()

    def _maybe_finish(self) -> None:
        if self.finished or (self.task is not None and not self.task.done()):
            return
        if self.client.open or (self.upstream is not None and self.upstream.open):
            return
        self.finished = True
        self.closed = True
        self.link._conns.discard(self)

    def reset(self) -> None:
        """Reset both ends (the link's own doing, counted once per connection)."""
        if not self.closed:
            self.closed = True
            self.link.stats.resets += 1
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.client.reset()
        if self.upstream is not None:
            self.upstream.reset()

    # --- data --------------------------------------------------------------------

    def _peer(self, end: _End) -> _End | None:
        return self.upstream if end.is_client else self.client

    def _passes(self, end: _End) -> _End | None:
        """Where bytes read from ``end`` go now, or None if they are to be discarded."""
        dst = self._peer(end)
        if self.link.mode != "up" or self.closed or dst is None or dst.transport is None:
            return None
        if not dst.open or dst.transport.is_closing():
            return None
        return dst

    def received(self, end: _End, data: bytes) -> None:
        stats = self.link.stats
        dst = self._passes(end)
        if dst is None:
            if end.is_client:
                stats.discarded_to_target += len(data)
            else:
                stats.discarded_to_client += len(data)
            self.damaged = True
            return
        assert dst.transport is not None
        dst.transport.write(data)
        if end.is_client:
            stats.bytes_to_target += len(data)
        else:
            stats.bytes_to_client += len(data)

    def eof_received(self, end: _End) -> None:
        dst = self._passes(end)
        if dst is None:
            self.damaged = True
            return
        assert dst.transport is not None
        if dst.transport.can_write_eof():
            dst.transport.write_eof()
        if self.client.eof and self.upstream is not None and self.upstream.eof:
            self.client.close()
            self.upstream.close()

    def lost(self, end: _End, exc: Exception | None) -> None:
        if self.link.mode == "up" or self.closed:
            # Pass the close on as it happened: a reset as a reset, a close as a close
            # (after what is still buffered for the other end).
            other = self._peer(end)
            if other is not None:
                if exc is None:
                    other.close()
                else:
                    other.reset()
            if self.task is not None and not self.task.done():
                self.task.cancel()
            self.closed = True
        else:
            # Behind a partition nobody hears of the close; heal resets the other end.
            self.damaged = True
        self._maybe_finish()

    def apply_flow(self) -> None:
        """Read an end only while its bytes can be written on, or are to be discarded."""
        if self.closed:
            return
        up = self.link.mode == "up"
        upstream = self.upstream
        if upstream is None or not upstream.open:
            self.client.set_reading(not up)  # up: hold the bytes until the target answers
            return
        self.client.set_reading(not (up and upstream.writing_paused))
        upstream.set_reading(not (up and self.client.writing_paused))


class Link:
    """One directed link: the connections one node opens to another.

    Listens on ``127.0.0.1:<listen_port>`` (0 picks a free port) and forwards each
    accepted connection to ``target``. The node that should reach the target through
    the link is configured with the link's address instead of the target's. All
    methods must be called from the event loop the link was started on.
    """

    def __init__(self, name: str, target: tuple[str, int], listen_port: int = 0) -> None:
        self.name = name
        self.target = target
        self.stats = LinkStats()
        self._requested_port = listen_port
        self._port: int | None = None
        self._mode: Mode = "up"
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The listening socket while accepting; while dropped, a bound socket that
        #: keeps the port reserved without listening (so connects are refused).
        self._sock: socket.socket | None = None
        self._listening = False
        self._accept_retry: asyncio.TimerHandle | None = None
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def __repr__(self) -> str:
        port = self._port if self._port is not None else "-"
        return f"<Link {self.name} :{port}->{self.target[0]}:{self.target[1]} {self._mode}>"

    async def start(self) -> None:
        """Bind and listen; :attr:`port` is then the real port."""
        if self._loop is not None:
            raise RuntimeError(f"link {self.name} already started")
        self._loop = asyncio.get_running_loop()
        self._sock = self._bind(self._requested_port)
        self._port = int(self._sock.getsockname()[1])
        self._listen()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"link {self.name} not started")
        return self._port

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def state(self) -> Literal["up", "down"]:
        """``up`` or ``down`` (cut or dropped)."""
        return "up" if self._mode == "up" else "down"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def connections(self) -> int:
        """Connections currently held by the link (through or black-holed)."""
        return len(self._conns)

    # --- modes -------------------------------------------------------------------

    def cut(self) -> None:
        """Partition: everything in flight and everything new disappears silently."""
        self._check_running()
        if self._mode == "cut":
            return
        if self._mode == "dropped":
            self._listen()
        self._mode = "cut"
        self.stats.cuts += 1
        for conn in list(self._conns):
            conn.apply_flow()  # read everything, so it can be thrown away

    def drop(self) -> None:
        """Service gone: reset every connection, refuse new ones until :meth:`heal`."""
        self._check_running()
        if self._mode == "dropped":
            return
        self._mode = "dropped"
        self.stats.drops += 1
        self._unlisten()
        for conn in list(self._conns):
            conn.reset()

    def heal(self) -> None:
        """Network back: forward again; connections that lost bytes are reset."""
        self._check_running()
        if self._mode == "up":
            return
        if self._mode == "dropped":
            self._listen()  # may raise if the port was lost while dropped: still down
        self._mode = "up"
        self.stats.heals += 1
        for conn in list(self._conns):
            if conn.closed:
                continue
            if conn.damaged:
                conn.reset()
            elif conn.upstream is None and (conn.task is None or conn.task.done()):
                conn.apply_flow()  # hold the client's bytes until the target answers
                conn.connect()
            else:
                conn.apply_flow()

    async def close(self) -> None:
        """Stop listening and reset every connection; leaves no socket or task behind."""
        if self._closed:
            return
        self._closed = True
        self._stop_listening()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for conn in list(self._conns):
            conn.reset()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Transports close on the next loop iterations; wait for them (bounded).
        for _ in range(100):
            if not self._conns:
                break
            await asyncio.sleep(0)
        else:
            log.warning("link %s: %d connections still closing", self.name, len(self._conns))

    # --- listening ---------------------------------------------------------------

    def _check_running(self) -> None:
        if self._loop is None:
            raise RuntimeError(f"link {self.name} not started")
        if self._closed:
            raise RuntimeError(f"link {self.name} is closed")

    @staticmethod
    def _bind(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((LISTEN_HOST, port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _listen(self) -> None:
        assert self._loop is not None
        if self._listening:
            return
        if self._sock is None:
            self._sock = self._bind(self.port)
        self._sock.listen(BACKLOG)
        self._listening = True
        self._loop.add_reader(self._sock.fileno(), self._accept_ready)

    def _stop_listening(self) -> None:
        if self._accept_retry is not None:
            self._accept_retry.cancel()
            self._accept_retry = None
        if self._listening and self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._listening = False

    def _unlisten(self) -> None:
        """Refuse connects but keep the port, so heal can listen on it again."""
        self._stop_listening()
        if self._sock is not None:
            self._sock.close()  # pending, not yet accepted connects are reset too
            self._sock = None
        try:
            self._sock = self._bind(self.port)
        except OSError:
            log.warning("link %s: port %d not reserved while dropped", self.name, self.port)

    def _accept_ready(self) -> None:
        assert self._sock is not None and self._loop is not None
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # out of descriptors or buffers: back off, retry
                log.warning("link %s: accept failed: %s", self.name, exc)
                self._stop_listening()
                self._accept_retry = self._loop.call_later(ACCEPT_RETRY_S, self._retry_accept)
                return
            self.stats.accepted += 1
            conn = _Conn(self)
            self._conns.add(conn)
            conn.adopt(sock)

    def _retry_accept(self) -> None:
        self._accept_retry = None
        if not self._closed and self._mode != "dropped":
            self._listen()


class Links:
    """The links of one drill, by name, with group operations and flapping.

    Group operations resolve every name before touching any link, so a misspelt name
    fails the call instead of leaving half a partition in place.
    """

    def __init__(self) -> None:
        self._links: dict[str, Link] = {}

    async def add(self, name: str, target: tuple[str, int], listen_port: int = 0) -> Link:
        """Create and start a link; its name must be new."""
        if name in self._links:
            raise ValueError(f"duplicate link name {name!r}")
        link = Link(name, target, listen_port)
        await link.start()
        self._links[name] = link
        return link

    def get(self, name: str) -> Link:
        try:
            return self._links[name]
        except KeyError:
            raise KeyError(f"no link named {name!r}") from None

    def __iter__(self) -> Iterator[Link]:
        return iter(list(self._links.values()))

    def __len__(self) -> int:
        return len(self._links)

    def __contains__(self, name: object) -> bool:
        return name in self._links

    def select(self, which: Selector) -> list[Link]:
        if isinstance(which, str):
            return [self.get(which)]
        if callable(which):
            predicate: Callable[[Link], bool] = which
            return [link for link in self._links.values() if predicate(link)]
        return [self.get(name) for name in which]

    def cut(self, which: Selector) -> list[Link]:
        links = self.select(which)
        for link in links:
            link.cut()
        return links

    def drop(self, which: Selector) -> list[Link]:
        links = self.select(which)
        for link in links:
            link.drop()
        return links

    def heal(self, which: Selector) -> list[Link]:
        links = self.select(which)
        for link in links:
            link.heal()
        return links

    def heal_all(self) -> None:
        for link in self._links.values():
            if not link.closed:
                link.heal()

    async def flap(
        self,
        which: Selector,
        period_s: float,
        duration_s: float,
        rng: random.Random,
        *,
        how: Literal["cut", "drop"] = "cut",
        jitter: float = 0.5,
    ) -> int:
        """A link that keeps failing and recovering (a bad cable, a flapping port).

        Goes down (cut or dropped) and up in turns for ``duration_s``, starting down;
        each phase lasts ``period_s`` times a factor drawn from ``rng`` in
        ``[1 - jitter, 1 + jitter]``, so a seed gives the same schedule again. Always
        ends with the links healed, even when cancelled. Returns how many times the
        links went down.
        """
        if period_s <= 0 or duration_s < 0:
            raise ValueError("period_s must be > 0 and duration_s >= 0")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        links = self.select(which)
        loop = asyncio.get_running_loop()
        end = loop.time() + duration_s

        def phase() -> float:
            return period_s * (1.0 + jitter * rng.uniform(-1.0, 1.0))

        downs = 0
        try:
            while loop.time() < end:
                for link in links:
                    if how == "drop":
                        link.drop()
                    else:
                        link.cut()
                downs += 1
                await asyncio.sleep(min(phase(), max(0.0, end - loop.time())))
                for link in links:
                    link.heal()
                remaining = end - loop.time()
                if remaining <= 0:
                    break
                await asyncio.sleep(min(phase(), remaining))
        finally:
            for link in links:
                if not link.closed:
                    link.heal()
        return downs

    async def close(self) -> None:
        for link in list(self._links.values()):
            await link.close()
