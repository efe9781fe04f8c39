"""The API token file and the bearer check, on real files with real modes."""

from __future__ import annotations

import hmac
import os
import stat
import threading
from pathlib import Path

import pytest

from mxrc.service.auth import TokenFileError, bearer_matches, load_or_create_token


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_creates_a_random_token_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "api-token"
    old = os.umask(0)  # the most permissive umask must not loosen the file
    try:
        token = load_or_create_token(path)
    finally:
        os.umask(old)
    assert mode_of(path) == 0o600
    assert len(token) >= 40 and token.isascii() and " " not in token
    assert path.read_text().strip() == token
    assert load_or_create_token(path) == token  # read back, not replaced
    assert load_or_create_token(tmp_path / "other") != token
    assert [p.name for p in path.parent.iterdir()] == ["api-token"]  # no temp file left


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_refuses_a_token_file_others_can_read(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "api-token"
    path.write_text("secret-token\n")
    path.chmod(mode)
    with pytest.raises(TokenFileError) as caught:
        load_or_create_token(path)
    message = str(caught.value)
    assert str(path) in message and f"{mode:04o}" in message and "chmod 600" in message
    assert path.read_text() == "secret-token\n"  # refused, not rewritten


@pytest.mark.parametrize("content", ["", "\n", "   \n", "two words\n"])
def test_refuses_an_empty_or_malformed_token_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "api-token"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(TokenFileError, match="no usable token") as caught:
        load_or_create_token(path)
    assert str(path) in str(caught.value) and "0600" in str(caught.value)


def test_accepts_an_owner_only_file_and_strips_the_newline(tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    path.write_text("abc-DEF_123\n")
    path.chmod(0o400)
    assert load_or_create_token(path) == "abc-DEF_123"


def test_concurrent_creators_agree_on_one_token(tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    results: list[str] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        results.append(load_or_create_token(path))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 8 and len(set(results)) == 1
    assert path.read_text().strip() == results[0]


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer s3cret", True),
        ("bearer s3cret", True),
        ("BEARER   s3cret  ", True),
        (None, False),
        ("", False),
        ("Bearer", False),
        ("Bearer ", False),
        ("Bearer s3cre", False),
        ("Bearer s3cret2", False),
        ("Basic s3cret", False),
        ("s3cret", False),
        ("Bearer S3CRET", False),
        ("Bearer s3cr\u00e9t", False),
    ],
)
def test_bearer_matches(header: str | None, ok: bool) -> None:
    assert bearer_matches(header, "s3cret") is ok


def test_bearer_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The token is compared only through hmac.compare_digest (never ==)."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return bool(real(a, b))

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert not bearer_matches("Bearer wrong", "s3cret")
    assert bearer_matches("Bearer s3cret", "s3cret")
    assert calls == [(b"wrong", b"s3cret"), (b"s3cret", b"s3cret")]
