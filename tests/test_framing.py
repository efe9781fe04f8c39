from __future__ import annotations

import json
import subprocess

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxrc import framing

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
objects = st.dictionaries(
    st.text(min_size=1, max_size=10).filter(lambda k: k != "crc"),
    json_values,
    min_size=1,
    max_size=6,
)


@given(objects)
def test_round_trip(obj: dict[str, object]) -> None:
    line = framing.encode(obj)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert framing.decode(line) == obj


@given(objects, st.data())
def test_any_single_bit_flip_is_detected(obj: dict[str, object], data: st.DataObject) -> None:
    line = bytearray(framing.encode(obj)[:-1])
    index = data.draw(st.integers(0, len(line) - 1))
    bit = data.draw(st.integers(0, 7))
    line[index] ^= 1 << bit
    with pytest.raises(framing.FrameError):
        framing.decode(bytes(line))


@given(objects, st.data())
def test_every_truncation_is_detected(obj: dict[str, object], data: st.DataObject) -> None:
    line = framing.encode(obj)[:-1]
    cut = data.draw(st.integers(0, len(line) - 1))
    with pytest.raises(framing.FrameError):
        framing.decode(line[:cut])


def test_crc_covers_the_object_without_its_crc_member() -> None:
    """The documented rule, recomputed independently of the module."""
    import crc32c

    line = framing.encode({"seq": 1, "payload": {"text": ',"crc":123}'}})
    doc = orjson.loads(line)
    crc = doc.pop("crc")
    assert crc == crc32c.crc32c(orjson.dumps(doc))


def test_line_is_plain_json_for_jq() -> None:
    line = framing.encode({"seq": 7, "type": "transition"})
    out = subprocess.run(
        ["jq", "-c", "{seq, type}"], input=line, capture_output=True, check=True
    ).stdout
    assert json.loads(out) == {"seq": 7, "type": "transition"}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"", "empty"),
        (b"hello world", "no trailing crc"),
        (b'{"a":1,"crc":x}', "not a 32-bit"),
        (b'{"a":1,"crc":99999999999}', "not a 32-bit"),
        (b'{"a":1,"crc":1}', "checksum mismatch"),
    ],
)
def test_reasons_are_specific(line: bytes, reason: str) -> None:
    with pytest.raises(framing.FrameError, match=reason):
        framing.decode(line)


def test_refuses_to_frame_a_crc_member() -> None:
    with pytest.raises(ValueError, match="crc"):
        framing.encode({"crc": 1})
