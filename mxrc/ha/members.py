"""Cluster membership as configured (pure): who the voters are and what a majority is.

A member is written ``"node-2=10.0.0.12:7701"`` in ``ha.members``: its node id and the
address its peers backend listens on. The list is the same on every node; quorum is
always a majority of *configured* members, never of the ones that happen to answer, so
a partition can never leave two sides that each believe they are the majority.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Member:
    node_id: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6); ValueError says what is wrong."""
    host, sep, port_s = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not host:port")
    host = host.removeprefix("[").removesuffix("]")
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"{text!r}: port must be 1-65535")
    return host, int(port_s)


def parse_member(text: str) -> Member:
    node_id, sep, address = text.partition("=")
    if not sep or not node_id.strip():
        raise ValueError(f"{text!r} is not 'node-id=host:port'")
    host, port = parse_address(address)
    return Member(node_id.strip(), host, port)


def parse_members(texts: Sequence[str]) -> tuple[Member, ...]:
    members = tuple(parse_member(t) for t in texts)
    seen: set[str] = set()
    for m in members:
        if m.node_id in seen:
            raise ValueError(f"node id {m.node_id!r} is listed twice")
        seen.add(m.node_id)
    return members


def majority(count: int) -> int:
    """Votes needed among ``count`` configured members (3 → 2, 4 → 3, 5 → 3)."""
    return count // 2 + 1
