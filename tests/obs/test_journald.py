"""journald's native protocol, checked against its specification and real sockets.

Every encoded entry is read back with :func:`decode`, a decoder written here from
https://systemd.io/JOURNAL_NATIVE_PROTOCOL/ (not from the module under test). The
socket tests bind a real AF_UNIX datagram socket where journald's would be and read
what the kernel delivers, file descriptors included.
"""

from __future__ import annotations

import array
import fcntl
import os
import re
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxrc.obs.journald import (
    SNDBUF_BYTES,
    FieldValue,
    JournalSender,
    encode_entry,
    is_valid_field_name,
    journal_field_name,
    parse_journal_stream,
    running_under_journald,
)

ALL_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def decode(data: bytes) -> dict[str, bytes]:
    """The spec's two serialisations: ``NAME=value\\n``, or ``NAME\\n`` + 64-bit LE size
    + value + ``\\n``. A name may not repeat here (the module takes a mapping)."""
    fields: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            pos = end + 1
        else:
            name = line
            size = int.from_bytes(data[end + 1 : end + 9], "little")
            start = end + 9
            value = data[start : start + size]
            assert len(value) == size, "value shorter than its length"
            assert data[start + size : start + size + 1] == b"\n", "no newline after value"
            pos = start + size + 1
        key = name.decode("ascii")
        assert key not in fields, f"{key} twice"
        fields[key] = value
    return fields


def as_sent(fields: Mapping[str, FieldValue]) -> dict[str, bytes]:
    """What the spec says each value becomes on the wire."""
    return {
        k: v if isinstance(v, bytes) else (v if isinstance(v, str) else str(v)).encode()
        for k, v in fields.items()
    }


# --- field names -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("mxrc.rt.state", "MXRC_RT_STATE"),
        ("trace.id", "TRACE_ID"),
        ("http.request.method", "HTTP_REQUEST_METHOD"),
        ("log-level", "LOG_LEVEL"),
        ("a  b..c--d", "A_B_C_D"),
        ("already_VALID_1", "ALREADY_VALID_1"),
        ("trailing.", "TRAILING_"),
        ("_private", "PRIVATE"),
        ("__x", "X"),
        ("2fa", "X_2FA"),
        ("_2fa", "X_2FA"),
        ("", "X_"),
        ("...", "X_"),
        ("über.größe", "BER_GR_E"),
        ("ß", "X_"),  # str.upper would give "SS"
        ("ıd", "D"),  # str.upper would give "ID"
        ("temp°C", "TEMP_C"),
        ("A" * 70, "A" * 64),
        ("9" * 70, "X_" + "9" * 62),
        ("x." * 40, "X_" * 32),
    ],
)
def test_keys_map_to_journal_field_names(key: str, name: str) -> None:
    assert journal_field_name(key) == name
    assert is_valid_field_name(name)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_every_key_maps_to_a_valid_name_and_mapping_is_idempotent(key: str) -> None:
    name = journal_field_name(key)
    assert is_valid_field_name(name), (key, name)
    assert journal_field_name(name) == name


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("MESSAGE", True),
        ("X", True),
        ("A_1", True),
        ("A__B", True),
        ("A" * 64, True),
        ("A" * 65, False),
        ("", False),
        ("_TRANSPORT", False),  # trusted: journald's own
        ("1ABC", False),
        ("message", False),
        ("A.B", False),
        ("A B", False),
        ("A=B", False),
        ("A\nB", False),
        ("ÄB", False),
        ("Ａ", False),  # full-width A: not ASCII
    ],
)
def test_field_name_validity(name: str, valid: bool) -> None:
    assert is_valid_field_name(name) is valid


# --- encoding ----------------------------------------------------------------------


def test_single_line_values_use_the_text_form() -> None:
    entry: dict[str, FieldValue] = {
        "MESSAGE": "hello",
        "PRIORITY": 3,
        "CODE_LINE": 77,
        "RATIO": 0.5,
        "NUL": b"a\0b",
    }
    assert encode_entry(entry) == (
        b"MESSAGE=hello\nPRIORITY=3\nCODE_LINE=77\nRATIO=0.5\nNUL=a\0b\n"
    )


def test_a_value_with_a_newline_uses_the_binary_form() -> None:
    # the spec's own example field
    assert encode_entry({"BINARY_BLOB": b"xx\nx"}) == (
        b"BINARY_BLOB\n\x04\x00\x00\x00\x00\x00\x00\x00xx\nx\n"
    )
    multi = "first line\nsecond µs line\n"
    data = encode_entry({"MESSAGE": multi, "PRIORITY": "3"})
    size = len(multi.encode())
    assert data == b"MESSAGE\n" + size.to_bytes(8, "little") + multi.encode() + b"\nPRIORITY=3\n"
    assert decode(data) == {"MESSAGE": multi.encode(), "PRIORITY": b"3"}


