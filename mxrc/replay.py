"""Incident analysis over event logs: merge nodes, filter, fold to a moment, verify, chart.

Everything here reads and nothing writes: replay runs on the evidence of an incident,
so it must never repair, truncate or rename anything (a torn tail is reported, not cut).

The pure parts (time syntax, filters, the fold to a moment, the verification checks, the
RUNNING intervals and their overlaps, the timeline model) take records, not files, so
they are tested without a disk; the I/O is confined to :class:`NodeLog`, which streams
one node's segments in sequence order. Several nodes are merged with ``heapq.merge`` on
``(wall_ns, node, seq)``, so memory stays bounded by one segment per node whatever the
size of the logs.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import orjson

from mxrc import framing
from mxrc.catalog import Catalogue, event_types, load_catalogue
from mxrc.errors import CorruptLogError, NotAnMxrcLogError, UnknownChartError, UsageError
from mxrc.nodestate import NodeState
from mxrc.segments import Record, SegmentReader, TornTail, is_segment_name, list_segments
from mxrc.statechart import Chart, default_registry

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
RUNNING = "RUNNING"
EVENTLOG_DIR = "eventlog"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HEADER_LIMIT = 64 * 1024  # a segment header is ~100 bytes; never read a whole bad file

ByteCounter = Callable[[int], None]
"""Told how many input bytes were consumed, as they are (drives the progress bar)."""

# --------------------------------------------------------------------------- time syntax

TIME_FORMS = (
    "an ISO date-time (2026-11-22T05:30:00Z, '2026-11-22 05:30:00.250', ...+02:00; "
    "no offset = UTC), a time of day on the date of the first record (05:30, 05:30:15.250), "
    "@<unix seconds> (@1795325400.5) or +<n>s|ms|m after the first record (+90s, +1.5m)"
)

_FRACTION = r"(?:[.,](?P<frac>\d{1,9}))?"
_ISO_RE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[T ](?P<h>\d{2}):(?P<m>\d{2})(?::(?P<s>\d{2})" + _FRACTION + r")?)?"
    r"(?P<tz>[Zz]|[+-]\d{2}(?::?\d{2})?)?$"
)
_CLOCK_RE = re.compile(r"^(?P<h>\d{1,2}):(?P<m>\d{2})(?::(?P<s>\d{2})" + _FRACTION + r")?[Zz]?$")
_NUMBER = r"(?P<num>\d+(?:\.\d*)?|\.\d+)"
_UNIX_RE = re.compile(r"^@" + _NUMBER + r"$")
_RELATIVE_RE = re.compile(r"^\+" + _NUMBER + r"(?P<unit>ms|s|m)$")
_UNIT_NS = {"ms": NS_PER_MS, "s": NS_PER_S, "m": 60 * NS_PER_S}


def needs_first_record(text: str) -> bool:
    """Whether ``text`` is relative to the first record, so the caller must find it."""
    text = text.strip()
    return bool(_CLOCK_RE.match(text) or _RELATIVE_RE.match(text))


def parse_time(text: str, *, option: str = "time", first_ns: int | None = None) -> int:
    """Read a user-typed time as ns since the epoch (UTC).

    One function for every option so that ``--at``, ``--since`` and ``--until`` accept
    exactly the same forms (see :data:`TIME_FORMS`). ``first_ns`` is the wall time of
    the inputs' first record: time-of-day and ``+offset`` forms are relative to it,
    because an incident is usually described as "at 05:31" or "two minutes in".
    """
    stripped = text.strip()
    try:
        value = _parse(stripped, first_ns)
    except (ValueError, InvalidOperation, OverflowError):
        value = None
    if value is None:
        raise UsageError(f"{option}: cannot read {text!r} as a time; use {TIME_FORMS}")
    if value < 0:
        raise UsageError(f"{option}: {text!r} is before 1970, which no event log contains")
    return value


def _parse(text: str, first_ns: int | None) -> int | None:
    if match := _UNIX_RE.match(text):
        return int((Decimal(match["num"]) * NS_PER_S).to_integral_value())
    if match := _ISO_RE.match(text):
        return _iso_ns(match)
    relative = _RELATIVE_RE.match(text)
    clock = _CLOCK_RE.match(text)
    if (relative or clock) and first_ns is None:
        raise ValueError("relative time without a first record")
    if relative and first_ns is not None:
        offset = Decimal(relative["num"]) * _UNIT_NS[relative["unit"]]
        return first_ns + int(offset.to_integral_value())
    if clock and first_ns is not None:
        day = datetime.fromtimestamp(first_ns // NS_PER_S, UTC).date()
        return _day_ns(day, clock, UTC)
    return None


def _fraction_ns(frac: str | None) -> int:
    return int((frac or "").ljust(9, "0"))


def _day_ns(day: date, match: re.Match[str], tz: timezone) -> int:
    moment = datetime(day.year, day.month, day.day, int(match["h"] or 0), int(match["m"] or 0),
                      int(match["s"] or 0), tzinfo=tz)
    seconds = (moment - _EPOCH) // timedelta(seconds=1)
    return seconds * NS_PER_S + _fraction_ns(match["frac"])


def _iso_ns(match: re.Match[str]) -> int:
    day = date.fromisoformat(match["date"])
    tz_text = match["tz"]
    tz = UTC
    if tz_text and tz_text.upper() != "Z":
        digits = tz_text[1:].replace(":", "")
        minutes = int(digits[:2]) * 60 + int(digits[2:] or 0)
        sign = -1 if tz_text[0] == "-" else 1
        tz = timezone(sign * timedelta(minutes=minutes))
    return _day_ns(day, match, tz)


def format_time(wall_ns: int) -> str:
    """UTC, millisecond precision, ``Z``: the one way replay prints a moment."""
    seconds, rest = divmod(wall_ns, NS_PER_S)
    moment = _EPOCH + timedelta(seconds=seconds)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{rest // NS_PER_MS:03d}Z"


def format_duration(ns: int) -> str:
    """Compact and unambiguous (``1h02m03.456s``, ``12.500s``, ``250ms``)."""
    sign = "-" if ns < 0 else ""
    ms = abs(ns) // NS_PER_MS
    if ms < 1000:
        return f"{sign}{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest // 1000}.{rest % 1000:03d}s"
    if hours:
        return f"{sign}{hours}h{minutes:02d}m{seconds.zfill(7)}"
    if minutes:
        return f"{sign}{minutes}m{seconds.zfill(7)}"
    return sign + seconds


# --------------------------------------------------------------------------- finding logs


class LocatedRecord(NamedTuple):
    """A record and where it was read, so a report can name the file and byte offset."""

    record: Record
    path: Path
    offset: int


@dataclass
class NodeLog:
    """One node's event log as found on disk; streams its records on demand.

    ``newest`` is the newest segment of the directory: only there is a torn tail an
    interrupted append rather than corruption, even when the user picked older files.
    ``torn`` is filled in by the last complete read.
    """

    node: str
    directory: Path
    segments: tuple[Path, ...]
    newest: Path
    sizes: tuple[int, ...]
    torn: TornTail | None = None

    @property
    def size_bytes(self) -> int:
        return sum(self.sizes)

    def located(
        self, on_bytes: ByteCounter | None = None, *, strict: bool = True
    ) -> Iterator[LocatedRecord]:
        """Verified records in sequence order (CRC checked by :class:`SegmentReader`).

        No ``expected_first_seq`` is passed on purpose: a gap between segments is a
        finding for ``verify`` to report with the others, not a reason to stop reading.
        ``strict`` refuses a record whose envelope cannot be placed on the time axis
        (:func:`envelope_problem`); ``verify`` turns it off to report it as a finding.
        """
        self.torn = None
        for path, size in zip(self.segments, self.sizes, strict=True):
            reader = SegmentReader(path, last_segment=path == self.newest)
            counted = 0
            for offset, record in reader:
                if on_bytes is not None:
                    on_bytes(offset - counted)
                    counted = offset
                if strict and (problem := envelope_problem(record)) is not None:
                    raise CorruptLogError(
                        str(path), offset,
                        f"record seq {record['seq']}: {problem} (its checksum matches, so it "
                        "was written like this; `mxrc replay --verify` lists every such record)",
                    )
                yield LocatedRecord(record, path, offset)
            if on_bytes is not None:
                on_bytes(max(size - counted, 0))
            if reader.torn is not None:
                self.torn = reader.torn

    def records(self, on_bytes: ByteCounter | None = None) -> Iterator[Record]:
        for located in self.located(on_bytes):
            yield located.record


_ENVELOPE: tuple[tuple[str, tuple[type, ...]], ...] = (
    ("wall_ns", (int,)), ("mono_ns", (int,)), ("token", (int,)), ("type", (str,)),
    ("chart", (str,)), ("chart_hash", (str,)), ("payload", (dict,)),
    ("traceparent", (str, type(None))),
)


def envelope_problem(record: Record) -> str | None:
    """What makes a record's envelope unusable for merging, filtering and folding, if any.

    Cheap type checks only (full schema validation costs ~100x more and is ``verify``'s
    job): enough that no later step fails on a missing or mistyped member.
    """
    untyped: dict[str, Any] = dict(record)
    for key, kinds in _ENVELOPE:
        if key not in untyped:
            return f"no {key!r} member"
        value = untyped[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and int in kinds):
            return f"{key!r} is {value!r}, not of type {'/'.join(k.__name__ for k in kinds)}"
    return None


class _Reading:
    """Streams a log's records while remembering the current one, so that a payload the
    fold cannot read (valid checksum, wrong shape) is reported with file and offset."""

    def __init__(self, log: NodeLog, on_bytes: ByteCounter | None = None) -> None:
        self.log = log
        self.on_bytes = on_bytes
        self.current: LocatedRecord | None = None

    def __iter__(self) -> Iterator[Record]:
        for located in self.log.located(self.on_bytes):
            self.current = located
            yield located.record

    def error(self, exc: Exception) -> CorruptLogError:
        here = self.current
        path, offset = (str(here.path), here.offset) if here else (str(self.log.directory), 0)
        what = f"record seq {here.record['seq']} ({here.record['type']})" if here else "a record"
        return CorruptLogError(
            path, offset,
            f"{what} does not match its event schema ({type(exc).__name__}: {exc}); "
            "`mxrc replay --verify` lists every such record",
        )


class RawLines:
    """Reads back records' stored bytes (crc included) by file and offset.

    For ``--format jsonl``: the output lines are then the log's own lines, still
    verifiable with their checksum. One handle per log directory is kept open, since a
    node's records arrive in segment order.
    """

    def __init__(self) -> None:
        self._open: dict[Path, tuple[Path, BinaryIO]] = {}

    def line(self, located: LocatedRecord) -> bytes:
        current = self._open.get(located.path.parent)
        if current is None or current[0] != located.path:
            if current is not None:
                current[1].close()
            current = (located.path, located.path.open("rb"))
            self._open[located.path.parent] = current
        handle = current[1]
        handle.seek(located.offset)
        return handle.readline()

    def close(self) -> None:
        for _, handle in self._open.values():
            handle.close()
        self._open.clear()


def open_logs(paths: Iterable[str | Path]) -> list[NodeLog]:
    """Find every node's log under ``paths``, sorted by node name.

    A path may be a segment file, a log directory (``events-*.jsonl``), a node data
    directory (``eventlog/``) or a directory of node data directories (a drill's
    output), so that whatever a colleague hands over can be replayed as it is.
    Only segment headers are read here; records are streamed later.
    """
    chosen: dict[Path, set[Path]] = {}
    for raw in paths:
        for directory, segments in _segments_under(Path(raw)):
            chosen.setdefault(directory, set()).update(segments)
    logs = [_node_log(directory, segments) for directory, segments in chosen.items()]
    by_node: dict[str, NodeLog] = {}
    for log in logs:
        other = by_node.setdefault(log.node, log)
        if other is not log:
            raise UsageError(
                f"node {log.node!r} has event logs in two places ({other.directory} and "
                f"{log.directory}); pass only one of them"
            )
    return sorted(logs, key=lambda log: log.node)


def _has_segments(directory: Path) -> bool:
    return directory.is_dir() and any(is_segment_name(p.name) for p in directory.iterdir())


def _segments_under(path: Path) -> list[tuple[Path, list[Path]]]:
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    if path.is_file():
        return [(path.resolve().parent, [path.resolve()])]
    candidates = [path, path / EVENTLOG_DIR]
    children = sorted(c for c in path.iterdir() if c.is_dir())
    for child in children:
        candidates += [child / EVENTLOG_DIR, child]
    for candidate in candidates[:2]:
        if _has_segments(candidate):
            return [(candidate.resolve(), list_segments(candidate.resolve()))]
    found = [(c.resolve(), list_segments(c.resolve())) for c in candidates[2:]
             if _has_segments(c)]
    if not found:
        raise NotAnMxrcLogError(
            f"{path}: no mxrc event log here (looked for events-*.jsonl in it, in "
            f"{path / EVENTLOG_DIR}, and in */{EVENTLOG_DIR} below it)"
        )
    return found


def _node_log(directory: Path, segments: Collection[Path]) -> NodeLog:
    ordered = tuple(sorted(segments, key=lambda p: p.name))
    in_dir = list_segments(directory)
    newest = in_dir[-1] if in_dir else ordered[-1]
    if ordered[-1].name > newest.name or not is_segment_name(ordered[-1].name):
        newest = ordered[-1]
    node = _node_name(ordered, newest)
    sizes = tuple(p.stat().st_size for p in ordered)
    return NodeLog(node, directory, ordered, newest, sizes)


def _node_name(segments: Sequence[Path], newest: Path) -> str:
    """The node named by the first readable segment header.

    A newest segment whose header itself was torn (a crash right after rotation) holds
    nothing; the reader reports it later, so the node is then named by its directory.
    """
    for path in segments:
        with path.open("rb") as handle:
            line = handle.readline(_HEADER_LIMIT)
        try:
            header = framing.decode(line)
        except framing.FrameError as exc:
            if path == newest and not line.endswith(b"\n") and is_segment_name(path.name):
                continue
            raise NotAnMxrcLogError(
                f"{path}: not an mxrc event log (first line is not a segment header: "
                f"{exc.reason})"
            ) from None
        node = header.get("node")
        if not isinstance(node, str) or not node:
            raise NotAnMxrcLogError(f"{path}: segment header names no node: {header!r}")
        return node
    directory = segments[0].parent
    return directory.parent.name if directory.name == EVENTLOG_DIR else directory.name


# --------------------------------------------------------------------------- filtering


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace id inside a W3C ``traceparent`` (what a trace viewer shows)."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    return parts[1].lower() if len(parts) >= 3 else None


_TRACE_ID_RE = re.compile(r"^[0-9a-fA-F]{32}$")


def normalise_trace_id(text: str) -> str:
    """Accept a bare trace id or a whole ``traceparent`` copied from a log or a header."""
    candidate = text.strip()
    if not _TRACE_ID_RE.match(candidate):
        candidate = trace_id_of(candidate) or ""
    if not _TRACE_ID_RE.match(candidate):
        raise UsageError(
            f"--trace-id: {text!r} is not a trace id; give 32 hex digits "
            "(4bf92f3577b34da6a3ce929d0e0e4736) or a whole traceparent (00-<trace id>-...)"
        )
    return candidate.lower()


def check_types(types: Iterable[str]) -> frozenset[str]:
    """Refuse event types the catalogue does not define (a typo would match nothing)."""
    wanted = frozenset(types)
    known = event_types()
    unknown = sorted(wanted - known)
    if unknown:
        raise UsageError(
            f"unknown event type(s) {', '.join(unknown)}; known types: {', '.join(sorted(known))}"
        )
    return wanted


def select_nodes(logs: Sequence[NodeLog], nodes: Iterable[str] | None) -> list[NodeLog]:
    """Keep the logs of ``nodes``; an unknown name is an error rather than empty output."""
    if nodes is None:
        return list(logs)
    wanted = set(nodes)
    present = {log.node for log in logs}
    missing = sorted(wanted - present)
    if missing:
        raise UsageError(
            f"no log of node(s) {', '.join(missing)} in the inputs; nodes found: "
            f"{', '.join(sorted(present)) or 'none'}"
        )
    return [log for log in logs if log.node in wanted]


@dataclass(frozen=True)
class RecordFilter:
    """Which records to show; every bound is inclusive and ``None`` means "any"."""

    since: int | None = None
    until: int | None = None
    types: frozenset[str] | None = None
    nodes: frozenset[str] | None = None
    trace_id: str | None = None

    def matches(self, record: Record) -> bool:
        wall = record["wall_ns"]
        return (
            (self.since is None or wall >= self.since)
            and (self.until is None or wall <= self.until)
            and (self.types is None or record["type"] in self.types)
            and (self.nodes is None or record["node"] in self.nodes)
            and (self.trace_id is None or trace_id_of(record["traceparent"]) == self.trace_id)
        )


def merge_order(located: LocatedRecord) -> tuple[int, str, int]:
    """The one time axis: wall clock, then node name and sequence to break ties stably."""
    record = located.record
    return record["wall_ns"], record["node"], record["seq"]


def merge_located(streams: Iterable[Iterable[LocatedRecord]]) -> Iterator[LocatedRecord]:
    """Lazily merge per-node streams onto one time axis.

    Each node keeps its sequence order even if its wall clock stepped back (``heapq.merge``
    never reorders within one input), so a clock step shows up as records slightly out
    of time order rather than as a node's history shuffled.
    """
    return heapq.merge(*streams, key=merge_order)


def iter_located(
    logs: Sequence[NodeLog],
    *,
    since: int | None = None,
    until: int | None = None,
    types: Iterable[str] | None = None,
    nodes: Iterable[str] | None = None,
    trace_id: str | None = None,
    on_bytes: ByteCounter | None = None,
) -> Iterator[LocatedRecord]:
    """Like :func:`iter_records`, keeping each record's file and offset."""
    chosen = select_nodes(logs, nodes)
    wanted = RecordFilter(
        since=since,
        until=until,
        types=None if types is None else check_types(types),
        trace_id=None if trace_id is None else normalise_trace_id(trace_id),
    )
    merged = merge_located(log.located(on_bytes) for log in chosen)
    return (item for item in merged if wanted.matches(item.record))


