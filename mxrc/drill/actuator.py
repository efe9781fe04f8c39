"""``mxrc actuator``: the fenced actuator of failover drills, as its own process.

It stands in for the robot. Being a separate process matters: it survives every node
crash a drill inflicts, it hears whatever each node actually sent (not what the node
believes it sent), and its record is the one account of who drove when that no node
can bias. The rule and the record format are in :mod:`mxrc.drill.fencing`; this module
is the I/O around them.

Durability. Each record line goes to the kernel with one ``write`` as soon as it is
decided (a killed actuator loses nothing that was decided), and is fsynced within
:data:`FSYNC_INTERVAL_S` of being written, and at a clean exit — an fsync per datagram
would cap the rate at the disk's flush rate for no gain in a drill on one machine.
The highest token is recovered from the record itself at start, so a restarted
actuator refuses a stale token exactly as its previous life would have; there is no
second file that could disagree with the record. An exclusive lock on the record
refuses a second actuator on the same file, whose lines would interleave.

One thread, one ``select`` over the socket and a signal wake-up pipe: SIGTERM/SIGINT
end the loop at once (never in the middle of a line), the summary line is written and
synced, and the process exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

import orjson

from mxrc.drill import fencing
from mxrc.errors import LogFailedError, MxrcError, UsageError
from mxrc.fsutil import atomic_write, fsync_dir, write_all

#: The longest a decided line waits for its fsync (the brief of a drill: ≤ 0.2 s).
FSYNC_INTERVAL_S: Final = 0.1
#: Datagrams handled per wake-up before the fsync deadline is looked at again.
DRAIN_BATCH: Final = 256
#: Kernel receive buffer asked for, so a burst during an fsync is queued, not dropped.
RECV_BUFFER_BYTES: Final = 1 << 20
MAX_DATAGRAM_BYTES: Final = 65536
#: A command is ~120 bytes; anything much larger is not one.
MAX_COMMAND_BYTES: Final = 4096
DEFAULT_LISTEN: Final = "127.0.0.1:0"


class RecordInUseError(MxrcError):
    """Another actuator holds the record's lock."""

    exit_code = 9


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) → (host, port); ValueError naming the text."""
    host, sep, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"expected HOST:PORT (port 0-65535), got {text!r}")
    return host, int(port_text)


class Recorder:
    """The append-only record: a line per call to :meth:`append`, fsync on a deadline."""

    def __init__(self, path: Path) -> None:
        self.path = path
        created = not path.exists()
        self.fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RecordInUseError(
                    f"{path}: another actuator is recording to this file"
                ) from None
            if created:
                fsync_dir(path.parent)
            self.earlier_lines, self.highest_token = self._recover()
        except BaseException:
            os.close(self.fd)
            raise
        self.dirty_since: float | None = None  # monotonic time of the oldest unsynced line

    def _recover(self) -> tuple[int, int]:
        """(lines already there, highest token they allow); ends a torn last line so the
        next line starts on its own (the torn one then reads as unreadable, not as a
        corruption of the first new line)."""
        size = os.fstat(self.fd).st_size
        if size == 0:
            return 0, 0
        if os.pread(self.fd, 1, size - 1) != b"\n":
            self._write(b"\n")
            self.sync()
        with self.path.open("rb") as f:
            counted = _Counted(fencing.parse_record(f))
            highest = fencing.highest_token(counted)
        return counted.count, highest

    def _write(self, data: bytes) -> None:
        try:
            write_all(self.fd, data)
        except OSError as exc:
            raise LogFailedError(f"{self.path}: write failed: {exc}") from None

    def append(self, entry: dict[str, Any], now: float) -> None:
        self._write(fencing.encode_line(entry))
        if self.dirty_since is None:
            self.dirty_since = now

    def sync_in(self, now: float) -> float | None:
        """Seconds until an fsync is due (0: now); None when nothing is unsynced."""
        if self.dirty_since is None:
            return None
        return max(0.0, self.dirty_since + FSYNC_INTERVAL_S - now)

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise LogFailedError(f"{self.path}: fsync failed: {exc}") from None
        self.dirty_since = None

    def close(self) -> None:
        os.close(self.fd)  # closing drops the lock


class _Counted:
    """Counts what passes through, so recovery reads the record once."""

    def __init__(self, entries: Iterator[dict[str, Any]]) -> None:
        self.entries = entries
        self.count = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for entry in self.entries:
            self.count += 1
            yield entry


@dataclass
class Counts:
    accepted: int = 0
    rejected: int = 0  # malformed included
    malformed: int = 0


class Actuator:
    """Decide and record each datagram; never raises on what a datagram contains."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.fence = fencing.Fence(recorder.highest_token)
        self.counts = Counts()

    def handle(self, data: bytes, peer: str, wall_ns: int, mono_ns: int) -> None:
        now = mono_ns / 1e9
        try:
            if len(data) > MAX_COMMAND_BYTES:
                raise fencing.MalformedError(
                    f"malformed: {len(data)} bytes, more than {MAX_COMMAND_BYTES}"
                )
            write = fencing.parse_datagram(data)
        except fencing.MalformedError as exc:
            self.counts.malformed += 1
            self.counts.rejected += 1
            self.recorder.append(
                fencing.malformed_line(
                    wall_ns=wall_ns, mono_ns=mono_ns, reason=str(exc), raw=data, peer=peer
                ),
                now,
            )
            return
        decision = self.fence.decide(write)
        if decision.accepted:
            self.counts.accepted += 1
        else:
            self.counts.rejected += 1
        self.recorder.append(
            fencing.write_line(wall_ns=wall_ns, mono_ns=mono_ns, write=write, decision=decision),
            now,
        )


