"""Drill links on real loopback sockets: what a node on either side of a link observes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from mxrc.drill import links as links_mod
from mxrc.drill.links import Link, Links

TEST_TIMEOUT_S = 8.0
SILENCE_S = 0.3  # how long a black-holed request is given to (not) get an answer
ANSWER_S = 1.0  # how long a request through an up link may take
#: More than the socket buffers on both sides of a proxy can hold (autotuned buffers on
#: loopback reach tens of MiB).
FILL_LIMIT = 512 * 1024 * 1024


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT_S))


async def until(condition: Callable[[], bool], what: str, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def module_tasks() -> list[asyncio.Task[Any]]:
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name().startswith(links_mod.TASK_PREFIX) and not t.done()
    ]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Echo:
    """A target node: echoes bytes (prefixed by its tag), closes after its client does.

    ``hold`` makes it accept and never read, like a node too busy to keep up.
    """

    def __init__(self, tag: bytes = b"", *, hold: bool = False) -> None:
        self.tag = tag
        self.hold = hold
        self.accepted = 0
        self.release = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []
        self.handlers: set[asyncio.Task[Any]] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> Echo:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return "127.0.0.1", int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.accepted += 1
        self.writers.append(writer)
        try:
            if self.hold:
                await self.release.wait()
            while data := await reader.read(65536):
                writer.write(self.tag + data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def push(self, data: bytes) -> None:
        for writer in self.writers:
            if not writer.is_closing():
                writer.write(data)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        self.release.set()
        for writer in self.writers:
            writer.transport.abort()
        await asyncio.gather(*self.handlers, return_exceptions=True)


class Client:
    """A node's end of one connection through a link."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), ANSWER_S
        )
        return cls(reader, writer)

    async def ask(self, data: bytes, answer: bytes | None = None) -> bytes:
        """Send ``data``; the exact ``answer`` (the echo by default) or a timeout."""
        expected = data if answer is None else answer
        self.writer.write(data)
        await self.writer.drain()
        return await asyncio.wait_for(self.reader.readexactly(len(expected)), ANSWER_S)

    async def fill(self) -> int:
        """Write until the writes block (the peer is not reading); bytes written."""
        chunk = bytes(1024 * 1024)
        for count in range(1, FILL_LIMIT // len(chunk) + 1):
            self.writer.write(chunk)
            try:
                await asyncio.wait_for(self.writer.drain(), SILENCE_S)
            except TimeoutError:
                return count * len(chunk)
        raise AssertionError(f"{FILL_LIMIT} bytes written and still no backpressure")

    async def unanswered(self, data: bytes) -> None:
        """Send ``data`` and find the connection silent, yet open."""
        self.writer.write(data)
        await self.writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(self.reader.read(1), SILENCE_S)
        assert not self.reader.at_eof()
        assert not self.writer.is_closing()

    async def was_reset(self) -> None:
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(self.reader.read(1), ANSWER_S)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def refused(port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), ANSWER_S)


async def with_link(
    body: Callable[[Echo, Link], Awaitable[None]], echo: Echo | None = None
) -> None:
    """Run ``body`` with an echo target behind a started link; close both after."""
    target = await (echo or Echo()).start()
    link = Link("a->b", target.address)
    await link.start()
    try:
        await body(target, link)
    finally:
        await link.close()
        await target.close()
    assert module_tasks() == []


# --- up ------------------------------------------------------------------------------


def test_bytes_pass_both_ways_and_are_counted() -> None:
    async def body(echo: Echo, link: Link) -> None:
        assert link.port > 0 and link.state == "up" and link.mode == "up"
        client = await Client.connect(link.port)
        assert await client.ask(b"ping") == b"ping"
        big = bytes(range(256)) * 1024  # more than the write-buffer limit
        assert await client.ask(big) == big
        await client.close()
        await until(lambda: link.connections == 0, "the connection to go")
        stats = link.stats
        assert stats.bytes_to_target == stats.bytes_to_client == 4 + len(big)
        assert stats.forwarded == 2 * (4 + len(big))
        assert stats.accepted == 1 and echo.accepted == 1
        assert stats.discarded == 0 and stats.resets == 0

    run(lambda: with_link(body))


