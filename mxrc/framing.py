"""Byte framing of event-log lines and checkpoint files (pure: no I/O).

A framed line is the compact orjson encoding of a JSON object whose *last* member is
``"crc"``: the CRC32C of every byte of the line before ``,"crc":`` followed by ``}``.
In other words the checksum covers exactly the JSON object as it would be without its
``crc`` member, so a reader can verify the raw bytes it read without re-encoding
anything, and the line stays a plain JSON object that ``jq`` reads as is.

CRC32C detects every single-bit error and every burst up to 32 bits, which covers the
failures a log sees in practice: torn sector writes, zero-filled tails, flipped bits.
"""

from __future__ import annotations

from typing import Any

import crc32c
import orjson

CRC_KEY = b',"crc":'
_MAX_CRC_DIGITS = 10  # 2**32 - 1 has ten decimal digits


class FrameError(ValueError):
    """A line that is not a valid framed record; ``reason`` says what is wrong with it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def checksum(body_without_brace: bytes | memoryview) -> int:
    """CRC32C over ``body`` + ``}`` (the object minus its crc member)."""
    return int(crc32c.crc32c(b"}", crc32c.crc32c(body_without_brace)))


def encode(obj: dict[str, Any]) -> bytes:
    """Frame ``obj`` (which must not contain ``crc``) as one line ending in ``\\n``."""
    if "crc" in obj:
        raise ValueError("the 'crc' member is added by the framing; do not set it")
    body = orjson.dumps(obj)
    if not body.startswith(b"{") or len(body) < 2:
        raise ValueError("only JSON objects can be framed")
    if body == b"{}":
        raise ValueError("an empty object cannot be framed")
    head = memoryview(body)[:-1]
    crc = checksum(head)
    return b"".join((head, CRC_KEY, str(crc).encode(), b"}\n"))


def decode(line: bytes) -> dict[str, Any]:
    """Verify and parse one line (with or without its trailing newline).

    Raises :class:`FrameError` when the line is incomplete, not JSON, lacks the crc
    member, or the checksum does not match the bytes.
    """
    if line.endswith(b"\n"):
        line = line[:-1]
    if not line:
        raise FrameError("empty line")
    cut = line.rfind(CRC_KEY)
    if cut < 0 or not line.endswith(b"}"):
        raise FrameError("no trailing crc member (incomplete or not an mxrc record)")
    digits = line[cut + len(CRC_KEY) : -1]
    if not digits.isdigit() or len(digits) > _MAX_CRC_DIGITS:
        raise FrameError("crc member is not a 32-bit unsigned number")
    expected = int(digits)
    actual = checksum(memoryview(line)[:cut])
    if actual != expected:
        raise FrameError(f"checksum mismatch (stored {expected}, computed {actual})")
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:  # the crc matched but the bytes are not JSON
        raise FrameError(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FrameError("not a JSON object")
    del obj["crc"]
    return obj
