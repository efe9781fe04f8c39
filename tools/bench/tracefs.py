"""Record a scheduler and interrupt trace of one CPU with the kernel's ftrace.

A private tracing instance (``instances/<name>``) is used, so a trace someone else runs
on the global buffer is left alone. Its clock is ``mono`` (CLOCK_MONOTONIC, the clock
of the cycle's deadlines), only the given CPU is traced, and that CPU's buffer is sized
for the whole run, because reading the buffer while tracing would wake a reader with an
interrupt on the very CPU being measured. The trace is read once, after tracing stops.
No package is needed: tracefs is part of the kernel (root, or a tracefs mounted
readable). :mod:`guesttrace` reads the lines.
"""

from __future__ import annotations

import os
from pathlib import Path

from guesttrace import EVENTS

TRACEFS_ROOTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
#: Measured: a CPU with the cycle and a 250 µs probe writes about 23,000 events a second
#: (about 1 MiB); twice that, so that a busier second is not lost.
KIB_PER_SECOND = 2048
MIN_BUFFER_KIB = 16384
PREFIX = "mxrc-bench-"


def tracefs_root() -> Path | None:
    for root in TRACEFS_ROOTS:
        if (root / "instances").is_dir():
            return root
    return None


class CpuTrace:
    """``start()``, run the workload, ``stop()`` for the lines; ``close()`` removes
    the instance (also when anything failed)."""

    def __init__(
        self,
        cpu: int,
        seconds: float,
        *,
        kib_per_second: int = KIB_PER_SECOND,
        name: str | None = None,
    ) -> None:
        self.cpu = cpu
        self.buffer_kib = max(MIN_BUFFER_KIB, int(seconds * kib_per_second))
        self.name = name or f"{PREFIX}{os.getpid()}"
        self.instance: Path | None = None
        self.removed_stale: list[str] = []

    def unavailable(self) -> str | None:
        """Why this machine cannot trace, or None."""
        root = tracefs_root()
        if root is None:
            return (
                "no tracefs (mount it: mount -t tracefs tracefs /sys/kernel/tracing); "
                "a kernel without CONFIG_FTRACE cannot trace"
            )
        if not os.access(root / "instances", os.W_OK):
            return f"{root}/instances is not writable: trace as root"
        missing = [e for e in EVENTS if not (root / "events" / e).is_dir()]
        if missing:
            return f"this kernel lacks the trace events {', '.join(missing)}"
        return None

    def start(self) -> None:
        reason = self.unavailable()
        if reason is not None:
            raise OSError(reason)
        root = tracefs_root()
        assert root is not None
        self.removed_stale = remove_stale_instances(root)
        self.instance = root / "instances" / self.name
        self.instance.mkdir()
        self._write("tracing_on", "0")
        self._write("trace_clock", "mono")
        self._write("tracing_cpumask", f"{1 << self.cpu:x}")
        self._write(f"per_cpu/cpu{self.cpu}/buffer_size_kb", str(self.buffer_kib))
        for event in EVENTS:
            self._write(f"events/{event}/enable", "1")
        self._write("trace", "")  # empty
        self._write("tracing_on", "1")

    def stop(self) -> tuple[list[str], int]:
        """The trace's lines and how many events the buffer lost (overrun)."""
        assert self.instance is not None, "not started"
        self._write("tracing_on", "0")
        lines = (self.instance / "trace").read_text().splitlines()
        stats = (self.instance / f"per_cpu/cpu{self.cpu}/stats").read_text()
        lost = 0
        for line in stats.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "overrun":
                lost = int(value)
        return lines, lost

    def close(self) -> None:
        if self.instance is None:
            return
        self.instance.rmdir()  # stops its tracing and frees its buffer
        self.instance = None

    def _write(self, name: str, value: str) -> None:
        assert self.instance is not None
        (self.instance / name).write_text(value)

    def __enter__(self) -> CpuTrace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_stale_instances(root: Path) -> list[str]:
    """Remove the instances of benchmark runs that died without closing theirs (killed:
    an instance outlives its process, and holds its buffer until removed)."""
    removed = []
    for instance in sorted((root / "instances").glob(f"{PREFIX}*")):
        pid = instance.name.removeprefix(PREFIX)
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            instance.rmdir()
            removed.append(instance.name)
    return removed
