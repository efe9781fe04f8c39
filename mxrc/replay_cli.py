"""``mxrc replay``: what happened, when, on which node, and was it allowed.

A thin layer over :mod:`mxrc.replay`: it turns options into library calls and results
into text. Output is streamed (a table starts printing before the logs are read to the
end); notices such as a torn tail go to standard error so that standard output stays
a clean table or JSON for scripts. Nothing is written except the ``--timeline`` file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import IO, Any, BinaryIO

import orjson
from tqdm import tqdm

from mxrc import replay
from mxrc.errors import UsageError
from mxrc.replay import (
    ByteCounter,
    LocatedRecord,
    NodeAt,
    NodeLog,
    Timeline,
    VerifyReport,
    format_time,
    summarize,
    trace_id_of,
)
from mxrc.segments import Record
from mxrc.timeline import render_html, render_svg

FORMATS = ("table", "json", "jsonl")
TIMELINE_SUFFIXES = (".svg", ".html")
PROGRESS_MIN_BYTES = 32 * 1024 * 1024
TABLE_SAMPLE_ROWS = 500
SHORT_TRACE = 8

DESCRIPTION = """\
Replay the event logs of one or more nodes on one wall-clock time axis.

PATH can be a segment file (events-*.jsonl), a log directory holding segments, a node
data directory (holding eventlog/), or a directory of node data directories such as a
drill's output; give several to merge them. Without --at, --verify or --timeline the
records are listed, oldest first. Logs are only read, never modified (a torn tail from
a crash is reported, not repaired).

TIME (for --at, --since, --until), always read as UTC unless an offset is given:
  2026-11-22T05:30:00Z, '2026-11-22 05:30:00.250', 2026-11-22T07:30+02:00
  05:30, 05:30:15.250        time of day on the UTC date of the first record
  @1795325400.5              Unix seconds
  +90s, +250ms, +1.5m        after the first record of the inputs
"""

EPILOG = """\
examples:
  # what happened between 05:30 and 05:35 on the two nodes of a drill
  mxrc replay drill-out/ --since 05:30 --until 05:35

  # each node's state at the moment of the incident, and the event that caused it
  mxrc replay var/node-a var/node-b --at 2026-11-22T05:31:02Z

  # faults and rejected commands of one operation, as JSON lines for jq
  mxrc replay var --type transition,command_rejected \\
      --trace-id 4bf92f3577b34da6a3ce929d0e0e4736 --format jsonl | jq .payload

  # check everything (checksums, sequence, schemas, chart legality, never two
  # nodes RUNNING at once) and draw the timeline for the incident report
  mxrc replay drill-out/ --verify && mxrc replay drill-out/ --timeline incident.html

exit codes: 0 ok, 1 --verify found problems, 2 usage error, 3 not an mxrc log,
  4 corrupt record, 5 unknown event type, 6 unknown chart version
