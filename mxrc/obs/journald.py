"""journald's native protocol: structured entries straight to the journal.

A service whose stderr goes to the journal loses all structure on the way (every line
is one MESSAGE at the unit's default priority). The native protocol keeps it: each
entry is one datagram of ``NAME=value`` fields on ``/run/systemd/journal/socket``, so
PRIORITY, TRACE_ID or MXRC_RT_STATE become journal fields that ``journalctl -p`` and
``journalctl FIELD=value`` can select on. The wire format is systemd's
(https://systemd.io/JOURNAL_NATIVE_PROTOCOL/); this module implements the client side
without libsystemd, the way ``sd_journal_sendv`` does it.

Layout: the pure parts (:func:`journal_field_name`, :func:`is_valid_field_name`,
:func:`encode_entry`, :func:`parse_journal_stream`) know nothing of sockets; the I/O is
:class:`JournalSender` (one datagram an entry, a sealed memfd for entries too big for a
datagram) and :func:`running_under_journald` (one fstat). This module formats nothing
about logging records: the caller hands over the fields it has already built.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import re
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Final

__all__ = [
    "JOURNAL_SOCKET",
    "MAX_FIELD_NAME",
    "SNDBUF_BYTES",
    "FieldValue",
    "JournalSender",
    "encode_entry",
    "is_valid_field_name",
    "journal_field_name",
    "parse_journal_stream",
    "running_under_journald",
]

JOURNAL_SOCKET: Final = Path("/run/systemd/journal/socket")

MAX_FIELD_NAME: Final = 64
"""journald drops a field whose name is longer (journal_field_valid in systemd)."""

SNDBUF_BYTES: Final = 8 * 1024 * 1024
"""SO_SNDBUF asked for, as libsystemd's client does. On AF_UNIX the sender's buffer is
both the largest datagram the kernel accepts and the room for entries journald has not
read yet, so a bigger one means fewer memfds and a later block in a burst. The kernel
caps it at ``net.core.wmem_max`` (and doubles it): plain SO_SNDBUF, not SO_SNDBUFFORCE,
so the figure does not depend on the process's privileges."""

FieldValue = str | bytes | int | float

_NAME_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_JOURNAL_STREAM: Final = re.compile(r"([0-9]+):([0-9]+)")
# sd_journal_sendv's "does not fit" errors. EMSGSIZE: larger than the send buffer.
# ENOBUFS: the kernel found no contiguous memory for it (a datagram's head is one
# allocation: above ~4 MiB on x86-64 this is certain, whatever the buffer allows).
# EAGAIN: only on a socket with a send timeout, kept to match libsystemd.
_TOO_BIG: Final = frozenset({errno.EMSGSIZE, errno.ENOBUFS, errno.EAGAIN})
_SEALS: Final = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def journal_field_name(key: str) -> str:
    """Map a dotted/any key to a valid journald field name.

    journald silently drops a field whose name is invalid (only ``A-Z``, ``0-9`` and
    ``_``; not starting with a digit; not starting with ``_``, which marks the trusted
    fields journald adds itself; at most 64 characters), so keys such as ``trace.id``
    must be mapped before they are sent: ``"mxrc.rt.state"`` → ``"MXRC_RT_STATE"``.

    The rule: ASCII letters are uppercased; every other character (``.``, ``-``, space,
    any non-ASCII letter) becomes ``_``; runs of ``_`` collapse to one; leading ``_`` are
    stripped; a name that would then start with a digit or be empty gets ``X_`` in
    front; the result is cut to 64 characters. Only ASCII is uppercased, on purpose:
    :meth:`str.upper` turns some non-ASCII letters into ASCII ones (``ß`` → ``SS``,
    ``ı`` → ``I``), which would make names depend on Unicode's case tables.

    The mapping is idempotent (a mapped name maps to itself) but not injective:
    ``a.b`` and ``a-b`` both become ``A_B``; the caller decides which key wins.
    """
    chars = [c.upper() if c.isascii() and c.isalnum() else "_" for c in key]
    name = re.sub(r"_+", "_", "".join(chars)).lstrip("_")
    if not name or name[0].isdigit():
        name = "X_" + name
    return name[:MAX_FIELD_NAME]


def is_valid_field_name(name: str) -> bool:
    """Whether journald keeps a field of this name from a client (systemd's
    journal_field_valid with trusted fields refused): checked before sending because
    journald drops an invalid field without a word."""
    return (
        0 < len(name) <= MAX_FIELD_NAME
        and name[0] != "_"
        and not name[0].isdigit()
        and all(c in _NAME_CHARS for c in name)
    )


def _value_bytes(value: FieldValue) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace")  # a stray surrogate stays visible
    return str(value).encode("ascii")


