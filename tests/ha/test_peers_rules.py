"""The peers backend's rules, with exact instants (no sockets, no clock)."""

from __future__ import annotations

import pytest

from mxrc.ha.lease import LeaseTerms
from mxrc.ha.members import majority
from mxrc.ha.peers_rules import (
    Grant,
    Header,
    Heard,
    Kind,
    Outcome,
    PeerState,
    Reply,
    Voter,
    higher_alive,
    known_leader,
)

TERMS = LeaseTerms(ttl_s=1.0, renew_interval_s=0.25, margin_s=0.1)
TTL = 1_000_000_000
MS = 1_000_000
IDS = ("node-1", "node-2", "node-3")


def reply(
    sender: str,
    term: int,
    ok: bool = True,
    *,
    lease: Grant | None = None,
    competing: bool = True,
    reached: int = 3,
) -> Outcome:
    return Outcome(sender, Reply(Header(sender, term, competing, reached), ok, "why", lease))


def header(sender: str, term: int, *, competing: bool = True, reached: int = 3) -> Header:
    return Header(sender, term, competing, reached)


def settled(node_id: str = "node-3", ids: tuple[str, ...] = IDS, term: int = 0) -> PeerState:
    """A node past its quiet period whose last (status) round reached everyone; the
    peers answered as lower ids that do not compete, so nothing defers it."""
    state = PeerState(node_id, ids, TERMS, term, 0)
    others = [reply(m, term, competing=False) for m in ids if m != node_id]
    if others:
        plan = state.plan(TTL)
        assert plan.kind is Kind.STATUS
        state.conclude(plan, others, TTL, TTL)
        state.heard.clear()
    return state


# ---------------------------------------------------------------------- the voter


def test_a_vote_is_a_lease_of_one_ttl_from_receipt_and_once_per_term() -> None:
    voter = Voter("node-1", term=4, ttl_ns=TTL, quiet_until_ns=0)
    assert voter.vote("node-3", 5, 10 * MS).ok
    assert voter.term == 5
    assert voter.grant == Grant("node-3", 5, 10 * MS + TTL)
    # The same term once more, even for the same candidate, is not a second vote.
    again = voter.vote("node-3", 5, 20 * MS)
    assert not again.ok and again.reason == "already voted in term 5"
    assert not voter.vote("node-2", 4, 20 * MS).ok


def test_learning_a_term_does_not_cost_the_vote_in_it() -> None:
    voter = Voter("node-1", term=0, ttl_ns=TTL, quiet_until_ns=0)
    voter.adopt(3)  # e.g. from the candidate's reply to our status request
    stale = voter.vote("node-2", 2, 0)
    assert not stale.ok and stale.reason == "term 2 is below the current term 3"
    assert voter.vote("node-3", 3, 0).ok
    assert (voter.term, voter.voted) == (3, 3)


def test_after_a_restart_every_durable_term_counts_as_voted() -> None:
    voter = Voter("node-1", term=6, ttl_ns=TTL, quiet_until_ns=0)
    assert not voter.vote("node-2", 6, 0).ok
    assert voter.vote("node-2", 7, 0).ok


def test_a_voter_with_a_lease_votes_for_nobody_else_until_it_runs_out() -> None:
    voter = Voter("node-1", term=0, ttl_ns=TTL, quiet_until_ns=0)
    assert voter.vote("node-3", 1, 0).ok
    refused = voter.vote("node-2", 2, TTL - 1)
    assert not refused.ok and "holds a lease for node-3 (term 1)" in refused.reason
    assert voter.term == 2  # rule 5: the higher term is adopted all the same
    assert voter.vote("node-3", 3, TTL - 1).ok  # the holder itself may be re-elected
    assert voter.grant == Grant("node-3", 3, 2 * TTL - 1)
    assert not voter.vote("node-2", 4, 2 * TTL - 2).ok
    assert voter.vote("node-2", 5, 2 * TTL - 1).ok  # expiry instant: the lease is over


def test_a_restarted_voter_is_quiet_for_one_ttl_but_still_renews() -> None:
    voter = Voter("node-1", term=7, ttl_ns=TTL, quiet_until_ns=TTL)
    quiet = voter.vote("node-2", 8, TTL - 1)
    assert not quiet.ok and "quiet after start-up" in quiet.reason
    assert voter.grant is None
    assert voter.term == 8  # rule 5 even for a refused vote
    # A renewal of a term >= the durable one cannot be a second leader's.
    assert not voter.renew("node-3", 7, TTL - 1).ok
    assert voter.renew("node-3", 8, TTL - 1).ok
    voter.grant = None
    assert voter.vote("node-2", 9, TTL).ok


