"""The data store: a fixed set of typed keys shared by nonrt and the cycle.

The keys are declared in configuration (name, type, which side writes it, whether it is
critical) and fixed for the life of both processes, so every entry has a fixed offset
and the cycle reads a key with a couple of loads, no lookup, no lock. Each key has one
writer side, declared, and enforced when a handle for writing is taken: nonrt writes
setpoints and gains, the cycle publishes measured values back.

Types: ``f64``, ``i64``, ``bool`` and fixed-length vectors ``f64[N]`` (1 ≤ N ≤ 64, e.g. a
joint vector). Every entry is a seqlock (same protocol as the control block, see
:mod:`mxrc.rt.controlblock`): ``seq`` word then the value words, starting on its own
cache line so an rt-written key and a nonrt-written key never share one. For a scalar the
value word alone could not tear (one aligned 8-byte store), but the seqlock still tells
the reader whether the writer finished, and its counter is the key's version, which
nonrt uses to notice changes of critical keys; for vectors it is what prevents mixing
two writes.

Segment body::

    +0    u32 length of the key table text, then the text (UTF-8), padded to 64
    +T    entries, each align_up(8 + 8·words): seq u64, value words

The key table text (``name:type:writer`` per line, in declaration order) is what the
header's ``key_table_hash`` covers; keeping the text in the segment lets a peer with a
different table be told *which* key differs. ``critical`` is left out: it is a nonrt
logging policy, and changing it must not require restarting the RT process.

Hot-path reads and writes (``read_f64``, ``write_f64``, ``read_vector_into``...) create
no containers; CPython may create transient ints/floats (see :mod:`mxrc.rt.ring`).
"""

from __future__ import annotations

import hashlib
import mmap
import re
import struct
from collections.abc import Callable, Mapping, MutableSequence, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

from mxrc.errors import ConfigError
from mxrc.rt.controlblock import READ_ATTEMPTS, seqlock_begin
from mxrc.rt.shm import (
    DEFAULT_DIRECTORY,
    HEADER_SIZE,
    Region,
    Segment,
    SegmentKind,
    SegmentLayout,
    ShmError,
    align_up,
    attach_segment,
    create_segment,
)

DATA_STORE_VERSION: Final = 1
MAX_VECTOR: Final = 64
_NAME_RE: Final = re.compile(r"[a-z_][a-z0-9_.]{0,63}")
_TYPE_RE: Final = re.compile(r"(f64|i64|bool)(?:\[(\d+)\])?")


class DataStoreError(ShmError):
    """A key was used against its declaration (unknown, wrong type, wrong side)."""


class TornReadError(DataStoreError):
    """No consistent value within the bounded attempts (writer busy or died mid-write)."""


class Side(StrEnum):
    """Which process writes a key."""

    NONRT = "nonrt"
    RT = "rt"


@dataclass(frozen=True)
class KeySpec:
    """One declared key. ``type`` is ``f64``, ``i64``, ``bool`` or ``f64[N]``."""

    name: str
    type: str
    writer: Side
    critical: bool = False

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise ConfigError(
                f"datastore key {self.name!r}: names are 1-64 characters of lower-case "
                "letters, digits, '_' or '.', starting with a letter or '_'"
            )
        match = _TYPE_RE.fullmatch(self.type)
        if match is None or (match.group(2) is not None and match.group(1) != "f64"):
            raise ConfigError(
                f"datastore key {self.name!r}: type {self.type!r} is not one of f64, i64, "
                "bool, f64[N]"
            )
        if match.group(2) is not None and not 1 <= int(match.group(2)) <= MAX_VECTOR:
            raise ConfigError(f"datastore key {self.name!r}: vector length must be 1..{MAX_VECTOR}")
        if not isinstance(self.writer, Side):
            raise ConfigError(f"datastore key {self.name!r}: writer must be 'nonrt' or 'rt'")

    @property
    def base_type(self) -> str:
        return self.type.split("[", 1)[0]

    @property
    def is_vector(self) -> bool:
        return "[" in self.type

    @property
    def words(self) -> int:
        """Value words (8 bytes each)."""
        return int(self.type[4:-1]) if self.is_vector else 1

    @property
    def entry_size(self) -> int:
        return align_up(8 + 8 * self.words)

    @property
    def canonical(self) -> str:
        return f"{self.name}:{self.type}:{self.writer.value}"