"""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "replay", help="list, query, verify or draw event logs (incident analysis)",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="segment file, log directory, node data directory or a directory "
                        "of those (e.g. var/node-a, drill-out/)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--at", metavar="TIME",
                      help="show each node's state at TIME, since when, and the event that "
                      "put it there (e.g. --at 05:31:02.500)")
    mode.add_argument("--verify", action="store_true",
                      help="check checksums, sequence gaps, event schemas, transition legality "
                      "and continuity under the chart version each record names, and that no "
                      "two nodes were RUNNING at once; exit 1 listing every problem")
    mode.add_argument("--timeline", type=Path, metavar="FILE",
                      help="draw each node's states, faults, commands and restarts over time "
                      "to FILE (.svg, or .html with a table of events), e.g. --timeline inc.svg")
    window = parser.add_argument_group("filters (listing; --since/--until also crop a timeline)")
    window.add_argument("--since", metavar="TIME",
                        help="only records at or after TIME (e.g. --since 05:30 or +2m)")
    window.add_argument("--until", metavar="TIME",
                        help="only records at or before TIME (e.g. --until 2026-11-22T05:35Z)")
    window.add_argument("--type", action="append", metavar="T", dest="types",
                        help="only these event types; repeat or comma-separate "
                        "(e.g. --type transition,command_rejected)")
    window.add_argument("--node", action="append", metavar="N", dest="nodes",
                        help="only this node; repeat for several (e.g. --node a --node b)")
    window.add_argument("--trace-id", metavar="HEX32",
                        help="only records of this trace (32 hex digits, or a whole "
                        "traceparent), e.g. --trace-id 4bf92f3577b34da6a3ce929d0e0e4736")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="table (default: aligned columns for people), json (one document) "
                        "or jsonl (one object per line; records exactly as stored, crc "
                        "included), e.g. --format jsonl | jq .type")
    bar = parser.add_mutually_exclusive_group()
    bar.add_argument("--progress", action="store_const", const=True, dest="progress",
                     help="always show a progress bar on standard error (default: for inputs "
                     "of 32 MiB or more when standard error is a terminal, unless the listing "
                     "itself scrolls on it)")
    bar.add_argument("--no-progress", action="store_const", const=False, dest="progress",
                     help="never show a progress bar")
    parser.set_defaults(func=run, progress=None)


# --------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    _check_combinations(args)
    types = None if args.types is None else split_types(args.types)
    if types is not None:
        replay.check_types(types)
    try:
        logs = replay.open_logs(args.paths)
        chosen = replay.select_nodes(logs, args.nodes)
        times = _times(args, logs)
        return _dispatch(args, chosen, times, types)
    except BrokenPipeError:
        _silence_stdout()  # `mxrc replay … | head` is not an error
        return 0
    except OSError as exc:  # unreadable input: say which file, not a traceback
        raise UsageError(f"{exc.filename or 'input'}: cannot read: {exc.strerror}") from None


def _dispatch(args: argparse.Namespace, logs: list[NodeLog], times: dict[str, int | None],
              types: list[str] | None) -> int:
    """Read under the progress bar, print after it is gone (a listing streams instead,
    which is why its bar is off by default when it scrolls on the same terminal)."""
    listing = not (args.verify or args.timeline is not None or args.at is not None)
    with progress(logs, args.progress, listing) as on_bytes:
        show = _read(args, logs, times, types, on_bytes)
    return show()


def _read(args: argparse.Namespace, logs: list[NodeLog], times: dict[str, int | None],
          types: list[str] | None, on_bytes: ByteCounter | None) -> Callable[[], int]:
    fmt = args.format or "table"
    if args.verify:
        return partial(show_verify, replay.verify(logs, on_bytes=on_bytes), fmt)
    if args.timeline is not None:
        model = replay.build_timeline(logs, since=times["--since"], until=times["--until"],
                                      on_bytes=on_bytes)
        return partial(draw_timeline, args.timeline, model, logs)
    if (moment := times["--at"]) is not None:
        return partial(show_state, moment, replay.state_at(logs, moment), fmt)
    located = replay.iter_located(logs, since=times["--since"], until=times["--until"],
                                  types=types, trace_id=args.trace_id, on_bytes=on_bytes)
    show_records(located, fmt)
    return partial(_notices, logs)


def split_types(values: Iterable[str]) -> list[str]:
    """``--type a --type b,c`` → ``[a, b, c]``: both spellings are natural."""
    return [t.strip() for value in values for t in value.split(",") if t.strip()]


def _given(options: dict[str, object]) -> str:
    return ", ".join(name for name, value in options.items() if value is not None)


def _check_combinations(args: argparse.Namespace) -> None:
    """Refuse options that would be silently ignored: a filter that does nothing
    misleads whoever reads the output."""
    listing = {"--type": args.types, "--trace-id": args.trace_id}
    window = {"--since": args.since, "--until": args.until}
    if args.at is not None and (extra := _given(listing | window)):
        raise UsageError(f"--at shows each node's state at one moment; {extra} do(es) not "
                         "apply (use --node to choose nodes)")
    if args.verify and (extra := _given(listing | window)):
        raise UsageError(f"--verify checks whole logs; {extra} do(es) not apply "
                         "(use --node to choose nodes)")
    if args.timeline is None:
        return
    if extra := _given(listing):
        raise UsageError(f"--timeline draws every event; {extra} do(es) not apply "
                         "(--since/--until crop it, --node chooses the lanes)")
    if args.format is not None:
        raise UsageError("--timeline picks its format from the file suffix; drop --format")
    if args.timeline.suffix.lower() not in TIMELINE_SUFFIXES:
        raise UsageError(f"--timeline {args.timeline}: the file name must end in .svg or .html")


def _times(args: argparse.Namespace, logs: Sequence[NodeLog]) -> dict[str, int | None]:
    texts = {"--at": args.at, "--since": args.since, "--until": args.until}
    relative = any(t is not None and replay.needs_first_record(t) for t in texts.values())
    first = replay.first_wall_ns(logs) if relative else None
    times = {opt: None if text is None else replay.parse_time(text, option=opt, first_ns=first)
             for opt, text in texts.items()}
    replay.check_range(times["--since"], times["--until"])
    return times


# --------------------------------------------------------------------------- progress


def want_progress(total_bytes: int, is_tty: bool, forced: bool | None, *,
                  listing_on_tty: bool = False) -> bool:
    """Shown when asked, or by default on a terminal for inputs big enough to wait for.

    Not by default while a listing scrolls on that same terminal: the lines would tear
    the bar apart, and the scrolling already shows progress.
    """
    if forced is not None:
        return forced
    return is_tty and not listing_on_tty and total_bytes >= PROGRESS_MIN_BYTES


@contextmanager
def progress(logs: Sequence[NodeLog], forced: bool | None,
             listing: bool = False) -> Iterator[ByteCounter | None]:
    total = sum(log.size_bytes for log in logs)
    listing_on_tty = listing and sys.stdout.isatty()
    if not want_progress(total, sys.stderr.isatty(), forced, listing_on_tty=listing_on_tty):
        yield None
        return
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
              desc="reading logs", leave=False, dynamic_ncols=True) as bar:
        def advance(n: int) -> None:
            bar.update(n)

        yield advance


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _notices(logs: Iterable[NodeLog]) -> int:
    for log in logs:
        if log.torn is not None:
            print(f"mxrc: notice: {log.torn.describe()}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- tables


class Table:
    """Aligned columns over a stream of rows.

    Widths come from the first rows (kept in a bounded buffer), so printing starts
    at once and memory does not grow with the log; a later, wider cell only pushes its
    own line. The last column is never padded (no trailing blanks).
    """

    def __init__(self, out: IO[str], headers: Sequence[str], *, right: Iterable[int] = (),
                 sample: int = TABLE_SAMPLE_ROWS) -> None:
        self.out = out
        self.headers = list(headers)
        self.right = set(right)
        self.sample = sample
        self._rows: list[list[str]] | None = []
        self._widths: list[int] = []

    def row(self, cells: Sequence[object]) -> None:
        text = ["" if c is None else str(c) for c in cells]
        if self._rows is None:
            self._write(text)
            return
        self._rows.append(text)
        if len(self._rows) >= self.sample:
            self._flush()

    def _flush(self) -> None:
        rows = self._rows or []
        self._widths = [max([len(h), *(len(r[i]) for r in rows)])
                        for i, h in enumerate(self.headers)]
        self._write(self.headers)
        for text in rows:
            self._write(text)
        self._rows = None

    def _write(self, cells: Sequence[str]) -> None:
        last = len(cells) - 1
        parts = [c if i == last else (c.rjust(w) if i in self.right else c.ljust(w))
                 for i, (c, w) in enumerate(zip(cells, self._widths, strict=True))]
        self.out.write("  ".join(parts).rstrip() + "\n")

    def close(self) -> None:
        if self._rows is not None:
            self._flush()


def record_row(record: Record) -> list[object]:
    trace = trace_id_of(record["traceparent"])
    return [format_time(record["wall_ns"]), record["node"], record["seq"], record["type"],
            summarize(record), record["token"], trace[:SHORT_TRACE] if trace else ""]


RECORD_HEADERS = ("TIME (UTC)", "NODE", "SEQ", "TYPE", "EVENT", "TOKEN", "TRACE")


def show_records(located: Iterator[LocatedRecord], fmt: str) -> None:
    if fmt == "jsonl":
        _records_jsonl(located)
    elif fmt == "json":
        _records_json(located)
    else:
        table = Table(sys.stdout, RECORD_HEADERS, right=(2, 5))
        count = 0
        for item in located:
            table.row(record_row(item.record))
            count += 1
        table.close()
        if not count:
            print("mxrc: no records match", file=sys.stderr)


def _binary_stdout() -> BinaryIO:
    sys.stdout.flush()
    buffer: BinaryIO | None = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # pragma: no cover - a replaced sys.stdout without bytes access
        raise UsageError("--format jsonl needs a byte stream on standard output")
    return buffer


def _records_jsonl(located: Iterator[LocatedRecord]) -> None:
    out = _binary_stdout()
    lines = replay.RawLines()
    try:
        for item in located:
            out.write(lines.line(item))
    finally:
        lines.close()
        out.flush()


def _records_json(located: Iterator[LocatedRecord]) -> None:
    out = sys.stdout
    out.write('{"records":[')
    for i, item in enumerate(located):
        out.write(("," if i else "") + "\n" + orjson.dumps(item.record).decode())
    out.write("\n]}\n")


# --------------------------------------------------------------------------- --at


def describe_process(at: NodeAt) -> str:
    if at.process == "crashed" and at.restarted_ns is not None:
        return (f"crashed after seq {at.last_seq}, restarted {format_time(at.restarted_ns)}")
    if at.process == "stopped":
        return "stopped (clean)"
    return at.process


def describe_cause(at: NodeAt) -> str:
    if at.state is None:
        return ""
    if at.since_seq is None:
        return "initial state" if at.state != "?" else "unknown (log starts later)"
    cause = f" cause={at.cause}" if at.cause else ""
    return f"{at.trigger} by {at.actor}{cause}"


AT_HEADERS = ("NODE", "STATE", "SINCE (UTC)", "SEQ", "BECAUSE", "PROCESS", "LAST RECORD")


def show_state(at_ns: int, answer: dict[str, NodeAt], fmt: str) -> int:
    if fmt == "json":
        doc = {"at": format_time(at_ns), "at_ns": at_ns,
               "nodes": [a.to_dict() for a in answer.values()]}
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if fmt == "jsonl":
        for a in answer.values():
            sys.stdout.write(orjson.dumps(a.to_dict()).decode() + "\n")
        return 0
    print(f"state at {format_time(at_ns)}")
    table = Table(sys.stdout, AT_HEADERS, right=(3,))
    for a in answer.values():
        since = format_time(a.since_ns) if a.since_ns is not None else ""
        last = f"seq {a.last_seq} at {format_time(a.last_ns)}" if a.last_ns is not None else ""
        table.row([a.node, a.state or "-", since, a.since_seq, describe_cause(a),
                   describe_process(a), last])
    table.close()
    return 0


# --------------------------------------------------------------------------- --verify


def show_verify(report: VerifyReport, fmt: str) -> int:
    if fmt == "json":
        text = orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode()
        sys.stdout.write(text + "\n")
    elif fmt == "jsonl":
        for problem in report.problems:
            sys.stdout.write(orjson.dumps({"problem": problem.describe(), **vars(problem)})
                             .decode() + "\n")
        sys.stdout.write(orjson.dumps({"summary": report.summary(), "ok": report.ok})
                         .decode() + "\n")
    else:
        for problem in report.problems:
            print(problem.describe())
        print(report.summary())
    for notice in report.notices:
        print(f"mxrc: notice: {notice}", file=sys.stderr)
    return 0 if report.ok else 1


# --------------------------------------------------------------------------- --timeline


def draw_timeline(path: Path, model: Timeline, logs: Sequence[NodeLog]) -> int:
    render = render_html if path.suffix.lower() == ".html" else render_svg
    try:
        path.write_text(render(model), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--timeline {path}: cannot write: {exc.strerror}") from None
    overlaps = f"; {len(model.overlaps)} RUNNING overlap(s)!" if model.overlaps else ""
    print(f"wrote {path}: {len(model.nodes)} node(s), {len(model.markers)} marked event(s), "
          f"{format_time(model.start_ns)} to {format_time(model.end_ns)}{overlaps}")
    _notices(logs)
    return 0