def test_a_half_close_passes_through() -> None:
    async def body(echo: Echo, link: Link) -> None:
        client = await Client.connect(link.port)
        client.writer.write(b"last words")
        client.writer.write_eof()
        # The target sees the end of the stream, answers, and closes in turn.
        assert await asyncio.wait_for(client.reader.read(), ANSWER_S) == b"last words"
        await client.close()

    run(lambda: with_link(body))


def test_a_slow_target_pushes_back_on_the_client() -> None:
    async def body(echo: Echo, link: Link) -> None:
        client = await Client.connect(link.port)
        sent = await client.fill()
        assert link.stats.bytes_to_target < sent  # the proxy did not swallow it all
        client.writer.transport.abort()

    run(lambda: with_link(body, Echo(hold=True)))


def test_an_unreachable_target_resets_the_client() -> None:
    async def main() -> None:
        gone = await Echo().start()
        address = gone.address
        await gone.close()
        link = Link("a->gone", address)
        await link.start()
        client = await Client.connect(link.port)  # the proxy itself accepts
        await client.was_reset()
        assert link.stats.connect_failures == 1 and link.stats.resets == 1
        await client.close()
        await link.close()
        assert module_tasks() == []

    run(main)


# --- cut -----------------------------------------------------------------------------


def test_a_cut_black_holes_an_open_connection_without_closing_it() -> None:
    async def body(echo: Echo, link: Link) -> None:
        client = await Client.connect(link.port)
        assert await client.ask(b"ping") == b"ping"
        link.cut()
        assert link.state == "down" and link.mode == "cut"
        await client.unanswered(b"hello?")
        echo.push(b"news")  # the target's own bytes vanish too
        await until(lambda: link.stats.discarded_to_client == 4, "the push to be discarded")
        assert link.stats.discarded_to_target == 6
        assert link.connections == 1
        await client.unanswered(b"still there?")
        await client.close()

    run(lambda: with_link(body))


def test_a_cut_accepts_new_connections_that_go_nowhere() -> None:
    async def body(echo: Echo, link: Link) -> None:
        link.cut()
        client = await Client.connect(link.port)  # not refused: a partition is silent
        await client.unanswered(b"anyone?")
        assert echo.accepted == 0  # the target never heard of it
        assert link.stats.accepted == 1
        await client.close()

    run(lambda: with_link(body))


def test_a_cut_keeps_reading_so_a_blocked_writer_is_released() -> None:
    async def body(echo: Echo, link: Link) -> None:
        client = await Client.connect(link.port)
        await client.fill()
        link.cut()
        await asyncio.wait_for(client.writer.drain(), 5.0)
        assert link.stats.discarded_to_target > 0
        link.heal()  # bytes were lost: the stream cannot go on
        await client.was_reset()
        await client.close()

    run(lambda: with_link(body, Echo(hold=True)))


# --- heal ----------------------------------------------------------------------------


def test_heal_resets_connections_that_lost_bytes_and_new_ones_work_at_once() -> None:
    async def body(echo: Echo, link: Link) -> None:
        old = await Client.connect(link.port)
        assert await old.ask(b"ping") == b"ping"
        link.cut()
        await old.unanswered(b"lost")
        link.heal()
        assert link.state == "up"
        new = await Client.connect(link.port)
        assert await new.ask(b"again") == b"again"
        await old.was_reset()
        assert link.stats.resets == 1
        await new.close()
        await old.close()

    run(lambda: with_link(body))