class KeyTable:
    """The declared keys and their offsets: pure layout, no memory."""

    def __init__(self, keys: Sequence[KeySpec]) -> None:
        if not keys:
            raise ConfigError("datastore: at least one key must be declared")
        seen: set[str] = set()
        for key in keys:
            if key.name in seen:
                raise ConfigError(f"datastore key {key.name!r} is declared twice")
            seen.add(key.name)
        self.keys: tuple[KeySpec, ...] = tuple(keys)
        self.text = "".join(k.canonical + "\n" for k in self.keys)
        encoded = self.text.encode()
        self.table_area = align_up(4 + len(encoded))
        self._offsets: dict[str, int] = {}
        offset = self.table_area
        for key in self.keys:
            self._offsets[key.name] = offset
            offset += key.entry_size
        self.body_size = offset

    @classmethod
    def from_config(cls, keys: Mapping[str, Mapping[str, object]]) -> KeyTable:
        """Build from the configuration's ``[datastore.keys.<name>]`` tables, e.g.
        ``{"kp": {"type": "f64", "writer": "nonrt", "critical": True}}``."""
        specs = []
        for name, spec in keys.items():
            unknown = set(spec) - {"type", "writer", "critical"}
            if unknown:
                raise ConfigError(
                    f"datastore key {name!r}: unknown setting(s) {', '.join(sorted(unknown))}"
                )
            try:
                writer = Side(str(spec.get("writer")))
            except ValueError:
                raise ConfigError(
                    f"datastore key {name!r}: writer must be 'nonrt' or 'rt', "
                    f"not {spec.get('writer')!r}"
                ) from None
            critical = spec.get("critical", False)
            if not isinstance(critical, bool):
                raise ConfigError(f"datastore key {name!r}: critical must be true or false")
            specs.append(KeySpec(name, str(spec.get("type")), writer, critical))
        return cls(specs)

    @property
    def critical(self) -> tuple[str, ...]:
        """Keys whose changes nonrt must log (compare :meth:`DataStore.version`)."""
        return tuple(k.name for k in self.keys if k.critical)

    def spec(self, name: str) -> KeySpec:
        for key in self.keys:
            if key.name == name:
                return key
        raise DataStoreError(
            f"datastore has no key {name!r}; declared: {', '.join(k.name for k in self.keys)}"
        )

    def offset(self, name: str) -> int:
        """Offset of the key's entry (its seq word) from the start of the body."""
        self.spec(name)
        return self._offsets[name]

    @property
    def layout_hash(self) -> int:
        text = f"mxrc-datastore/{DATA_STORE_VERSION}\n{self.text}"
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")

    def segment_layout(self) -> SegmentLayout:
        return SegmentLayout(
            kind=SegmentKind.DATA_STORE,
            version=DATA_STORE_VERSION,
            record_size=0,
            capacity=len(self.keys),
            layout_hash=self.layout_hash,
            body_size=self.body_size,
            hash_name="key_table_hash",
        )

    def difference(self, other_text: str) -> str | None:
        """Name the first key that differs from a peer's table text (for the error)."""
        theirs = {}
        order = []
        for line in other_text.splitlines():
            name, _, rest = line.partition(":")
            theirs[name] = rest.split(":")
            order.append(name)
        for position, key in enumerate(self.keys):
            problem = _key_difference(key, theirs.get(key.name))
            if problem is None and order.index(key.name) != position:
                problem = (
                    f"key {key.name!r} is at position {position} here but "
                    f"{order.index(key.name)} in the segment"
                )
            if problem is not None:
                return problem
        extra = [name for name in order if name not in self._offsets]
        if extra:
            return f"the segment has key(s) not declared here: {', '.join(extra)}"
        return None


def _key_difference(key: KeySpec, theirs: list[str] | None) -> str | None:
    if theirs is None:
        return f"key {key.name!r} is not in the segment's table"
    if len(theirs) != 2:
        return f"the segment's entry for {key.name!r} is malformed"
    their_type, their_writer = theirs
    if their_type != key.type:
        return f"key {key.name!r} is {key.type} here but {their_type} in the segment"
    if their_writer != key.writer.value:
        return (
            f"key {key.name!r} is written by {key.writer.value} here but by "
            f"{their_writer} in the segment"
        )
    return None


