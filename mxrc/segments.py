"""Reading event-log segments: header check, record verification, torn-tail detection.

Read-only; shared by the writer (which then repairs a torn tail, see
:mod:`mxrc.eventlog`) and by replay (which only reports it).

A segment is ``events-<first seq, 20 digits>.jsonl``: one framed header line, then one
framed record per line with contiguous sequence numbers. When a line fails to verify:

* if a valid record follows it, the log is **corrupt** at that offset: an error, never
  skipped, because records after it were acknowledged as durable;
* if nothing valid follows and this is the last segment, it is a **torn tail**: an
  append interrupted by a crash, so never acknowledged (a group commit can tear
  several lines at once, which is why the whole invalid suffix counts);
* anywhere else (a torn tail in an older segment) it is corruption again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from operator import methodcaller
from pathlib import Path
from typing import Any, TypedDict

import crc32c
import orjson

from mxrc import framing
from mxrc.catalog import event_types
from mxrc.errors import CorruptLogError, NotAnMxrcLogError, UnknownEventTypeError

SEGMENT_FORMAT = 1
_SEGMENT_RE = re.compile(r"^events-(\d{20})\.jsonl$")


class Record(TypedDict):
    seq: int
    wall_ns: int
    mono_ns: int
    node: str
    type: str
    token: int
    traceparent: str | None
    chart: str
    chart_hash: str
    payload: dict[str, Any]


_CHUNK = 64  # small: large batches of live dicts make CPython's cyclic GC expensive
SEAL_FORMAT = 1
_SEAL_PREFIX = b'{"mxrc_seal":'


def seal_line(first_seq: int, last_seq: int, segment_crc: int) -> bytes:
    """The last line of a rotated segment: one CRC32C over every byte before it.

    A sealed segment is immutable; readers verify it with one C call over the whole
    file instead of one checksum per record, and only the open (newest) segment pays
    per-line verification. The same idea as etcd's WAL, where rotated files are final.
    """
    return framing.encode(
        {
            "mxrc_seal": SEAL_FORMAT,
            "records": last_seq - first_seq + 1,
            "last_seq": last_seq,
            "segment_crc": segment_crc,
        }
    )


_pop_crc = methodcaller("pop", "crc")


def _parse_sealed(chunk: list[bytes]) -> list[Any]:
    """Lines of a segment whose seal already vouched for their bytes: parsed with C-level
    ``map`` calls only. Anything odd (a foreign writer) falls back to full verification."""
    try:
        records = list(map(orjson.loads, chunk))
        list(map(_pop_crc, records))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return list(map(framing.verified, chunk))
    return records


def _verify_each(chunk: list[bytes]) -> list[Any]:
    return list(map(framing.verified, chunk))


def _consistent(records: list[Any], first_seq: int, node: str, types: frozenset[str]) -> bool:
    """All lines verified, seqs contiguous from ``first_seq``, one node, known types."""
    if None in records:
        return False
    try:
        return (
            [r["seq"] for r in records] == list(range(first_seq, first_seq + len(records)))
            and {r["node"] for r in records} == {node}
            and {r["type"] for r in records} <= types
        )
    except (KeyError, TypeError):
        return False


def segment_name(first_seq: int) -> str:
    return f"events-{first_seq:020d}.jsonl"


def is_segment_name(name: str) -> bool:
    return _SEGMENT_RE.match(name) is not None


def segment_first_seq(path: Path) -> int:
    match = _SEGMENT_RE.match(path.name)
    if match is None:
        raise ValueError(f"{path} is not named like an event-log segment")
    return int(match.group(1))


def list_segments(directory: Path) -> list[Path]:
    """The directory's segment files in sequence order (other files are ignored)."""
    return sorted(p for p in directory.iterdir() if is_segment_name(p.name))


@dataclass(frozen=True)
class TornTail:
    path: Path
    offset: int
    length: int
    reason: str

    def describe(self) -> str:
        return (
            f"{self.path}: torn tail of {self.length} bytes at offset {self.offset} "
            f"({self.reason}): an append interrupted by a crash, never acknowledged"
        )


