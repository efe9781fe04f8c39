"""``mxrc log repair``: the only command that modifies a log on request.

A torn tail is repaired by any writer on open (it was never acknowledged). Corruption
before the tail is different: records after it *were* acknowledged, so cutting them off
loses history. ``mxrc run`` refuses to start on such a log (exit 4); this command shows
what a cut would cost and, only with ``--truncate-corrupt``, moves the damaged record
and everything after it into ``broken/`` so the node can start again.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mxrc.checkpoint import list_checkpoints, read_checkpoint_seq
from mxrc.errors import CorruptLogError, UsageError
from mxrc.eventlog import BROKEN_DIR, EventLog, LogIdentity
from mxrc.fsutil import fsync_dir, move_tail_aside
from mxrc.node import DataDirLock, DataLayout
from mxrc.segments import SegmentReader, list_segments
from mxrc.statechart import default_registry


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "log",
        help="repair a node's event log (explicitly)",
        description="Maintenance of a node's event log. Reading is `mxrc replay`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  mxrc log repair var                     # torn tail: truncate (as a start would)\n"
        "  mxrc log repair var --truncate-corrupt  # cut at a corrupt record, keep it aside\n",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    repair = actions.add_parser(
        "repair",
        help="truncate a torn tail; with --truncate-corrupt, cut at a corrupt record",
        description="Repair the event log of a stopped node. Removed bytes are copied to "
        "<data-dir>/eventlog/broken/ first. Without --truncate-corrupt a corrupt record is "
        "only reported (exit 4), with what cutting there would remove.",
    )
    repair.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    repair.add_argument(
        "--truncate-corrupt",
        action="store_true",
        help="move the corrupt record and every record after it into broken/ "
        "(acknowledged records are lost; the node can start again)",
    )
    repair.set_defaults(func=_repair)


@dataclass(frozen=True)
class Cut:
    path: Path
    offset: int
    later_segments: tuple[Path, ...]
    reason: str


def find_corruption(log_dir: Path) -> Cut | None:
    """The first corrupt record of the log, if any (read-only)."""
    segments = list_segments(log_dir)
    expected: int | None = None
    for i, path in enumerate(segments):
        reader = SegmentReader(
            path, last_segment=i == len(segments) - 1, expected_first_seq=expected
        )
        try:
            for _ in reader:
                pass
        except CorruptLogError as exc:
            return Cut(path, exc.offset, tuple(segments[i + 1 :]), exc.reason)
        if reader.last_seq is not None:
            expected = reader.last_seq + 1
    return None


def _count_lines(path: Path, offset: int) -> int:
    with path.open("rb") as f:
        f.seek(offset)
        return sum(1 for _ in f)


def _apply_cut(log_dir: Path, cut: Cut) -> None:
    broken = log_dir / BROKEN_DIR
    broken.mkdir(exist_ok=True)
    for later in cut.later_segments:
        os.replace(later, broken / f"{later.name}.after-corrupt")
    move_tail_aside(cut.path, cut.offset, broken / f"{cut.path.name}.{cut.offset}.corrupt")
    fsync_dir(log_dir)


def _repair(args: argparse.Namespace) -> int:
    layout = DataLayout(args.data_dir)
    if not layout.eventlog.is_dir():
        raise UsageError(f"{args.data_dir}: no event log here (expected {layout.eventlog}/)")
    lock = DataDirLock(layout.lock)
    lock.acquire()
    try:
        cut = find_corruption(layout.eventlog)
        if cut is not None:
            lost = _count_lines(cut.path, cut.offset) + sum(
                _count_lines(p, 0) - 1 for p in cut.later_segments
            )
            where = f"{cut.path}: corrupt record at byte offset {cut.offset}: {cut.reason}"
            if not args.truncate_corrupt:
                raise CorruptLogError(
                    str(cut.path),
                    cut.offset,
                    f"{cut.reason}. Cutting here would remove {lost} line(s) and "
                    f"{len(cut.later_segments)} later segment(s); rerun with "
                    "--truncate-corrupt to do it (they are kept in broken/)",
                )
            _apply_cut(layout.eventlog, cut)
            print(
                f"cut {where}; moved {lost} line(s) and {len(cut.later_segments)} later "
                f"segment(s) to {layout.eventlog / BROKEN_DIR}"
            )
        header = _node_of(layout.eventlog)
        if header is None:
            print("the log is empty; nothing to repair")
            return 0
        chart = default_registry().get("rt")
        with EventLog.open(
            layout.eventlog, LogIdentity(header, chart.name, chart.version_hash)
        ) as log:
            torn = log.repaired_tail
            if torn is not None:
                print(f"repaired: {torn.describe()}; copied to {layout.eventlog / BROKEN_DIR}")
            elif cut is None:
                print(f"{layout.eventlog}: no torn tail and no corruption; nothing to repair")
            print(f"the log now ends at seq {log.last_seq}")
            _set_aside_checkpoints_beyond(layout, log.last_seq)
    finally:
        lock.release()
    return 0


def _set_aside_checkpoints_beyond(layout: DataLayout, last_seq: int) -> None:
    """Checkpoints describing cut records would be skipped at start-up anyway; moving
    them keeps the directory truthful."""
    for path in list_checkpoints(layout.checkpoints):
        if read_checkpoint_seq(path) > last_seq:
            target = layout.eventlog / BROKEN_DIR / path.name
            os.replace(path, target)
            print(f"moved {path.name} (beyond the log's end) to {target.parent}")


def _node_of(log_dir: Path) -> str | None:
    for path in list_segments(log_dir):
        reader = SegmentReader(path, last_segment=True)
        for _ in reader:
            break
        if reader.header is not None:
            return str(reader.header["node"])
    return None
