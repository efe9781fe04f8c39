"""The local backend: a quorum of one, for a single controller (``mxrc run``'s default).

There is nobody to elect against, but the fencing token must still only grow: a node
restarted after a crash must not reuse the token of its previous life, or an actuator
that remembers the old leadership could not tell the two apart. So the term is kept in
``<data_dir>/ha/local-term``, incremented and made durable (atomic replace + fsync)
before it is used.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from mxrc.errors import MxrcError
from mxrc.fsutil import atomic_write
from mxrc.ha.backend import Leadership
from mxrc.ha.lease import LeaseTerms

TERM_FILE = "local-term"


class LocalBackend:
    name = "local"

    def __init__(self, node_id: str, directory: Path, terms: LeaseTerms) -> None:
        self.node_id = node_id
        self.directory = directory
        self.terms = terms
        self.term = 0
        self.released = False

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / TERM_FILE
        previous = 0
        if path.exists():
            text = path.read_text(encoding="ascii", errors="replace").strip()
            if not text.isdigit():
                raise MxrcError(
                    f"{path}: expected the last fencing term (a number), found {text[:40]!r}; "
                    "restore it or remove the file only if no actuator remembers a higher token"
                )
            previous = int(text)
        self.term = previous
        self._next_term()

    def _next_term(self) -> None:
        self.term += 1
        atomic_write(self.directory / TERM_FILE, f"{self.term}\n".encode())

    async def renew(self) -> Leadership:
        started = time.monotonic_ns()
        if self.released:
            return Leadership(False, True, 0, 0, None, "local backend: stepped down")
        return Leadership(
            leader=True,
            quorum=True,
            token=self.term,
            deadline_ns=self.terms.deadline_ns(started),
            holder=self.node_id,
            detail="local backend: a quorum of one",
        )

    async def release(self) -> None:
        self.released = True

    def resume(self) -> None:
        """A new leadership after a step-down gets a new, higher term."""
        if self.released:
            self.released = False
            self._next_term()

    async def wait_for_change(self, timeout_s: float) -> None:
        await asyncio.sleep(timeout_s)  # nothing else can change a quorum of one

    async def close(self) -> None:
        return None