def iter_records(
    logs: Sequence[NodeLog],
    *,
    since: int | None = None,
    until: int | None = None,
    types: Iterable[str] | None = None,
    nodes: Iterable[str] | None = None,
    trace_id: str | None = None,
    on_bytes: ByteCounter | None = None,
) -> Iterator[Record]:
    """All nodes' records on one wall-clock axis, filtered; streamed, never all loaded."""
    located = iter_located(logs, since=since, until=until, types=types, nodes=nodes,
                           trace_id=trace_id, on_bytes=on_bytes)
    return (item.record for item in located)


def check_range(since: int | None, until: int | None) -> None:
    """An empty window is a mistake worth saying, not an empty answer."""
    if since is not None and until is not None and until < since:
        raise UsageError(
            f"--until {format_time(until)} is before --since {format_time(since)}"
        )


def first_wall_ns(logs: Sequence[NodeLog]) -> int | None:
    """Wall time of the earliest first record: the anchor of relative time forms."""
    times = [t for t in map(_first_wall_ns, logs) if t is not None]
    return min(times) if times else None


def _first_wall_ns(log: NodeLog) -> int | None:
    """Reads two lines, not a segment; anything unusual goes through the full reader,
    which reports it properly."""
    if log.segments:
        with log.segments[0].open("rb") as handle:
            handle.readline(_HEADER_LIMIT)
            line = handle.readline(_HEADER_LIMIT)
        try:
            wall = framing.decode(line).get("wall_ns")
        except framing.FrameError:
            wall = None
        if isinstance(wall, int) and not isinstance(wall, bool):
            return wall
    first = next(log.records(), None)
    return None if first is None else first["wall_ns"]


