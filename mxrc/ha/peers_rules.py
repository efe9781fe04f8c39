"""The peers backend's rules (pure): who may stand, who may vote, when a term is won.

Nothing here opens a socket, touches a file or reads a clock: every instant is a
CLOCK_MONOTONIC nanosecond count passed in, so each safety rule is tested by itself
with exact times, and :mod:`mxrc.ha.peers` only carries messages and makes terms
durable.

Why two leaders cannot overlap. A voter's grant runs one TTL from when *it* received
the request; the leader's deadline runs TTL − margin from *before* it sent the request,
so every grant behind a deadline outlives it. A voter grants nobody else while it holds
an unexpired grant, and any two majorities of the configured members share a voter
(the leader's own voter counts, so it must keep its grant to itself too). A new leader
therefore collects its shared vote only after the old grant there ran out, that is
after the old deadline. A voter votes at most once per term and makes the term durable
before it answers, so a term has at most one winner; terms only grow, which makes the
term the fencing token.

Why the cluster still elects someone. Bully preference: a node stands only if no
higher-id member that could win was heard within the last TTL, so after a split vote
the highest live id wins the next round instead of everyone retrying. Node ids compare
as plain strings (``"node-10" < "node-9"``), so give them equal width. A node also
stands only after a round in which a majority answered (like Raft's pre-vote): a node
cut off from the others does not inflate the term, and when its links come back it
learns who leads instead of deposing a healthy leader.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from mxrc.ha.backend import Leadership
from mxrc.ha.lease import NS_PER_S, LeaseTerms
from mxrc.ha.members import majority


def _s(ns: int) -> str:
    return f"{ns / NS_PER_S:.2f} s"


class Kind(StrEnum):
    """What a request asks of its receiver."""

    VOTE = "vote"
    RENEW = "renew"
    RELEASE = "release"
    STATUS = "status"


@dataclass(frozen=True)
class Grant:
    """A lease one voter gave ``holder`` for ``term``, on the clock of whoever holds it."""

    holder: str
    term: int
    expiry_ns: int

    def valid(self, now_ns: int) -> bool:
        return now_ns < self.expiry_ns


@dataclass(frozen=True)
class Answer:
    ok: bool
    reason: str


class Voter:
    """One member's vote and lease book: the part other nodes' safety rests on.

    ``term`` is the highest term seen; ``voted`` the highest term voted in. They differ
    because a term is often learnt (from a candidate's status reply) just before that
    candidate's vote request arrives, and learning a term must not cost the vote. Only
    ``term`` is durable; after a restart ``voted`` starts equal to it, as if every term
    up to it had had our vote.
    """

    def __init__(self, node_id: str, term: int, ttl_ns: int, quiet_until_ns: int) -> None:
        self.node_id = node_id
        self.term = term
        self.voted = term
        self.ttl_ns = ttl_ns
        self.quiet_until_ns = quiet_until_ns
        self.grant: Grant | None = None

    def quiet(self, now_ns: int) -> bool:
        """After a restart the grants of the previous run are forgotten; voting before
        they could have run out might hand a second leader the majority."""
        return now_ns < self.quiet_until_ns

    def lease(self, now_ns: int) -> Grant | None:
        grant = self.grant
        return grant if grant is not None and grant.valid(now_ns) else None

    def adopt(self, term: int) -> bool:
        """Rule 5: a higher term is taken over (the caller makes it durable)."""
        if term <= self.term:
            return False
        self.term = term
        return True

    def _blocking(self, who: str, now_ns: int) -> str | None:
        lease = self.lease(now_ns)
        if lease is None or lease.holder == who:
            return None
        return (
            f"holds a lease for {lease.holder} (term {lease.term}) "
            f"for {_s(lease.expiry_ns - now_ns)} more"
        )

    def vote(self, candidate: str, term: int, now_ns: int) -> Answer:
        """Rule 3: once per term, never behind the current term, never while quiet or
        while another member's lease runs. A refused higher term is still adopted."""
        if term <= self.voted:
            return Answer(False, f"already voted in term {self.voted}")
        if term < self.term:
            return Answer(False, f"term {term} is below the current term {self.term}")
        if self.quiet(now_ns):
            self.adopt(term)
            return Answer(
                False, f"quiet after start-up for {_s(self.quiet_until_ns - now_ns)} more"
            )
        blocking = self._blocking(candidate, now_ns)
        if blocking is not None:
            self.adopt(term)
            return Answer(False, blocking)
        self.term = self.voted = term
        self.grant = Grant(candidate, term, now_ns + self.ttl_ns)
        return Answer(True, f"voted for {candidate} in term {term}")

    def renew(self, leader: str, term: int, now_ns: int) -> Answer:
        """Rule 4, allowed in the quiet period too: a renewal elects nobody, it extends a
        leader a majority elected in a term no lower than any this voter promised, and
        an older term's leader (whose grant a restart may have forgotten) had its
        deadline pass before that election."""
        if term < self.term:
            return Answer(False, f"term {term} is below the current term {self.term}")
        blocking = self._blocking(leader, now_ns)
        if blocking is not None:
            self.adopt(term)
            return Answer(False, blocking)
        self.term = term
        self.grant = Grant(leader, term, now_ns + self.ttl_ns)
        return Answer(True, f"lease for {leader} (term {term}) renewed")

    def release(self, leader: str, term: int) -> bool:
        """Rule 6: drop ``leader``'s grant of ``term`` or older (a release names the
        leader's current term, so a late one cannot drop a newer leadership's grant)."""
        grant = self.grant
        if grant is None or grant.holder != leader or grant.term > term:
            return False
        self.grant = None
        return True


@dataclass(frozen=True)
class Header:
    """What every message says about its sender; identity is never the socket address
    (a member's address may be a proxy)."""

    sender: str
    term: int  # the sender's current term: the term voted for, renewed or released
    competing: bool  # false once the sender stepped down (release) until it resumes
    reached: int  # members, itself included, that answered the sender's last round


@dataclass(frozen=True)
class Heard:
    at_ns: int
    competing: bool
    reached: int


@dataclass(frozen=True)
class Reply:
    header: Header
    ok: bool
    reason: str
    lease: Grant | None  # the replier's own unexpired grant, if any


@dataclass(frozen=True)
class Outcome:
    """One peer's part of a round: its reply, or why there is none."""

    member: str
    reply: Reply | None
    error: str = ""


def known_leader(node_id: str, now_ns: int, leases: Iterable[Grant]) -> Grant | None:
    """Rule 1, first half: the newest unexpired lease held by another member, if any.
    Standing against it would only fail (its voters refuse) and raise the term."""
    others = [g for g in leases if g.holder != node_id and g.valid(now_ns)]
    return max(others, key=lambda g: (g.term, g.expiry_ns)) if others else None


def higher_alive(
    node_id: str, now_ns: int, ttl_ns: int, needed: int, heard: Mapping[str, Heard]
) -> str | None:
    """Rule 1, second half: the highest id heard within the last TTL that could win.

    A higher id counts only while it competes and its own last round reached a
    majority: one that stepped down, or that is cut off itself, cannot win, and
    deferring to it would leave the cell without a leader.
    """
    higher = [
        peer
        for peer, h in heard.items()
        if peer > node_id and h.competing and h.reached >= needed and now_ns - h.at_ns < ttl_ns
    ]
    return max(higher) if higher else None


@dataclass(frozen=True)
class Plan:
    """What one round sends (``kind``, with ``term``), decided at its start."""

    kind: Kind
    term: int
    why: str = ""  # why a status round does not stand
    self_ok: bool = False  # our own vote (VOTE) or own lease renewal (RENEW)


def _failures(outcomes: Sequence[Outcome]) -> str:
    """``" (node-2: timeout; node-3: holds a lease for …)"``: every peer that did not say yes."""
    parts = [
        f"{o.member}: {o.error if o.reply is None else o.reply.reason}"
        for o in outcomes
        if o.reply is None or not o.reply.ok
    ]
    return f" ({'; '.join(parts)})" if parts else ""


class PeerState:
    """One node's whole view: its voter, what it heard, and the term it leads.

    The I/O layer reads the clock, calls :meth:`plan`, sends what it says to every peer
    and hands the outcomes to :meth:`conclude`; requests from peers go through
    :meth:`handle`. Whenever :attr:`term` grew, the caller makes it durable before it
    sends or answers anything that depends on it.

    **A leader's round that misses the majority** reports ``leader=False`` (deadline 0)
    at once and never extends the deadline. The node keeps offering renewals of its
    term, so one lost round does not cost an election, until the last confirmed
    deadline has passed; the first failed round after that gives the term up.
    """

    def __init__(
        self, node_id: str, member_ids: Sequence[str], terms: LeaseTerms, term: int, now_ns: int
    ) -> None:
        self.node_id = node_id
        self.others = tuple(m for m in member_ids if m != node_id)
        self.size = len(self.others) + 1
        self.needed = majority(self.size)
        self.terms = terms
        self.ttl_ns = round(terms.ttl_s * NS_PER_S)
        self.voter = Voter(node_id, term, self.ttl_ns, now_ns + self.ttl_ns)
        self.heard: dict[str, Heard] = {}
        self.reports: dict[str, Grant] = {}  # each peer's own lease, on our clock
        self.leading = 0  # the term we lead (confirmed or not), 0 if none
        self.deadline_ns = 0  # the last deadline a majority confirmed for ``leading``
        self.trusted_ns = 0  # the last deadline reported: our own grant must outlive it
        self.released = False
        self.reached = 1

    @property
    def term(self) -> int:
        return self.voter.term

    def header(self) -> Header:
        return Header(self.node_id, self.term, not self.released, self.reached)

    def leases(self, now_ns: int) -> list[Grant]:
        """Every unexpired lease this node knows of: its own voter's and its peers'."""
        own = self.voter.lease(now_ns)
        known = [g for g in self.reports.values() if g.valid(now_ns)]
        return [*known, own] if own is not None else known

    # ------------------------------------------------------------------ incoming

    def _note(self, header: Header, now_ns: int) -> None:
        self.heard[header.sender] = Heard(now_ns, header.competing, header.reached)

    def _step_down(self) -> None:
        """Stop leading at once. Our own grant stays until it expires: a caller may still
        trust the deadline reported last, and our vote is part of that majority."""
        self.leading = 0
        self.deadline_ns = 0

    def _drop_own(self, now_ns: int) -> None:
        """Free our own vote (a lost candidacy, a term given up) unless a deadline we
        reported may still be trusted."""
        if now_ns >= self.trusted_ns:
            self.voter.release(self.node_id, self.term)

    def _forget(self, holder: str, term: int) -> bool:
        stale = [p for p, g in self.reports.items() if g.holder == holder and g.term <= term]
        for peer in stale:
            del self.reports[peer]
        return bool(stale)

    def handle(self, kind: Kind, header: Header, now_ns: int) -> tuple[Reply, bool]:
        """Answer one request; the flag says the news warrants an immediate renewal
        (a vote request, the leader's release, a higher term)."""
        if header.sender not in self.others:
            refusal = f"{header.sender!r} is not another configured member"
            return Reply(self.header(), False, refusal, None), False
        before = self.term
        self._note(header, now_ns)
        wake = kind is Kind.VOTE
        if kind is Kind.VOTE:
            answer = self.voter.vote(header.sender, header.term, now_ns)
        elif kind is Kind.RENEW:
            answer = self.voter.renew(header.sender, header.term, now_ns)
        elif kind is Kind.RELEASE:
            dropped = self.voter.release(header.sender, header.term)
            wake = self._forget(header.sender, header.term) or dropped
            answer = Answer(dropped, "lease dropped" if dropped else "held no lease for it")
        else:
            answer = Answer(True, "status")
        self.voter.adopt(header.term)
        if self.term > before:
            self._step_down()
            wake = True
        return Reply(self.header(), answer.ok, answer.reason, self.voter.lease(now_ns)), wake

    # ------------------------------------------------------------------ rounds

    def plan(self, now_ns: int) -> Plan:
        """Rules 1 and 2: renew what we lead, else stand if nothing speaks against it.
        A candidacy casts our own vote here, so :attr:`term` grows."""
        if self.leading and not self.released:
            ok = self.voter.renew(self.node_id, self.leading, now_ns).ok
            return Plan(Kind.RENEW, self.leading, self_ok=ok)
        why = self._why_not_stand(now_ns)
        if why is None:
            term = self.term + 1
            answer = self.voter.vote(self.node_id, term, now_ns)
            if answer.ok:
                return Plan(Kind.VOTE, term, self_ok=True)
            why = f"own vote refused: {answer.reason}"
        return Plan(Kind.STATUS, self.term, why)

    def _why_not_stand(self, now_ns: int) -> str | None:
        if self.released:
            return "stepped down, not competing until resumed"
        if self.voter.quiet(now_ns):
            return f"quiet after start-up for {_s(self.voter.quiet_until_ns - now_ns)} more"
        if self.reached < self.needed:
            return "not standing before a majority answers"
        if known_leader(self.node_id, now_ns, self.leases(now_ns)) is not None:
            return ""  # the follower line names the leader
        higher = higher_alive(self.node_id, now_ns, self.ttl_ns, self.needed, self.heard)
        return None if higher is None else f"deferring to {higher} (higher id, alive)"

    def abandon(self, plan: Plan, now_ns: int) -> None:
        """A candidacy that could not be made durable is withdrawn before it is sent."""
        if plan.kind is Kind.VOTE:
            self._drop_own(now_ns)

    def _absorb(self, outcomes: Sequence[Outcome], now_ns: int) -> list[Outcome]:
        """Take in what the replies say (rule 5 included); a reply from someone other
        than the member asked (a miswired proxy) becomes a failure."""
        counted: list[Outcome] = []
        for o in outcomes:
            reply = o.reply
            if reply is not None and reply.header.sender != o.member:
                counted.append(Outcome(o.member, None, f"answered as {reply.header.sender!r}"))
                continue
            if reply is not None:
                h = reply.header
                self._note(h, now_ns)
                if reply.lease is None:
                    self.reports.pop(h.sender, None)
                else:
                    self.reports[h.sender] = reply.lease
                if self.voter.adopt(h.term):
                    self._step_down()
            counted.append(o)
        return counted

    def conclude(
        self, plan: Plan, outcomes: Sequence[Outcome], round_start_ns: int, now_ns: int
    ) -> Leadership:
        """The round's result (rules 2 and 4); ``round_start_ns`` was read before
        :meth:`plan`, so the deadline is measured from before any message left."""
        outcomes = self._absorb(outcomes, now_ns)
        answered = [o.reply for o in outcomes if o.reply is not None]
        self.reached = 1 + len(answered)
        quorum = self.reached >= self.needed
        yes = int(plan.self_ok) + sum(r.ok for r in answered)
        failures = _failures(outcomes)
        term = plan.term
        if plan.kind is Kind.VOTE:
            if yes >= self.needed and self.term == term and not self.released:
                self.leading = term
                return self._lead(round_start_ns, quorum, f"with {yes}/{self.size} votes{failures}")
            self._drop_own(now_ns)
            why = f"lost the election for term {term} with {yes}/{self.size} votes"
            return self._follow(now_ns, quorum, why, failures)
        if plan.kind is Kind.RENEW:
            if yes >= self.needed and self.leading == term and not self.released:
                return self._lead(round_start_ns, quorum, f"renewed by {yes}/{self.size}{failures}")
            if self.leading != term:
                why = f"stepped down from term {term}: term {self.term} seen"
            else:
                why = f"lost the majority: term {term} renewed by {yes}/{self.size}"
                if now_ns < self.deadline_ns:
                    # One lost round is not a fault: the lease a majority granted still
                    # holds until its deadline, which is NOT extended (as for etcd).
                    left = _s(self.deadline_ns - now_ns)
                    return Leadership(
                        True, True, term, self.deadline_ns, self.node_id,
                        f"leader of term {term}: {why}{failures}; lease held {left} more",
                    )  # fmt: skip
                self._step_down()
                self._drop_own(now_ns)
                why += ", term given up"
            return self._follow(now_ns, quorum, why, failures)
        return self._follow(now_ns, quorum, plan.why, failures)

    def _lead(self, round_start_ns: int, quorum: bool, how: str) -> Leadership:
        self.deadline_ns = self.trusted_ns = self.terms.deadline_ns(round_start_ns)
        return Leadership(
            True,
            quorum,
            self.leading,
            self.deadline_ns,
            self.node_id,
            f"leader of term {self.leading} {how}",
        )

    def _follow(self, now_ns: int, quorum: bool, why: str, failures: str) -> Leadership:
        """``<what we know><who failed>; <why we do not lead>``."""
        lead = known_leader(self.node_id, now_ns, self.leases(now_ns))
        if not quorum:
            head = f"no quorum: {self.reached}/{self.size} members answered"
        elif lead is not None:
            left = _s(lead.expiry_ns - now_ns)
            head = f"follower: {lead.holder} holds term {lead.term} for {left} more"
        else:
            head = "no leader"
        detail = f"{head}{failures}; {why}" if why else f"{head}{failures}"
        return Leadership(False, quorum, 0, 0, lead.holder if lead else None, detail)

    # ------------------------------------------------------------------ stepping down

    def release(self) -> Header:
        """Step down until :meth:`resume`. The caller has stopped trusting the last
        deadline (it holds outputs first), so our own grant goes too; the returned
        header, sent to every peer, names the term whose grants they drop."""
        self.released = True
        self._step_down()
        self.trusted_ns = 0
        self.voter.release(self.node_id, self.term)
        return self.header()

    def resume(self) -> None:
        self.released = False
