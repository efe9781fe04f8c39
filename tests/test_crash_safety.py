"""Crash safety of the event log, shown on real processes, real files and real fsyncs.

What the log promises, and what these tests try hard to break:

* an append that returned is on disk: no crash (SIGKILL at any moment, including during
  open, torn-tail repair and segment rotation) loses or alters it;
* whatever a crash leaves behind opens again: an interrupted write is a torn tail that
  is set aside in ``broken/`` and truncated, never returned as a record;
* damage that is not a torn tail (a bad record with valid ones after it, a flipped bit)
  is always reported with a typed error naming the file and byte offset, and the
  damaged bytes are never handed out as data nor "repaired" away;
* after a write or fsync error the log refuses every further append.

The crash drill forks real children and SIGKILLs them; every child is reaped by PID and
every wait is bounded. The RNG seed is printed, and part of every failure message;
set ``MXRC_CRASH_SEED`` to replay a failing run.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import struct
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

import pytest

from mxrc.catalog import load_catalogue
from mxrc.errors import CorruptLogError, LogFailedError, NotAnMxrcLogError, UnknownEventTypeError
from mxrc.eventlog import BROKEN_DIR, EventLog, LogIdentity, read_records
from mxrc.segments import Record, SegmentReader, list_segments, segment_first_seq
from mxrc.statechart import default_registry

NODE = "crash-node"
TYPED_ERRORS = (CorruptLogError, NotAnMxrcLogError, UnknownEventTypeError)


@cache
def identity() -> LogIdentity:
    chart = default_registry().get("rt")
    return LogIdentity(NODE, chart.name, chart.version_hash)


def expected_payload(writer: int, index: int) -> dict[str, int]:
    """The payload of the ``index``-th append of ``writer``: a pure function of the two,
    so the parent can check a record's content without trusting anything the child sent
    besides (seq, writer, index)."""
    return {
        "cycle": index,
        "slot": writer,
        "period_ns": 1_000_000 + (writer * 7919 + index * 104_729) % 999_983,
        "deadline_misses": (writer * 31 + index * 17) % 97,
    }


def seed_from_env() -> int:
    chosen = os.environ.get("MXRC_CRASH_SEED")
    seed = int(chosen) if chosen else random.SystemRandom().randrange(2**32)
    print(f"crash-safety seed: {seed} (replay with MXRC_CRASH_SEED={seed})")
    return seed


@contextmanager
def failure_context(what: str) -> Iterator[None]:
    """Prefix any failure with the seed and trial, so a red run can be replayed."""
    try:
        yield
    except Exception as exc:
        raise AssertionError(f"[{what}] {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------- building logs


def varied_payloads(n: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Real event types with valid payloads, so lines differ in length and content."""
    for i in range(n):
        kind = i % 3
        if kind == 0:
            yield "cycle_status", expected_payload(7, i)
        elif kind == 1:
            yield "datastore_write", {
                "key": f"axis{i % 4}.setpoint", "value": i * 0.25, "previous": None,
                "actor": "console",
            }
        else:
            yield "transition", {
                "trigger": "start", "source": "READY", "dest": "RUNNING", "cause": None,
                "guards": {"is_leader": True, "has_quorum": True}, "actor": "console",
            }


def build_log(directory: Path, count: int, segment_bytes: int) -> list[Record]:
    with EventLog.open(directory, identity(), segment_bytes=segment_bytes) as log:
        return [log.append(kind, payload, token=3) for kind, payload in varied_payloads(count)]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative name -> bytes), subdirectories included."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*")) if p.is_file()
    }


def restore(directory: Path, files: dict[str, bytes]) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    for name, data in files.items():
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def record_starts(data: bytes) -> list[int]:
    """Byte offsets of the records of one segment's bytes (the header line is skipped)."""
    starts: list[int] = []
    offset = data.index(b"\n") + 1
    while offset < len(data):
        starts.append(offset)
        offset = data.index(b"\n", offset) + 1
    return starts


# ------------------------------------------------------------------- the crash drill


REPORT = struct.Struct("<QII")  # seq, writer, index: 16 bytes, so one atomic pipe write
PARENT_WRITER = 1  # the parent's own appends; children use 1000 * trial + thread
CHILD_MAX_SECONDS = 20.0  # a child never outlives a vanished parent by long