# --------------------------------------------------------------------------- summaries


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def summarize(record: Record) -> str:
    """One human line per record, as an incident report would phrase it."""
    describe: Callable[[dict[str, Any]], str] | None = _SUMMARIES.get(record["type"])
    return describe(record["payload"]) if describe is not None else _json(record["payload"])


def summarize_cycle(p: dict[str, Any]) -> str:
    period = p.get("period_ns")
    every = format_duration(period) if isinstance(period, int) else "?"
    return (f"cycle {p.get('cycle', '?')} slot {p.get('slot', '?')}, "
            f"{p.get('deadline_misses', '?')} deadline misses (period {every})")


def summarize_write(p: dict[str, Any]) -> str:
    return (f"{p.get('key', '?')} = {_json(p.get('value'))} "
            f"(was {_json(p.get('previous'))}) by {p.get('actor', '?')}")


def summarize_stop(p: dict[str, Any]) -> str:
    return f"stopped ({p.get('reason', '?')})"


def summarize_transition(p: dict[str, Any]) -> str:
    trigger, source, dest = p.get("trigger", "?"), p.get("source", "?"), p.get("dest", "?")
    cause, actor = p.get("cause"), p.get("actor", "?")
    if trigger == "fault":
        return f"fault {source} → {dest} cause={cause} by {actor}"
    because = f" cause={cause}" if cause else ""
    return f"{source} → {dest}  {trigger} by {actor}{because}"