def encode_entry(fields: Mapping[str, FieldValue]) -> bytes:
    """One journal entry in the native datagram format.

    Each field is ``NAME=value\\n``, or — when the value holds a newline, which would
    otherwise end the field — ``NAME\\n``, the value's length as a 64-bit little-endian
    integer, the raw value and ``\\n`` (the binary-safe form; journald accepts it for
    any value, the text form is kept where possible because it stays readable in an
    strace). ``str`` values are sent as UTF-8 (a lone surrogate, which UTF-8 cannot
    hold, as its ``\\udcxx`` escape rather than losing the entry), ints and floats as
    their ``str()``.

    Names are not mapped here: the caller maps its keys once (:func:`journal_field_name`)
    and an invalid name is a bug to surface, not a field for journald to drop in
    silence, so it raises :class:`ValueError` naming the key. So does an empty mapping
    (an empty datagram means something else to journald).
    """
    if not fields:
        raise ValueError("a journal entry needs at least one field")
    parts: list[bytes] = []
    for name, value in fields.items():
        if not is_valid_field_name(name):
            raise ValueError(
                f"invalid journal field name {name!r}: use A-Z, 0-9 and _, at most "
                f"{MAX_FIELD_NAME} characters, not starting with a digit or _ "
                f"(journal_field_name({name!r}) = {journal_field_name(name)!r})"
            )
        data = _value_bytes(value)
        key = name.encode("ascii")
        if b"\n" in data:
            parts += (key, b"\n", len(data).to_bytes(8, "little"), data, b"\n")
        else:
            parts += (key, b"=", data, b"\n")
    return b"".join(parts)


def parse_journal_stream(text: str) -> tuple[int, int] | None:
    """``JOURNAL_STREAM``'s ``<device>:<inode>`` (decimal, as systemd writes them), or
    None when it is not that: a malformed value means "not known to be the journal"."""
    match = _JOURNAL_STREAM.fullmatch(text)
    if match is None:
        return None
    return int(match[1]), int(match[2])


def running_under_journald(env: Mapping[str, str] = os.environ, stderr_fd: int = 2) -> bool:
    """Whether stderr is the journal stream systemd connected, i.e. whether switching
    to the native protocol keeps the logs where the service manager meant them to go.

    systemd.exec(5): ``JOURNAL_STREAM`` holds the device and inode of the stream it
    connected to the journal; a program switches only if stderr's ``st_dev``/``st_ino``
    match. The variable alone is not enough: it is inherited by children, and a child
    whose stderr a script redirected to a file must keep writing to that file. False
    when the variable is unset or malformed, or stderr cannot be fstat'ed.
    """
    stream = parse_journal_stream(env.get("JOURNAL_STREAM", ""))
    if stream is None:
        return False
    try:
        st = os.fstat(stderr_fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == stream


class JournalSender:
    """Sends entries to journald; never raises on the logging path.

    A log call must not fail because journald is restarting, the socket is missing or
    an entry is malformed, so :meth:`send` returns False instead and counts it in
    :attr:`errors` (:attr:`sent` counts the entries journald was handed). The socket is
    connected on first use and dropped after an error, so the next send reconnects
    (journald may have come back). Entries too big for one datagram travel the way
    ``sd_journal_sendv`` sends them: in a sealed memfd passed with SCM_RIGHTS.

    Sending blocks, as libsystemd's does, when journald is this far behind (the socket
    buffer full): logging from a real-time path belongs behind a queue. Safe to share
    between threads.
    """

    def __init__(self, path: Path = JOURNAL_SOCKET) -> None:
        self.path = path
        self.sent = 0
        self.errors = 0
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def send(self, fields: Mapping[str, FieldValue]) -> bool:
        """Send one entry; True if journald was handed it (as a datagram or a memfd)."""
        try:
            payload = encode_entry(fields)
        except ValueError:
            with self._lock:
                self.errors += 1
            return False
        with self._lock:
            try:
                sock = self._connected()
                try:
                    sock.send(payload, socket.MSG_NOSIGNAL)
                except OSError as e:
                    if e.errno not in _TOO_BIG:
                        raise
                    _send_memfd(sock, payload)
            except OSError:
                self.errors += 1
                self._drop()
                return False
            self.sent += 1
            return True

    def close(self) -> None:
        """Close the socket (a later :meth:`send` opens a new one)."""
        with self._lock:
            self._drop()

    def _connected(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF_BYTES)
                sock.connect(os.fspath(self.path))
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _send_memfd(sock: socket.socket, payload: bytes) -> None:
    """The big-entry path of ``sd_journal_sendv``: the entry in a memfd, sealed so that
    journald may map it without copying (and without the sender changing it under
    journald's feet), sent as an empty datagram with the fd attached; our copy of the
    fd is closed once it is sent."""
    fd = os.memfd_create("mxrc-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        rights = array.array("i", [fd])
        sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)], socket.MSG_NOSIGNAL)
    finally:
        os.close(fd)
