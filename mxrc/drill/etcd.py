"""A real etcd cluster (Debian's ``etcd-server``) on loopback ports, for drills and tests.

Each member is a child process with its own data directory under ``root``;
:meth:`EtcdCluster.stop` kills exactly the processes it started (by PID). Members talk
to each other directly (their peer URLs are advertised cluster-wide, so a per-link
proxy cannot stand between two of them); drills cut the links *to* etcd instead, and
pause or stop members.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from mxrc.drill.ports import free_ports
from mxrc.errors import MxrcError

ETCD = shutil.which("etcd")
ETCDCTL = shutil.which("etcdctl")
START_TIMEOUT_S = 20.0


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    host: str = "127.0.0.1"
    prefix: tuple[str, ...] = ()  # e.g. ("ip", "netns", "exec", NS): where it runs
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"


@dataclass
class EtcdCluster:
    """``hosts`` and ``prefixes`` (one per member) place members on other addresses or
    in other network namespaces; by default they all listen on loopback."""

    root: Path
    size: int = 1
    hosts: list[str] | None = None
    prefixes: list[tuple[str, ...]] | None = None
    members: list[EtcdMember] = field(default_factory=list)

    def __post_init__(self) -> None:
        ports = free_ports(2 * self.size)
        for i in range(self.size):
            name = f"etcd-{i + 1}"
            self.members.append(
                EtcdMember(
                    name, ports[2 * i], ports[2 * i + 1], self.root / name,
                    self.hosts[i] if self.hosts else "127.0.0.1",
                    self.prefixes[i] if self.prefixes else (),
                )
            )  # fmt: skip

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self) -> None:
        if ETCD is None or ETCDCTL is None:
            raise MxrcError("etcd is not installed: run tools/setup (etcd-server, etcd-client)")
        initial = ",".join(f"{m.name}=http://{m.host}:{m.peer_port}" for m in self.members)
        for m in self.members:
            m.data_dir.mkdir(parents=True, exist_ok=True)
            log = (self.root / f"{m.name}.log").open("ab")
            m.process = subprocess.Popen(
                [
                    *m.prefix,
                    ETCD,
                    "--name", m.name,
                    "--data-dir", str(m.data_dir),
                    "--listen-client-urls", f"http://{m.host}:{m.client_port}",
                    "--advertise-client-urls", f"http://{m.host}:{m.client_port}",
                    "--listen-peer-urls", f"http://{m.host}:{m.peer_port}",
                    "--initial-advertise-peer-urls", f"http://{m.host}:{m.peer_port}",
                    "--initial-cluster", initial,
                    "--initial-cluster-state", "new",
                    # An etcd election must fit well inside our lease (TTL 2 s, the
                    # deadline 1.8 s after a renewal): with etcd's defaults (100 ms /
                    # 1 s) losing etcd's own leader cost ours too, in the drills.
                    "--heartbeat-interval", "50",
                    "--election-timeout", "500",
                    # Without pre-vote (off by default in etcd 3.4) a member healed after
                    # a partition returns with a higher term and deposes a healthy Raft
                    # leader: the drills measured seconds of etcd unavailability from it.
                    "--pre-vote",
                ],
                stdout=log,
                stderr=log,
            )  # fmt: skip
            log.close()
        self.wait_healthy()

    def wait_healthy(self) -> None:
        """Every member answers a linearizable read (so the cluster has a leader)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        for m in self.members:
            while not self._member_ok(m):
                if time.monotonic() > deadline:
                    log = (self.root / f"{m.name}.log").read_text(errors="replace")[-2000:]
                    raise MxrcError(f"etcd member {m.name} not healthy: {log}")
                time.sleep(0.1)

    @staticmethod
    def _member_ok(m: EtcdMember) -> bool:
        assert m.process is not None
        if m.process.poll() is not None:
            raise MxrcError(f"etcd member {m.name} exited with {m.process.returncode}")
        out = subprocess.run(
            [ETCDCTL or "etcdctl", "--endpoints", m.endpoint, "--command-timeout=1s",
             "endpoint", "health"],
            capture_output=True,
            env={**os.environ, "ETCDCTL_API": "3"},
            check=False,
        )
        return out.returncode == 0

    def pause(self, index: int) -> None:
        member = self.members[index]
        assert member.process is not None
        os.kill(member.process.pid, signal.SIGSTOP)

    def resume(self, index: int) -> None:
        member = self.members[index]
        assert member.process is not None
        os.kill(member.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        for m in self.members:
            if m.process is not None and m.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(m.process.pid, signal.SIGCONT)
                m.process.kill()
                m.process.wait(10)