def summarize_rejection(p: dict[str, Any]) -> str:
    reason = p.get("reason", "?")
    if reason == "illegal":
        detail = f"legal: {', '.join(p.get('legal') or []) or 'none'}"
    elif reason == "guard":
        detail = f"failed: {', '.join(p.get('failed_guards') or []) or 'none'}"
    else:
        detail = str(p.get("message", "")).split(";", 1)[0]
    return (f"rejected {p.get('trigger', '?')} in {p.get('state', '?')}: {reason} ({detail}) "
            f"by {p.get('actor', '?')}")


def summarize_start(p: dict[str, Any]) -> str:
    previous = p.get("previous_shutdown")
    verb = "first boot" if previous == "first_boot" else f"restart after {previous}"
    checkpoint = p.get("recovered_from_checkpoint")
    source = f"checkpoint seq {checkpoint} + " if checkpoint is not None else ""
    torn = p.get("torn_tail_bytes") or 0
    cut = f", cut a torn tail of {torn} B" if torn else ""
    return (f"{verb} (pid {p.get('pid', '?')}, v{p.get('version', '?')}): state "
            f"{p.get('recovered_state', '?')} from {source}{p.get('replayed_records', '?')} "
            f"records{cut}")


def summarize_lease(p: dict[str, Any]) -> str:
    until = p.get("valid_until_wall_ns")
    valid = f" valid until {format_time(until)}" if isinstance(until, int) else ""
    if p.get("leader"):
        return f"leader, token {p.get('token', '?')}{valid} ({p.get('backend', '?')})"
    quorum = "" if p.get("quorum") else ", no quorum"
    held = f"; was{valid}" if valid else ""
    return (f"not leader (holder {p.get('holder') or 'none'}{quorum}){held}: "
            f"{p.get('detail', '')}")


