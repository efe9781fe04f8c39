"""The one interface every leadership backend implements (local now; etcd and peers).

Modelled on Patroni's DCS abstraction: the controller never knows which backend it
talks to. It calls :meth:`HaBackend.renew` every ``ha.renew_interval_s`` and acts on the
returned :class:`Leadership` alone; all backend-specific knowledge (etcd revisions,
peer terms) stays behind this line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Leadership:
    """What one renewal attempt established.

    ``deadline_ns`` is CLOCK_MONOTONIC and already conservative (see
    :mod:`mxrc.ha.lease`); it is 0 whenever ``leader`` is false. ``token`` is the fencing
    token of the current leadership (it only grows across leaderships), 0 if none.
    """

    leader: bool
    quorum: bool
    token: int
    deadline_ns: int
    holder: str | None
    detail: str

    @property
    def may_drive(self) -> bool:
        return self.leader and self.quorum and self.token > 0


NO_LEADERSHIP = Leadership(False, False, 0, 0, None, "leadership not acquired yet")


class HaBackend(Protocol):
    name: str

    async def start(self) -> None:
        """Connect / prepare; raise :class:`mxrc.errors.MxrcError` with the cause."""
        ...

    async def renew(self) -> Leadership:
        """One attempt to acquire or renew the lease; never raises for a backend outage
        (that is ``Leadership(leader=False, ...)`` with the reason in ``detail``)."""
        ...

    async def release(self) -> None:
        """Step down (clean shutdown, or a hand-off), so a successor need not wait for
        the TTL. Afterwards :meth:`renew` does not take the lead again until
        :meth:`resume` (a node that stepped down stays down)."""
        ...

    def resume(self) -> None:
        """Compete for leadership again after :meth:`release`."""
        ...

    async def wait_for_change(self, timeout_s: float) -> None:
        """Sleep up to ``timeout_s``, returning early when the backend learnt something
        worth an immediate :meth:`renew` (the leader key vanished, a peer's vote or a
        higher term arrived). Never raises for a backend outage."""
        ...

    async def close(self) -> None:
        """Free connections and servers (after :meth:`release`)."""
        ...
