"""The EventBus on a real asyncio loop (``asyncio.run`` per test, every wait bounded)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from mxrc.service.bus import ERROR_LOG_INTERVAL_S, YIELD_EVERY, EventBus
from mxrc.service.events import BusEvent, RtLost

TIMEOUT_S = 10.0


def ev(n: int) -> RtLost:
    """A small distinct event; ``mono_ns`` is its number."""
    return RtLost(mono_ns=n, silence_s=0.0)


def num(event: BusEvent) -> int:
    assert isinstance(event, RtLost)
    return event.mono_ns


def numbers(events: list[BusEvent]) -> list[int]:
    return [num(e) for e in events]


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))


async def with_dispatcher(bus: EventBus, body: Callable[[], Awaitable[None]]) -> None:
    task = asyncio.create_task(bus.run())
    try:
        await body()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_every_observer_sees_every_event_in_order_and_in_subscription_order() -> None:
    seen: list[tuple[str, int]] = []

    async def main() -> None:
        bus = EventBus(256)
        for name in ("first", "second", "third"):
            bus.subscribe(name, lambda e, n=name: seen.append((n, num(e))))  # type: ignore[misc]

        async def body() -> None:
            for i in range(100):
                bus.publish(ev(i))
            assert await bus.drain(TIMEOUT_S)
            assert (bus.published, bus.delivered, bus.dropped, bus.depth) == (100, 100, 0, 0)

        await with_dispatcher(bus, body)

    run(main)
    assert seen == [(name, i) for i in range(100) for name in ("first", "second", "third")]


def test_a_full_queue_drops_its_oldest_events_and_counts_them_exactly() -> None:
    got: list[BusEvent] = []

    async def main() -> None:
        bus = EventBus(4)
        bus.subscribe("log", got.append)
        for i in range(10):
            bus.publish(ev(i))  # nothing dispatches yet: the queue holds the newest 4
        assert (bus.published, bus.dropped, bus.depth, bus.capacity) == (10, 6, 4, 4)
        assert bus.fill_ratio == 1.0
        await with_dispatcher(bus, lambda: _drained(bus))
        assert (bus.delivered, bus.depth, bus.fill_ratio) == (4, 0, 0.0)

    run(main)
    assert numbers(got) == [6, 7, 8, 9]


async def _drained(bus: EventBus) -> None:
    assert await bus.drain(TIMEOUT_S)


def test_drops_while_an_event_is_being_dispatched_spare_the_event_in_flight() -> None:
    got: list[int] = []

    async def main() -> None:
        bus = EventBus(3)
        release = asyncio.Event()
        entered = asyncio.Event()

        async def slow(e: BusEvent) -> None:
            if num(e) == 0:
                entered.set()
                await release.wait()
            got.append(num(e))

        bus.subscribe("slow", slow)

        async def body() -> None:
            bus.publish(ev(0))
            await asyncio.wait_for(entered.wait(), TIMEOUT_S)  # event 0 is in flight
            for i in range(1, 8):
                bus.publish(ev(i))  # 7 events into 3 slots: 1..4 dropped
            assert (bus.depth, bus.dropped) == (3, 4)
            release.set()
            assert await bus.drain(TIMEOUT_S)

        await with_dispatcher(bus, body)
        assert (bus.published, bus.delivered, bus.dropped) == (8, 4, 4)

    run(main)
    assert got == [0, 5, 6, 7]


def test_sync_and_async_observers_are_each_finished_before_the_next_one_runs() -> None:
    seen: list[tuple[str, int]] = []

    async def main() -> None:
        bus = EventBus(64)

        def sync_before(e: BusEvent) -> None:
            seen.append(("sync-before", num(e)))

        async def async_middle(e: BusEvent) -> None:
            await asyncio.sleep(0.001)  # really suspends: the loop runs other work here
            seen.append(("async", num(e)))

        def sync_after(e: BusEvent) -> None:
            seen.append(("sync-after", num(e)))

        bus.subscribe("a", sync_before)
        bus.subscribe("b", async_middle)
        bus.subscribe("c", sync_after)

        async def body() -> None:
            for i in range(5):
                bus.publish(ev(i))
            assert await bus.drain(TIMEOUT_S)

        await with_dispatcher(bus, body)

    run(main)
    assert seen == [(n, i) for i in range(5) for n in ("sync-before", "async", "sync-after")]


def test_a_raising_observer_is_counted_and_logged_once_and_stops_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good: list[int] = []
    after: list[int] = []
    clock = [1000.0]

    async def main() -> None:
        bus = EventBus(64, clock=lambda: clock[0])

        def bad(e: BusEvent) -> None:
            raise ValueError(f"cannot take event {num(e)}")

        async def bad_async(e: BusEvent) -> None:
            await asyncio.sleep(0)
            if num(e) % 2:
                raise RuntimeError("odd")

        bus.subscribe("good", lambda e: good.append(num(e)))
        bus.subscribe("bad", bad)
        bus.subscribe("bad_async", bad_async)
        bus.subscribe("after", lambda e: after.append(num(e)))

        async def body() -> None:
            for i in range(10):
                bus.publish(ev(i))
            assert await bus.drain(TIMEOUT_S)
            assert dict(bus.observer_errors) == {"good": 0, "bad": 10, "bad_async": 5, "after": 0}
            assert bus.delivered == 10
            first_round = [r for r in caplog.records if r.name == "mxrc.service.bus"]
            assert len(first_round) == 2  # one per failing observer, not one per failure
            assert {r.levelno for r in first_round} == {logging.ERROR}
            assert "'bad'" in first_round[0].getMessage() and first_round[0].exc_info
            assert "'bad_async'" in first_round[1].getMessage()
            caplog.clear()
            clock[0] += ERROR_LOG_INTERVAL_S  # later: one summary with the count
            bus.publish(ev(10))
            assert await bus.drain(TIMEOUT_S)
            summary = [r.getMessage() for r in caplog.records if r.name == "mxrc.service.bus"]
            assert len(summary) == 1, summary
            assert "'bad' failed again" in summary[0]
            assert "cannot take event 10" in summary[0]
            assert "9 failure(s) not logged" in summary[0] and "11 in all" in summary[0]

        await with_dispatcher(bus, body)

    with caplog.at_level(logging.ERROR, logger="mxrc.service.bus"):
        run(main)
    assert good == after == list(range(11))


def test_publish_threadsafe_from_a_real_thread_keeps_that_threads_order() -> None:
    got: list[int] = []
    loop_thread: list[int] = []

    async def main() -> None:
        bus = EventBus(4096)

        def observer(e: BusEvent) -> None:
            loop_thread.append(threading.get_ident())
            got.append(num(e))

        bus.subscribe("o", observer)

        async def body() -> None:
            def produce() -> None:
                for i in range(2000):
                    bus.publish_threadsafe(ev(i))

            producer = threading.Thread(target=produce)
            producer.start()
            await asyncio.to_thread(producer.join, TIMEOUT_S)
            assert not producer.is_alive()
            assert await bus.drain(TIMEOUT_S)
            assert (bus.published, bus.delivered, bus.dropped) == (2000, 2000, 0)

        await with_dispatcher(bus, body)

    main_ident = threading.get_ident()
    run(main)
    assert got == list(range(2000))
    assert set(loop_thread) == {main_ident}  # observers ran on the loop, not the producer


def test_publish_threadsafe_before_any_loop_is_refused_and_after_close_is_counted() -> None:
    outside = EventBus(8)
    with pytest.raises(RuntimeError, match="no event loop"):
        outside.publish_threadsafe(ev(0))

    holder: list[EventBus] = []

    async def main() -> None:
        holder.append(EventBus(8))  # created on the loop: the loop is known from here on

    run(main)
    bus = holder[0]
    bus.publish_threadsafe(ev(1))  # the loop is closed now: nobody could dispatch it
    bus.publish_threadsafe(ev(2))
    assert (bus.dropped, bus.published) == (2, 0)


def test_drain_times_out_while_an_observer_is_stuck_and_flushes_without_a_dispatcher() -> None:
    got: list[int] = []

    async def main() -> None:
        bus = EventBus(16)
        release = asyncio.Event()

        async def stuck(e: BusEvent) -> None:
            if num(e) == 0:
                await release.wait()
            got.append(num(e))

        bus.subscribe("stuck", stuck)

        async def body() -> None:
            bus.publish(ev(0))
            bus.publish(ev(1))
            assert await bus.drain(0.05) is False
            assert got == []
            release.set()
            assert await bus.drain(TIMEOUT_S) is True
            assert got == [0, 1]
            assert await bus.drain(0.0) is True  # nothing pending: at once

        await with_dispatcher(bus, body)
        # The dispatcher is gone (as at shutdown): drain itself delivers what is left.
        bus.publish(ev(2))
        bus.publish(ev(3))
        assert await bus.drain(TIMEOUT_S) is True
        assert (bus.depth, bus.delivered) == (0, 4)

    run(main)
    assert got == [0, 1, 2, 3]


def test_drain_waits_only_for_what_was_published_before_it() -> None:
    async def main() -> None:
        bus = EventBus(16)
        gates = {0: asyncio.Event(), 1: asyncio.Event()}
        got: list[int] = []

        async def observer(e: BusEvent) -> None:
            await gates[num(e)].wait()
            got.append(num(e))

        bus.subscribe("o", observer)

        async def body() -> None:
            bus.publish(ev(0))
            drained = asyncio.create_task(bus.drain(TIMEOUT_S))
            await asyncio.sleep(0.02)  # the drain is waiting for event 0
            assert not drained.done()
            bus.publish(ev(1))  # published after the drain began: not waited for
            gates[0].set()
            assert await asyncio.wait_for(drained, TIMEOUT_S) is True
            assert got == [0]  # event 1 is still held by its observer
            gates[1].set()
            assert await bus.drain(TIMEOUT_S)

        await with_dispatcher(bus, body)
        assert got == [0, 1]

    run(main)


def test_a_backlog_of_sync_observers_lets_other_tasks_run() -> None:
    async def main() -> None:
        bus = EventBus(4096)
        turns = [0]
        seen_turns: list[int] = []
        bus.subscribe("o", lambda e: seen_turns.append(turns[0]))

        async def ticker() -> None:
            while True:
                turns[0] += 1
                await asyncio.sleep(0)

        async def body() -> None:
            tick = asyncio.create_task(ticker())
            try:
                for i in range(YIELD_EVERY * 10):
                    bus.publish(ev(i))
                assert await bus.drain(TIMEOUT_S)
            finally:
                tick.cancel()
            # Within a run of YIELD_EVERY events nothing else runs; between runs it does.
            runs = [seen_turns[i : i + YIELD_EVERY] for i in range(0, len(seen_turns), YIELD_EVERY)]
            assert all(len(set(r)) == 1 for r in runs)
            assert len({r[0] for r in runs}) == len(runs)

        await with_dispatcher(bus, body)

    run(main)


def test_figures_and_misuse() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        EventBus(0)
    bus = EventBus(10)
    bus.subscribe("x", lambda e: None)
    with pytest.raises(ValueError, match="'x' is already subscribed"):
        bus.subscribe("x", lambda e: None)
    for i in range(3):
        bus.publish(ev(i))
    assert (bus.depth, bus.fill_ratio, bus.published, bus.dropped) == (3, 0.3, 3, 0)
    errors = bus.observer_errors
    assert dict(errors) == {"x": 0}
    with pytest.raises(TypeError):
        errors["x"] = 5  # type: ignore[index]

    async def twice() -> None:
        first = asyncio.create_task(bus.run())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already running"):
            await bus.run()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first

    run(twice)