_SUMMARIES: dict[str, Callable[[dict[str, Any]], str]] = {
    "lease": summarize_lease,
    "transition": summarize_transition,
    "command_rejected": summarize_rejection,
    "node_started": summarize_start,
    "node_stopped": summarize_stop,
    "cycle_status": summarize_cycle,
    "datastore_write": summarize_write,
}


# --------------------------------------------------------------------------- state at a moment


@dataclass(frozen=True)
class NodeAt:
    """One node at one moment: its state, since when, and the record that put it there.

    ``process`` is what the log says about the process then: ``up``, ``stopped`` (a
    clean node_stopped), ``crashed`` (the next record is a restart without a stop, so
    the process died somewhere after ``last_ns``) or ``no records yet``.
    """

    node: str
    at_ns: int
    chart: str | None
    state: str | None
    since_ns: int | None
    since_seq: int | None
    trigger: str | None
    cause: str | None
    actor: str | None
    process: str
    last_seq: int | None
    last_ns: int | None
    boots: int
    token: int
    restarted_ns: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("at", "since", "last", "restarted"):
            value = data[f"{key}_ns"]
            data[key] = None if value is None else format_time(value)
        return data


InitialOf = Callable[[str, str], str]
"""``(chart, chart_hash) -> initial state``: how a fold learns where a chart starts."""


def node_at(node: str, records: Iterable[Record], wall_ns: int, initial_of: InitialOf) -> NodeAt:
    """Fold ``records`` (one node, sequence order) up to ``wall_ns`` with ``NodeState.apply``.

    Stops at the first record after the moment, which it only peeks at to tell a
    crashed process from a live one: that is why callers can hand over a lazy stream.
    """
    state = NodeState()
    process = "no records yet"
    first_seq: int | None = None
    last: Record | None = None
    following: Record | None = None
    for record in records:
        if record["wall_ns"] > wall_ns:
            following = record
            break
        first_seq = record["seq"] if first_seq is None else first_seq
        state.apply(record)
        process = {"node_started": "up", "node_stopped": "stopped"}.get(record["type"], "up")
        last = record
    if last is None:
        return NodeAt(node, wall_ns, None, None, None, None, None, None, None, process,
                      None, None, 0, 0)
    restarted: int | None = None
    if following is not None and following["type"] == "node_started" and process == "up":
        process, restarted = "crashed", following["wall_ns"]
    chart = last["chart"]
    position = state.charts.get(chart)
    if position is None:
        known_start = first_seq == 1
        name = initial_of(chart, last["chart_hash"]) if known_start else None
        return NodeAt(node, wall_ns, f"{chart}@{last['chart_hash']}", name, None, None, None,
                      None, None, process, last["seq"], last["wall_ns"], state.boots,
                      state.token, restarted)
    return NodeAt(node, wall_ns, f"{chart}@{last['chart_hash']}", position.state,
                  position.since_wall_ns, position.since_seq, position.trigger, position.cause,
                  position.actor, process, last["seq"], last["wall_ns"], state.boots,
                  state.token, restarted)


def registry_initial(chart: str, chart_hash: str) -> str:
    """Initial state of the exact chart version a record names (raises if unknown)."""
    return default_registry().get(chart, chart_hash).initial


def lenient_initial(chart: str, chart_hash: str) -> str | None:
    """For pictures: an unknown chart version only costs the first band its colour."""
    try:
        return registry_initial(chart, chart_hash)
    except UnknownChartError:
        return None


def state_at(
    logs: Sequence[NodeLog], wall_ns: int, *, initial_of: InitialOf = registry_initial
) -> dict[str, NodeAt]:
    """Every node's state at ``wall_ns``; reads each log only up to that moment."""
    found: dict[str, NodeAt] = {}
    for log in logs:
        reading = _Reading(log)
        try:
            found[log.node] = node_at(log.node, reading, wall_ns, initial_of)
        except (KeyError, TypeError, AttributeError) as exc:
            raise reading.error(exc) from None
    return found


# --------------------------------------------------------------------------- RUNNING intervals


@dataclass(frozen=True)
class RunningInterval:
    """When one node drove outputs, as closed wall-clock bounds with the records that
    bound it; ``ended_by`` is ``transition``, ``stopped``, ``crash`` or ``log end``."""

    node: str
    start_ns: int
    end_ns: int
    start_seq: int
    end_seq: int
    ended_by: str

    def describe(self) -> str:
        return (f"{self.node} RUNNING {format_time(self.start_ns)} (seq {self.start_seq}) to "
                f"{format_time(self.end_ns)} (seq {self.end_seq}, {self.ended_by})")


class RunningTracker:
    """Feeds on one node's records in sequence order and cuts its RUNNING intervals.

    An interval ends at the transition out of RUNNING; at ``node_stopped``; after a
    crash (the next record is ``node_started``) at the last record before it, since
    that is the last moment the process is known to have been alive; and at the last
    record when the log ends while RUNNING. A ``lease`` record that reports the
    leadership lost while RUNNING ends the interval earlier, at the lease's
    ``valid_until_wall_ns``: the cycle stops driving at that deadline by itself, even
    though the node journals its fault only once it notices (a renewal later).
    """

    def __init__(self, node: str, running: str = RUNNING) -> None:
        self.node = node
        self.running = running
        self.intervals: list[RunningInterval] = []
        self._start: Record | None = None
        self._last: Record | None = None
        self._lease_end: int | None = None

    def feed(self, record: Record) -> None:
        kind = record["type"]
        if self._start is not None:
            payload = record["payload"]
            if kind == "lease" and not payload.get("leader") and self._lease_end is None:
                self._lease_end = payload.get("valid_until_wall_ns")
            if kind == "node_started" and self._last is not None:
                self._close(self._last, "crash")
            elif kind == "node_stopped":
                self._close(record, "stopped")
            elif kind == "transition" and record["payload"].get("dest") != self.running:
                self._close(record, "transition")
        elif kind == "transition" and record["payload"].get("dest") == self.running:
            self._start = record
        self._last = record

    def _close(self, end: Record, why: str) -> None:
        start = self._start
        assert start is not None
        end_ns = end["wall_ns"]
        lease_end = self._lease_end
        if lease_end is not None and start["wall_ns"] <= lease_end < end_ns:
            end_ns = lease_end
            why = f"{why}; lease valid until {format_time(lease_end)}"
        self.intervals.append(RunningInterval(self.node, start["wall_ns"], end_ns,
                                              start["seq"], end["seq"], why))
        self._start = None
        self._lease_end = None

    def finish(self) -> list[RunningInterval]:
        if self._start is not None and self._last is not None:
            self._close(self._last, "log end")
        return self.intervals