def child_main(directory: Path, segment_bytes: int, trial: int, threads: int,
               report_fd: int) -> NoReturn:
    """Open the log and append from ``threads`` threads until killed.

    A (seq, writer, index) report is written to the pipe only after ``append`` returned,
    i.e. after the record was acknowledged as durable. Any error ends the child at once
    with a non-zero status, which the parent reports (it expects death by SIGKILL).
    """
    status = 70
    try:
        def die_on_error(args: threading.ExceptHookArgs) -> None:
            traceback.print_exception(args.exc_type, args.exc_value, args.exc_traceback)
            os._exit(71)

        threading.excepthook = die_on_error
        log = EventLog.open(directory, identity(), segment_bytes=segment_bytes)
        stop = time.monotonic() + CHILD_MAX_SECONDS

        def append_until_killed(writer: int) -> None:
            index = 0
            while time.monotonic() < stop:
                record = log.append(
                    "cycle_status", expected_payload(writer, index), token=writer)
                os.write(report_fd, REPORT.pack(record["seq"], writer, index))
                index += 1

        workers = [
            threading.Thread(target=append_until_killed, args=(1000 * trial + k,))
            for k in range(threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        status = 72  # ran out of time: the parent never killed us
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(status)


def reap(pid: int, timeout: float) -> int:
    """waitpid with a deadline; returns the raw wait status."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"child {pid} did not exit within {timeout} s")
        time.sleep(0.001)


def read_reports(fd: int, until: float, into: bytearray) -> bool:
    """Collect reports until ``until`` (monotonic); False once the pipe hit EOF."""
    while (remaining := until - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return False
            into += chunk
    return True


def run_child_and_kill(
    directory: Path, segment_bytes: int, trial: int, threads: int, delay: float,
) -> list[tuple[int, int, int]]:
    """Fork a writer child, SIGKILL it after ``delay`` s, return its acknowledged appends."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_fd)
            child_main(directory, segment_bytes, trial, threads, write_fd)
        finally:
            os._exit(73)
    os.close(write_fd)
    reaped = False
    try:
        reports = bytearray()
        alive = read_reports(read_fd, time.monotonic() + delay, reports)
        os.kill(pid, signal.SIGKILL)
        status = reap(pid, timeout=10.0)
        reaped = True
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
            f"the writer child ended by itself before the kill (alive={alive}, "
            f"wait status {status:#x}); see its stderr above"
        )
        eof = not read_reports(read_fd, time.monotonic() + 10.0, reports)
        assert eof, "the report pipe did not reach EOF after the child died"
    finally:
        if not reaped:  # an assertion or error above: never leave the child behind
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            reap(pid, timeout=10.0)
        os.close(read_fd)
    assert len(reports) % REPORT.size == 0, "a report was torn although pipe writes are atomic"
    return [REPORT.unpack_from(reports, i) for i in range(0, len(reports), REPORT.size)]


@dataclass
class DrillState:
    """What the parent knows was acknowledged in one log directory."""

    directory: Path
    acked: dict[int, tuple[int, int]] = field(default_factory=dict)  # seq -> (writer, index)
    verified_seq: int = 0
    trials: int = 0
    acked_by_children: int = 0
    repaired_tails: int = 0
    kills_before_first_ack: int = 0
    parent_appends: int = 0


def verify_and_append(state: DrillState, segment_bytes: int) -> None:
    """The post-crash proof: the log opens, every acknowledged record is there and intact,
    sequence numbers are contiguous, and the reopened log accepts a new append."""
    directory = state.directory
    log = EventLog.open(directory, identity(), segment_bytes=segment_bytes)
    try:
        if log.repaired_tail is not None:
            state.repaired_tails += 1
            torn = log.repaired_tail
            aside = directory / BROKEN_DIR / f"{torn.path.name}.{torn.offset}.broken"
            assert aside.stat().st_size == torn.length, f"{aside} does not hold the torn bytes"
        records = list(read_records(directory))
        seqs = [r["seq"] for r in records]
        assert seqs == list(range(1, len(records) + 1)), "sequence numbers are not contiguous"
        assert log.last_seq == len(records)
        next_index: dict[int, int] = {}
        for record in records:
            writer, index = record["payload"]["slot"], record["payload"]["cycle"]
            assert record["type"] == "cycle_status"
            assert (record["node"], record["chart"], record["chart_hash"]) == (
                NODE, identity().chart, identity().chart_hash)
            assert record["token"] == writer
            assert record["payload"] == expected_payload(writer, index), (
                f"record seq {record['seq']} does not hold the payload its writer sent")
            # one writer appends sequentially, so its records are in order and gap-free
            assert index == next_index.get(writer, 0), (
                f"writer {writer}: index {index} at seq {record['seq']}, "
                f"expected {next_index.get(writer, 0)}")
            next_index[writer] = index + 1
        for seq, (writer, index) in state.acked.items():
            assert seq <= len(records), (
                f"acknowledged seq {seq} is missing: the log ends at {len(records)}")
            record = records[seq - 1]
            assert (record["payload"]["slot"], record["payload"]["cycle"]) == (writer, index), (
                f"acknowledged seq {seq} was ({writer}, {index}), the log holds "
                f"({record['payload']['slot']}, {record['payload']['cycle']})")
        catalogue = load_catalogue()
        for record in records[state.verified_seq : state.verified_seq + 20]:
            assert catalogue.problems(dict(record)) == [], record
        state.verified_seq = len(records)

        index = state.parent_appends
        appended = log.append("cycle_status", expected_payload(PARENT_WRITER, index),
                              token=PARENT_WRITER)
        assert appended["seq"] == len(records) + 1
        state.acked[appended["seq"]] = (PARENT_WRITER, index)
        state.parent_appends += 1
    finally:
        log.close()


def crash_drill(
    tmp_path: Path, *, trials: int, budget_s: float, min_trials: int, max_delay: float
) -> None:
    seed = seed_from_env()
    rng = random.Random(seed)
    started = time.monotonic()
    states: list[DrillState] = []
    state: DrillState | None = None
    for trial in range(1, trials + 1):
        if time.monotonic() - started > budget_s:
            break
        if state is None or state.trials >= 10:  # bound re-verification cost per directory
            state = DrillState(tmp_path / f"log-{len(states)}")
            states.append(state)
        segment_bytes = rng.choice((700, 1500, 4096, 16384))
        threads = rng.randint(2, 6)
        # a quarter of the kills land in the first milliseconds: open, repair, rotation
        delay = rng.uniform(0.0, 0.012) if rng.random() < 0.25 else rng.uniform(0.012, max_delay)
        context = (f"seed={seed} trial={trial} dir={state.directory.name} "
                   f"segment_bytes={segment_bytes} threads={threads} delay={delay:.4f}s")
        with failure_context(context):
            reports = run_child_and_kill(state.directory, segment_bytes, trial, threads, delay)
            for seq, writer, index in reports:
                assert seq not in state.acked, f"seq {seq} acknowledged twice"
                state.acked[seq] = (writer, index)
            state.acked_by_children += len(reports)
            state.kills_before_first_ack += not reports
            state.trials += 1
            verify_and_append(state, segment_bytes)
    for state in states:  # the parent's last append, too, must be there when reopened
        with failure_context(f"seed={seed} final check of {state.directory.name}"):
            verify_and_append(state, 4096)
    ran = sum(s.trials for s in states)
    acked = sum(s.acked_by_children for s in states)
    segments = max(len(list_segments(s.directory)) for s in states)
    print(
        f"crash drill: seed {seed}, {ran} trials in {time.monotonic() - started:.1f} s, "
        f"{acked} acknowledged appends verified, "
        f"{sum(s.repaired_tails for s in states)} torn tails repaired, "
        f"{sum(s.kills_before_first_ack for s in states)} kills before any ack, "
        f"up to {segments} segments per log"
    )
    assert ran >= min_trials, f"only {ran} trials ran within {budget_s} s (seed {seed})"
    assert acked > 0, f"no append was ever acknowledged (seed {seed})"
    assert segments > 1, f"the drill never rotated a segment (seed {seed})"


def test_sigkill_at_random_moments_never_loses_an_acknowledged_append(tmp_path: Path) -> None:
    crash_drill(tmp_path, trials=15, budget_s=25.0, min_trials=15, max_delay=0.15)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_sigkill_drill_hundreds_of_trials(tmp_path: Path) -> None:
    crash_drill(tmp_path, trials=300, budget_s=240.0, min_trials=100, max_delay=0.4)


# ------------------------------------------------------------------------ torn tails


def test_truncation_at_every_byte_of_the_last_record_is_a_torn_tail(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    originals = build_log(origin, 14, segment_bytes=1500)
    segments = list_segments(origin)
    assert len(segments) >= 3, "the log should span several segments"
    files = snapshot(origin)
    last = segments[-1]
    data = last.read_bytes()
    start = record_starts(data)[-1]
    first_in_last = segment_first_seq(last)
    in_last = [r for r in originals if r["seq"] >= first_in_last]

    for cut in range(start, len(data)):
        work = tmp_path / f"cut-{cut}"
        restore(work, files)
        target = work / last.name
        target.write_bytes(data[:cut])
        with failure_context(f"cut at byte {cut} of {last.name} (record at {start})"):
            reader = SegmentReader(target, last_segment=True, expected_first_seq=first_in_last)
            assert [rec for _, rec in reader] == in_last[:-1]
            if cut == start:  # the whole record is missing: a clean end, nothing torn
                assert reader.torn is None
            else:
                assert reader.torn is not None, "a partial record was not reported as torn"
                assert (reader.torn.path, reader.torn.offset, reader.torn.length) == (
                    target, start, cut - start)
            assert list(read_records(work)) == originals[:-1]

            with EventLog.open(work, identity(), segment_bytes=1500) as log:
                if cut == start:
                    assert log.repaired_tail is None
                else:
                    assert log.repaired_tail is not None
                    assert (log.repaired_tail.offset, log.repaired_tail.length) == (
                        start, cut - start)
                    aside = work / BROKEN_DIR / f"{last.name}.{start}.broken"
                    assert aside.read_bytes() == data[start:cut]
                assert target.stat().st_size == start
                assert log.last_seq == originals[-1]["seq"] - 1
                again = log.append("node_stopped", {"reason": "test"})
            assert again["seq"] == originals[-1]["seq"]
            assert list(read_records(work)) == [*originals[:-1], again]
        shutil.rmtree(work)


@pytest.mark.parametrize("position", ["first segment", "after rotation"])
def test_truncation_inside_a_fresh_segment_header_is_a_torn_tail(
    tmp_path: Path, position: str
) -> None:
    origin = tmp_path / "origin"
    if position == "first segment":
        originals = build_log(origin, 1, segment_bytes=1500)
    else:
        # append until a rotation just happened: the newest segment holds one record
        with EventLog.open(origin, identity(), segment_bytes=1500) as log:
            originals = []
            for kind, payload in varied_payloads(100):
                originals.append(log.append(kind, payload))
                if len(list_segments(origin)) == 2:
                    break
        assert len(list_segments(origin)) == 2
    files = snapshot(origin)
    last = list_segments(origin)[-1]
    data = last.read_bytes()
    header_end = data.index(b"\n") + 1
    older = originals[:-1]  # the newest segment's only record goes with its header

    for cut in range(header_end + 1):
        work = tmp_path / f"cut-{cut}"
        restore(work, files)
        target = work / last.name
        target.write_bytes(data[:cut])
        with failure_context(f"cut at byte {cut} of the {header_end}-byte header"):
            reader = SegmentReader(target, last_segment=True)
            assert list(reader) == []
            if cut == header_end:  # a complete header and nothing after it: clean
                assert reader.torn is None
                assert reader.header is not None
            else:
                assert reader.torn is not None
                assert (reader.torn.offset, reader.torn.length) == (0, cut)
                assert reader.header is None
            assert list(read_records(work)) == older

            with EventLog.open(work, identity(), segment_bytes=1500) as log:
                if cut == header_end:
                    assert log.repaired_tail is None
                else:
                    assert log.repaired_tail is not None
                    aside = work / BROKEN_DIR / f"{last.name}.0.broken"
                    assert aside.read_bytes() == data[:cut]
                # the segment is there again, with a whole header for the same first seq
                assert [p.name for p in list_segments(work)][-1] == last.name
                rebuilt = SegmentReader(target, last_segment=True)
                assert list(rebuilt) == []
                assert rebuilt.torn is None and rebuilt.header is not None
                assert rebuilt.header["first_seq"] == segment_first_seq(last)
                assert log.last_seq == len(older)
                again = log.append("node_stopped", {"reason": "test"})
            assert again["seq"] == len(older) + 1
            assert list(read_records(work)) == [*older, again]
        shutil.rmtree(work)


# ------------------------------------------------------------------------- bit flips


def torn_tail_start(data: bytes, position: int) -> int | None:
    """Where a flip at ``position`` of the newest segment may be read as a torn tail.

    Only when no valid line follows the damage: a flip in the last record, or in the
    newline before it (which merges the last two lines). Anywhere else it is an error.
    """
    starts = record_starts(data)
    if not starts:
        return None
    if position >= starts[-1]:
        return starts[-1]
    if position == starts[-1] - 1 and len(starts) > 1:
        return starts[-2]
    return None


def check_one_flip(work: Path, files: dict[str, bytes], originals: list[Record],
                   name: str, position: int, bit: int) -> str:
    """Flip one bit in a fresh copy and check it is detected; returns how it was."""
    restore(work, files)
    target = work / name
    damaged = bytearray(files[name])
    damaged[position] ^= 1 << bit
    target.write_bytes(bytes(damaged))
    got: list[Record] = []
    error: Exception | None = None
    try:
        for record in read_records(work):
            got.append(record)
    except TYPED_ERRORS as exc:
        error = exc
    # whatever was returned is exactly the original data: a flipped record never is
    assert got == originals[: len(got)], "a record differing from the original was returned"
    newest = list_segments(work)[-1] == target
    torn_at = torn_tail_start(files[name], position) if newest else None
    if error is not None:
        assert torn_at is None, f"damage to the last record raised {error!r}, not a torn tail"
        assert str(target) in str(error), f"the error does not name the file: {error}"
        if isinstance(error, CorruptLogError):
            line_start = files[name].rfind(b"\n", 0, position) + 1
            assert (error.path, error.offset) == (str(target), line_start), error
        return type(error).__name__
    # no error: then it must be a torn tail of the newest segment, at the damaged line
    assert torn_at is not None, "a flipped bit went unnoticed, or was taken for a torn tail"
    assert len(got) < len(originals)
    reader = SegmentReader(target, last_segment=True)
    for _ in reader:
        pass
    assert reader.torn is not None and reader.torn.offset == torn_at <= position
    return "torn tail"


def bit_flip_drill(tmp_path: Path, flips: int, *, every_byte: bool) -> None:
    seed = seed_from_env()
    rng = random.Random(seed)
    origin = tmp_path / "origin"
    originals = build_log(origin, 24, segment_bytes=1500)
    files = snapshot(origin)
    assert len(files) >= 4, "the log should span several segments"
    places = [(name, i) for name, data in files.items() for i in range(len(data))]
    chosen = places if every_byte else [rng.choice(places) for _ in range(flips)]
    outcomes: dict[str, int] = {}
    for n, (name, position) in enumerate(chosen):
        bit = rng.randrange(8)
        with failure_context(f"seed={seed} flip {n}: bit {bit} of byte {position} of {name}"):
            how = check_one_flip(tmp_path / "work", files, originals, name, position, bit)
        outcomes[how] = outcomes.get(how, 0) + 1
    print(f"bit flips (seed {seed}): {outcomes}")
    assert outcomes.get("CorruptLogError", 0) > 0 and outcomes.get("torn tail", 0) > 0


def test_random_bit_flips_are_always_detected(tmp_path: Path) -> None:
    bit_flip_drill(tmp_path, 1500, every_byte=False)


@pytest.mark.slow
def test_a_bit_flip_in_every_byte_is_detected(tmp_path: Path) -> None:
    bit_flip_drill(tmp_path, 0, every_byte=True)


# ------------------------------------------------------------- corruption mid-log


def _change_a_digit(line: bytes) -> bytes:
    at = line.index(b'"payload":')
    at += next(i for i, c in enumerate(line[at:]) if chr(c).isdigit())
    return line[:at] + (b"7" if line[at : at + 1] != b"7" else b"3") + line[at + 1 :]


DAMAGE = {
    # a value changed in place (same length): checksum mismatch
    "digit changed": lambda data, s, e: data[:s] + _change_a_digit(data[s:e]) + data[e:],
    # a sector that came back zeroed, newline included
    "zeroed": lambda data, s, e: data[:s] + bytes(e - s) + data[e:],
    # a record that vanished: the next one carries the wrong sequence number
    "line missing": lambda data, s, e: data[:s] + data[e:],
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("which", ["newest", "second newest"])
def test_bad_record_before_valid_ones_is_corruption_and_nothing_is_modified(
    tmp_path: Path, which: str, damage: str
) -> None:
    directory = tmp_path / "log"
    with EventLog.open(directory, identity(), segment_bytes=2500) as log:
        for kind, payload in varied_payloads(200):
            log.append(kind, payload)
            segments = list_segments(directory)
            if len(segments) >= 3 and len(record_starts(segments[-1].read_bytes())) >= 4:
                break
    victim = segments[-1] if which == "newest" else segments[-2]
    data = victim.read_bytes()
    starts = record_starts(data)
    assert len(starts) >= 4
    # zeroing the newline merges the record with the next one, so two must follow it
    # for a valid one to remain after the damage
    k = (len(starts) - 2) // 2
    start, end = starts[k], starts[k + 1]
    victim.write_bytes(DAMAGE[damage](data, start, end))
    before = snapshot(directory)

    with pytest.raises(CorruptLogError) as by_reader:
        list(read_records(directory))
    with pytest.raises(CorruptLogError) as by_writer:
        EventLog.open(directory, identity(), segment_bytes=2500)
    for error in (by_reader.value, by_writer.value):
        assert (error.path, error.offset) == (str(victim), start), error
        assert str(victim) in str(error) and f"byte offset {start}" in str(error)
    assert snapshot(directory) == before, "a corrupt log was modified"
    assert not (directory / BROKEN_DIR).exists()


# ------------------------------------------------------------- write/fsync failures


@pytest.mark.parametrize("failure", ["fsync fails (EINVAL)", "write fails (EBADF)"])
def test_after_a_failed_fsync_or_write_every_thread_is_refused(
    tmp_path: Path, failure: str
) -> None:
    directory = tmp_path / "log"
    log = EventLog.open(directory, identity())
    kept = [log.append("cycle_status", expected_payload(2, i)) for i in range(3)]
    # Real OS errors, not mocks: the file descriptor under the log is swapped (dup2) for
    # one on which the kernel itself fails the call. fsync(2) on a pipe fails with
    # EINVAL after write(2) succeeded, which is exactly the "fsync failed" path; write(2)
    # on a read-only descriptor fails with EBADF. dup2 instead of a bare close keeps the
    # descriptor number from being reused by some unrelated open meanwhile.
    pipe_r, pipe_w = os.pipe()
    os.set_blocking(pipe_w, False)
    replacement = pipe_w if failure.startswith("fsync") else os.open(os.devnull, os.O_RDONLY)
    os.dup2(replacement, log._fd)
    outcomes: list[object] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        barrier.wait(timeout=10)
        for _ in range(2):
            try:
                outcomes.append(log.append("cycle_status", expected_payload(3, 0)))
            except BaseException as exc:
                outcomes.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads), "an appender hung after the failure"
        assert len(outcomes) == 16
        assert all(isinstance(o, LogFailedError) for o in outcomes), outcomes
        assert log.last_seq == kept[-1]["seq"]
        with pytest.raises(LogFailedError, match="failed earlier"):
            log.append("node_stopped", {"reason": "after failure"})
    finally:
        log.close()
        for fd in {pipe_r, pipe_w, replacement}:
            os.close(fd)
    # the acknowledged records are on disk; nothing refused made it into the file
    assert list(read_records(directory)) == kept
    with EventLog.open(directory, identity()) as reopened:
        assert reopened.last_seq == kept[-1]["seq"]