class SegmentReader:
    """Iterate the verified records of one segment; ``torn`` is set once iteration ends.

    ``last_segment``: whether a torn tail is acceptable here (only the newest segment of
    a log can have one). ``expected_first_seq``: when known from the previous segment, a
    header announcing another number is a gap and reported as corruption.
    """

    def __init__(
        self, path: Path, *, last_segment: bool, expected_first_seq: int | None = None
    ) -> None:
        self.path = path
        self.last_segment = last_segment
        self.expected_first_seq = expected_first_seq
        self.torn: TornTail | None = None
        self.header: dict[str, Any] | None = None
        self.last_seq: int | None = None
        self.valid_bytes = 0
        self.sealed = False
        self.seal_mismatch_offset: int | None = None

    def _header(self, data: bytes) -> tuple[dict[str, Any] | None, int]:
        end = data.find(b"\n")
        line = data if end < 0 else data[:end]
        try:
            header = framing.decode(line)
            if end < 0:
                raise framing.FrameError("header line is not terminated")
        except framing.FrameError as exc:
            if self.last_segment and is_segment_name(self.path.name) and b"\n" not in data:
                self.torn = TornTail(self.path, 0, len(data), f"incomplete header: {exc.reason}")
                return None, 0
            raise NotAnMxrcLogError(
                f"{self.path}: not an mxrc event log (first line is not a segment header: "
                f"{exc.reason})"
            ) from None
        if header.get("mxrc_log") != SEGMENT_FORMAT:
            raise NotAnMxrcLogError(
                f"{self.path}: not an mxrc event log segment of format {SEGMENT_FORMAT} "
                f"(header: {header!r})"
            )
        first = header.get("first_seq")
        if self.expected_first_seq is not None and first != self.expected_first_seq:
            raise CorruptLogError(
                str(self.path),
                0,
                f"segment starts at seq {first}, but the previous segment ended at "
                f"{self.expected_first_seq - 1} (sequence gap between segments)",
            )
        return header, end + 1

    def __iter__(self) -> Iterator[tuple[int, Record]]:
        """Verify and yield the records, a chunk at a time.

        A chunk whose every line verifies, with contiguous seqs, the segment's node and
        known types, is checked with C-level ``map`` and set/list comparisons; only a
        chunk that fails those checks is walked record by record to name the exact
        problem and offset. That keeps replay near the speed of bare parsing.
        """
        data = self.path.read_bytes()
        header, offset = self._header(data)
        if header is None:
            return
        self.header = header
        self.valid_bytes = offset
        node = header["node"]
        expected = int(header["first_seq"])
        known_types = event_types()
        lines = data.split(b"\n")
        del lines[0]  # the header line, already checked
        unterminated = lines.pop()  # what follows the last newline: empty unless cut short
        check = self._unseal(data, lines, expected) if not unterminated else None
        if check is None:
            check = _verify_each
        else:
            self.last_segment = False  # a seal ends it: an invalid line inside is corruption
        for start in range(0, len(lines), _CHUNK):
            chunk = lines[start : start + _CHUNK]
            records = check(chunk)
            starts = list(accumulate((len(line) + 1 for line in chunk), initial=offset))
            if not _consistent(records, expected, node, known_types):
                lines.append(unterminated)
                yield from self._walk(lines, start, records, starts, expected, node, len(data))
                return
            yield from zip(starts, records, strict=False)  # starts has one more: the end
            expected += len(records)
            offset = starts[-1]
            self.last_seq = expected - 1
            self.valid_bytes = offset
        if unterminated:
            lines.append(unterminated)
            self._bad_line(
                lines, len(lines) - 1, offset, "last line has no terminating newline", len(data)
            )
        elif self.seal_mismatch_offset is not None:
            raise CorruptLogError(
                str(self.path),
                self.seal_mismatch_offset,
                "the segment's seal does not match its records (damaged seal line)",
            )

    def _unseal(
        self, data: bytes, lines: list[bytes], first_seq: int
    ) -> Callable[[list[bytes]], list[Any]] | None:
        """If the segment ends with a seal, remove it from ``lines`` and return the
        parser to use: the cheap one when the seal matches the bytes, else the
        per-line verifier (which will find what is damaged)."""
        if not lines or not lines[-1].startswith(_SEAL_PREFIX):
            return None
        seal_bytes = lines.pop()
        seal_offset = len(data) - len(seal_bytes) - 1
        seal = framing.verified(seal_bytes)
        records = len(lines)
        if (
            seal is not None
            and seal.get("records") == records
            and seal.get("last_seq") == first_seq + records - 1
            and seal.get("segment_crc") == crc32c.crc32c(memoryview(data)[:seal_offset])
        ):
            self.sealed = True
            return _parse_sealed
        self.seal_mismatch_offset = seal_offset
        return _verify_each

    def _walk(
        self,
        lines: list[bytes],
        start: int,
        records: list[Any],
        starts: list[int],
        expected: int,
        node: str,
        size: int,
    ) -> Iterator[tuple[int, Record]]:
        """Record by record through a chunk that failed the fast checks: yield the good
        prefix, then raise the precise error (or note the torn tail) at the first bad one."""
        known_types = event_types()
        for i, record in enumerate(records):
            offset = starts[i]
            if record is None:
                line = lines[start + i]
                self._bad_line(lines, start + i, offset, framing.diagnose(line), size)
                return
            if record.get("seq") != expected or record.get("node") != node:
                raise CorruptLogError(
                    str(self.path),
                    offset,
                    f"record has seq {record.get('seq')} of node {record.get('node')!r}; "
                    f"expected seq {expected} of node {node!r}",
                )
            if record.get("type") not in known_types:
                raise UnknownEventTypeError(
                    f"{self.path}: record seq {expected} at byte offset {offset} has event "
                    f"type {record.get('type')!r}, which is not in the event catalogue "
                    f"(known: {', '.join(sorted(known_types))})"
                )
            yield offset, record
            self.last_seq = expected
            expected += 1
            self.valid_bytes = starts[i + 1]
        raise AssertionError("chunk failed the fast checks but no record did")

    def _bad_line(self, lines: list[bytes], i: int, offset: int, reason: str, size: int) -> None:
        later_valid = False
        for later in lines[i + 1 : -1]:
            try:
                framing.decode(later)
            except framing.FrameError:
                continue
            later_valid = True
            break
        if later_valid:
            why = f"{reason} (valid records follow it, so it is not a torn tail)"
            raise CorruptLogError(str(self.path), offset, why)
        if not self.last_segment:
            after = (
                "the segment is sealed"
                if self.sealed or self.seal_mismatch_offset
                else ("a newer segment follows")
            )
            why = f"{reason} ({after}, so it is not a torn tail)"
            raise CorruptLogError(str(self.path), offset, why)
        self.torn = TornTail(self.path, offset, size - offset, reason)
