"""Shared-memory segments between ``mxrc-rt`` and ``mxrc-nonrt``, with a layout header.

Two processes built from different code (or the same code with a different config) must
never interpret each other's bytes: a 64-byte header at the start of every segment
records the magic, the segment kind, the layout version and the sizes, and a peer that
attaches with different expectations is refused with a :class:`ShmLayoutError` naming
the field, the value it expected and the value it found.

Segments are plain files in a tmpfs directory (``/dev/shm`` by default) mapped with
:mod:`mmap`. We do not use :mod:`multiprocessing.shared_memory`: on Python 3.11 every
process that *attaches* registers the segment with its resource tracker, which unlinks
it when that process exits (CPython gh-82300; ``track=False`` only arrived in 3.13), so
the RT process exiting would delete the nonrt process's control block. With plain files
the rule is simple and explicit: the creator unlinks on close; attachers only unmap.

Memory-order assumption (documented here once, relied on by ``ring``, ``controlblock``
and ``datastore``): CPython has no memory fences, so the seqlocks in this package rely
on the hardware. On x86-64 (TSO) stores are not reordered with other stores and loads
are not reordered with other loads, which is exactly what a seqlock needs; an aligned
8-byte store or load is a single, untearable access. Counters are therefore written and
read through 8-byte-aligned elements of ``memoryview(...).cast("Q")`` (one ``memcpy`` of
constant size 8, compiled to one ``mov``), never with ``struct.pack_into("<Q", ...)``,
which stores byte by byte so a peer can read a half-written value (0, in practice: the
counter test in ``tests/rt/test_shm.py`` catches it within a second). Each such access
is its own bytecode, i.e. its own call from the interpreter loop into C, so the C
compiler cannot move one across another either; a block copy (``memcpy``, possibly
``rep movs``) between two of them stays between them on x86-64, whatever order it uses
internally. On other architectures (ARM has a weaker model) none of this holds without
fences, so :func:`check_platform` refuses to create or attach unless explicitly
overridden, in which case it warns.
"""

from __future__ import annotations

import mmap
import os
import platform
import re
import struct
import time
import warnings
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from types import TracebackType
from typing import Final, Protocol

from mxrc.errors import MxrcError

DEFAULT_DIRECTORY: Final = Path("/dev/shm")
MAGIC: Final = b"MXRCSHM\x01"
HEADER_SIZE: Final = 64
ALIGN: Final = 64  # one cache line: sizes are multiples so records never share lines

# magic, kind, version, header_size, record_size, capacity, layout_hash, total_size,
# creator_pid, reserved, creator_start (the creator's start time in clock ticks after
# boot, so a recycled PID is not mistaken for a live creator). Little-endian explicitly:
# only x86-64 is supported anyway.
_HEADER: Final = struct.Struct("<8sIIIIQQQI4xQ")
assert _HEADER.size == HEADER_SIZE

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TSO_MACHINES: Final = frozenset({"x86_64", "amd64", "x64"})


class ShmError(MxrcError):
    """A shared-memory segment could not be created or used as asked."""


class ShmLayoutError(ShmError):
    """A peer's segment does not have the layout this process was built/configured for."""

    def __init__(
        self,
        segment: str,
        field: str,
        expected: object,
        found: object,
        detail: str | None = None,
    ) -> None:
        super().__init__(
            f"shared memory segment {segment!r}: layout mismatch in {field}: "
            f"expected {expected}, found {found}{f' ({detail})' if detail else ''}; both "
            "processes must run the same mxrc build and configuration (restart the side "
            "that is out of date)"
        )
        self.segment = segment
        self.field = field
        self.expected = expected
        self.found = found
        self.detail = detail


class ShmPlatformError(ShmError):
    """The CPU's memory model is not one the lock-free protocols were shown correct on."""


class SegmentNotFoundError(ShmError):
    """Attach found no segment of that name (the creating process has not started)."""


class SegmentInUseError(ShmError):
    """Create found a segment of that name whose creator is still alive."""


class SegmentKind(IntEnum):
    """Which structure a segment holds, so a ring is never attached as a control block."""

    RING = 1
    CONTROL_BLOCK = 2
    DATA_STORE = 3


