"""The in-process EventBus: producers publish facts, observers react, nobody waits.

Producers are on the critical path (the ring feed, the journal's flusher thread), so
publishing never blocks and never fails: when the queue is full the *oldest* queued
event is dropped and counted, the same rule as the RT ring — the newest facts matter
most, and the count says exactly how much was lost. Observers (metrics, the controller,
the live event stream) get every event that was not dropped, in publication order, one
observer after the other; one that raises is counted under its name and logged, rate
limited, and never stops the others or the bus.

Everything except :meth:`EventBus.publish_threadsafe` runs on the event loop's thread,
so the counters need no lock.

An instrument (:class:`BusInstrument`) sees what observers cannot: each event as it is
published, the dispatch of it (observers run inside :meth:`BusInstrument.processing`,
so their log lines carry the event's trace and request ids), and each drop. The
default one only restores the event's trace context for the observers
(:class:`CorrelatingInstrument`); :class:`mxrc.obs.bus_tracing.BusTracing` also makes
spans.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from types import MappingProxyType
from typing import Any, Final, Protocol

from mxrc.obs.correlation import correlated
from mxrc.service.events import BusEvent, traceparent_of

log = logging.getLogger("mxrc.service.bus")

Observer = Callable[[BusEvent], Awaitable[None] | None]

#: A busy bus hands the loop back after this many events, so a backlog of sync
#: observers cannot starve the API and the ring feed.
YIELD_EVERY: Final = 64
#: After an observer's first logged failure, at most one summary line per this long.
ERROR_LOG_INTERVAL_S: Final = 60.0


class BusInstrument(Protocol):
    """Hooks around an event's life on the bus (all on the event loop's thread)."""

    def published(self, event: BusEvent) -> Any:
        """Called as ``event`` is queued; what it returns is handed back below."""

    def processing(self, event: BusEvent, carrier: Any) -> AbstractContextManager[object]:
        """Entered around the observers' handling of ``event``."""

    def dropped(self, event: BusEvent, carrier: Any) -> None:
        """``event`` left the queue without reaching the observers."""


class CorrelatingInstrument:
    """Observers run under the event's own trace context, nothing more."""

    def published(self, event: BusEvent) -> Any:
        return None

    def processing(self, event: BusEvent, carrier: Any) -> AbstractContextManager[object]:
        return correlated(traceparent=traceparent_of(event))

    def dropped(self, event: BusEvent, carrier: Any) -> None:
        return None


class _ErrorLog:
    """Rate limit for one observer's failures: the first with its traceback, then one
    summary per interval saying how many were not logged."""

    __slots__ = ("last_s", "suppressed")

    def __init__(self) -> None:
        self.last_s: float | None = None
        self.suppressed = 0


