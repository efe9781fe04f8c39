"""Checkpoints: atomic snapshots of the folded state, and recovery from them.

A checkpoint only ever describes records that were already durable, so the newest
valid checkpoint plus the log's records after its ``last_seq`` is the whole state.
Files are framed like log lines (CRC32C) and written with temp + fsync + rename +
directory fsync, so a crash leaves either the previous set or the new file whole; a
damaged one is reported and the next older one used.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mxrc import framing
from mxrc.eventlog import read_records
from mxrc.fsutil import atomic_write, fsync_dir
from mxrc.nodestate import NodeState

CHECKPOINT_FORMAT = 1
DEFAULT_KEEP = 3


def checkpoint_name(last_seq: int) -> str:
    return f"checkpoint-{last_seq:020d}.json"


def read_checkpoint_seq(path: Path) -> int:
    """The last_seq a checkpoint file covers, from its name."""
    return int(path.name.removeprefix("checkpoint-").removesuffix(".json"))


def list_checkpoints(directory: Path) -> list[Path]:
    """Newest first."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob("checkpoint-*.json"), reverse=True)


def write_checkpoint(directory: Path, state: NodeState, keep: int = DEFAULT_KEEP) -> Path:
    """Write ``state`` durably, then prune all but the ``keep`` newest checkpoints."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / checkpoint_name(state.last_seq)
    atomic_write(
        path, framing.encode({"mxrc_checkpoint": CHECKPOINT_FORMAT, "state": state.to_dict()})
    )
    stale = list_checkpoints(directory)[keep:]
    for old in stale:
        old.unlink()
    if stale:
        fsync_dir(directory)
    return path


def read_checkpoint(path: Path) -> NodeState:
    """Parse one checkpoint; raises ``framing.FrameError`` or ``ValueError`` when damaged."""
    doc = framing.decode(path.read_bytes())
    if doc.get("mxrc_checkpoint") != CHECKPOINT_FORMAT:
        raise ValueError(f"unsupported checkpoint format {doc.get('mxrc_checkpoint')!r}")
    try:
        return NodeState.from_dict(doc["state"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"checkpoint content does not match the state layout: {exc}") from None


@dataclass(frozen=True)
class Recovery:
    state: NodeState
    checkpoint: Path | None
    checkpoint_seq: int | None
    replayed: int
    skipped: tuple[str, ...]  # damaged or unusable checkpoints, with the reason


def recover(
    log_dir: Path,
    checkpoint_dir: Path,
    log_last_seq: int,
    notice: Callable[[str], None] | None = None,
) -> Recovery:
    """Newest usable checkpoint + replay of the log records after it.

    A checkpoint is unusable when damaged, or when it is ahead of the log
    (``last_seq > log_last_seq``): it then describes records the log no longer holds,
    so trusting it would hide their loss; it is reported and an older one is tried.
    """
    skipped: list[str] = []
    base: NodeState | None = None
    used: Path | None = None
    for path in list_checkpoints(checkpoint_dir):
        try:
            candidate = read_checkpoint(path)
        except (OSError, ValueError) as exc:
            skipped.append(f"{path}: {exc}")
            continue
        if candidate.last_seq > log_last_seq:
            skipped.append(
                f"{path}: ahead of the event log (checkpoint seq {candidate.last_seq}, "
                f"log ends at {log_last_seq}): records it describes are missing from the log"
            )
            continue
        base, used = candidate, path
        break
    state = base or NodeState()
    replayed = 0
    for record in read_records(log_dir, after_seq=state.last_seq):
        state.apply(record)
        replayed += 1
    if notice:
        for line in skipped:
            notice(f"skipped damaged checkpoint {line}")
    return Recovery(state, used, base.last_seq if base else None, replayed, tuple(skipped))


def remove_temporaries(directory: Path) -> None:
    """Drop half-written ``.tmp`` files a crash left behind (they were never renamed)."""
    for tmp in directory.glob(".checkpoint-*.tmp"):
        os.unlink(tmp)