def write_key_table(region: Region, table: KeyTable) -> None:
    """Store the table text in the body (done by the creator, before the magic)."""
    encoded = table.text.encode()
    base = region.body_offset
    struct.pack_into(f"<I{len(encoded)}s", region.buf, base, len(encoded), encoded)


def _explainer(table: KeyTable) -> Callable[[mmap.mmap], str | None]:
    def explain(buf: mmap.mmap) -> str | None:
        try:
            (length,) = struct.unpack_from("<I", buf, HEADER_SIZE)
            if length > len(buf) - HEADER_SIZE - 4:
                return None
            other = bytes(buf[HEADER_SIZE + 4 : HEADER_SIZE + 4 + length]).decode()
        except (struct.error, UnicodeDecodeError):
            return None
        return table.difference(other)

    return explain


class DataStore:
    """One process's view of the store. ``side`` is who this process is; handles for
    writing are only given for keys that side is declared to write."""

    def __init__(self, region: Region, table: KeyTable, side: Side) -> None:
        self.table = table
        self.side = side
        self._q = region.u64()
        self._i = region.i64()
        self._d = region.f64()
        self._base = region.body_offset
        # Value words per handle: vector calls check their length against it, so a wrong
        # length can never spill into the neighbouring key.
        self._words = {(self._base + table.offset(k.name)) // 8: k.words for k in table.keys}
        #: Reads that gave up after :data:`READ_ATTEMPTS` inconsistent tries.
        self.failed_reads = 0

    # handles ------------------------------------------------------------------------

    def handle(self, name: str, type_: str, *, for_write: bool = False) -> int:
        """An integer handle (the entry's word index) for the hot-path accessors, after
        checking the key exists, has ``type_`` (``"f64"``, ``"i64"``, ``"bool"`` or
        ``"f64[N]"``), and, if ``for_write``, is written by this side. The checks happen
        once, here, so the per-cycle calls need none."""
        spec = self.table.spec(name)
        if spec.type != type_:
            raise DataStoreError(f"datastore key {name!r} is {spec.type}, not {type_}")
        if for_write and spec.writer is not self.side:
            raise DataStoreError(
                f"datastore key {name!r} is written by {spec.writer.value}; "
                f"this process is {self.side.value}"
            )
        return (self._base + self.table.offset(name)) // 8

    # hot-path accessors (handle checked when taken) ---------------------------------

    def read_f64(self, handle: int) -> float | None:
        q = self._q
        d = self._d
        for _attempt in range(READ_ATTEMPTS):
            before = q[handle]
            value: float = d[handle + 1]
            if q[handle] == before and not before & 1:
                return value
        self.failed_reads += 1
        return None

    def read_i64(self, handle: int) -> int | None:
        q = self._q
        for _attempt in range(READ_ATTEMPTS):
            before = q[handle]
            value: int = self._i[handle + 1]
            if q[handle] == before and not before & 1:
                return value
        self.failed_reads += 1
        return None

    def read_bool(self, handle: int) -> bool | None:
        q = self._q
        for _attempt in range(READ_ATTEMPTS):
            before = q[handle]
            value = q[handle + 1] != 0
            if q[handle] == before and not before & 1:
                return value
        self.failed_reads += 1
        return None

    def read_vector_into(self, handle: int, out: MutableSequence[float]) -> bool:
        """Copy an ``f64[N]`` key into ``out`` (length N, preallocated by the caller).
        Returns False, leaving ``out`` partly overwritten, if no consistent copy could be
        had: the caller must then not use ``out``."""
        q = self._q
        d = self._d
        first = handle + 1
        count = len(out)
        if count != self._words[handle]:
            raise DataStoreError(f"vector of {self._words[handle]} values, not {count}")
        for _attempt in range(READ_ATTEMPTS):
            before = q[handle]
            for i in range(count):
                out[i] = d[first + i]
            if q[handle] == before and not before & 1:
                return True
        self.failed_reads += 1
        return False

    def write_f64(self, handle: int, value: float) -> None:
        q = self._q
        begin = seqlock_begin(q[handle])
        q[handle] = begin
        self._d[handle + 1] = value
        q[handle] = begin + 1

    def write_i64(self, handle: int, value: int) -> None:
        q = self._q
        begin = seqlock_begin(q[handle])
        q[handle] = begin
        self._i[handle + 1] = value
        q[handle] = begin + 1

    def write_bool(self, handle: int, value: bool) -> None:
        q = self._q
        begin = seqlock_begin(q[handle])
        q[handle] = begin
        q[handle + 1] = 1 if value else 0
        q[handle] = begin + 1

    def write_vector(self, handle: int, values: Sequence[float]) -> None:
        """Write all N values of an ``f64[N]`` key as one consistent update."""
        q = self._q
        d = self._d
        first = handle + 1
        if len(values) != self._words[handle]:
            raise DataStoreError(f"vector of {self._words[handle]} values, not {len(values)}")
        begin = seqlock_begin(q[handle])
        q[handle] = begin
        for i in range(len(values)):
            d[first + i] = values[i]
        q[handle] = begin + 1

    def version(self, handle: int) -> int:
        """How many writes the key has completed: nonrt compares versions to notice a
        change of a critical key without comparing values."""
        seq: int = self._q[handle]
        return seq >> 1

    # convenience (allocating, type-checked by name) -------------------------------------

    def get(self, name: str) -> float | int | bool | tuple[float, ...]:
        """Read a key by name; raises :class:`TornReadError` if no consistent value."""
        spec = self.table.spec(name)
        handle = self.handle(name, spec.type)
        result: float | int | bool | tuple[float, ...] | None
        if spec.is_vector:
            out = [0.0] * spec.words
            result = tuple(out) if self.read_vector_into(handle, out) else None
        elif spec.type == "f64":
            result = self.read_f64(handle)
        elif spec.type == "i64":
            result = self.read_i64(handle)
        else:
            result = self.read_bool(handle)
        if result is None:
            raise TornReadError(
                f"datastore key {name!r}: no consistent value after {READ_ATTEMPTS} "
                "attempts (its writer is busy or died mid-write)"
            )
        return result

    def set(self, name: str, value: float | int | bool | Sequence[float]) -> None:
        """Write a key by name, checking the value against the declaration."""
        spec = self.table.spec(name)
        handle = self.handle(name, spec.type, for_write=True)
        if spec.is_vector:
            if isinstance(value, bool | int | float) or len(value) != spec.words:
                raise DataStoreError(f"datastore key {name!r} takes {spec.words} floats")
            self.write_vector(handle, [float(v) for v in value])
        elif spec.type == "bool":
            if not isinstance(value, bool):
                raise DataStoreError(f"datastore key {name!r} takes a bool, not {value!r}")
            self.write_bool(handle, value)
        elif spec.type == "i64":
            if isinstance(value, bool) or not isinstance(value, int):
                raise DataStoreError(f"datastore key {name!r} takes an int, not {value!r}")
            if not -(1 << 63) <= value < 1 << 63:
                raise DataStoreError(f"datastore key {name!r}: {value} does not fit an i64")
            self.write_i64(handle, value)
        else:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise DataStoreError(f"datastore key {name!r} takes a float, not {value!r}")
            self.write_f64(handle, float(value))


class DataStoreSegment:
    """The store's segment. Either side may create it (typically nonrt, at start-up);
    the other attaches, and is refused if its key table differs, naming the key."""

    def __init__(self, segment: Segment, table: KeyTable) -> None:
        self.segment = segment
        self.table = table

    @classmethod
    def create(
        cls,
        name: str,
        table: KeyTable,
        *,
        directory: Path = DEFAULT_DIRECTORY,
        allow_weak_memory_order: bool = False,
    ) -> DataStoreSegment:
        segment = create_segment(
            name,
            table.segment_layout(),
            directory=directory,
            allow_weak_memory_order=allow_weak_memory_order,
            initialise=lambda seg: write_key_table(seg, table),
        )
        return cls(segment, table)

    @classmethod
    def attach(
        cls,
        name: str,
        table: KeyTable,
        *,
        directory: Path = DEFAULT_DIRECTORY,
        wait_s: float = 0.0,
        allow_weak_memory_order: bool = False,
    ) -> DataStoreSegment:
        segment = attach_segment(
            name,
            table.segment_layout(),
            directory=directory,
            wait_s=wait_s,
            allow_weak_memory_order=allow_weak_memory_order,
            explain=_explainer(table),
        )
        return cls(segment, table)

    def store(self, side: Side) -> DataStore:
        return DataStore(self.segment, self.table, side)

    def close(self) -> None:
        self.segment.close()

    def __enter__(self) -> DataStoreSegment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
