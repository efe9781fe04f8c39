"""Lease arithmetic (pure): when a lease ends, and when the cycle must stop trusting it.

The deadline handed to the cycle is measured from when the renewal *started*, not from
when the backend answered: a reply that took 300 ms says nothing about the 300 ms in
which the lease may already have been counting down on the other side. Subtracting a
safety margin on top covers clock-rate differences between nodes and the cycle's own
detection delay (one period). A deadline computed this way can only be early, never
late, so a frozen or partitioned nonrt stops motion before anyone else may start it.
"""

from __future__ import annotations

from dataclasses import dataclass

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class LeaseTerms:
    """The configured lease: ``ttl_s`` as granted, ``margin_s`` kept in reserve."""

    ttl_s: float
    renew_interval_s: float
    margin_s: float

    def __post_init__(self) -> None:
        if self.ttl_s <= 0:
            raise ValueError(f"ha.lease_ttl_s must be positive, got {self.ttl_s}")
        if self.margin_s >= self.ttl_s:
            raise ValueError(
                f"ha.safety_margin_s ({self.margin_s}) must be smaller than "
                f"ha.lease_ttl_s ({self.ttl_s}), or no lease would ever permit motion"
            )
        if self.renew_interval_s >= self.ttl_s - self.margin_s:
            raise ValueError(
                f"ha.renew_interval_s ({self.renew_interval_s}) must be shorter than "
                f"ha.lease_ttl_s - ha.safety_margin_s ({self.ttl_s - self.margin_s:g}), "
                "or the deadline passes between two renewals"
            )

    def deadline_ns(self, renewal_started_ns: int) -> int:
        """The CLOCK_MONOTONIC instant after which the cycle must hold outputs."""
        return renewal_started_ns + round((self.ttl_s - self.margin_s) * NS_PER_S)


def remaining_s(deadline_ns: int, now_ns: int) -> float:
    """Seconds left on a deadline (negative once passed; 0-deadline means none)."""
    return (deadline_ns - now_ns) / NS_PER_S


def valid(deadline_ns: int, now_ns: int) -> bool:
    return deadline_ns > now_ns
