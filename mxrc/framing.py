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

from collections.abc import Mapping
from typing import Any

import crc32c
import orjson

CRC_KEY = b',"crc":'
_MAX_CRC_DIGITS = 10  # 2**32 - 1 has ten decimal digits
_CRC_KEY_LENGTH = len(CRC_KEY)
_NEWLINE = ord("\n")
_CLOSING_BRACE = ord("}")
_crc32c = crc32c.crc32c
_loads = orjson.loads


class FrameError(ValueError):
    """A line that is not a valid framed record; ``reason`` says what is wrong with it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def checksum(body_without_brace: bytes | memoryview) -> int:
    """CRC32C over ``body`` + ``}`` (the object minus its crc member): the one rule."""
    return int(_crc32c(b"}", _crc32c(body_without_brace)))


def encode(obj: Mapping[str, Any]) -> bytes:
    """Frame ``obj`` (a dict without ``crc``) as one line ending in ``\\n``."""
    if not isinstance(obj, dict) or not obj:
        raise ValueError("only non-empty JSON objects (dicts) can be framed")
    if "crc" in obj:
        raise ValueError("the 'crc' member is added by the framing; do not set it")
    head = orjson.dumps(obj)[:-1]
    return b"%b%b%d}\n" % (head, CRC_KEY, checksum(head))


def verified(line: bytes) -> dict[str, Any] | None:
    """The record of a valid line (with or without its newline), or None.

    The fast path replay runs once per record: parse first (one C call), take the
    stored crc from the parsed object, then check that only digits follow the last
    ``,"crc":`` (so the crc member is the object's last) and that the checksum of the
    bytes before it matches. Any doubt returns None; :func:`decode` then says why.
    """
    try:
        obj = _loads(line)
        stored = obj.pop("crc")
    except (orjson.JSONDecodeError, KeyError, AttributeError, TypeError):
        return None
    end = -2 if line[-1] == _NEWLINE else -1
    cut = line.rfind(CRC_KEY)
    if cut < 0 or not line[cut + _CRC_KEY_LENGTH : end].isdigit():
        return None
    if checksum(line[:cut]) != stored:
        return None
    return obj  # type: ignore[no-any-return]


def decode(line: bytes) -> dict[str, Any]:
    """Verify and parse one line; raise :class:`FrameError` saying what is wrong."""
    obj = verified(line) if line else None
    if obj is None:
        raise FrameError(diagnose(line))
    return obj


def diagnose(line: bytes) -> str:  # noqa: PLR0911 - one exit per diagnosis
    """Why a line is not a valid framed record (the slow path, for error messages)."""
    if line and line[-1] == _NEWLINE:
        line = line[:-1]
    if not line:
        return "empty line"
    cut = line.rfind(CRC_KEY)
    if cut < 0 or line[-1] != _CLOSING_BRACE:
        return "no trailing crc member (incomplete or not an mxrc record)"
    digits = line[cut + _CRC_KEY_LENGTH : -1]
    if not digits.isdigit() or len(digits) > _MAX_CRC_DIGITS:
        return "crc member is not a 32-bit unsigned number"
    expected = int(digits)
    actual = checksum(line[:cut])
    if actual != expected:
        return f"checksum mismatch (stored {expected}, computed {actual})"
    try:
        obj = _loads(line)
    except orjson.JSONDecodeError as exc:  # the crc matched but the bytes are not JSON
        return f"not valid JSON: {exc}"
    if not isinstance(obj, dict):
        return "not a JSON object"
    return "the crc member is not the object's last member"