def align_up(value: int, alignment: int = ALIGN) -> int:
    """Round up so every record and counter starts on its own cache line (and 8-byte
    alignment, which the single-store guarantee needs, follows)."""
    return -(-value // alignment) * alignment


@dataclass(frozen=True)
class SegmentLayout:
    """What the header of a segment must say; built by each structure from its config.

    ``hash_name`` is the name the layout hash goes by in error messages (a data store
    calls it ``key_table_hash``) so the operator reads what actually differs.
    """

    kind: SegmentKind
    version: int
    record_size: int
    capacity: int
    layout_hash: int
    body_size: int
    hash_name: str = "layout_hash"

    @property
    def total_size(self) -> int:
        return HEADER_SIZE + align_up(self.body_size)

    def header_bytes(self, creator_pid: int, creator_start: int = 0) -> bytes:
        return _HEADER.pack(
            MAGIC,
            self.kind,
            self.version,
            HEADER_SIZE,
            self.record_size,
            self.capacity,
            self.layout_hash,
            self.total_size,
            creator_pid,
            creator_start,
        )


@dataclass(frozen=True)
class HeaderFields:
    """A decoded header, as found in a segment."""

    magic: bytes
    kind: int
    version: int
    header_size: int
    record_size: int
    capacity: int
    layout_hash: int
    total_size: int
    creator_pid: int
    creator_start: int


def decode_header(data: bytes | bytearray | memoryview | mmap.mmap) -> HeaderFields:
    return HeaderFields(*_HEADER.unpack_from(data, 0))


def _kind_name(value: int) -> str:
    try:
        return SegmentKind(value).name
    except ValueError:
        return f"unknown kind {value}"


def validate_header(
    segment: str, layout: SegmentLayout, found: HeaderFields, file_size: int
) -> None:
    """Refuse a segment whose header differs from ``layout``: first difference wins.

    The order is chosen so the most fundamental difference is reported (a foreign file
    is called that, not "wrong record size").
    """
    if found.magic != MAGIC:
        raise ShmLayoutError(
            segment,
            "magic",
            repr(MAGIC),
            f"{found.magic!r} (not an mxrc segment, or its creator has not finished "
            "initialising it)",
        )
    checks: list[tuple[str, object, object]] = [
        ("kind", layout.kind.name, _kind_name(found.kind)),
        ("layout_version", layout.version, found.version),
        ("header_size", HEADER_SIZE, found.header_size),
        ("record_size", layout.record_size, found.record_size),
        ("capacity", layout.capacity, found.capacity),
        (layout.hash_name, f"{layout.layout_hash:#018x}", f"{found.layout_hash:#018x}"),
        ("total_size", layout.total_size, found.total_size),
        ("file_size", layout.total_size, file_size),
    ]
    for field, expected, actual in checks:
        if expected != actual:
            raise ShmLayoutError(segment, field, expected, actual)


def check_platform(*, allow_weak_memory_order: bool = False, machine: str | None = None) -> None:
    """Refuse (or, when overridden, warn) on CPUs whose memory model is weaker than TSO.

    The seqlocks here have no fences because CPython offers none; they are correct only
    where the hardware keeps stores in order and loads in order (x86-64).
    """
    arch = (machine if machine is not None else platform.machine()).lower()
    if arch in _TSO_MACHINES and struct.calcsize("Q") == 8:
        return
    message = (
        f"mxrc shared memory needs x86-64 store/load ordering (TSO); this machine is "
        f"{arch or 'unknown'!r}, where the fence-free seqlocks may return torn data"
    )
    if not allow_weak_memory_order:
        raise ShmPlatformError(message + " (refusing; see mxrc.rt.shm)")
    warnings.warn(message + " (allowed by override)", RuntimeWarning, stacklevel=2)


def _check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise ShmError(
            f"invalid shared memory segment name {name!r}: 1-128 characters of letters, "
            "digits, '.', '_' or '-', not starting with a punctuation character"
        )


class Region(Protocol):
    """Memory a structure lives in: a real segment, or a bytearray in unit tests."""

    @property
    def buf(self) -> mmap.mmap | bytearray: ...

    @property
    def body_offset(self) -> int: ...

    def u64(self) -> memoryview:
        """The whole region as unsigned 8-byte words (counters, sequence words)."""
        ...

    def i64(self) -> memoryview:
        """The whole region as signed 8-byte words."""
        ...

    def f64(self) -> memoryview[float]:
        """The whole region as float64 words."""
        ...


class _Views:
    """The three word views of a buffer, made once and released together before
    unmapping (``mmap.close`` refuses while any view is exported)."""

    def __init__(self, buf: mmap.mmap | bytearray) -> None:
        self._base = memoryview(buf)
        self.u64 = self._base.cast("Q")
        self.i64 = self._base.cast("q")
        self.f64 = self._base.cast("d")

    def release(self) -> None:
        for view in (self.u64, self.i64, self.f64, self._base):
            view.release()


class LocalRegion:
    """A process-private region with the same interface as :class:`Segment`.

    Lets the layout and protocol logic be unit-tested (and single-process tools run)
    without creating files; not shared with anyone.
    """

    def __init__(self, layout: SegmentLayout) -> None:
        self.layout = layout
        self._buf = bytearray(layout.total_size)
        self._buf[:HEADER_SIZE] = layout.header_bytes(os.getpid())
        self._views = _Views(self._buf)

    @property
    def buf(self) -> bytearray:
        return self._buf

    @property
    def body_offset(self) -> int:
        return HEADER_SIZE

    def u64(self) -> memoryview:
        return self._views.u64

    def i64(self) -> memoryview:
        return self._views.i64

    def f64(self) -> memoryview[float]:
        return self._views.f64

    def close(self) -> None:
        self._views.release()


class Segment:
    """A mapped shared-memory file. The creator unlinks it on close; attachers unmap."""

    def __init__(
        self,
        name: str,
        path: Path,
        layout: SegmentLayout,
        buf: mmap.mmap,
        *,
        owner: bool,
        inode: int = 0,
    ) -> None:
        self.name = name
        self.path = path
        self.layout = layout
        self.owner = owner
        self._inode = inode
        self._buf: mmap.mmap | None = buf
        self._views: _Views | None = _Views(buf)

    @property
    def buf(self) -> mmap.mmap:
        if self._buf is None:
            raise ShmError(f"shared memory segment {self.name!r} is closed")
        return self._buf

    @property
    def body_offset(self) -> int:
        return HEADER_SIZE

    @property
    def closed(self) -> bool:
        return self._buf is None

    def _live_views(self) -> _Views:
        if self._views is None:
            raise ShmError(f"shared memory segment {self.name!r} is closed")
        return self._views

    def u64(self) -> memoryview:
        return self._live_views().u64

    def i64(self) -> memoryview:
        return self._live_views().i64

    def f64(self) -> memoryview[float]:
        return self._live_views().f64

    def header(self) -> HeaderFields:
        return decode_header(self.buf)

    def close(self) -> None:
        """Unmap, and unlink if this process created the segment. Idempotent.

        Peers that still have it mapped keep their mapping (tmpfs frees the memory when
        the last one unmaps); a new creator gets a fresh segment under the same name.
        """
        if self._views is not None:
            self._views.release()
            self._views = None
        if self._buf is not None:
            self._buf.close()
            self._buf = None
            if self.owner:
                self._unlink_if_ours()

    def _unlink_if_ours(self) -> None:
        # Only our own file: if it was removed and another process created a new segment
        # under the same name since, that one is not ours to delete.
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> Segment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def segment_path(name: str, directory: Path = DEFAULT_DIRECTORY) -> Path:
    _check_name(name)
    return Path(directory) / name


def unlink_segment(name: str, directory: Path = DEFAULT_DIRECTORY) -> bool:
    """Remove a segment file if present; returns whether it existed (for cleanup paths)."""
    try:
        os.unlink(segment_path(name, directory))
    except FileNotFoundError:
        return False
    return True


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks after boot (``/proc/PID/stat`` field 22), or
    None if there is no such process (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def creator_alive(pid: int, start: int) -> bool:
    """Whether the process that created a segment still runs: same PID *and* same start
    time, since in containers a restarted process often gets its predecessor's PID."""
    if pid <= 0:
        return False
    now = process_start_time(pid)
    if now is not None:
        return start in (0, now)  # 0: creator could not read its own start time
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def create_segment(
    name: str,
    layout: SegmentLayout,
    *,
    directory: Path = DEFAULT_DIRECTORY,
    mode: int = 0o600,
    allow_weak_memory_order: bool = False,
    initialise: Callable[[Segment], None] | None = None,
) -> Segment:
    """Create and map a zeroed segment; the header's magic is written last, after
    ``initialise`` (if given) has filled in the body, so a peer never attaches to a
    half-built segment.

    A leftover segment from a creator that died (its PID no longer runs) is replaced;
    processes that still map the old one keep reading a dead segment, which is safe
    because the control block's lease deadline then expires and the cycle holds safe
    outputs. A segment whose creator is alive is refused: two creators would fight.
    """
    check_platform(allow_weak_memory_order=allow_weak_memory_order)
    path = segment_path(name, directory)
    for _attempt in range(3):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
            break
        except FileExistsError:
            creator = _existing_creator(path)
            if creator is not None and creator_alive(*creator):
                raise SegmentInUseError(
                    f"shared memory segment {name!r} ({path}) exists and its creator "
                    f"(pid {creator[0]}) is running; refusing to replace it"
                ) from None
            with suppress(FileNotFoundError):
                os.unlink(path)
    else:
        raise ShmError(f"could not create shared memory segment {name!r} ({path})")
    try:
        os.ftruncate(fd, layout.total_size)
        buf = mmap.mmap(fd, layout.total_size)
        inode = os.fstat(fd).st_ino
    except BaseException:
        os.close(fd)
        with suppress(FileNotFoundError):
            os.unlink(path)
        raise
    os.close(fd)
    header = layout.header_bytes(os.getpid(), process_start_time(os.getpid()) or 0)
    buf[8:HEADER_SIZE] = header[8:]
    segment = Segment(name, path, layout, buf, owner=True, inode=inode)
    if initialise is not None:
        try:
            initialise(segment)
        except BaseException:
            segment.close()
            raise
    # The magic is the "initialised" flag: one aligned 8-byte store, after the rest.
    segment.u64()[0] = int.from_bytes(MAGIC, "little")
    return segment


def _existing_creator(path: Path) -> tuple[int, int] | None:
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_SIZE)
    except FileNotFoundError:
        return None
    if len(raw) < HEADER_SIZE:
        return None  # a creator that died before sizing the file
    header = decode_header(raw)
    if header.magic not in (MAGIC, bytes(len(MAGIC))):
        raise ShmError(
            f"{path} exists and is not an mxrc shared memory segment; refusing to replace "
            "it (choose another segment name)"
        )
    return header.creator_pid, header.creator_start


def attach_segment(
    name: str,
    layout: SegmentLayout,
    *,
    directory: Path = DEFAULT_DIRECTORY,
    wait_s: float = 0.0,
    allow_weak_memory_order: bool = False,
    explain: Callable[[mmap.mmap], str | None] | None = None,
) -> Segment:
    """Map a peer's segment after checking its header against ``layout``.

    ``wait_s`` bounds how long to wait for a peer that is still starting (file missing or
    magic not yet written); any other mismatch is refused at once. ``explain`` may add
    detail to a layout-hash mismatch (the data store names the differing key).
    """
    check_platform(allow_weak_memory_order=allow_weak_memory_order)
    path = segment_path(name, directory)
    deadline = time.monotonic() + max(0.0, wait_s)
    while True:
        try:
            return _attach_once(name, path, layout, explain)
        except (SegmentNotFoundError, ShmLayoutError) as exc:
            retryable = isinstance(exc, SegmentNotFoundError) or exc.field in {
                "magic",
                "file_size",
            }
            if not retryable or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def _attach_once(
    name: str,
    path: Path,
    layout: SegmentLayout,
    explain: Callable[[mmap.mmap], str | None] | None,
) -> Segment:
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        raise SegmentNotFoundError(
            f"shared memory segment {name!r} ({path}) does not exist; "
            "is the process that creates it running?"
        ) from None
    try:
        size = os.fstat(fd).st_size
        if size < HEADER_SIZE:
            raise ShmLayoutError(name, "file_size", layout.total_size, size)
        buf = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    try:
        found = decode_header(buf)
        validate_header(name, layout, found, size)
    except ShmLayoutError as exc:
        detail = explain(buf) if exc.field == layout.hash_name and explain else None
        buf.close()
        if detail:
            raise ShmLayoutError(name, exc.field, exc.expected, exc.found, detail) from None
        raise
    except BaseException:
        buf.close()
        raise
    return Segment(name, path, layout, buf, owner=False)
