"""The durable, append-only event log of one node (the writer side).

``append`` returns only once the record is on disk (write + fsync): callers make the
new state visible after it returns, never before. Concurrent appenders share one fsync
(group commit, leader/follower): whoever finds no flush in progress writes everything
pending in one ``write`` and one ``fsync`` while the others wait for the durable
sequence number to pass theirs. With 16 threads that turns ~16 fsyncs into one.

An fsync error is final for this process: the kernel may already have dropped the dirty
pages it could not write, so a retry could report success for data that is gone. The log
then refuses every further append (:class:`~mxrc.errors.LogFailedError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

import crc32c

from mxrc import framing
from mxrc.catalog import event_types
from mxrc.errors import CorruptLogError, LogFailedError, UnknownEventTypeError
from mxrc.fsutil import fsync_dir, move_tail_aside, write_all
from mxrc.segments import (
    SEGMENT_FORMAT,
    Record,
    SegmentReader,
    TornTail,
    list_segments,
    seal_line,
    segment_first_seq,
    segment_name,
)

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
BROKEN_DIR = "broken"
LEADER_ROUNDS = 8


@dataclass(frozen=True)
class LogIdentity:
    """What every record of this log repeats: who wrote it, under which chart version."""

    node: str
    chart: str
    chart_hash: str


def read_records(directory: Path, after_seq: int = 0) -> Iterator[Record]:
    """Verified records of a log directory with ``seq > after_seq``, oldest first.

    Segments wholly before ``after_seq`` are skipped unread (their names give their first
    sequence number), which is what makes recovery from a checkpoint cheap.
    """
    segments = list_segments(directory)
    start = 0
    for i, path in enumerate(segments):
        if segment_first_seq(path) <= after_seq + 1:
            start = i
    expected: int | None = None
    for i in range(start, len(segments)):
        reader = SegmentReader(
            segments[i], last_segment=i == len(segments) - 1, expected_first_seq=expected
        )
        records: Iterator[Record] = map(_second, reader)
        if i == start:  # only the first segment read can hold records at or before after_seq
            records = (r for r in records if r["seq"] > after_seq)
        yield from records
        if reader.last_seq is not None:
            expected = reader.last_seq + 1
        elif reader.header is not None:
            expected = int(reader.header["first_seq"])


_second = itemgetter(1)


class EventLog:
    """Open with :meth:`open`; append with :meth:`append`; :meth:`close` when done."""

    def __init__(
        self,
        directory: Path,
        identity: LogIdentity,
        *,
        fd: int,
        size: int,
        last_seq: int,
        segment_bytes: int,
        torn: TornTail | None,
    ) -> None:
        self.directory = directory
        self.identity = identity
        self.segment_bytes = segment_bytes
        self.repaired_tail = torn
        self._types = event_types()
        self._fd = fd
        self._size = size
        self._cond = threading.Condition(threading.Lock())
        self._next_seq = last_seq + 1
        self._durable_seq = last_seq
        self._pending: list[bytes] = []
        self._flushing = False
        self._failed: BaseException | None = None
        self._closed = False
        self._async_waiters: list[
            tuple[Record, asyncio.Future[Record], asyncio.AbstractEventLoop]
        ] = []
        self._flusher: threading.Thread | None = None
        self.fsync_observer: Callable[[int, float], None] | None = None
        self._segment_first = 1
        self._segment_crc = 0  # running CRC32C of the open segment, for its seal

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        directory: Path,
        identity: LogIdentity,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> EventLog:
        """Open (or create) the log in ``directory`` for appending.

        A torn tail in the newest segment is copied to ``directory/broken/`` and
        truncated away; ``repaired_tail`` says what was removed. A corrupt record before
        the tail raises :class:`~mxrc.errors.CorruptLogError` and nothing is modified.
        """
        directory.mkdir(parents=True, exist_ok=True)
        segments = list_segments(directory)
        if not segments:
            path = cls._create_segment(directory, identity.node, 1)
            return cls._at_end(directory, identity, path, 0, segment_bytes, None)
        last = segments[-1]
        expected = cls._first_seq_after(segments[:-1])
        reader = SegmentReader(last, last_segment=True, expected_first_seq=expected)
        for _ in reader:
            pass
        if reader.header is not None and reader.header["node"] != identity.node:
            raise CorruptLogError(
                str(last),
                0,
                f"segment belongs to node {reader.header['node']!r}, not {identity.node!r} "
                "(wrong data directory or node id?)",
            )
        torn = reader.torn
        if torn is not None:
            cls._set_aside(directory, torn)
        if reader.header is None:  # the header itself was torn: the segment held nothing
            first_seq = segment_first_seq(last)
            last.unlink()
            fsync_dir(directory)
            path = cls._create_segment(directory, identity.node, first_seq)
            return cls._at_end(directory, identity, path, first_seq - 1, segment_bytes, torn)
        last_seq = (
            reader.last_seq if reader.last_seq is not None else int(reader.header["first_seq"]) - 1
        )
        if reader.sealed:  # a crash between sealing and creating the next segment
            last = cls._create_segment(directory, identity.node, last_seq + 1)
        return cls._at_end(directory, identity, last, last_seq, segment_bytes, torn)

    @staticmethod
    def _first_seq_after(older: list[Path]) -> int | None:
        """Where the newest segment must start: after the last record of the one before."""
        if not older:
            return None
        reader = SegmentReader(older[-1], last_segment=False)
        for _ in reader:
            pass
        if reader.last_seq is not None:
            return reader.last_seq + 1
        return int(reader.header["first_seq"]) if reader.header else None

    @classmethod
    def _at_end(
        cls,
        directory: Path,
        identity: LogIdentity,
        path: Path,
        last_seq: int,
        segment_bytes: int,
        torn: TornTail | None,
    ) -> EventLog:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        size = os.fstat(fd).st_size
        log = cls(
            directory,
            identity,
            fd=fd,
            size=size,
            last_seq=last_seq,
            segment_bytes=segment_bytes,
            torn=torn,
        )
        log._segment_first = segment_first_seq(path)
        log._segment_crc = int(crc32c.crc32c(path.read_bytes()))
        return log

    @staticmethod
    def _set_aside(directory: Path, torn: TornTail) -> None:
        """Copy the torn bytes to ``broken/`` (durably), then truncate them away."""
        broken = directory / BROKEN_DIR
        broken.mkdir(exist_ok=True)
        target = broken / f"{torn.path.name}.{torn.offset}.broken"
        copies = 1
        while target.exists():  # an earlier repair at the same offset: keep its evidence
            copies += 1
            target = broken / f"{torn.path.name}.{torn.offset}.{copies}.broken"
        move_tail_aside(torn.path, torn.offset, target)

    @staticmethod
    def _create_segment(directory: Path, node: str, first_seq: int) -> Path:
        path = directory / segment_name(first_seq)
        header = framing.encode(
            {
                "mxrc_log": SEGMENT_FORMAT,
                "node": node,
                "first_seq": first_seq,
                "created_wall_ns": time.time_ns(),
            }
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_all(fd, header)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(directory)
        return path

    # ----------------------------------------------------------------- appending

    @property
    def last_seq(self) -> int:
        """The highest sequence number known to be durable."""
        return self._durable_seq

    def append(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        token: int = 0,
        traceparent: str | None = None,
    ) -> Record:
        """Append one record and return it once it is durable (written and fsynced).

        The calling thread may do the I/O itself (as the group's leader), which keeps a
        lone writer's latency at one write + fsync.
        """
        with self._cond:
            record = self._enqueue(event_type, payload, token, traceparent)
            while self._durable_seq < record["seq"]:
                self._check_usable()
                if not self._flushing:
                    self._flush_as_leader()
                else:
                    self._cond.wait()
        return record

    async def append_async(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        token: int = 0,
        traceparent: str | None = None,
    ) -> Record:
        """Like :meth:`append`, for asyncio code: the event loop never blocks on I/O.

        A flusher thread writes and fsyncs, then settles every future of the batch with
        one ``call_soon_threadsafe``, so N concurrent tasks cost one fsync and one loop
        wake-up per batch, not N thread wake-ups as with N threads.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Record] = loop.create_future()
        with self._cond:
            record = self._enqueue(event_type, payload, token, traceparent)
            self._async_waiters.append((record, future, loop))
            self._start_flusher()
            if len(self._pending) == 1:  # the flusher sleeps only when nothing is pending
                self._cond.notify_all()
        return await future

    def _enqueue(
        self, event_type: str, payload: Mapping[str, Any], token: int, traceparent: str | None
    ) -> Record:
        """Frame the next record into the pending batch (lock held: seq order = file order)."""
        if event_type not in self._types:
            raise UnknownEventTypeError(
                f"event type {event_type!r} is not in the event catalogue "
                f"(known: {', '.join(sorted(self._types))})"
            )
        self._check_usable()
        seq = self._next_seq
        record: Record = {
            "seq": seq,
            "wall_ns": time.time_ns(),
            "mono_ns": time.monotonic_ns(),
            "node": self.identity.node,
            "type": event_type,
            "token": token,
            "traceparent": traceparent,
            "chart": self.identity.chart,
            "chart_hash": self.identity.chart_hash,
            "payload": dict(payload),
        }
        self._pending.append(framing.encode(record))
        self._next_seq = seq + 1
        return record

    def _start_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = threading.Thread(
                target=self._flusher_loop, name="mxrc-eventlog-flusher", daemon=True
            )
            self._flusher.start()

    def _flusher_loop(self) -> None:
        with self._cond:
            while True:
                if self._pending and not self._flushing and self._failed is None:
                    with contextlib.suppress(LogFailedError):  # recorded in self._failed
                        self._flush_as_leader()
                self._settle_async()
                if self._closed or (self._failed is not None and not self._async_waiters):
                    return
                if not self._pending or self._flushing:
                    self._cond.wait()

    def _settle_async(self) -> None:
        """Resolve the futures of durable records (or fail them all); lock held."""
        if not self._async_waiters:
            return
        done = [w for w in self._async_waiters if w[0]["seq"] <= self._durable_seq]
        failed = self._failed or (LogFailedError("event log closed") if self._closed else None)
        if failed is not None:
            done = list(self._async_waiters)
        if not done:
            return
        del self._async_waiters[: len(done)]
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Record, asyncio.Future[Record]]]] = {}
        for record, future, loop in done:
            by_loop.setdefault(loop, []).append((record, future))
        error = None if failed is None else LogFailedError(f"event log {self.directory}: {failed}")
        for loop, batch in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is already closed
                loop.call_soon_threadsafe(_settle, batch, error)

    @property
    def problem(self) -> str | None:
        """Why appends are refused (for health checks), or None while the log is usable."""
        if self._failed is not None:
            return f"an append failed ({self._failed}); no appends until restart"
        if self._closed:
            return "closed"
        return None

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise LogFailedError(
                f"event log {self.directory} failed earlier ({self._failed}); "
                "it accepts no appends until the process restarts"
            )
        if self._closed:
            raise LogFailedError(f"event log {self.directory} is closed")

    def _flush_as_leader(self) -> None:
        """Called with the lock held; releases it for the I/O, re-acquires it after.

        The leader keeps flushing while records are pending (up to
        ``LEADER_ROUNDS`` batches): records appended during its fsync are then written
        at once, instead of waiting for a woken follower to take over, which on CPython
        costs a thread wake-up and a GIL hand-off per batch.
        """
        self._flushing = True
        try:
            for _ in range(LEADER_ROUNDS):
                if not self._pending:
                    break
                self._flush_pending()
        finally:
            self._flushing = False
            self._cond.notify_all()

    def _flush_pending(self) -> None:
        batch, self._pending = self._pending, []
        last = self._next_seq - 1
        first = last - len(batch) + 1
        self._cond.release()
        error: BaseException | None = None
        try:
            if self._size >= self.segment_bytes:
                self._rotate(first)
            data = b"".join(batch)
            write_all(self._fd, data)
            self._segment_crc = crc32c.crc32c(data, self._segment_crc)
            started = time.perf_counter()
            os.fsync(self._fd)
            if self.fsync_observer is not None:
                self.fsync_observer(len(batch), time.perf_counter() - started)
            self._size += len(data)
        except BaseException as exc:
            error = exc
        finally:
            self._cond.acquire()
        if error is not None:
            self._failed = error
            raise LogFailedError(f"event log {self.directory}: append failed: {error}") from error
        self._durable_seq = last
        self._cond.notify_all()

    def _rotate(self, first_seq: int) -> None:
        """Seal the full segment (durably), then start the next one."""
        write_all(self._fd, seal_line(self._segment_first, first_seq - 1, self._segment_crc))
        os.fsync(self._fd)
        path = self._create_segment(self.directory, self.identity.node, first_seq)
        new_fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.close(self._fd)
        self._fd = new_fd
        self._size = os.fstat(new_fd).st_size
        self._segment_first = first_seq
        self._segment_crc = int(crc32c.crc32c(path.read_bytes()))

    def close(self) -> None:
        """Flush what is pending, then close (async waiters are settled). Idempotent."""
        with self._cond:
            while self._flushing:
                self._cond.wait()
            if self._closed:
                return
            if self._pending and self._failed is None:
                with contextlib.suppress(LogFailedError):
                    self._flush_as_leader()
            self._closed = True
            os.close(self._fd)
            self._cond.notify_all()
            flusher = self._flusher
        if flusher is not None:
            flusher.join(timeout=5.0)

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _settle(
    batch: list[tuple[Record, asyncio.Future[Record]]], error: BaseException | None
) -> None:
    for record, future in batch:
        if future.done():  # the awaiting task was cancelled; the record is durable anyway
            continue
        if error is None:
            future.set_result(record)
        else:
            future.set_exception(error)