class EventBus:
    """Bounded FIFO of :data:`BusEvent` dispatched to named observers.

    Figures: ``published`` (events accepted, including ones later dropped), ``dropped``
    (events that never reached the observers: displaced from a full queue, or handed
    over from another thread after the loop had closed), ``delivered`` (events handed to
    every observer), ``depth`` and ``fill_ratio`` of the queue, ``observer_errors`` per
    observer name.
    """

    def __init__(
        self,
        capacity: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        instrument: BusInstrument | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"EventBus capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._clock = clock
        self.instrument: BusInstrument = instrument or CorrelatingInstrument()
        self._queue: deque[tuple[int, BusEvent, Any]] = deque()
        self._observers: list[tuple[str, Observer]] = []
        self._errors: dict[str, int] = {}
        self._error_logs: dict[str, _ErrorLog] = {}
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._in_flight: int | None = None  # index of the event being dispatched
        self._drainers: list[tuple[int, asyncio.Future[None]]] = []
        self._closed_loop_reported = False
        self._published = 0
        self._dropped = 0
        self._delivered = 0
        self._adopt_loop()

    # ------------------------------------------------------------------ figures

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def fill_ratio(self) -> float:
        return len(self._queue) / self._capacity

    @property
    def published(self) -> int:
        return self._published

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def delivered(self) -> int:
        return self._delivered

    @property
    def observer_errors(self) -> Mapping[str, int]:
        return MappingProxyType(self._errors)

    # ------------------------------------------------------------------ wiring

    def subscribe(self, name: str, observer: Observer) -> None:
        """Add an observer (sync, or a coroutine function). Observers see events in
        subscription order; register them before :meth:`run` so none misses the first
        events. ``name`` keys its error count and must be unique."""
        if any(existing == name for existing, _ in self._observers):
            raise ValueError(f"an observer named {name!r} is already subscribed")
        self._adopt_loop()
        self._observers.append((name, observer))
        self._errors[name] = 0

    def _adopt_loop(self) -> None:
        """Remember the running loop, if any: :meth:`publish_threadsafe` needs it and
        may be called before :meth:`run` has started."""
        if self._loop is None:
            with contextlib.suppress(RuntimeError):
                self._loop = asyncio.get_running_loop()

    # ------------------------------------------------------------------ producers

    def publish(self, event: BusEvent) -> None:
        """Queue ``event`` (event loop thread only). Never blocks: a full queue drops its
        oldest event and counts it."""
        if len(self._queue) >= self._capacity:
            _index, lost, carrier = self._queue.popleft()
            self._dropped += 1
            self.instrument.dropped(lost, carrier)
            self._settle_drainers()
        self._queue.append((self._published, event, self.instrument.published(event)))
        self._published += 1
        self._wakeup.set()

    def publish_threadsafe(self, event: BusEvent) -> None:
        """:meth:`publish` from any thread: handed to the loop, never waits for it."""
        loop = self._loop
        if loop is None:
            raise RuntimeError(
                "EventBus.publish_threadsafe: no event loop known yet (create the bus, "
                "subscribe or run it on the loop first)"
            )
        try:
            loop.call_soon_threadsafe(self.publish, event)
        except RuntimeError:  # the loop is closed: nobody will ever dispatch it
            self._dropped += 1
            if not self._closed_loop_reported:
                self._closed_loop_reported = True
                log.warning(
                    "EventBus: %s published after the event loop closed; dropped "
                    "(further ones are counted in dropped, not logged)",
                    type(event).__name__,
                )

    # ------------------------------------------------------------------ dispatch

    async def run(self) -> None:
        """Dispatch until cancelled. One dispatcher at a time."""
        if self._running:
            raise RuntimeError("EventBus.run is already running")
        self._loop = asyncio.get_running_loop()
        self._running = True
        try:
            since_yield = 0
            while True:
                if not self._queue:
                    since_yield = 0
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._dispatch_next()
                since_yield += 1
                if since_yield >= YIELD_EVERY:
                    since_yield = 0
                    await asyncio.sleep(0)
        finally:
            self._running = False

    async def _dispatch_next(self) -> None:
        index, event, carrier = self._queue.popleft()
        self._in_flight = index
        try:
            with self.instrument.processing(event, carrier):
                for name, observer in tuple(self._observers):
                    try:
                        result = observer(event)
                        # Plain observers return None: no awaitable probe for them (every
                        # API request is an event, and /health is polled hard).
                        if result is not None and inspect.isawaitable(result):
                            await result
                    except Exception as exc:
                        self._observer_failed(name, event, exc)
            self._delivered += 1
        finally:
            self._in_flight = None
            self._settle_drainers()

    def _observer_failed(self, name: str, event: BusEvent, exc: Exception) -> None:
        self._errors[name] = self._errors.get(name, 0) + 1
        state = self._error_logs.setdefault(name, _ErrorLog())
        now = self._clock()
        if state.last_s is None:
            state.last_s = now
            log.error(
                "EventBus observer %r failed on %s (further failures: one summary per %g s)",
                name,
                type(event).__name__,
                ERROR_LOG_INTERVAL_S,
                exc_info=exc,
            )
        elif now - state.last_s >= ERROR_LOG_INTERVAL_S:
            log.error(
                "EventBus observer %r failed again on %s: %s: %s (%d failure(s) not "
                "logged since the last report, %d in all)",
                name,
                type(event).__name__,
                type(exc).__name__,
                exc,
                state.suppressed,
                self._errors[name],
            )
            state.last_s = now
            state.suppressed = 0
        else:
            state.suppressed += 1

    # ------------------------------------------------------------------ draining

    def _oldest_pending(self) -> int:
        """Index of the oldest event not yet settled (dispatched or dropped)."""
        oldest = self._queue[0][0] if self._queue else self._published
        if self._in_flight is not None:
            oldest = min(oldest, self._in_flight)
        return oldest

    def _settle_drainers(self) -> None:
        if not self._drainers:
            return
        oldest = self._oldest_pending()
        waiting = []
        for target, future in self._drainers:
            if oldest >= target:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((target, future))
        self._drainers = waiting

    async def drain(self, timeout: float) -> bool:
        """Wait until every event published before this call was dispatched (or
        dropped); False if that took longer than ``timeout``.

        Events handed over by other threads but not yet on the queue get one loop turn
        to arrive (events published during that turn are waited for too). With no
        dispatcher running (it was cancelled at shutdown), the
        remaining events are dispatched here, so a final flush still reaches the
        observers.
        """
        await asyncio.sleep(0)
        target = self._published
        if not self._running:
            return await self._dispatch_here(target, timeout)
        if self._oldest_pending() >= target:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drainers.append((target, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        finally:
            self._drainers = [(t, f) for t, f in self._drainers if f is not future]
        return True

    async def _dispatch_here(self, target: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._queue and self._queue[0][0] < target:
            if time.monotonic() >= deadline:
                return False
            await self._dispatch_next()
        return True
