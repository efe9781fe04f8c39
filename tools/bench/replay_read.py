"""Events per second of reading a log back (``read_records``), against bare JSON parsing.

Usage: python tools/bench/replay_read.py [--quick] [--dir DIR] [--events N]

Recovery and ``mxrc replay`` read whole logs; what the reader adds on top of parsing
JSON (CRC32C verification, sequence and event-type checks, torn-tail detection) should
cost well under half of the total. The baseline is a loop of ``orjson.loads`` per line
over the very same files. Both run on a warm page cache (every file is read once
before measuring), in alternating order, best of three. One JSON object goes to stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crc32c
import orjson
from benchutil import common_arguments, emit, progress, work_directory

from mxrc import framing
from mxrc.eventlog import DEFAULT_SEGMENT_BYTES, read_records
from mxrc.segments import SEGMENT_FORMAT, list_segments, seal_line, segment_name
from mxrc.statechart import default_registry

TARGET = 0.6
NODE = "bench-node-01"
T0_NS = 1_795_325_400_000_000_000


def event(seq: int) -> tuple[str, dict[str, Any]]:
    """A realistic mix: mostly cycle status, some data-store writes and transitions."""
    kind = seq % 20
    if kind == 0:
        return "transition", {
            "trigger": "start", "source": "READY", "dest": "RUNNING", "cause": None,
            "guards": {"is_leader": True, "has_quorum": True}, "actor": "console",
        }
    if kind == 1:
        return "datastore_write", {"key": f"axis{seq % 6}.setpoint", "value": seq * 0.001,
                                   "previous": (seq - 20) * 0.001, "actor": "api:hmi"}
    return "cycle_status", {"cycle": seq, "slot": seq % 8, "period_ns": 1_000_000,
                            "deadline_misses": seq // 5000}


def build_log(directory: Path, events: int, segment_bytes: int) -> int:
    """Write ``events`` framed records straight into segment files, rotating the way the
    writer does (a new segment once the current one reached ``segment_bytes``, the full
    one sealed with its whole-file CRC32C). Not
    measured: going through EventLog would cost one fsync per batch for nothing here."""
    directory.mkdir(parents=True, exist_ok=True)
    chart = default_registry().get("rt")
    total = 0
    out: Any = None
    size = segment_bytes  # forces a first segment
    chunk: list[bytes] = []
    running_crc = 0  # of the open segment, for its seal (as the writer keeps it)
    first_of_segment = 1

    def flush() -> None:
        nonlocal running_crc
        if chunk:
            data = b"".join(chunk)
            out.write(data)
            running_crc = crc32c.crc32c(data, running_crc)
            chunk.clear()

    def close() -> None:
        flush()
        if out is not None:
            out.flush()
            os.fsync(out.fileno())
            out.close()

    try:
        for seq in range(1, events + 1):
            if size >= segment_bytes:
                if out is not None:
                    flush()
                    chunk.append(seal_line(first_of_segment, seq - 1, running_crc))
                close()
                running_crc, first_of_segment = 0, seq
                out = (directory / segment_name(seq)).open("wb")
                header = framing.encode({"mxrc_log": SEGMENT_FORMAT, "node": NODE,
                                         "first_seq": seq, "created_wall_ns": T0_NS})
                chunk.append(header)
                size = len(header)
            kind, payload = event(seq)
            line = framing.encode({
                "seq": seq, "wall_ns": T0_NS + seq * 1_000_000, "mono_ns": 5_000_000 + seq,
                "node": NODE, "type": kind, "token": 3, "traceparent": None,
                "chart": chart.name, "chart_hash": chart.version_hash, "payload": payload,
            })
            chunk.append(line)
            size += len(line)
            total += len(line)
            if len(chunk) >= 8192:
                flush()
            if seq % 200_000 == 0:
                progress(f"built {seq} events")
    finally:
        close()
    return total


def project_read(directory: Path) -> int:
    count = 0
    for _ in read_records(directory):
        count += 1
    return count


def bare_read(directory: Path) -> int:
    """The baseline: parse every line of the same files with orjson, check nothing."""
    count = 0
    loads = orjson.loads
    for path in list_segments(directory):
        for line in path.read_bytes().split(b"\n"):
            if line:
                loads(line)
                count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Events/s of read_records vs orjson.loads per line over the same files.")
    common_arguments(parser)
    parser.add_argument("--events", type=int, default=None,
                        help="events in the log (1,000,000; --quick 100,000)")
    parser.add_argument("--segment-bytes", type=int, default=DEFAULT_SEGMENT_BYTES,
                        help="segment size, as the writer's default (64 MiB)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, best kept (3)")
    args = parser.parse_args(argv)
    events = args.events if args.events is not None else (100_000 if args.quick else 1_000_000)

    with work_directory("replay_read", args) as (directory, fstype):
        log = directory / "log"
        started = time.perf_counter()
        log_bytes = build_log(log, events, args.segment_bytes)
        build_seconds = time.perf_counter() - started
        segments = list_segments(log)
        headers = len(segments)
        progress(f"built {events} events, {log_bytes / 2**20:.1f} MiB in {headers} segments "
                 f"in {build_seconds:.1f} s")
        for path in segments:  # warm the page cache for both contenders
            path.read_bytes()
        runs: dict[str, list[float]] = {"project": [], "baseline": []}
        readers: dict[str, tuple[Callable[[Path], int], int]] = {
            "project": (project_read, events),
            # it parses the headers and the seals of rotated segments too
            "baseline": (bare_read, events + 2 * headers - 1),
        }
        for r in range(args.repeats):
            order = list(readers) if r % 2 == 0 else list(reversed(readers))
            for name in order:
                reader, expected = readers[name]
                begin = time.perf_counter()
                count = reader(log)
                runs[name].append(time.perf_counter() - begin)
                if count != expected:
                    raise SystemExit(f"{name} read {count} lines, expected {expected}")
                progress(f"run {r + 1}/{args.repeats} {name:>8}: "
                         f"{events / runs[name][-1]:12.0f} events/s")

    best = {name: min(times) for name, times in runs.items()}
    rate = {name: events / best[name] for name in best}
    ratio = rate["project"] / rate["baseline"]
    emit({
        "benchmark": "replay_read",
        "quick": args.quick,
        "filesystem": fstype,
        "events": events,
        "segments": headers,
        "log_bytes": log_bytes,
        "build_seconds": round(build_seconds, 2),
        "project": {
            "what": ("mxrc.eventlog.read_records: sealed segments by one whole-file CRC32C, "
                     "the open one per line; sequence, node and type checks"),
            "events_per_s": round(rate["project"], 1),
            "best_seconds": round(best["project"], 4),
            "runs_seconds": [round(t, 4) for t in runs["project"]],
        },
        "baseline": {
            "what": "orjson.loads of every line of the same files, no checks",
            "events_per_s": round(rate["baseline"], 1),
            "best_seconds": round(best["baseline"], 4),
            "runs_seconds": [round(t, 4) for t in runs["baseline"]],
        },
        "ratio": round(ratio, 3),
        "target": TARGET,
        "target_met": ratio >= TARGET,
        "python": sys.version.split()[0],
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
