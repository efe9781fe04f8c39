"""The namespaced systemd of :mod:`mxrc.systemd.sandbox` as a test helper."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from mxrc.systemd.sandbox import NamespacedSystemd, available

__all__ = ["NamespacedSystemd", "namespaced_systemd"]


@contextlib.contextmanager
def namespaced_systemd(work: Path, units: dict[str, str]) -> Iterator[NamespacedSystemd]:
    why = available()
    if why is not None:
        pytest.fail(f"cannot boot a namespaced systemd: {why}")
    system = NamespacedSystemd(work, units)
    system.start()
    try:
        yield system
    finally:
        system.stop()