def test_connections_that_lost_nothing_live_through_a_cut() -> None:
    async def body(echo: Echo, link: Link) -> None:
        idle = await Client.connect(link.port)
        assert await idle.ask(b"before") == b"before"
        link.cut()
        waiting = await Client.connect(link.port)  # connected during the partition
        await asyncio.sleep(0.05)
        assert echo.accepted == 1
        link.heal()
        assert await idle.ask(b"after") == b"after"
        assert await waiting.ask(b"through") == b"through"
        assert echo.accepted == 2 and link.stats.resets == 0
        await idle.close()
        await waiting.close()

    run(lambda: with_link(body))


def test_a_close_behind_a_cut_is_heard_only_as_a_reset_after_heal() -> None:
    async def body(echo: Echo, link: Link) -> None:
        client = await Client.connect(link.port)
        assert await client.ask(b"ping") == b"ping"
        link.cut()
        await client.close()
        await asyncio.sleep(0.05)
        assert link.connections == 1 and link.stats.discarded == 0
        assert not echo.writers[0].is_closing()  # the target heard nothing
        link.heal()
        await until(lambda: link.connections == 0, "the target side to be reset")
        assert link.stats.resets == 1

    run(lambda: with_link(body))


# --- drop ----------------------------------------------------------------------------


def test_drop_resets_connections_and_refuses_new_ones_until_heal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body(echo: Echo, link: Link) -> None:
        port = link.port
        client = await Client.connect(port)
        assert await client.ask(b"ping") == b"ping"
        link.drop()
        assert link.state == "down" and link.mode == "dropped"
        await refused(port)  # at once, while the old connections are still closing
        await client.was_reset()
        await refused(port)
        link.heal()
        assert link.port == port
        again = await Client.connect(port)
        assert await again.ask(b"back") == b"back"
        assert link.stats.drops == 1 and link.stats.heals == 1 and link.stats.resets == 1
        await again.close()
        await client.close()

    run(lambda: with_link(body))
    assert not [r for r in caplog.records if r.name == links_mod.__name__]  # port kept


def test_cut_and_drop_turn_into_each_other() -> None:
    async def body(echo: Echo, link: Link) -> None:
        link.cut()
        held = await Client.connect(link.port)
        link.drop()
        await held.was_reset()
        await refused(link.port)
        link.cut()
        silent = await Client.connect(link.port)
        await silent.unanswered(b"x")
        link.heal()
        await silent.was_reset()
        fresh = await Client.connect(link.port)
        assert await fresh.ask(b"ok") == b"ok"
        assert (link.stats.cuts, link.stats.drops, link.stats.heals) == (2, 1, 1)
        for client in (held, silent, fresh):
            await client.close()

    run(lambda: with_link(body))


# --- groups --------------------------------------------------------------------------


def test_directed_links_are_independent() -> None:
    async def main() -> None:
        node_a = await Echo(b"A:").start()
        node_b = await Echo(b"B:").start()
        group = Links()
        a_to_b = await group.add("a->b", node_b.address)
        b_to_a = await group.add("b->a", node_a.address)
        from_a = await Client.connect(a_to_b.port)
        from_b = await Client.connect(b_to_a.port)
        group.cut("a->b")
        assert await from_b.ask(b"hi", b"A:hi") == b"A:hi"
        await from_a.unanswered(b"hi")
        assert b_to_a.stats.discarded == 0 and b_to_a.state == "up"
        group.heal_all()
        assert await from_b.ask(b"yo", b"A:yo") == b"A:yo"
        again = await Client.connect(a_to_b.port)
        assert await again.ask(b"hi", b"B:hi") == b"B:hi"
        await from_a.was_reset()
        for client in (from_a, from_b, again):
            await client.close()
        await group.close()
        await node_a.close()
        await node_b.close()
        assert module_tasks() == []

    run(main)


