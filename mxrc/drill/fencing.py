"""The fencing rule, the actuator's record format, and the checker that judges a record.

Kept free of I/O so the rule the actuator applies and the rule the checker verifies can
be tested on plain values, and so a drill runner can judge a record without starting
anything.

The rule. An actuator accepts a command only if its token is at least the highest token
it has accepted before: a deposed leader (older token) is refused as soon as its
successor has been heard once, whatever either node believes. Equal tokens are accepted
because one leadership sends many commands. A token below 1 is refused too: leaderships
are numbered from 1 and 0 means "no lease", so such a command was sent by a node that
had no right to drive at all.

The record: one JSON object per line, appended and never rewritten, with a ``kind``:

* ``start`` — an actuator life began: ``pid``, ``host``, ``port``, ``highest_token``
  (recovered from the lines before), ``wall_ns``, ``mono_ns``;
* ``write`` — one well-formed command: ``wall_ns``/``mono_ns`` when it was received,
  ``node``, ``token``, ``cycle``, ``value``, ``sent_mono_ns`` (the sender's clock),
  ``accepted``, ``reason`` (empty when accepted, e.g. ``stale token 3 < 5`` when not);
* ``malformed`` — a datagram that is not a command: the same fields, ``null`` where
  unknown, ``accepted`` false, the ``reason``, the sender ``peer`` and the start of the
  datagram as ``raw`` text;
* ``summary`` — the life ended cleanly: ``signal`` and this life's ``accepted``,
  ``rejected`` (malformed included) and ``malformed`` counts, ``highest_token``.

The checker does not trust the ``accepted`` verdicts to be right, only to be what the
actuator did: it recomputes from the accepted lines whether any of them broke the rule,
and whether one token was ever used by two nodes (two leaders given the same token —
the fence cannot tell them apart, so the HA layer must never let it happen).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

#: Longest node id a command may carry; longer ones are malformed (a record line stays
#: small and a garbage datagram cannot bloat it).
MAX_NODE_LEN: Final = 128
#: How much of a malformed datagram the record keeps.
RAW_KEEP_BYTES: Final = 200

KIND_START: Final = "start"
KIND_WRITE: Final = "write"
KIND_MALFORMED: Final = "malformed"
KIND_SUMMARY: Final = "summary"
#: Not written by the actuator: what :func:`parse_record` yields for a line it cannot
#: read (a torn last line after a crash, or damage).
KIND_UNREADABLE: Final = "unreadable"


@dataclass(frozen=True, slots=True)
class Write:
    """One command as a node sends it."""

    node: str
    token: int
    cycle: int
    value: float
    sent_mono_ns: int


@dataclass(frozen=True, slots=True)
class Decision:
    accepted: bool
    reason: str = ""


ACCEPTED: Final = Decision(True)


class Fence:
    """The actuator's only state: the highest token it has accepted."""

    __slots__ = ("highest",)

    def __init__(self, highest: int = 0) -> None:
        self.highest = highest

    def decide(self, write: Write) -> Decision:
        token = write.token
        if token < 1:
            return Decision(False, f"no lease: token {token} < 1")
        if token < self.highest:
            return Decision(False, f"stale token {token} < {self.highest}")
        self.highest = token
        return ACCEPTED


class MalformedError(ValueError):
    """A datagram that is not a command; the message is the record's ``reason``."""


def _int_field(obj: Mapping[str, Any], name: str) -> int:
    value = obj.get(name)
    if type(value) is not int:  # bool is an int subclass, and is not a token
        raise MalformedError(f"malformed: {name!r} must be an integer, got {value!r:.40}")
    return value