def running_intervals(records: Iterable[Record], running: str = RUNNING) -> list[RunningInterval]:
    """The RUNNING intervals of one node's records (sequence order)."""
    tracker: RunningTracker | None = None
    for record in records:
        tracker = tracker or RunningTracker(record["node"], running)
        tracker.feed(record)
    return tracker.finish() if tracker else []


@dataclass(frozen=True)
class Overlap:
    """Two nodes RUNNING at once: the one thing the HA design must never allow."""

    first: RunningInterval
    second: RunningInterval

    @property
    def start_ns(self) -> int:
        return max(self.first.start_ns, self.second.start_ns)

    @property
    def end_ns(self) -> int:
        return min(self.first.end_ns, self.second.end_ns)

    def describe(self) -> str:
        return (f"nodes {self.first.node} and {self.second.node} were both RUNNING for "
                f"{format_duration(self.end_ns - self.start_ns)} from "
                f"{format_time(self.start_ns)}: {self.first.describe()}; "
                f"{self.second.describe()}")


def find_overlaps(intervals: Iterable[RunningInterval]) -> list[Overlap]:
    """Pairs of different nodes' intervals sharing at least one instant.

    Bounds are closed: one nanosecond in common already means two nodes drove outputs.
    A sweep over intervals sorted by start keeps this O(n log n + overlaps).
    """
    found: list[Overlap] = []
    active: list[RunningInterval] = []
    for interval in sorted(intervals, key=lambda i: (i.start_ns, i.node, i.start_seq)):
        active = [a for a in active if a.end_ns >= interval.start_ns]
        found += [Overlap(a, interval) for a in active if a.node != interval.node]
        active.append(interval)
    return found


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Problem:
    """One thing wrong, located precisely enough to open the file at the record."""

    where: str
    node: str
    seq: int | None
    message: str

    def describe(self) -> str:
        at = f" seq {self.seq}" if self.seq is not None else ""
        return f"{self.where}: node {self.node}{at}: {self.message}"


ChartOf = Callable[[str, str], Chart]


class NodeVerifier:
    """All per-node checks, fed one record at a time (pure: no files, no registry I/O).

    Problems are collected, never raised, so one run lists everything wrong. After a
    gap, or when the inputs start after seq 1, the state before the next record is
    unknown, so continuity is not judged until the fold knows the state again.
    """

    def __init__(self, node: str, chart_of: ChartOf, catalogue: Catalogue) -> None:
        self.node = node
        self.chart_of = chart_of
        self.catalogue = catalogue
        self.problems: list[Problem] = []
        self.notices: list[str] = []
        self.records = 0
        self.transitions = 0
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.running = RunningTracker(node)
        self._fold = NodeState()
        self._prev_seq: int | None = None
        self._state_known = False

    def _problem(self, where: str, seq: int | None, message: str) -> None:
        self.problems.append(Problem(where, self.node, seq, message))

    def feed(self, record: Record, where: str) -> None:
        seq = record["seq"]
        self._check_sequence(seq, where)
        self.records += 1
        schema = self.catalogue.problems(record)
        for issue in schema:
            self._problem(where, seq, f"{record.get('type')} does not match its schema: {issue}")
        if schema:
            if record.get("type") == "transition":
                self._state_known = False  # the fold cannot know where it went
            return
        wall = record["wall_ns"]
        self.first_ns = wall if self.first_ns is None else min(self.first_ns, wall)
        self.last_ns = wall if self.last_ns is None else max(self.last_ns, wall)
        self._check_continuity(record, where)
        self.running.feed(record)
        self._fold.apply(record)

    def _check_sequence(self, seq: int, where: str) -> None:
        previous = self._prev_seq
        self._prev_seq = seq
        if previous is None:
            self._state_known = seq == 1
            if seq != 1:
                self.notices.append(
                    f"{where}: node {self.node}: the inputs start at seq {seq}; records "
                    f"1-{seq - 1} are not among them, so the state before seq {seq} is unknown"
                )
        elif seq != previous + 1:
            self._state_known = False
            self._problem(where, seq, f"sequence gap: records {previous + 1}-{seq - 1} are "
                                      f"missing (previous record was seq {previous})")

    def _before(self, chart: Chart) -> tuple[str, str]:
        """The folded state before this record, and since which seq (for the report)."""
        position = self._fold.position(chart.name, chart.initial)
        since = f"seq {position.since_seq}" if position.since_seq else "the start of the log"
        return position.state, since

    def _check_continuity(self, record: Record, where: str) -> None:
        kind, p, seq = record["type"], record["payload"], record["seq"]
        if kind not in ("transition", "command_rejected", "node_started"):
            return
        chart = self.chart_of(record["chart"], record["chart_hash"])
        before, since = self._before(chart)
        claimed = {"transition": "source", "command_rejected": "state",
                   "node_started": "recovered_state"}[kind]
        if self._state_known and p[claimed] != before:
            self._problem(where, seq, f"{kind} says the node was in {p[claimed]} ({claimed}), "
                                      f"but the log had it in {before} since {since}")
        if kind == "transition":
            self.transitions += 1
            self._check_transition(chart, p, where, seq)
            self._state_known = True

    def _check_transition(self, chart: Chart, p: dict[str, Any], where: str, seq: int) -> None:
        trigger, source, dest = p["trigger"], p["source"], p["dest"]
        rule = chart.find(trigger, source)
        if rule is None or not chart.allows(source, trigger, dest):
            allowed = [f"{t.trigger}→{t.dest}" for t in chart.transitions if source in t.sources]
            self._problem(where, seq, f"illegal transition {trigger}: {source} → {dest} under "
                                      f"chart {chart.ref} (from {source} it allows: "
                                      f"{', '.join(allowed) or 'nothing'})")
            return
        if rule.requires_cause and not (p["cause"] or "").strip():
            self._problem(where, seq, f"{trigger} {source} → {dest} has no cause, which chart "
                                      f"{chart.ref} requires")
        for guard in rule.guards:
            verdict = p["guards"].get(guard)
            if verdict is not True:
                what = "was not recorded" if verdict is None else "was false"
                self._problem(where, seq, f"{trigger} {source} → {dest} fired although guard "
                                          f"{guard} {what} (chart {chart.ref})")

    def finish(self) -> list[RunningInterval]:
        return self.running.finish()