def test_group_operations_by_name_names_or_predicate() -> None:
    async def main() -> None:
        target = await Echo().start()
        group = Links()
        for name in ("a->b", "a->c", "b->c"):
            await group.add(name, target.address)
        with pytest.raises(ValueError, match="duplicate"):
            await group.add("a->b", target.address)
        assert len(group) == 3 and "a->c" in group
        assert group.get("a->c").name == "a->c"

        def modes() -> list[str]:
            return [link.mode for link in group]

        assert [link.name for link in group.cut("a->b")] == ["a->b"]
        assert modes() == ["cut", "up", "up"]
        group.drop(["a->c", "b->c"])
        assert modes() == ["cut", "dropped", "dropped"]
        group.heal(lambda link: link.name.startswith("a->"))
        assert modes() == ["up", "up", "dropped"]
        with pytest.raises(KeyError, match="a->z"):
            group.cut(["a->b", "a->z"])  # a typo changes nothing
        assert modes() == ["up", "up", "dropped"]
        group.heal_all()
        assert modes() == ["up", "up", "up"]
        await group.close()
        await target.close()
        with pytest.raises(RuntimeError, match="closed"):
            group.get("a->b").cut()
        assert module_tasks() == []

    run(main)


def test_flap_toggles_for_its_duration_and_ends_healed() -> None:
    async def main() -> None:
        target = await Echo().start()
        group = Links()
        flapping = await group.add("a->b", target.address)
        steady = await group.add("b->a", target.address)
        seen: list[str] = []

        async def watch() -> None:
            while True:
                if not seen or seen[-1] != flapping.state:
                    seen.append(flapping.state)
                await asyncio.sleep(0.002)

        watcher = asyncio.create_task(watch())
        loop = asyncio.get_running_loop()
        started = loop.time()
        downs = await group.flap("a->b", 0.05, 0.6, random.Random(7))
        elapsed = loop.time() - started
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        seen.append(flapping.state)

        assert 0.55 <= elapsed < 1.5
        assert downs >= 3
        assert flapping.stats.cuts == flapping.stats.heals == downs
        assert seen[0] == "down" and seen[-1] == "up"
        assert seen.count("down") >= 2  # seen going down more than once
        assert flapping.state == "up" and steady.stats.cuts == 0
        client = await Client.connect(flapping.port)
        assert await client.ask(b"ok") == b"ok"
        await client.close()

        drops = await group.flap(["a->b"], 0.03, 0.2, random.Random(1), how="drop")
        assert flapping.stats.drops == drops >= 2 and flapping.mode == "up"

        cancelled = asyncio.create_task(group.flap("a->b", 0.5, 30.0, random.Random(2)))
        await until(lambda: flapping.state == "down", "the flap to start")
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        assert flapping.state == "up"  # healed on the way out

        with pytest.raises(ValueError, match="period_s"):
            await group.flap("a->b", 0.0, 1.0, random.Random(3))
        await group.close()
        await target.close()
        assert module_tasks() == []

    run(main)


# --- close ---------------------------------------------------------------------------


def test_close_leaves_no_task_socket_or_listener() -> None:
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to count descriptors")

    async def main() -> None:
        before = open_fds()
        target = await Echo().start()
        group = Links()
        through = await group.add("a->b", target.address)
        dropped = await group.add("a->c", target.address)
        clients = [await Client.connect(through.port) for _ in range(3)]
        assert await clients[0].ask(b"ping") == b"ping"
        through.cut()
        clients.append(await Client.connect(through.port))  # black-holed, never through
        await clients[1].unanswered(b"lost")
        dropped.drop()
        await until(lambda: through.connections == 4, "the proxy to hold 4 connections")
        port = through.port
        await group.close()
        assert module_tasks() == []
        assert through.connections == 0 and through.closed
        await refused(port)
        await refused(dropped.port)
        for client in clients:
            await client.was_reset()
            await client.close()
        await group.close()  # closing twice is harmless
        await target.close()
        await asyncio.sleep(0)
        assert open_fds() == before

    run(main)
