"""The writer against a real file system: ordering, group commit, rotation, reopen."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from mxrc import framing
from mxrc.errors import CorruptLogError, LogFailedError, UnknownEventTypeError
from mxrc.eventlog import EventLog, LogIdentity, read_records
from mxrc.segments import SegmentReader, list_segments, segment_first_seq

IDENT = LogIdentity("n1", "rt", "0123456789ab")


def status(i: int) -> dict[str, int]:
    return {"cycle": i, "slot": i % 10, "period_ns": 1_000_000, "deadline_misses": 0}


def test_sequence_continues_across_reopen(tmp_path: Path) -> None:
    with EventLog.open(tmp_path, IDENT) as log:
        first = [log.append("cycle_status", status(i))["seq"] for i in range(3)]
    with EventLog.open(tmp_path, IDENT) as log:
        assert log.last_seq == 3
        assert log.append("cycle_status", status(3))["seq"] == 4
    assert first == [1, 2, 3]
    assert [r["payload"]["cycle"] for r in read_records(tmp_path)] == [0, 1, 2, 3]


def test_concurrent_appenders_share_fsyncs_and_lose_nothing(tmp_path: Path) -> None:
    batches: list[int] = []
    threads, per_thread = 16, 60
    with EventLog.open(tmp_path, IDENT) as log:
        log.fsync_observer = lambda n, _seconds: batches.append(n)
        acked: list[list[int]] = [[] for _ in range(threads)]

        def writer(k: int) -> None:
            for i in range(per_thread):
                acked[k].append(log.append("cycle_status", status(k * 1000 + i))["seq"])

        workers = [threading.Thread(target=writer, args=(k,)) for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)
    total = threads * per_thread
    assert sum(batches) == total
    assert len(batches) < total / 2, f"group commit did not batch: {len(batches)} fsyncs"
    records = list(read_records(tmp_path))
    assert [r["seq"] for r in records] == list(range(1, total + 1))
    assert sorted(s for per in acked for s in per) == list(range(1, total + 1))
    for k in range(threads):  # each writer's records keep its own order
        cycles = [r["payload"]["cycle"] for r in records if r["payload"]["cycle"] // 1000 == k]
        assert cycles == sorted(cycles)


def test_segments_rotate_by_size_and_read_back_in_order(tmp_path: Path) -> None:
    with EventLog.open(tmp_path, IDENT, segment_bytes=4096) as log:
        for i in range(200):
            log.append("cycle_status", status(i))
    segments = list_segments(tmp_path)
    assert len(segments) > 5
    assert all(p.stat().st_size < 4096 + 400 for p in segments)
    assert [r["seq"] for r in read_records(tmp_path)] == list(range(1, 201))
    assert [r["seq"] for r in read_records(tmp_path, after_seq=150)] == list(range(151, 201))


def test_unknown_event_type_is_refused_before_writing(tmp_path: Path) -> None:
    with EventLog.open(tmp_path, IDENT) as log:
        with pytest.raises(UnknownEventTypeError, match="'teleport' is not in the event catalogue"):
            log.append("teleport", {})
        assert log.last_seq == 0


def test_log_of_another_node_is_refused(tmp_path: Path) -> None:
    with EventLog.open(tmp_path, IDENT) as log:
        log.append("cycle_status", status(0))
    with pytest.raises(CorruptLogError, match="belongs to node 'n1', not 'n2'"):
        EventLog.open(tmp_path, LogIdentity("n2", "rt", "0123456789ab"))


def test_async_appenders_share_fsyncs_and_get_their_own_records(tmp_path: Path) -> None:
    batches: list[int] = []

    async def main() -> list[list[int]]:
        with EventLog.open(tmp_path, IDENT) as log:
            log.fsync_observer = lambda n, _seconds: batches.append(n)

            async def writer(k: int) -> list[int]:
                got = []
                for i in range(40):
                    record = await log.append_async("cycle_status", status(k * 1000 + i))
                    assert record["payload"]["cycle"] == k * 1000 + i
                    got.append(record["seq"])
                return got

            return await asyncio.wait_for(asyncio.gather(*(writer(k) for k in range(16))), 60)

    acked = asyncio.run(main())
    assert sorted(s for per in acked for s in per) == list(range(1, 641))
    assert sum(batches) == 640
    assert len(batches) <= 640 / 4, f"async group commit did not batch: {len(batches)} fsyncs"
    assert [r["seq"] for r in read_records(tmp_path)] == list(range(1, 641))


def test_async_append_fails_cleanly_once_the_log_is_closed(tmp_path: Path) -> None:
    async def main() -> None:
        log = EventLog.open(tmp_path, IDENT)
        await log.append_async("cycle_status", status(0))
        log.close()
        with pytest.raises(LogFailedError, match="closed"):
            await asyncio.wait_for(log.append_async("cycle_status", status(1)), 10)

    asyncio.run(main())
    assert [r["seq"] for r in read_records(tmp_path)] == [1]


def test_rotated_segments_are_sealed_and_read_as_such(tmp_path: Path) -> None:
    with EventLog.open(tmp_path, IDENT, segment_bytes=4096) as log:
        for i in range(100):
            log.append("cycle_status", status(i))
    segments = list_segments(tmp_path)
    readers = [SegmentReader(p, last_segment=p == segments[-1]) for p in segments]
    counts = [sum(1 for _ in r) for r in readers]
    assert [r.sealed for r in readers] == [True] * (len(segments) - 1) + [False]
    assert sum(counts) == 100
    seal = framing.decode(segments[0].read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[1])
    assert seal["records"] == counts[0] and seal["last_seq"] == counts[0]


def test_a_sealed_newest_segment_is_continued_in_a_new_one(tmp_path: Path) -> None:
    """A crash after sealing and before the next segment existed."""
    with EventLog.open(tmp_path, IDENT, segment_bytes=4096) as log:
        for i in range(60):
            log.append("cycle_status", status(i))
    segments = list_segments(tmp_path)
    segments[-1].unlink()  # as if the crash came before the new segment was created
    sealed_until = sum(1 for _ in SegmentReader(segments[-2], last_segment=True))
    last_seq = segment_first_seq(segments[-2]) + sealed_until - 1
    with EventLog.open(tmp_path, IDENT, segment_bytes=4096) as log:
        assert log.last_seq == last_seq
        assert log.append("cycle_status", status(99))["seq"] == last_seq + 1
    assert list_segments(tmp_path)[-1].name == f"events-{last_seq + 1:020d}.jsonl"
    assert [r["seq"] for r in read_records(tmp_path)] == list(range(1, last_seq + 2))


def test_a_damaged_seal_is_corruption_at_the_seal(tmp_path: Path) -> None:
    with EventLog.open(tmp_path, IDENT, segment_bytes=4096) as log:
        for i in range(60):
            log.append("cycle_status", status(i))
    first = list_segments(tmp_path)[0]
    raw = first.read_bytes()
    seal_at = raw.rstrip(b"\n").rfind(b"\n") + 1
    first.write_bytes(raw.replace(b'"segment_crc":', b'"segment_crc":1', 1))
    with pytest.raises(CorruptLogError, match=f"offset {seal_at}: .*seal"):
        list(read_records(tmp_path))