def test_text_is_utf8_and_a_lone_surrogate_is_escaped() -> None:
    assert decode(encode_entry({"MESSAGE": "µs ✓"})) == {"MESSAGE": "µs ✓".encode()}
    assert encode_entry({"PATH": "a\udcffb"}) == b"PATH=a\\udcffb\n"


NAMES = st.from_regex(r"[A-Z][A-Z0-9_]{0,63}", fullmatch=True)
VALUES: st.SearchStrategy[FieldValue] = st.one_of(
    st.text(),
    st.binary(),
    st.text(alphabet="ab\n\0"),
    st.integers(),
    st.floats(allow_nan=False),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(NAMES, VALUES, min_size=1, max_size=8))
def test_entries_decode_back_per_the_spec(fields: dict[str, FieldValue]) -> None:
    assert decode(encode_entry(fields)) == as_sent(fields)


@pytest.mark.parametrize(
    "name", ["trace.id", "_TRANSPORT", "1ABC", "message", "A" * 65, "A=B", "A\nB", "ÄB", ""]
)
def test_invalid_names_are_refused_naming_the_key(name: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        encode_entry({"MESSAGE": "fine", name: "x"})


def test_an_empty_entry_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one field"):
        encode_entry({})


# --- JOURNAL_STREAM ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("8:12345", (8, 12345)),
        ("0:0", (0, 0)),
        ("66306:18446744073709551615", (66306, 2**64 - 1)),
        ("", None),
        ("8", None),
        ("8:", None),
        (":12", None),
        ("8:12:3", None),
        ("-8:12", None),
        ("8:+12", None),
        (" 8:12", None),
        ("8:12\n", None),
        ("0x8:12", None),
        ("８:12", None),  # a full-width digit is a digit to str.isdigit, not to systemd
        ("a:b", None),
    ],
)
def test_journal_stream_parsing(text: str, parsed: tuple[int, int] | None) -> None:
    assert parse_journal_stream(text) == parsed


def test_running_under_journald_compares_stderr_with_journal_stream(tmp_path: Path) -> None:
    with (tmp_path / "stream").open("w") as journal, (tmp_path / "redirected").open("w") as other:
        st_ = os.fstat(journal.fileno())
        env = {"JOURNAL_STREAM": f"{st_.st_dev}:{st_.st_ino}"}
        assert running_under_journald(env, journal.fileno())
        # a redirected stderr (the variable inherited, the fd elsewhere) is respected
        assert not running_under_journald(env, other.fileno())
        assert not running_under_journald(
            {"JOURNAL_STREAM": f"{st_.st_dev}:{st_.st_ino + 1}"}, journal.fileno()
        )
        assert not running_under_journald(
            {"JOURNAL_STREAM": f"{st_.st_dev + 1}:{st_.st_ino}"}, journal.fileno()
        )
        assert not running_under_journald({}, journal.fileno())
        assert not running_under_journald({"JOURNAL_STREAM": "garbage"}, journal.fileno())
        closed = os.open(tmp_path / "closed", os.O_CREAT | os.O_WRONLY)
        st_closed = os.fstat(closed)
        os.close(closed)
        closed_env = {"JOURNAL_STREAM": f"{st_closed.st_dev}:{st_closed.st_ino}"}
        assert not running_under_journald(closed_env, closed)  # fstat fails: EBADF


# --- a real socket -----------------------------------------------------------------


def sndbuf(size: int | None) -> int:
    """The send buffer the kernel grants an AF_UNIX datagram socket asking for ``size``
    (None: the default); a datagram may be up to 32 bytes less."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        if size is not None:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        granted: int = probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        return granted


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "journal.socket"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.fspath(path))
    sock.settimeout(5)
    try:
        yield sock, path
    finally:
        sock.close()


def receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One datagram and the file descriptors it carried (the caller closes them)."""
    data, ancdata, flags, _ = sock.recvmsg(sndbuf(SNDBUF_BYTES), socket.CMSG_SPACE(4 * 4))
    fds: list[int] = []
    for level, kind, payload in ancdata:
        assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
        fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
    assert not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)
    return data, fds


def memfds() -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/memfd:mxrc-journal"):
            found.append(target)
    return found


ENTRY: dict[str, FieldValue] = {
    "MESSAGE": "cycle overrun",
    "PRIORITY": "3",
    "SYSLOG_IDENTIFIER": "mxrc-test",
    "TRACE_ID": "4bf92f3577b34da6a3ce929d0e0e4736",
    "MXRC_RT_STATE": "RUNNING",
    "MXRC_MULTI": "a\nb",
    "CODE_LINE": 77,
}