def parse_datagram(data: bytes) -> Write:
    """A command from one datagram, or :class:`MalformedError` saying what is wrong."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedError(f"malformed: not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise MalformedError(f"malformed: expected a JSON object, got {type(obj).__name__}")
    node = obj.get("node")
    if not isinstance(node, str) or not node or len(node) > MAX_NODE_LEN:
        raise MalformedError(
            f"malformed: 'node' must be a string of 1 to {MAX_NODE_LEN} characters, "
            f"got {node!r:.40}"
        )
    token = _int_field(obj, "token")
    cycle = _int_field(obj, "cycle")
    sent = _int_field(obj, "sent_mono_ns")
    value = obj.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MalformedError(f"malformed: 'value' must be a finite number, got {value!r:.40}")
    return Write(node, token, cycle, float(value), sent)


def datagram_template(node: str) -> bytes:
    """The bytes %-format a sender fills per command with (token, cycle, value,
    sent_mono_ns): the node id is encoded once, so a send costs one formatting."""
    if not node or len(node) > MAX_NODE_LEN:
        raise ValueError(f"node id must have 1 to {MAX_NODE_LEN} characters, got {node!r}")
    quoted = orjson.dumps(node).replace(b"%", b"%%")
    return b'{"node":' + quoted + b',"token":%d,"cycle":%d,"value":%a,"sent_mono_ns":%d}'


def encode_datagram(write: Write) -> bytes:
    return orjson.dumps(
        {
            "node": write.node,
            "token": write.token,
            "cycle": write.cycle,
            "value": write.value,
            "sent_mono_ns": write.sent_mono_ns,
        }
    )


# --- record lines -------------------------------------------------------------------


def start_line(
    *, wall_ns: int, mono_ns: int, pid: int, host: str, port: int, highest_token: int
) -> dict[str, Any]:
    return {
        "kind": KIND_START,
        "wall_ns": wall_ns,
        "mono_ns": mono_ns,
        "pid": pid,
        "host": host,
        "port": port,
        "highest_token": highest_token,
    }


def write_line(*, wall_ns: int, mono_ns: int, write: Write, decision: Decision) -> dict[str, Any]:
    return {
        "kind": KIND_WRITE,
        "wall_ns": wall_ns,
        "mono_ns": mono_ns,
        "node": write.node,
        "token": write.token,
        "cycle": write.cycle,
        "value": write.value,
        "sent_mono_ns": write.sent_mono_ns,
        "accepted": decision.accepted,
        "reason": decision.reason,
    }


def malformed_line(
    *, wall_ns: int, mono_ns: int, reason: str, raw: bytes, peer: str
) -> dict[str, Any]:
    return {
        "kind": KIND_MALFORMED,
        "wall_ns": wall_ns,
        "mono_ns": mono_ns,
        "node": None,
        "token": None,
        "cycle": None,
        "value": None,
        "sent_mono_ns": None,
        "accepted": False,
        "reason": reason,
        "peer": peer,
        "raw": raw[:RAW_KEEP_BYTES].decode("utf-8", "backslashreplace"),
    }


def summary_line(
    *,
    wall_ns: int,
    mono_ns: int,
    signal: str,
    accepted: int,
    rejected: int,
    malformed: int,
    highest_token: int,
) -> dict[str, Any]:
    return {
        "kind": KIND_SUMMARY,
        "wall_ns": wall_ns,
        "mono_ns": mono_ns,
        "signal": signal,
        "accepted": accepted,
        "rejected": rejected,
        "malformed": malformed,
        "highest_token": highest_token,
    }


def encode_line(entry: Mapping[str, Any]) -> bytes:
    return orjson.dumps(entry) + b"\n"


def parse_record(lines: Iterable[bytes | str]) -> Iterator[dict[str, Any]]:
    """One entry per line, in order; a line that is not a JSON object becomes an
    ``unreadable`` entry, so line numbers stay those of the file."""
    for raw in lines:
        try:
            entry = orjson.loads(raw)
        except orjson.JSONDecodeError:
            entry = None
        if isinstance(entry, dict) and isinstance(entry.get("kind"), str):
            yield entry
        else:
            text = raw if isinstance(raw, str) else raw.decode("utf-8", "backslashreplace")
            yield {"kind": KIND_UNREADABLE, "text": text[:RAW_KEEP_BYTES]}


def _write_fields(entry: Mapping[str, Any]) -> tuple[str, int, bool] | None:
    node, token, accepted = entry.get("node"), entry.get("token"), entry.get("accepted")
    if not isinstance(node, str) or type(token) is not int or not isinstance(accepted, bool):
        return None
    return node, token, accepted


def highest_token(entries: Iterable[Mapping[str, Any]]) -> int:
    """The token a restarted actuator must refuse anything below: the highest accepted
    in the record, or recovered by an earlier life (which may have read a longer one)."""
    highest = 0
    for entry in entries:
        kind = entry.get("kind")
        if kind == KIND_WRITE:
            fields = _write_fields(entry)
            if fields is not None and fields[2]:
                highest = max(highest, fields[1])
        elif kind in (KIND_START, KIND_SUMMARY):
            recovered = entry.get("highest_token")
            if type(recovered) is int:
                highest = max(highest, recovered)
    return highest


# --- the checker --------------------------------------------------------------------


@dataclass
class NodeCounts:
    accepted: int = 0
    rejected: int = 0


@dataclass
class Drive:
    """When one (node, token) had its commands accepted: the span a leadership drove."""

    node: str
    token: int
    writes: int
    first_line: int
    last_line: int
    first_wall_ns: int
    last_wall_ns: int
    first_mono_ns: int
    last_mono_ns: int


@dataclass(frozen=True)
class Violation:
    """``stale_accepted``: accepted below an earlier accepted token; ``shared_token``: a
    token accepted from a second node; ``unleased_accepted``: a token below 1 accepted."""

    kind: str
    line: int
    node: str
    token: int
    detail: str


@dataclass
class Life:
    """One run of the actuator on this record, from its ``start`` line.

    ``complete`` says the life ended with a summary whose counts equal the lines it
    wrote: the record holds every decision of that life. A life without a summary was
    killed (its last lines up to one fsync interval may be missing after a power loss;
    after a process kill the page cache still has them).
    """

    line: int
    pid: int | None
    highest_at_start: int
    accepted: int = 0
    rejected: int = 0
    malformed: int = 0
    clean_exit: bool = False
    complete: bool = False


@dataclass
class Summary:
    lines: int = 0
    accepted: int = 0
    rejected: int = 0  # malformed included
    malformed: int = 0
    unreadable: int = 0
    highest_token: int = 0
    per_node: dict[str, NodeCounts] = field(default_factory=dict)
    tokens_seen: list[int] = field(default_factory=list)  # distinct, first appearance
    tokens_accepted: list[int] = field(default_factory=list)  # distinct, first acceptance
    drove: list[Drive] = field(default_factory=list)  # by first accepted write
    violations: list[Violation] = field(default_factory=list)
    lives: list[Life] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "lines": self.lines,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "malformed": self.malformed,
            "unreadable": self.unreadable,
            "highest_token": self.highest_token,
            "per_node": {
                node: {"accepted": c.accepted, "rejected": c.rejected}
                for node, c in self.per_node.items()
            },
            "tokens_seen": self.tokens_seen,
            "tokens_accepted": self.tokens_accepted,
            "drove": [vars(d) for d in self.drove],
            "violations": [vars(v) for v in self.violations],
            "lives": [vars(life) for life in self.lives],
        }


class _Checker:
    def __init__(self) -> None:
        self.s = Summary()
        self.highest = 0  # highest accepted so far, whatever the actuator recovered
        self.token_owner: dict[int, str] = {}
        self.shared: set[tuple[int, str]] = set()
        self.drives: dict[tuple[str, int], Drive] = {}
        self.seen: set[int] = set()
        self.life: Life | None = None

    def entry(self, line: int, entry: Mapping[str, Any]) -> None:
        s = self.s
        s.lines = line
        kind = entry.get("kind")
        if kind == KIND_START:
            pid, recovered = entry.get("pid"), entry.get("highest_token")
            self.life = Life(
                line,
                pid if type(pid) is int else None,
                recovered if type(recovered) is int else 0,
            )
            s.lives.append(self.life)
        elif kind == KIND_SUMMARY:
            self._summary(entry)
        elif kind == KIND_MALFORMED:
            s.rejected += 1
            s.malformed += 1
            if self.life is not None:
                self.life.rejected += 1
                self.life.malformed += 1
        elif kind == KIND_WRITE and (fields := _write_fields(entry)) is not None:
            self._write(line, entry, *fields)
        else:
            s.unreadable += 1

    def _summary(self, entry: Mapping[str, Any]) -> None:
        life = self.life
        if life is None:
            return
        life.clean_exit = True
        life.complete = (
            entry.get("accepted") == life.accepted
            and entry.get("rejected") == life.rejected
            and entry.get("malformed") == life.malformed
        )
        self.life = None  # lines after a summary and before a start belong to no life

    def _write(
        self, line: int, entry: Mapping[str, Any], node: str, token: int, accepted: bool
    ) -> None:
        s = self.s
        counts = s.per_node.setdefault(node, NodeCounts())
        if token not in self.seen:
            self.seen.add(token)
            s.tokens_seen.append(token)
        if not accepted:
            s.rejected += 1
            counts.rejected += 1
            if self.life is not None:
                self.life.rejected += 1
            return
        s.accepted += 1
        counts.accepted += 1
        if self.life is not None:
            self.life.accepted += 1
        if token < 1:
            self._violation("unleased_accepted", line, node, token, f"token {token} < 1 accepted")
        if token < self.highest:
            self._violation(
                "stale_accepted",
                line,
                node,
                token,
                f"token {token} accepted after token {self.highest}",
            )
        self.highest = max(self.highest, token)
        s.highest_token = self.highest
        owner = self.token_owner.setdefault(token, node)
        if owner == node:
            if token not in s.tokens_accepted:
                s.tokens_accepted.append(token)
        elif (token, node) not in self.shared:
            self.shared.add((token, node))
            self._violation(
                "shared_token", line, node, token, f"token {token} also accepted from {owner!r}"
            )
        self._drove(line, entry, node, token)

    def _drove(self, line: int, entry: Mapping[str, Any], node: str, token: int) -> None:
        wall, mono = entry.get("wall_ns"), entry.get("mono_ns")
        wall = wall if type(wall) is int else 0
        mono = mono if type(mono) is int else 0
        drive = self.drives.get((node, token))
        if drive is None:
            drive = Drive(node, token, 0, line, line, wall, wall, mono, mono)
            self.drives[(node, token)] = drive
            self.s.drove.append(drive)
        drive.writes += 1
        drive.last_line, drive.last_wall_ns, drive.last_mono_ns = line, wall, mono

    def _violation(self, kind: str, line: int, node: str, token: int, detail: str) -> None:
        self.s.violations.append(Violation(kind, line, node, token, detail))


def check(entries: Iterable[Mapping[str, Any]]) -> Summary:
    """Judge a record (entries in file order, as :func:`parse_record` yields them)."""
    checker = _Checker()
    for line, entry in enumerate(entries, start=1):
        checker.entry(line, entry)
    return checker.s
