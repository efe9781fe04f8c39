"""The admin API's bearer token: one secret in a file only its owner can read.

Reads are open (they change nothing); every mutating call needs the token. The file is
created atomically with mode 0600 so that no other local user ever sees a window in
which it is readable, and an existing file that others can read is refused rather than
silently tightened: a token that leaked must be replaced, not reused.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import Final

from mxrc.errors import MxrcError
from mxrc.fsutil import fsync_dir, write_all

TOKEN_BYTES: Final = 32
_SCHEME: Final = "bearer"


class TokenFileError(MxrcError):
    """The token file cannot be used as it is; the message names the path and the fix."""

    exit_code = 8


def load_or_create_token(path: Path) -> str:
    """The token in ``path``; a new random one (mode 0600) when the file is absent."""
    try:
        return _read_token(path)
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(TOKEN_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask may only remove bits, but be explicit
            write_all(fd, token.encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic, and never replaces a token another process wrote
        except FileExistsError:
            return _read_token(path)
        fsync_dir(path.parent)  # the token a client was given survives a power loss
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return token


def _read_token(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY)
    except (PermissionError, IsADirectoryError) as exc:
        raise TokenFileError(f"{path}: cannot read the token file: {exc.strerror}") from None
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            raise TokenFileError(
                f"{path}: token file has mode {mode:04o}: group or others have access; "
                f"it must be 0600 (run: chmod 600 {path}, and replace the token if it leaked)"
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(4096)
    finally:
        os.close(fd)
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        token = ""
    if not token or any(c.isspace() for c in token):
        raise TokenFileError(
            f"{path}: token file (mode {mode:04o}) holds no usable token "
            f"(empty or not one printable word); delete it to have a new one created"
        )
    return token


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token``.

    The comparison is :func:`hmac.compare_digest` on bytes, so its time does not reveal
    how many leading characters of a guess were right."""
    if not authorization:
        return False
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != _SCHEME:
        return False
    return hmac.compare_digest(
        credentials.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8")
    )
