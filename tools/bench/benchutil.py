"""Shared plumbing of the benchmark scripts: where they write, and how they report.

A durability benchmark on a RAM-backed filesystem measures nothing (fsync returns at
once), so the scripts refuse tmpfs unless told otherwise, and always measure the
project and its baseline in the same directory, interleaved, so both see the same disk.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

RAM_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs"})


def progress(message: str) -> None:
    """Progress goes to stderr: stdout carries exactly one JSON object."""
    print(message, file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="short run (smoke test); the figures are noisier")
    parser.add_argument("--dir", type=Path, default=None,
                        help="directory to work in (a temporary subdirectory is created in "
                             "it and removed afterwards); default: ./var/bench")
    parser.add_argument("--allow-tmpfs", action="store_true",
                        help="measure even on a RAM-backed filesystem (figures meaningless "
                             "for durability)")
    parser.add_argument("--keep", action="store_true", help="keep the files written")


def _unescape_mount_field(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes."""
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding ``path`` (longest matching mount point), or
    None when it cannot be told (no /proc/mounts)."""
    resolved = os.path.realpath(path)
    best: tuple[int, str] | None = None
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point, fstype = _unescape_mount_field(fields[1]), fields[2]
        prefix = mount_point.rstrip("/") + "/"
        if (resolved == mount_point or resolved.startswith(prefix) or mount_point == "/") and (
            best is None or len(mount_point) >= best[0]
        ):
            best = (len(mount_point), fstype)
    return best[1] if best else None


@contextmanager
def work_directory(name: str, args: argparse.Namespace) -> Iterator[tuple[Path, str]]:
    """A fresh directory for one run (removed afterwards unless ``--keep``), and the type
    of the filesystem under it; exits with status 2 on a RAM-backed one."""
    base: Path = args.dir if args.dir is not None else Path.cwd() / "var" / "bench"
    base.mkdir(parents=True, exist_ok=True)
    fstype = filesystem_type(base) or "unknown"
    if fstype in RAM_FILESYSTEMS and not args.allow_tmpfs:
        progress(
            f"refusing to benchmark in {base}: it is on {fstype}, where fsync does not reach "
            "a disk, so durable-write figures would be meaningless. Use --dir on a real "
            "disk, or --allow-tmpfs to measure anyway."
        )
        raise SystemExit(2)
    if fstype == "unknown":
        progress(f"warning: could not tell the filesystem type of {base}")
    # statvfs says whether the disk has room for what we are about to write
    stat = os.statvfs(base)
    progress(f"working in {base} ({fstype}, {stat.f_bavail * stat.f_frsize / 2**30:.1f} GiB free)")
    directory = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))
    try:
        yield directory, fstype
    finally:
        if args.keep:
            progress(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def rounded(value: float, digits: int = 3) -> float:
    return float(f"{value:.{digits}g}") if value and math.isfinite(value) else value


def excess_p_value(ours: int, ours_exposure: float, theirs: int, theirs_exposure: float) -> float:
    """How likely ``ours`` or more of the ``ours + theirs`` events would be, were both
    sides' rates equal: the one-sided test of two Poisson counts (conditioned on their
    sum, ``ours`` is binomial with ``p = ours_exposure / (ours_exposure +
    theirs_exposure)``).

    Rare events — deadline misses caused by a VM's stalls, tens a minute — give counts
    whose difference from run to run is about their square root, so "no more than the
    baseline's count" alone is decided by noise as often as by the code. Small values
    (below 0.05) say ours is really worse; large ones, that the counts do not differ.
    """
    if ours < 0 or theirs < 0 or ours_exposure <= 0 or theirs_exposure <= 0:
        raise ValueError("counts must be ≥ 0 and exposures > 0")
    n = ours + theirs
    if ours == 0:
        return 1.0
    p = ours_exposure / (ours_exposure + theirs_exposure)
    log_p, log_q = math.log(p), math.log1p(-p)
    log_n = math.lgamma(n + 1)
    tail = sum(
        math.exp(log_n - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q)
        for k in range(ours, n + 1)
    )
    return min(1.0, tail)


def paired_excess_p_value(pairs: Sequence[tuple[int, int]]) -> float:
    """How likely a total excess of ours over theirs at least as large as the one seen
    would be, were the two labels within each pair exchangeable: the exact sign-flip
    (randomisation) test of the pairs' differences, one-sided.

    A VM's stalls come in bursts: a bad ten seconds can give one side of one block a
    dozen misses, so the counts vary far more than a Poisson rate's square root, and
    :func:`excess_p_value` then reads a burst as a difference of rates. Here each block
    (both sides for the same length of time, one after the other, the order turned
    every block) is one pair, and a burst weighs as one block's difference, whatever
    its size. The distribution of the signed sum is counted exactly (by the sums it can
    reach), not sampled, so the same counts always give the same value.
    """
    differences = []
    for ours, theirs in pairs:
        if ours < 0 or theirs < 0:
            raise ValueError(f"counts must be ≥ 0, got ({ours}, {theirs})")
        if ours != theirs:
            differences.append(ours - theirs)
    observed = sum(differences)
    if not differences:
        return 1.0
    # ways[s]: how many of the sign choices so far give the sum s (offset by `span`)
    span = sum(abs(d) for d in differences)
    ways = [0] * (2 * span + 1)
    ways[span] = 1
    for d in (abs(d) for d in differences):
        moved = [0] * len(ways)
        for s, n in enumerate(ways):
            if n:
                moved[s + d] += n
                moved[s - d] += n
        ways = moved
    at_least = sum(ways[span + observed :])
    return at_least / (1 << len(differences))
