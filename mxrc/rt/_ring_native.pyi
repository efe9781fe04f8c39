"""Types of the C module built from ``_ring_native.c`` (the ring's hot paths)."""

from typing import Any

#: SHA-256 of the ``_ring_native.c`` it was compiled from ("unknown" if built by hand).
SOURCE_SHA256: str

class Writer:
    flags: int
    @property
    def next(self) -> int: ...
    def __init__(
        self,
        words: memoryview,
        slots: int,
        head: int,
        capacity: int,
        record_size: int,
        payload: bytearray,
        trace_id: bytearray,
        span_id: bytearray,
        next: int,
    ) -> None: ...
    def publish(self, rtype: int, cycle: int, t_ns: int, /) -> int: ...

def read_run(
    words: memoryview,
    slots: int,
    record_size: int,
    capacity: int,
    payload_size: int,
    first: int,
    count: int,
    out: list[Any],
    record_type: type[tuple[Any, ...]],
    /,
) -> tuple[int, int, int]: ...