def test_an_entry_arrives_as_one_datagram(journal: tuple[socket.socket, Path]) -> None:
    sock, path = journal
    sender = JournalSender(path)
    try:
        assert sender.send(ENTRY) is True
        data, fds = receive(sock)
        assert fds == []
        assert decode(data) == as_sent(ENTRY)
        assert (sender.sent, sender.errors) == (1, 0)
    finally:
        sender.close()


def test_the_raised_send_buffer_carries_entries_the_default_would_not(
    journal: tuple[socket.socket, Path],
) -> None:
    default, raised = sndbuf(None) - 32, sndbuf(SNDBUF_BYTES) - 32
    size = default + 32 * 1024
    assert raised > size + 1024, f"net.core.wmem_max too small to show it: {raised}"
    sock, path = journal
    sender = JournalSender(path)
    try:
        entry: dict[str, FieldValue] = {"MESSAGE": "m", "BLOB": "z" * size}
        assert sender.send(entry)
        data, fds = receive(sock)
        assert fds == [] and len(data) > default
        assert decode(data) == as_sent(entry)
    finally:
        sender.close()


def test_an_entry_too_big_for_a_datagram_travels_in_a_sealed_memfd(
    journal: tuple[socket.socket, Path],
) -> None:
    sock, path = journal
    big = b"0123456789abcde\n" * (sndbuf(SNDBUF_BYTES) // 16 + 65536)  # > limit + 1 MiB
    entry: dict[str, FieldValue] = {**ENTRY, "MXRC_BLOB": big}
    sender = JournalSender(path)
    try:
        assert sender.send(entry) is True
        data, fds = receive(sock)
        assert data == b"" and len(fds) == 1  # the only shape journald accepts with an fd
        fd = fds[0]
        try:
            assert len(memfds()) == 1  # the received one: the sender closed its own
            assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:mxrc-journal")
            assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) == ALL_SEALS
            with pytest.raises(PermissionError):
                os.pwrite(fd, b"x", 0)  # F_SEAL_WRITE, enforced by the kernel
            size = os.fstat(fd).st_size
            assert size == len(encode_entry(entry))
            assert decode(os.pread(fd, size, 0)) == as_sent(entry)
        finally:
            os.close(fd)
        assert memfds() == []
        assert (sender.sent, sender.errors) == (1, 0)
    finally:
        sender.close()


def test_a_missing_socket_is_counted_not_raised_and_retried(tmp_path: Path) -> None:
    path = tmp_path / "absent.socket"
    sender = JournalSender(path)
    try:
        assert sender.send(ENTRY) is False
        assert (sender.sent, sender.errors) == (0, 1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(os.fspath(path))
            sock.settimeout(5)
            assert sender.send(ENTRY) is True  # journald came up: the next send connects
            assert decode(receive(sock)[0]) == as_sent(ENTRY)
        assert (sender.sent, sender.errors) == (1, 1)
    finally:
        sender.close()


def test_a_restarted_journald_is_reconnected(journal: tuple[socket.socket, Path]) -> None:
    first, path = journal
    sender = JournalSender(path)
    try:
        assert sender.send({"MESSAGE": "one"})
        assert decode(receive(first)[0]) == {"MESSAGE": b"one"}
        first.close()
        path.unlink()  # journald gone: the connected socket's peer is dead
        assert sender.send({"MESSAGE": "lost"}) is False
        assert (sender.sent, sender.errors) == (1, 1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as second:
            second.bind(os.fspath(path))
            second.settimeout(5)
            assert sender.send({"MESSAGE": "two"})
            assert decode(receive(second)[0]) == {"MESSAGE": b"two"}
        assert (sender.sent, sender.errors) == (2, 1)
    finally:
        sender.close()


def test_an_invalid_entry_is_counted_not_raised_nor_sent(
    journal: tuple[socket.socket, Path],
) -> None:
    sock, path = journal
    sender = JournalSender(path)
    try:
        assert sender.send({"MESSAGE": "bad", "trace.id": "x"}) is False
        assert sender.send({}) is False
        assert sender.send({"MESSAGE": "good"}) is True
        assert decode(receive(sock)[0]) == {"MESSAGE": b"good"}  # nothing came before it
        assert (sender.sent, sender.errors) == (1, 2)
    finally:
        sender.close()


def test_a_closed_sender_opens_a_new_socket(journal: tuple[socket.socket, Path]) -> None:
    sock, path = journal
    sender = JournalSender(path)
    try:
        assert sender.send({"MESSAGE": "before"})
        sender.close()
        sender.close()  # twice is harmless
        assert sender.send({"MESSAGE": "after"})
        assert decode(receive(sock)[0]) == {"MESSAGE": b"before"}
        assert decode(receive(sock)[0]) == {"MESSAGE": b"after"}
    finally:
        sender.close()