@dataclass
class VerifyReport:
    """What ``--verify`` found: problems fail the run, notices (torn tails) do not."""

    nodes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    records: int = 0
    transitions: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    intervals: list[RunningInterval] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def span(self) -> str:
        if self.first_ns is None or self.last_ns is None:
            return "no records"
        return (f"{format_time(self.first_ns)} to {format_time(self.last_ns)} "
                f"({format_duration(self.last_ns - self.first_ns)})")

    def summary(self) -> str:
        verdict = "ok" if self.ok else f"FAILED: {len(self.problems)} problem(s)"
        notices = f", {len(self.notices)} notice(s)" if self.notices else ""
        return (f"{verdict}: {len(self.nodes)} node(s) ({', '.join(self.nodes)}), "
                f"{self.records} records, {self.transitions} transitions, {self.span()}"
                f"{notices}")

    def add(self, checker: NodeVerifier) -> None:
        self.nodes.append(checker.node)
        self.problems += checker.problems
        self.notices += checker.notices
        self.records += checker.records
        self.transitions += checker.transitions
        self.intervals += checker.finish()
        firsts = [t for t in (self.first_ns, checker.first_ns) if t is not None]
        lasts = [t for t in (self.last_ns, checker.last_ns) if t is not None]
        self.first_ns = min(firsts, default=None)
        self.last_ns = max(lasts, default=None)

    def check_overlaps(self) -> None:
        for overlap in find_overlaps(self.intervals):
            nodes = f"{overlap.first.node}+{overlap.second.node}"
            self.problems.append(Problem("invariant", nodes, None, overlap.describe()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "summary": self.summary(),
            "nodes": self.nodes,
            "records": self.records,
            "transitions": self.transitions,
            "first": None if self.first_ns is None else format_time(self.first_ns),
            "last": None if self.last_ns is None else format_time(self.last_ns),
            "problems": [asdict(p) for p in self.problems],
            "notices": self.notices,
            "running_intervals": [asdict(i) for i in self.intervals],
        }


def cached_chart_of(chart_of: ChartOf) -> ChartOf:
    cache: dict[tuple[str, str], Chart] = {}

    def lookup(name: str, version: str) -> Chart:
        key = (name, version)
        if key not in cache:
            cache[key] = chart_of(name, version)
        return cache[key]

    return lookup


def verify(
    logs: Sequence[NodeLog],
    *,
    chart_of: ChartOf | None = None,
    catalogue: Catalogue | None = None,
    on_bytes: ByteCounter | None = None,
) -> VerifyReport:
    """Check every record of every log, then the multi-node RUNNING invariant.

    Raises only for data that cannot be read at all (corrupt, not a log, unknown event
    type or chart version); everything else becomes a :class:`Problem` in the report.
    """
    lookup = cached_chart_of(chart_of or default_registry().get)
    catalogue = catalogue or load_catalogue()
    report = VerifyReport()
    for log in logs:
        checker = NodeVerifier(log.node, lookup, catalogue)
        for located in log.located(on_bytes, strict=False):
            checker.feed(located.record, f"{located.path} byte {located.offset}")
        report.add(checker)
        if log.torn is not None:
            report.notices.append(log.torn.describe())
    report.check_overlaps()
    return report


# --------------------------------------------------------------------------- timeline model


@dataclass(frozen=True)
class Band:
    """A stretch of time one node's chart spent in one state; a ``tail`` band runs from
    the node's last record to the end of the picture (its last known state)."""

    node: str
    state: str
    start_ns: int
    end_ns: int
    seq: int | None
    tail: bool = False


@dataclass(frozen=True)
class Marker:
    """A point event worth seeing on the picture; ``kind`` picks its glyph:
    ``fault``, ``command`` (other transitions), ``rejected``, ``restart``, ``stopped``."""

    node: str
    kind: str
    wall_ns: int
    seq: int
    type: str
    summary: str


@dataclass(frozen=True)
class Downtime:
    """No process owned the node: after a clean stop or a crash, until the next boot."""

    node: str
    start_ns: int
    end_ns: int
    reason: str


@dataclass(frozen=True)
class Timeline:
    nodes: tuple[str, ...]
    bands: tuple[Band, ...]
    markers: tuple[Marker, ...]
    downtimes: tuple[Downtime, ...]
    overlaps: tuple[Overlap, ...]
    start_ns: int
    end_ns: int


UNKNOWN_STATE = "?"


class TimelineBuilder:
    """Feeds on one node's records in sequence order and keeps only what gets drawn.

    The state before the first transition is the chart's initial state when the log
    starts at seq 1 (and ``initial_of`` knows the chart), else what ``node_started``
    recovered, else that transition's ``source``: a picture of an old or partial log
    still starts with the right colour.
    """

    def __init__(self, node: str, initial_of: Callable[[str, str], str | None] | None = None
                 ) -> None:
        self.node = node
        self.initial_of = initial_of
        self.bands: list[Band] = []
        self.markers: list[Marker] = []
        self.downtimes: list[Downtime] = []
        self.running = RunningTracker(node)
        self._state: str | None = None
        self._since_ns: int | None = None
        self._since_seq: int | None = None
        self._last: Record | None = None

    def feed(self, record: Record) -> None:
        kind, p, wall = record["type"], record["payload"], record["wall_ns"]
        if self._since_ns is None:
            self._since_ns = wall
            if record["seq"] == 1 and self.initial_of is not None:
                self._state = self.initial_of(record["chart"], record["chart_hash"])
        if kind == "transition":
            self._transition(record)
        elif kind == "node_started":
            self._started(record)
        elif kind in ("command_rejected", "node_stopped"):
            glyph = "rejected" if kind == "command_rejected" else "stopped"
            self._mark(record, glyph)
        if self._state is None and kind == "node_started":
            self._state = p.get("recovered_state") or None
        self.running.feed(record)
        self._last = record

    def _mark(self, record: Record, kind: str) -> None:
        self.markers.append(Marker(self.node, kind, record["wall_ns"], record["seq"],
                                   record["type"], summarize(record)))

    def _transition(self, record: Record) -> None:
        p = record["payload"]
        before = self._state or p.get("source") or UNKNOWN_STATE
        assert self._since_ns is not None
        self.bands.append(Band(self.node, before, self._since_ns, record["wall_ns"],
                               self._since_seq))
        self._state = p.get("dest") or UNKNOWN_STATE
        self._since_ns, self._since_seq = record["wall_ns"], record["seq"]
        self._mark(record, "fault" if p.get("trigger") == "fault" else "command")

    def _started(self, record: Record) -> None:
        last = self._last
        if last is not None:
            reason = "stopped" if last["type"] == "node_stopped" else "crash"
            self.downtimes.append(Downtime(self.node, last["wall_ns"], record["wall_ns"],
                                           reason))
        self._mark(record, "restart")

    def finish(self) -> None:
        if self._last is None or self._since_ns is None:
            return
        self.bands.append(Band(self.node, self._state or UNKNOWN_STATE, self._since_ns,
                               self._last["wall_ns"], self._since_seq))
        self.running.finish()

    def tails(self, end_ns: int) -> tuple[list[Band], list[Downtime]]:
        """After the last record the state is only the last known one, and after a clean
        stop no process runs: drawn up to ``end_ns`` so a log that ends early still shows
        where the node was left."""
        if not self.bands or self._last is None or self._last["wall_ns"] >= end_ns:
            return [], []
        last = self.bands[-1]
        tail = Band(self.node, last.state, last.end_ns, end_ns, last.seq, tail=True)
        if self._last["type"] == "node_stopped":
            return [tail], [Downtime(self.node, last.end_ns, end_ns, "stopped")]
        return [tail], []


def assemble_timeline(
    builders: Sequence[TimelineBuilder], since: int | None = None, until: int | None = None
) -> Timeline:
    """Clip every node's pieces to ``[since, until]`` and add the invariant overlaps."""
    check_range(since, until)
    bands = [b for builder in builders for b in builder.bands]
    lo = min((b.start_ns for b in bands), default=since or until or 0)
    hi = max((b.end_ns for b in bands), default=lo)
    start = since if since is not None else min(lo, until if until is not None else lo)
    end = until if until is not None else max(hi, start)

    def inside(a: int, b: int) -> tuple[int, int] | None:
        lo, hi = max(a, start), min(b, end)
        return (lo, hi) if lo <= hi else None

    tails = [builder.tails(end) for builder in builders]
    clipped_bands = []
    for band in bands + [b for bands_, _ in tails for b in bands_]:
        if (bounds := inside(band.start_ns, band.end_ns)) is not None:
            clipped_bands.append(Band(band.node, band.state, *bounds, band.seq, band.tail))
    downtimes = []
    all_downtimes = [d for builder in builders for d in builder.downtimes]
    for down in all_downtimes + [d for _, downs in tails for d in downs]:
        if (bounds := inside(down.start_ns, down.end_ns)) is not None:
            downtimes.append(Downtime(down.node, *bounds, down.reason))
    markers = sorted((m for builder in builders for m in builder.markers
                      if start <= m.wall_ns <= end), key=lambda m: (m.wall_ns, m.node, m.seq))
    overlaps = [o for o in find_overlaps(i for b in builders for i in b.running.intervals)
                if inside(o.start_ns, o.end_ns) is not None]
    return Timeline(tuple(b.node for b in builders), tuple(clipped_bands), tuple(markers),
                    tuple(downtimes), tuple(overlaps), start, end)


def build_timeline(
    logs: Sequence[NodeLog],
    *,
    since: int | None = None,
    until: int | None = None,
    on_bytes: ByteCounter | None = None,
) -> Timeline:
    """Read each log once and build the picture's model (see :mod:`mxrc.timeline`)."""
    builders = []
    for log in logs:
        builder = TimelineBuilder(log.node, lenient_initial)
        reading = _Reading(log, on_bytes)
        try:
            for record in reading:
                builder.feed(record)
        except (KeyError, TypeError, AttributeError) as exc:
            raise reading.error(exc) from None
        builder.finish()
        builders.append(builder)
    return assemble_timeline(builders, since, until)