def _peer(address: Any) -> str:
    try:
        return f"{address[0]}:{address[1]}"
    except (TypeError, IndexError):
        return str(address)


def bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        with contextlib.suppress(OSError):  # a smaller buffer only risks drops in bursts
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER_BYTES)
        sock.bind(address)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc}") from None
    return sock


def serve(
    listen: tuple[str, int],
    record: Path,
    announce: Path | None = None,
    print_line: Callable[[str], None] = print,
) -> int:
    """Record datagrams until SIGTERM/SIGINT; the exit code (0)."""
    sock = bind(*listen)  # first: a bad address leaves no empty record behind
    try:
        recorder = Recorder(record)
        try:
            return _serve(sock, recorder, announce, print_line)
        finally:
            recorder.close()
    finally:
        sock.close()


def _serve(
    sock: socket.socket,
    recorder: Recorder,
    announce: Path | None,
    print_line: Callable[[str], None],
) -> int:
    actuator = Actuator(recorder)
    host, port = sock.getsockname()[:2]
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signalled: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signalled.append(signum)

    previous_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        recorder.append(
            fencing.start_line(
                wall_ns=time.time_ns(),
                mono_ns=time.monotonic_ns(),
                pid=os.getpid(),
                host=host,
                port=port,
                highest_token=actuator.fence.highest,
            ),
            time.monotonic(),
        )
        recorder.sync()
        if announce is not None:
            record = str(recorder.path.absolute())
            info = {"pid": os.getpid(), "host": host, "port": port, "record": record}
            atomic_write(announce, orjson.dumps(info) + b"\n")
        print_line(
            f"mxrc actuator: pid {os.getpid()} listening on {host}:{port}; record "
            f"{recorder.path} ({recorder.earlier_lines} earlier lines, refusing tokens "
            f"below {max(actuator.fence.highest, 1)})"
        )
        _loop(sock, wake_r, actuator, signalled)
        name = signal.Signals(signalled[0]).name if signalled else "none"
        counts = actuator.counts
        recorder.append(
            fencing.summary_line(
                wall_ns=time.time_ns(),
                mono_ns=time.monotonic_ns(),
                signal=name,
                accepted=counts.accepted,
                rejected=counts.rejected,
                malformed=counts.malformed,
                highest_token=actuator.fence.highest,
            ),
            time.monotonic(),
        )
        recorder.sync()
        print_line(
            f"mxrc actuator: stopped ({name}): {counts.accepted} accepted, "
            f"{counts.rejected} rejected ({counts.malformed} malformed), highest token "
            f"{actuator.fence.highest}; record synced"
        )
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous_wakeup)
        wake_r.close()
        wake_w.close()


