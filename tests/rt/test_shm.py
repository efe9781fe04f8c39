"""Segments: header validation as pure logic; creation, attachment, ownership and clean-up
on real files in /dev/shm; peers with another layout refused (checked from a separately
started interpreter); and 8-byte counters hammered across processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from mxrc.rt.controlblock import ControlBlock
from mxrc.rt.ring import Ring, RingLayout
from mxrc.rt.shm import (
    DEFAULT_DIRECTORY,
    HEADER_SIZE,
    MAGIC,
    LocalRegion,
    SegmentInUseError,
    SegmentKind,
    SegmentLayout,
    SegmentNotFoundError,
    ShmError,
    ShmLayoutError,
    ShmPlatformError,
    attach_segment,
    check_platform,
    create_segment,
    creator_alive,
    decode_header,
    process_start_time,
    segment_path,
    validate_header,
)
from tests.rt import CHILD_TIMED_OUT, children, segment_names, unique_name, wait_until

LAYOUT = SegmentLayout(
    kind=SegmentKind.RING,
    version=3,
    record_size=128,
    capacity=16,
    layout_hash=0x1234_5678_9ABC_DEF0,
    body_size=2048,
)


# --- pure: header and platform ---------------------------------------------------------


def test_header_round_trips() -> None:
    raw = LAYOUT.header_bytes(4242, 777)
    assert len(raw) == HEADER_SIZE
    header = decode_header(raw)
    assert header.magic == MAGIC
    assert (header.kind, header.version, header.header_size) == (SegmentKind.RING, 3, 64)
    assert (header.record_size, header.capacity) == (128, 16)
    assert header.layout_hash == LAYOUT.layout_hash
    assert header.total_size == LAYOUT.total_size == HEADER_SIZE + 2048
    assert (header.creator_pid, header.creator_start) == (4242, 777)
    validate_header("seg", LAYOUT, header, LAYOUT.total_size)


@pytest.mark.parametrize(
    ("change", "field", "expected", "found"),
    [
        ({"kind": SegmentKind.CONTROL_BLOCK}, "kind", "RING", "CONTROL_BLOCK"),
        ({"version": 4}, "layout_version", 3, 4),
        ({"record_size": 64}, "record_size", 128, 64),
        ({"capacity": 32}, "capacity", 16, 32),
        ({"layout_hash": 1}, "layout_hash", "0x123456789abcdef0", "0x0000000000000001"),
        ({"body_size": 4096}, "total_size", 2112, 4160),
    ],
)
def test_every_header_field_mismatch_is_named_with_expected_and_found(
    change: dict[str, object], field: str, expected: object, found: object
) -> None:
    theirs = replace(LAYOUT, **change)  # type: ignore[arg-type]
    header = decode_header(theirs.header_bytes(1))
    with pytest.raises(ShmLayoutError) as info:
        validate_header("mxrc-x", LAYOUT, header, theirs.total_size)
    err = info.value
    assert (err.field, err.expected, err.found) == (field, expected, found)
    assert f"layout mismatch in {field}: expected {expected}, found {found}" in str(err)
    assert "'mxrc-x'" in str(err)


def test_foreign_bytes_and_short_files_are_named_too() -> None:
    header = decode_header(b"NOTMXRC!" + LAYOUT.header_bytes(1)[8:])
    with pytest.raises(ShmLayoutError, match=r"magic.*not an mxrc segment"):
        validate_header("s", LAYOUT, header, LAYOUT.total_size)
    good = decode_header(LAYOUT.header_bytes(1))
    with pytest.raises(ShmLayoutError, match="file_size: expected 2112, found 2000"):
        validate_header("s", LAYOUT, good, 2000)


def test_platform_check_refuses_weak_memory_models_unless_overridden() -> None:
    check_platform(machine="x86_64")
    check_platform(machine="AMD64")
    with pytest.raises(ShmPlatformError, match="aarch64"):
        check_platform(machine="aarch64")
    with pytest.warns(RuntimeWarning, match="armv7l"):
        check_platform(machine="armv7l", allow_weak_memory_order=True)


def test_platform_is_checked_when_creating_and_attaching(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    with pytest.raises(ShmPlatformError):
        create_segment(unique_name("arm"), LAYOUT)
    with pytest.raises(ShmPlatformError):
        attach_segment(unique_name("arm"), LAYOUT)


@pytest.mark.parametrize("name", ["", "../etc", "a/b", ".hidden", "x" * 200, "sp ace"])
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(ShmError, match="invalid shared memory segment name"):
        segment_path(name)


def test_local_region_has_a_valid_header() -> None:
    region = LocalRegion(LAYOUT)
    validate_header("local", LAYOUT, decode_header(region.buf), len(region.buf))
    region.u64()[HEADER_SIZE // 8] = 5
    assert region.buf[HEADER_SIZE] == 5
    region.close()


# --- real segments ----------------------------------------------------------------------


def test_creator_unlinks_on_close_attacher_does_not() -> None:
    with segment_names("seg") as (name,):
        created = create_segment(name, LAYOUT)
        path = DEFAULT_DIRECTORY / name
        assert path.exists() and path.stat().st_size == LAYOUT.total_size
        attached = attach_segment(name, LAYOUT)
        created.u64()[HEADER_SIZE // 8] = 123_456_789
        assert attached.u64()[HEADER_SIZE // 8] == 123_456_789
        assert attached.header().creator_pid == os.getpid()
        attached.close()
        assert path.exists()
        created.close()
        created.close()  # idempotent
        assert not path.exists()
        with pytest.raises(ShmError, match="closed"):
            created.u64()


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_structures_fail_cleanly_after_their_segment_is_closed(native: bool) -> None:
    with segment_names("ring") as (name,):
        ring = Ring.create(name, RingLayout(16))
        writer, reader = ring.writer(native=native), ring.reader(native=native)
        writer.write(1, 1, 1)
        ring.close()
        with pytest.raises(ValueError, match=r"released|closed"):
            writer.write(1, 2, 2)  # an error, not a write into unmapped memory
        with pytest.raises(ValueError, match=r"released|closed"):
            reader.poll()  # nor a read of it


def test_attach_reports_a_missing_segment_and_can_wait_for_it() -> None:
    with children() as kids, segment_names("late") as (name,):
        with pytest.raises(SegmentNotFoundError, match="does not exist"):
            attach_segment(name, LAYOUT)

        def create_later() -> int:
            time.sleep(0.2)
            segment = create_segment(name, LAYOUT)
            time.sleep(5)
            segment.close()
            return 0

        pid = kids.fork(create_later)
        started = time.monotonic()
        segment = attach_segment(name, LAYOUT, wait_s=10)
        assert 0.1 < time.monotonic() - started < 10
        assert not segment.owner
        segment.close()
        kids.kill(pid)
        kids.reap(pid)


def test_a_half_initialised_segment_is_not_attached() -> None:
    with segment_names("half") as (name,):
        path = DEFAULT_DIRECTORY / name
        path.write_bytes(bytes(8) + LAYOUT.header_bytes(999_999)[8:] + bytes(2048))
        with pytest.raises(ShmLayoutError, match="magic") as info:
            attach_segment(name, LAYOUT, wait_s=0.05)
        assert "has not finished initialising" in str(info.value)


def test_a_foreign_file_is_neither_attached_nor_replaced() -> None:
    with segment_names("foreign") as (name,):
        path = DEFAULT_DIRECTORY / name
        path.write_bytes(b"some other program's data" + bytes(4000))
        with pytest.raises(ShmLayoutError, match="magic"):
            attach_segment(name, LAYOUT)
        with pytest.raises(ShmError, match="not an mxrc shared memory segment"):
            create_segment(name, LAYOUT)
        assert path.read_bytes().startswith(b"some other")


def test_a_live_creator_keeps_its_segment_a_dead_ones_is_replaced() -> None:
    with children() as kids, segment_names("owned") as (name,):
        first = create_segment(name, LAYOUT)
        with pytest.raises(SegmentInUseError, match=f"pid {os.getpid()}"):
            create_segment(name, LAYOUT)  # even by the same process: two creators fight
        first.close()

        def create_and_hang() -> int:
            create_segment(name, LAYOUT)
            time.sleep(30)
            return CHILD_TIMED_OUT

        pid = kids.fork(create_and_hang)
        path = DEFAULT_DIRECTORY / name
        wait_until(path.exists, 10, "the child to create")
        wait_until(lambda: path.read_bytes()[:8] == MAGIC, 10, "the child to initialise")
        with pytest.raises(SegmentInUseError, match=f"pid {pid}"):
            create_segment(name, LAYOUT)
        kids.kill(pid)
        assert kids.exit_code(pid) == -9
        assert path.exists()  # SIGKILL: nobody unlinked it
        replaced = create_segment(name, LAYOUT)  # stale: its creator is gone
        assert replaced.header().creator_pid == os.getpid()
        replaced.close()


def test_a_recycled_pid_is_not_mistaken_for_the_creator() -> None:
    me = os.getpid()
    start = process_start_time(me)
    assert start is not None and start > 0
    assert creator_alive(me, start)
    assert not creator_alive(me, start + 1)  # same PID, another process
    assert not creator_alive(0, 0)


def test_close_does_not_unlink_a_newer_segment_of_the_same_name() -> None:
    with segment_names("renamed") as (name,):
        old = create_segment(name, LAYOUT)
        os.unlink(DEFAULT_DIRECTORY / name)  # e.g. an operator cleaned /dev/shm
        newer = create_segment(name, replace(LAYOUT, capacity=8))
        old.close()
        assert (DEFAULT_DIRECTORY / name).exists()
        newer.close()
        assert not (DEFAULT_DIRECTORY / name).exists()


PEER = textwrap.dedent(
    """
    import json, sys
    from mxrc.rt.shm import ShmLayoutError
    from mxrc.rt.ring import Ring, RingLayout
    from mxrc.rt.controlblock import ControlBlock
    from mxrc.rt.datastore import DataStoreSegment, KeyTable
    ring, ring_v2, cb, ds = sys.argv[1:5]
    keys = KeyTable.from_config({"kp": {"type": "f64", "writer": "nonrt"},
                                 "x": {"type": "i64", "writer": "nonrt"}})
    attempts = {
        "other record size": lambda: Ring.attach(ring, RingLayout(64, payload_size=128)),
        "other payload format": lambda: Ring.attach(ring, RingLayout(64, payload_size=56)),
        "other capacity": lambda: Ring.attach(ring, RingLayout(128)),
        "other version": lambda: Ring.attach(ring_v2, RingLayout(64)),
        "other kind": lambda: Ring.attach(cb, RingLayout(64)),
        "other key table": lambda: DataStoreSegment.attach(ds, keys),
        "same layout": lambda: Ring.attach(ring, RingLayout(64)),
    }
    out = {}
    for what, attach in attempts.items():
        try:
            attach().close()
            out[what] = "attached"
        except ShmLayoutError as exc:
            out[what] = [exc.field, str(exc.expected), str(exc.found), str(exc)]
    print(json.dumps(out))
    """
)


def test_peers_with_another_layout_are_refused_naming_what_differs() -> None:
    from mxrc.rt.datastore import DataStoreSegment, KeyTable

    with segment_names("ring", "ringv2", "cb", "ds") as names:
        ring_name, v2_name, cb_name, ds_name = names
        keys = KeyTable.from_config(
            {"kp": {"type": "f64", "writer": "nonrt"}, "x": {"type": "f64", "writer": "nonrt"}}
        )
        v2 = replace(RingLayout(64).segment_layout(), version=2)
        with (
            Ring.create(ring_name, RingLayout(64)),
            create_segment(v2_name, v2),
            ControlBlock.create(cb_name),
            DataStoreSegment.create(ds_name, keys),
        ):
            result = subprocess.run(
                [sys.executable, "-c", PEER, *names],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=Path(__file__).parents[2],
            )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["same layout"] == "attached"
    assert out["other record size"][:3] == ["record_size", "192", "128"]
    assert out["other payload format"][0] == "record_format_hash"
    assert out["other capacity"][:3] == ["capacity", "128", "64"]
    assert out["other version"][:3] == ["layout_version", "1", "2"]
    assert out["other kind"][:3] == ["kind", "RING", "CONTROL_BLOCK"]
    assert out["other key table"][0] == "key_table_hash"
    assert "key 'x' is i64 here but f64 in the segment" in out["other key table"][3]


# --- counters across processes ------------------------------------------------------------

PATTERN = 0x0000_0001_0000_0001  # k * PATTERN has both 32-bit halves equal to k


def _count_up(name: str, limit_s: float) -> int:
    segment = attach_segment(name, LAYOUT)
    q = segment.u64()
    word = HEADER_SIZE // 8
    k = 1
    deadline = time.monotonic() + limit_s
    while True:
        for _ in range(4096):
            q[word] = k * PATTERN
            k += 1
        if time.monotonic() > deadline:
            return CHILD_TIMED_OUT


def counter_drill(seconds: float) -> None:
    """One process counts, another reads: values must never tear or go back. Writing the
    same counter with ``struct.pack_into("<Q", ...)`` instead (which stores byte by byte)
    fails this drill within a second on x86-64: the reader sees the counter drop to 0."""
    with children() as kids, segment_names("ctr") as (name,):
        segment = create_segment(name, LAYOUT)
        try:
            q = segment.u64()
            word = HEADER_SIZE // 8
            pid = kids.fork(lambda: _count_up(name, seconds + 30))
            wait_until(lambda: q[word] > 1000 * PATTERN, 10, "the counter to move")
            reads = 0
            last = 0
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                for _ in range(2000):
                    value: int = q[word]
                    low, high = value & 0xFFFF_FFFF, value >> 32
                    assert low == high, f"torn counter read {value:#018x}"
                    assert value >= last, f"counter went back: {last:#x} -> {value:#x}"
                    last = value
                    reads += 1
            kids.kill(pid)
            assert kids.exit_code(pid) == -9
        finally:
            segment.close()
    print(f"counter drill: {reads} reads, reached {last >> 32}")
    assert last >> 32 > 10_000, "the writer barely ran"


def test_counters_written_through_the_word_view_never_tear_or_go_back() -> None:
    counter_drill(seconds=1.5)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_counter_drill_long() -> None:
    counter_drill(seconds=30.0)