def test_renewal_needs_the_promised_term_and_no_other_lease() -> None:
    voter = Voter("node-1", term=5, ttl_ns=TTL, quiet_until_ns=0)
    low = voter.renew("node-3", 4, 0)
    assert not low.ok and low.reason == "term 4 is below the current term 5"
    assert voter.renew("node-3", 6, 100 * MS).ok
    assert voter.term == 6
    assert voter.grant == Grant("node-3", 6, 100 * MS + TTL)
    blocked = voter.renew("node-2", 6, 200 * MS)
    assert not blocked.ok and "node-3" in blocked.reason
    # The voter's grant, measured from receipt, outlives the leader's deadline, which
    # was measured from before the request was sent.
    round_start = 90 * MS
    assert voter.grant.expiry_ns > TERMS.deadline_ns(round_start)


def test_release_drops_the_leaders_grant_of_that_term_or_older_only() -> None:
    voter = Voter("node-1", term=0, ttl_ns=TTL, quiet_until_ns=0)
    voter.vote("node-3", 4, 0)
    assert not voter.release("node-2", 9)
    assert not voter.release("node-3", 3)  # a late release of an older leadership
    assert voter.lease(0) == Grant("node-3", 4, TTL)
    assert voter.release("node-3", 4)
    assert voter.grant is None
    assert voter.vote("node-2", 5, 1).ok


# ---------------------------------------------------------------------- rule 1


def test_a_known_lease_for_another_member_blocks_standing() -> None:
    leases = [Grant("node-2", 4, 2 * TTL), Grant("node-3", 5, 2 * TTL), Grant("node-1", 9, 5)]
    assert known_leader("node-1", TTL, leases) == Grant("node-3", 5, 2 * TTL)
    assert known_leader("node-1", 2 * TTL, leases) is None  # all expired
    assert known_leader("node-3", TTL, [Grant("node-3", 5, 2 * TTL)]) is None  # our own


def test_bully_defers_only_to_a_higher_live_competing_member_in_reach_of_a_majority() -> None:
    alive = Heard(at_ns=0, competing=True, reached=2)
    assert higher_alive("node-1", TTL - 1, TTL, 2, {"node-2": alive, "node-3": alive}) == "node-3"
    assert higher_alive("node-3", TTL - 1, TTL, 2, {"node-2": alive}) is None  # lower id
    assert higher_alive("node-1", TTL, TTL, 2, {"node-3": alive}) is None  # heard too long ago
    stepped_down = Heard(0, competing=False, reached=3)
    assert higher_alive("node-1", 1, TTL, 2, {"node-3": stepped_down}) is None
    cut_off = Heard(0, competing=True, reached=1)
    assert higher_alive("node-1", 1, TTL, 2, {"node-3": cut_off}) is None


def test_plan_stands_only_past_quiet_with_a_majority_in_reach_and_nothing_against() -> None:
    state = PeerState("node-1", IDS, TERMS, 3, 0)
    plan = state.plan(TTL - 1)
    assert plan.kind is Kind.STATUS and "quiet" in plan.why
    assert state.plan(TTL).why == "not standing before a majority answers"
    state.conclude(state.plan(TTL), [reply("node-2", 3), reply("node-3", 3)], TTL, TTL)
    assert state.plan(TTL + 1).why == "deferring to node-3 (higher id, alive)"
    state.heard["node-3"] = Heard(TTL, competing=False, reached=3)
    state.heard["node-2"] = Heard(TTL, competing=False, reached=3)
    state.reports["node-2"] = Grant("node-2", 3, 2 * TTL)
    assert state.plan(TTL + 1).why == ""  # a live lease: the follower line names it
    del state.reports["node-2"]
    plan = state.plan(TTL + 2)
    assert plan.kind is Kind.VOTE and plan.term == 4 and plan.self_ok  # highest seen + 1
    assert state.voter.grant == Grant("node-1", 4, TTL + 2 + TTL)


# ---------------------------------------------------------------------- rule 2


