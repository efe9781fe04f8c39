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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

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
        data = self.path.read_bytes()
        header, offset = self._header(data)
        if header is None:
            return
        self.header = header
        self.valid_bytes = offset
        node = header["node"]
        expected = int(header["first_seq"])
        known_types = event_types()
        lines = data[offset:].split(b"\n")
        complete = len(lines) - 1  # the element after the last newline is never a record
        for i, line in enumerate(lines):
            if i == complete and not line:
                break
            try:
                if i == complete:
                    raise framing.FrameError("last line has no terminating newline")
                record: Any = framing.decode(line)
            except framing.FrameError as exc:
                self._bad_line(lines, i, offset, exc.reason, len(data))
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
            offset += len(line) + 1
            self.valid_bytes = offset

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
            why = f"{reason} (a newer segment follows, so it is not a torn tail)"
            raise CorruptLogError(str(self.path), offset, why)
        self.torn = TornTail(self.path, offset, size - offset, reason)
