"""The drills' etcd cluster as a pytest fixture: one real member on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mxrc.drill.etcd import ETCD, ETCDCTL, EtcdCluster

__all__ = ["EtcdCluster", "etcd"]


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    """One real etcd member on loopback, stopped (by PID) after the test."""
    if ETCD is None or ETCDCTL is None:
        pytest.fail("etcd is not installed: run tools/setup (etcd-server, etcd-client)")
    cluster = EtcdCluster(tmp_path / "etcd", 1)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