@pytest.mark.parametrize(("size", "votes"), [(1, 1), (3, 1), (3, 2), (4, 2), (4, 3), (5, 3)])
def test_a_term_is_won_with_a_majority_of_configured_members(size: int, votes: int) -> None:
    ids = tuple(f"node-{i}" for i in range(1, size + 1))
    me = ids[-1]
    state = settled(me, ids)
    start = 2 * TTL
    plan = state.plan(start)
    assert plan.kind is Kind.VOTE and plan.term == 1
    peers = [m for m in ids if m != me]
    outcomes = [reply(m, 1, ok=i < votes - 1) for i, m in enumerate(peers)]
    lead = state.conclude(plan, outcomes, start, start + 5 * MS)
    won = votes >= majority(size)
    assert lead.leader is won
    assert lead.quorum  # everyone answered, whatever they said
    if won:
        assert lead.token == 1 and lead.holder == me
        assert lead.deadline_ns == TERMS.deadline_ns(start)
        assert lead.detail.startswith(f"leader of term 1 with {votes}/{size} votes")
    else:
        assert (lead.token, lead.deadline_ns) == (0, 0)
        assert state.voter.grant is None  # a lost candidacy frees our own vote


def test_no_quorum_names_who_failed_and_a_missing_answer_is_not_a_vote() -> None:
    state = settled()
    plan = state.plan(2 * TTL)
    outcomes = [Outcome("node-1", None, "timeout"), Outcome("node-2", None, "connection refused")]
    lead = state.conclude(plan, outcomes, 2 * TTL, 2 * TTL)
    assert not lead.leader and not lead.quorum
    assert lead.detail.startswith(
        "no quorum: 1/3 members answered (node-1: timeout; node-2: connection refused)"
    )
    # The next round does not stand again: no majority was in reach.
    assert state.plan(2 * TTL + 1).kind is Kind.STATUS


def test_a_reply_from_someone_else_than_the_member_asked_does_not_count() -> None:
    state = settled()
    plan = state.plan(2 * TTL)
    impostor = Outcome("node-1", reply("node-2", 1).reply)
    lead = state.conclude(plan, [impostor, Outcome("node-2", None, "timeout")], 2 * TTL, 2 * TTL)
    assert not lead.leader and not lead.quorum
    assert "node-1: answered as 'node-2'" in lead.detail


# ---------------------------------------------------------------------- rules 4 and 5


def leader(term: int = 0) -> tuple[PeerState, int]:
    """node-3 elected in a round starting at 2 TTL; returns it and the deadline."""
    state = settled(term=term)
    plan = state.plan(2 * TTL)
    lead = state.conclude(
        plan, [reply("node-1", plan.term), reply("node-2", plan.term)], 2 * TTL, 2 * TTL
    )
    assert lead.leader
    return state, lead.deadline_ns


def test_renewal_by_a_majority_extends_the_deadline_from_the_round_start() -> None:
    state, _ = leader()
    start = 2 * TTL + 250 * MS
    plan = state.plan(start)
    assert plan.kind is Kind.RENEW and plan.term == 1 and plan.self_ok
    lead = state.conclude(
        plan, [reply("node-1", 1), Outcome("node-2", None, "timeout")], start, start + 150 * MS
    )
    assert lead.leader and lead.quorum and lead.token == 1
    assert lead.deadline_ns == TERMS.deadline_ns(start)
    assert lead.detail == "leader of term 1 renewed by 2/3 (node-2: timeout)"


def test_a_missed_majority_keeps_the_granted_deadline_and_never_extends_it() -> None:
    state, deadline = leader()
    start = 2 * TTL + 250 * MS
    down = [Outcome("node-1", None, "timeout"), Outcome("node-2", None, "timeout")]
    lead = state.conclude(state.plan(start), down, start, start + 150 * MS)
    # the lease a majority granted still holds until its deadline: not a fault yet
    assert (lead.leader, lead.token, lead.deadline_ns) == (True, 1, deadline)
    assert lead.detail.startswith(
        "leader of term 1: lost the majority: term 1 renewed by 1/3 "
        "(node-1: timeout; node-2: timeout); lease held"
    )
    assert state.deadline_ns == deadline  # the old deadline stands, not extended
    # Before the old deadline runs out, one good round restores the same term.
    start = deadline - 10 * MS
    lead = state.conclude(state.plan(start), [reply("node-1", 1)], start, start)
    assert lead.leader and lead.token == 1 and lead.deadline_ns == TERMS.deadline_ns(start)
    # A failed round after the deadline gives the term up and frees our own vote.
    late = lead.deadline_ns
    assert state.conclude(state.plan(late), down, late, late).leader is False
    assert state.leading == 0
    assert state.voter.grant is None
    assert state.plan(late + 1).kind is Kind.STATUS  # no majority in reach: no candidacy


