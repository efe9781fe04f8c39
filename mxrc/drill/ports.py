"""Free TCP ports on loopback, for the servers that drills, tests and benchmarks start.

All ``count`` sockets are held open together before any is released, so the ports
are distinct; the kernel may still hand one to someone else before the caller binds
it, a race every caller of this kind accepts (a server that cannot bind fails loudly).
"""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket()
            sockets.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
