"""Lease arithmetic and the local backend's durable term."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mxrc.errors import MxrcError
from mxrc.ha.lease import NS_PER_S, LeaseTerms, remaining_s, valid
from mxrc.ha.local import TERM_FILE, LocalBackend


def test_deadline_counts_from_renewal_start_minus_margin() -> None:
    terms = LeaseTerms(ttl_s=2.0, renew_interval_s=0.5, margin_s=0.2)
    assert terms.deadline_ns(10 * NS_PER_S) == 10 * NS_PER_S + 1_800_000_000
    assert remaining_s(terms.deadline_ns(0), 1_800_000_000) == 0.0
    assert valid(terms.deadline_ns(0), 1_799_999_999)
    assert not valid(terms.deadline_ns(0), 1_800_000_000)


@pytest.mark.parametrize(
    ("ttl", "renew", "margin", "names"),
    [
        (0.0, 0.1, 0.0, "ha.lease_ttl_s"),
        (1.0, 0.1, 1.0, "ha.safety_margin_s"),
        (1.0, 0.9, 0.2, "ha.renew_interval_s"),
    ],
)
def test_inconsistent_terms_are_refused_naming_the_key(
    ttl: float, renew: float, margin: float, names: str
) -> None:
    with pytest.raises(ValueError, match=names):
        LeaseTerms(ttl, renew, margin)


def test_local_term_grows_across_restarts_and_is_durable(tmp_path: Path) -> None:
    terms = LeaseTerms(2.0, 0.5, 0.2)

    async def boot() -> int:
        backend = LocalBackend("n1", tmp_path / "ha", terms)
        await backend.start()
        lead = await backend.renew()
        assert lead.leader and lead.quorum and lead.may_drive
        return lead.token

    tokens = [asyncio.run(boot()) for _ in range(3)]
    assert tokens == [1, 2, 3]
    assert (tmp_path / "ha" / TERM_FILE).read_text().strip() == "3"


def test_damaged_term_file_is_refused_not_reset(tmp_path: Path) -> None:
    (tmp_path / "ha").mkdir()
    (tmp_path / "ha" / TERM_FILE).write_text("garbage")
    backend = LocalBackend("n1", tmp_path / "ha", LeaseTerms(2.0, 0.5, 0.2))
    with pytest.raises(MxrcError, match="local-term"):
        asyncio.run(backend.start())


def test_a_driving_node_stops_on_quorum_lease_or_token() -> None:
    from mxrc.ha.backend import Leadership
    from mxrc.service.controller import lease_fault

    ok = Leadership(True, True, 7, 10**12, "n1", "")
    assert lease_fault(ok, 7) is None
    assert lease_fault(ok, 0) is None  # not driving yet under any token
    assert lease_fault(Leadership(True, False, 7, 10**12, "n1", ""), 7) == "quorum_lost"
    assert lease_fault(Leadership(False, True, 0, 0, "n2", ""), 7) == "lease_lost"
    assert lease_fault(Leadership(True, True, 9, 10**12, "n1", ""), 7) == "token_changed"