def _loop(
    sock: socket.socket, wake: socket.socket, actuator: Actuator, signalled: list[int]
) -> None:
    recorder = actuator.recorder
    watched = [sock, wake]
    while not signalled:
        ready, _, _ = select.select(watched, [], [], recorder.sync_in(time.monotonic()))
        if sock in ready:
            for _ in range(DRAIN_BATCH):
                try:
                    data, address = sock.recvfrom(MAX_DATAGRAM_BYTES)
                except BlockingIOError:
                    break
                except ConnectionError:
                    continue  # an ICMP error for nothing we sent; not a datagram
                actuator.handle(data, _peer(address), time.time_ns(), time.monotonic_ns())
        if wake in ready:
            with contextlib.suppress(BlockingIOError):
                wake.recv(64)  # the signal handler has run; ``signalled`` says which
        if recorder.sync_in(time.monotonic()) == 0.0:
            recorder.sync()


def check_record(path: Path) -> fencing.Summary:
    try:
        with path.open("rb") as f:
            return fencing.check(fencing.parse_record(f))
    except OSError as exc:
        raise UsageError(f"cannot read record {path}: {exc.strerror}") from None


# --- the command --------------------------------------------------------------------

DESCRIPTION = """\
The robot of failover drills: a UDP server that accepts commands only from the newest
leadership (by fencing token) and records every decision, the ground truth of who
drove when. With --check, the judge of such a record.
"""

EPILOG = f"""\
Each datagram is one JSON object {{"node": str, "token": int, "cycle": int, "value": float,
"sent_mono_ns": int}}. A command is accepted when its token is at least the highest
accepted so far (and at least 1); an older token is a deposed leader and is rejected
("stale token 3 < 5"). Every datagram, accepted, rejected or malformed, becomes one
JSON line of the record: kind (start, write, malformed, summary), wall_ns and mono_ns
of reception, node, token, cycle, value, sent_mono_ns, accepted, reason. Each line is
written at once and fsynced within {FSYNC_INTERVAL_S:g} s. At start the highest token is
recovered from the record, so a restarted actuator still refuses stale tokens.
SIGTERM or SIGINT writes a summary line, syncs and exits 0.

--check judges a record: counts, per-node counts, tokens in order, the time span each
(node, token) drove, and violations — an accepted token lower than one accepted before,
or one token accepted from two nodes.

examples:
  mxrc actuator --record drill/actuator.jsonl --announce drill/actuator.json
      # any free loopback port; drill/actuator.json says {{"pid", "host", "port"}}
  mxrc actuator --listen 127.0.0.1:9700 --record actuator.jsonl
  mxrc actuator --check drill/actuator.jsonl | jq '.violations'

  # a node's RT process commands it through the drill control law:
  MXRC_ACTUATOR=127.0.0.1:9700 MXRC_NODE_ID=node-1 mxrc rt --config drill.toml
      # with rt.control_law = "mxrc.drill.fenced_joint:FencedJoint"

exit codes: 0 stopped by a signal / --check found no violation, 1 --check found
  violations, 2 usage error (bad address, port in use, unreadable record),
  9 another actuator records to that file, 10 writing or syncing the record failed
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "actuator",
        help="run the fenced actuator of failover drills, or check its record",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", type=Path, metavar="FILE", help="serve, appending here")
    mode.add_argument(
        "--check",
        type=Path,
        metavar="FILE",
        help="print the record's summary as JSON; exit 1 if it shows a violation",
    )
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"address to receive commands on (default {DEFAULT_LISTEN}; port 0: any free)",
    )
    p.add_argument(
        "--announce",
        type=Path,
        metavar="FILE",
        help='once listening, write {"pid", "host", "port"} here (atomically)',
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.check is not None:
        if args.listen is not None or args.announce is not None:
            raise UsageError("--check reads a record; --listen and --announce serve one")
        summary = check_record(args.check)
        sys.stdout.buffer.write(orjson.dumps(summary.to_json(), option=orjson.OPT_INDENT_2))
        sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()
        return 0 if summary.ok else 1
    try:
        listen = parse_address(args.listen or DEFAULT_LISTEN)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None
    return serve(listen, args.record, args.announce, lambda line: print(line, flush=True))