def test_a_higher_term_in_a_reply_steps_the_leader_down() -> None:
    state, _ = leader()
    start = 2 * TTL + 250 * MS
    lead = state.conclude(
        state.plan(start), [reply("node-1", 1), reply("node-2", 9, False)], start, start
    )
    assert not lead.leader and lead.deadline_ns == 0
    assert state.term == 9 and state.leading == 0
    assert "stepped down from term 1: term 9 seen" in lead.detail


def test_a_higher_term_in_a_request_steps_down_wakes_but_keeps_our_own_lease() -> None:
    state, deadline = leader()
    now = 2 * TTL + 100 * MS
    answer, wake = state.handle(Kind.VOTE, header("node-2", 5), now)
    assert not answer.ok and "holds a lease for node-3" in answer.reason
    assert wake and state.term == 5 and state.leading == 0
    # The caller may still trust the last deadline; our own vote is part of it.
    assert state.voter.lease(deadline) is not None
    assert not state.handle(Kind.VOTE, header("node-2", 6), deadline - 1)[0].ok
    # A lost candidacy of ours does not free that vote before the deadline either.
    state.reports.clear()
    state.heard.clear()
    plan = state.plan(now + 1)
    assert plan.kind is Kind.VOTE
    state.conclude(plan, [reply("node-1", 7, False), reply("node-2", 7, False)], now, now + 2)
    assert state.voter.lease(deadline - 1) is not None


def test_a_status_round_follows_the_leader_a_voter_reports() -> None:
    state = settled("node-1")
    start = 2 * TTL
    state.heard["node-3"] = Heard(start, competing=True, reached=3)
    lease = Grant("node-3", 4, start + 800 * MS)
    outcomes = [reply("node-2", 4, lease=lease), reply("node-3", 4, lease=lease)]
    lead = state.conclude(state.plan(start), outcomes, start, start)
    assert (lead.leader, lead.quorum, lead.holder, lead.token) == (False, True, "node-3", 0)
    assert lead.detail == (
        "follower: node-3 holds term 4 for 0.80 s more; deferring to node-3 (higher id, alive)"
    )
    assert state.term == 4  # adopted from the replies
    # Next round the lease alone keeps it from standing, and says who leads.
    later = start + 300 * MS
    plan = state.plan(later)
    assert plan.kind is Kind.STATUS
    lead = state.conclude(
        plan, [reply("node-2", 4), Outcome("node-3", None, "timeout")], later, later
    )
    assert lead.detail == "follower: node-3 holds term 4 for 0.50 s more (node-3: timeout)"


# ---------------------------------------------------------------------- rule 6 and members


def test_release_frees_our_vote_tells_the_term_and_stays_down_until_resumed() -> None:
    state, _ = leader()
    sent = state.release()
    assert sent == Header("node-3", 1, competing=False, reached=3)
    assert state.voter.grant is None and state.leading == 0
    now = 2 * TTL + 10 * MS
    assert state.plan(now).kind is Kind.STATUS
    state.resume()
    assert state.plan(now).kind is Kind.VOTE


def test_a_voter_drops_the_released_lease_and_what_others_reported_of_it() -> None:
    state = settled("node-1")
    lease = Grant("node-3", 2, 3 * TTL)
    state.handle(Kind.VOTE, header("node-3", 2), 2 * TTL)
    state.reports["node-2"] = lease
    answer, wake = state.handle(Kind.RELEASE, header("node-3", 2, competing=False), 2 * TTL + 1)
    assert answer.ok and wake
    assert state.voter.grant is None and state.reports == {}
    assert state.heard["node-3"].competing is False
    assert state.plan(2 * TTL + 2).kind is Kind.VOTE  # nobody to defer to any more


def test_requests_from_unconfigured_senders_change_nothing() -> None:
    state = settled("node-1")
    answer, wake = state.handle(Kind.VOTE, header("node-9", 50), 2 * TTL)
    assert not answer.ok and "not another configured member" in answer.reason and not wake
    answer, _ = state.handle(Kind.RENEW, header("node-1", 50), 2 * TTL)
    assert not answer.ok
    assert state.term == 0 and state.voter.grant is None and "node-9" not in state.heard
