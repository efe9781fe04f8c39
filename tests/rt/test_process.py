"""``mxrc rt`` as a real process against real shared memory; the test plays nonrt.

Each test creates the three segments the way nonrt will, starts ``python -m mxrc rt``
with a temporary configuration, writes the control block and reads the ring. The RT
process publishes a CYCLE_STATUS record every cycle here (``status_every_cycles = 1``),
so the ring gives a cycle-by-cycle account (cycle number, decision time, driving or not)
that the lease test uses to show *when* the fault was raised, not only that it was.

The systemd tests play the service manager too: a real datagram socket in NOTIFY_SOCKET
receives what ``mxrc rt`` sends, and a control law defined here (loaded by the child
through ``rt.control_law``) gets stuck on request, so the watchdog test shows pings
stopping because the cycle stopped, not because anything was simulated.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from pathlib import Path

import pytest

from mxrc.rt.control import load_control_law
from mxrc.rt.controlblock import ControlBlock, Mode
from mxrc.rt.cycle import CycleInfo
from mxrc.rt.datastore import DataStoreSegment, KeySpec, KeyTable, Side
from mxrc.rt.executive import Executive
from mxrc.rt.plant import SimulatedJoint
from mxrc.rt.process import (
    DEFAULT_KEYS,
    FAULT_CAUSE,
    FAULT_LEASE_LEFT_NS,
    HISTOGRAM_COUNTS,
    HISTOGRAM_SUM_NS,
    HISTOGRAM_TOTAL,
    MODE_ACTED_NS,
    MODE_DRIVING,
    MODE_NEW,
    MODE_PREVIOUS,
    MODE_TOKEN,
    RING_LAYOUT,
    STARTED_CPU,
    STARTED_PERIOD_NS,
    STARTED_PRIORITY,
    STATUS_DRIVING,
    STOPPED_CYCLES,
    STOPPED_WAS_DRIVING,
    FaultCause,
    RecordType,
    RtHook,
    RtLayoutError,
    segment_names,
)
from mxrc.rt.ring import Record, Ring, RingLayout
from mxrc.rt.stats import DeadlineCounter, Histogram
from mxrc.service.events import WAKE_BUCKETS_NS

ROOT = Path(__file__).resolve().parents[2]
PERIOD_NS = 1_000_000
CPU = max(os.sched_getaffinity(0))
TOKEN = 41
LEASE_NS = 30 * 1_000_000_000  # far enough ahead that only the test ends a lease


class Nonrt:
    """The test's stand-in for mxrc-nonrt: owns the segments, runs ``mxrc rt``."""

    def __init__(
        self,
        tmp: Path,
        ring_layout: RingLayout = RING_LAYOUT,
        keys: KeyTable = DEFAULT_KEYS,
        config_keys: KeyTable | None = None,
        control_law: str | None = None,
    ) -> None:
        self.shm_dir = tmp / "shm"
        self.shm_dir.mkdir()
        node = f"t{os.getpid()}"
        control, ring, store = segment_names("mxrc-test", node)
        self.control = ControlBlock.create(control, directory=self.shm_dir)
        self.ring = Ring.create(ring, ring_layout, directory=self.shm_dir)
        self.store_segment = DataStoreSegment.create(store, keys, directory=self.shm_dir)
        self.cb = self.control.writer()
        self.store = self.store_segment.store(Side.NONRT)
        self.reader = self.ring.reader() if ring_layout == RING_LAYOUT else None
        self.records: list[Record] = []
        self.config = tmp / "mxrc.toml"
        self.config.write_text(
            f"""
[node]
id = "{node}"
[cycle]
period_ms = {PERIOD_NS / 1e6}
[rt]
cpu = -1
hold_dma_latency = false
shm_dir = "{self.shm_dir}"
shm_prefix = "mxrc-test"
status_every_cycles = 1
attach_wait_s = 1.0
"""
            + (f'control_law = "{control_law}"\n' if control_law else "")
            + (keys_toml(config_keys) if config_keys is not None else "")
        )
        self.proc: subprocess.Popen[str] | None = None

    def start(self, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        """``python -m mxrc rt``; ``env`` is added to this process's environment (and the
        repository is on the child's path, so a test module can name its control law)."""
        child_env = None
        if env is not None:
            path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
            child_env = {**os.environ, "PYTHONPATH": path, **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mxrc", "rt", "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env,
        )
        return self.proc

    def poll(self) -> list[Record]:
        assert self.reader is not None
        new = self.reader.poll()
        self.records.extend(new)
        return new

    def of_type(self, rtype: RecordType) -> list[Record]:
        return [r for r in self.records if r.rtype == rtype]

    def wait_for(self, what: str, found: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if found():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"mxrc rt exited ({self.proc.returncode}) before {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.002)

    def wait_status(self, count: int = 5) -> None:
        self.wait_for(
            f"{count} CYCLE_STATUS records",
            lambda: len(self.of_type(RecordType.CYCLE_STATUS)) >= count,
        )

    def grant(self, token: int = TOKEN) -> None:
        self.cb.write(Mode.RUNNING, token, time.monotonic_ns() + LEASE_NS)

    def wait_driving(self) -> None:
        self.wait_for(
            "the cycle to drive",
            lambda: any(
                r.f64()[STATUS_DRIVING] == 1.0 for r in self.of_type(RecordType.CYCLE_STATUS)
            ),
        )

    def stop(self) -> tuple[int, str, str]:
        """SIGTERM and reap (bounded); returns (exit code, stdout, stderr)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=10)
        return self.proc.returncode, out, err

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):
                self.proc.communicate(timeout=5)
        for segment in (self.store_segment, self.ring, self.control):
            segment.close()  # the creator unlinks


def messages(stderr: str) -> list[str]:
    """What mxrc rt said: its stderr is ECS JSON lines (not a terminal)."""
    return [json.loads(line)["message"] for line in stderr.splitlines() if line.strip()]


def keys_toml(table: KeyTable) -> str:
    """The ``[[datastore.keys]]`` declarations of ``table``, as a config file has them."""
    return "".join(
        f'[[datastore.keys]]\nname = "{k.name}"\ntype = "{k.type}"\n'
        f'writer = "{k.writer.value}"\ncritical = {"true" if k.critical else "false"}\n'
        for k in table.keys
    )


@pytest.fixture
def nonrt(tmp_path: Path) -> Iterator[Nonrt]:
    peer = Nonrt(tmp_path)
    try:
        yield peer
    finally:
        peer.close()


def position(peer: Nonrt) -> float:
    value = peer.store.get("joint_position")
    assert isinstance(value, float)
    return value


def faults(peer: Nonrt) -> list[Record]:
    return peer.of_type(RecordType.FAULT)


def test_cycle_publishes_status_on_a_pinned_fifo_thread(nonrt: Nonrt) -> None:
    proc = nonrt.start()
    nonrt.wait_status(5)
    status = nonrt.of_type(RecordType.CYCLE_STATUS)
    cycles = [r.cycle for r in status]
    assert cycles == sorted(cycles) and len(set(cycles)) == len(cycles)
    assert all(r.f64()[STATUS_DRIVING] == 0.0 for r in status)  # INIT: nothing permitted
    fifo = []
    for task in Path(f"/proc/{proc.pid}/task").iterdir():
        tid = int(task.name)
        with suppress(ProcessLookupError, FileNotFoundError):
            if os.sched_getscheduler(tid) == os.SCHED_FIFO:
                fifo.append((tid, os.sched_getparam(tid).sched_priority, os.sched_getaffinity(tid)))
    if not fifo:
        pytest.skip("SCHED_FIFO refused on this machine (the start line names the fix)")
    # the cycle thread at 80 on its CPU; every other thread (main, log writer) at 1:
    # below the cycle, above ordinary work (mxrc.rt.sched.place_helpers says why)
    tasks = len(list(Path(f"/proc/{proc.pid}/task").iterdir()))
    assert len(fifo) == tasks >= 2
    (cycle,) = [t for t in fifo if t[1] == 80]
    assert cycle[2] == {CPU}
    assert all(priority == 1 and cpus != {CPU} for _tid, priority, cpus in fifo
               if _tid != cycle[0])  # fmt: skip  # helpers are not pinned
    code, out, err = nonrt.stop()
    assert code == 0 and out == ""  # everything it says is a log record, on stderr
    (start,) = [m for m in messages(err) if m.startswith("mxrc rt: node ")]
    assert "SCHED_FIFO 80" in start and f"on CPU {CPU}" in start
    assert f"other threads: {tasks - 1} helper thread(s) SCHED_FIFO 1;" in start


def test_running_with_a_valid_lease_drives_the_joint(nonrt: Nonrt) -> None:
    nonrt.start()
    nonrt.wait_status()
    assert nonrt.store.get("joint_position") == 0.0
    nonrt.grant()
    nonrt.wait_driving()
    # The default law follows a 1 rad point-to-point move: the joint must get going.
    nonrt.wait_for("the joint to move", lambda: position(nonrt) > 0.05)
    assert not faults(nonrt)


def test_the_cycle_reports_each_new_mode_under_the_trace_written_with_it(nonrt: Nonrt) -> None:
    """The cycle never traces; its MODE_APPLIED record carries the trace context nonrt
    wrote into the control block with the mode, so nonrt can put the cycle's part into
    the command's trace. Records after it keep that context until the next change."""
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    nonrt.start()
    nonrt.wait_status()
    first = nonrt.of_type(RecordType.MODE_APPLIED)
    assert len(first) == 1 and first[0].f64()[MODE_PREVIOUS] == -1  # what it found
    assert first[0].trace_id == bytes(16)  # nothing was traced yet
    nonrt.cb.write(Mode.RUNNING, TOKEN, time.monotonic_ns() + LEASE_NS,
                   f"00-{trace_id}-{span_id}-01")  # fmt: skip
    nonrt.wait_for("MODE_APPLIED RUNNING", lambda: len(nonrt.of_type(RecordType.MODE_APPLIED)) > 1)
    applied = nonrt.of_type(RecordType.MODE_APPLIED)[1]
    words = applied.f64()
    assert (words[MODE_NEW], words[MODE_PREVIOUS]) == (Mode.RUNNING, first[0].f64()[MODE_NEW])
    assert words[MODE_DRIVING] == 1.0 and words[MODE_TOKEN] == TOKEN
    assert 0 < words[MODE_ACTED_NS] < PERIOD_NS  # acted within the cycle that saw it
    assert (applied.trace_id.hex(), applied.span_id.hex(), applied.trace_flags) == (
        trace_id, span_id, 1
    )
    # a renewal (same mode, no trace given) neither reports nor erases the trace
    nonrt.cb.write(Mode.RUNNING, TOKEN, time.monotonic_ns() + LEASE_NS)
    nonrt.wait_status(len(nonrt.of_type(RecordType.CYCLE_STATUS)) + 3)
    assert len(nonrt.of_type(RecordType.MODE_APPLIED)) == 2
    assert nonrt.of_type(RecordType.CYCLE_STATUS)[-1].trace_id.hex() == trace_id


def test_a_new_lease_after_a_fault_drives_again(nonrt: Nonrt) -> None:
    nonrt.start()
    nonrt.wait_status()
    nonrt.grant()
    nonrt.wait_for("the joint to move", lambda: position(nonrt) > 0.01)
    nonrt.cb.write(Mode.RUNNING, TOKEN, time.monotonic_ns() - 1)
    nonrt.wait_for("a FAULT record", lambda: bool(faults(nonrt)))
    nonrt.cb.write(Mode.READY, TOKEN, 0)  # nonrt: SAFE_MODE, reset, READY ...
    time.sleep(0.05)
    held_at = position(nonrt)
    nonrt.grant(TOKEN + 1)  # ... and a new start under a new lease
    nonrt.wait_for("the joint to move again", lambda: abs(position(nonrt) - held_at) > 0.01)
    assert len(faults(nonrt)) == 1


def test_expired_lease_faults_in_the_cycle_that_sees_it(nonrt: Nonrt) -> None:
    nonrt.start()
    nonrt.wait_status()
    nonrt.grant()
    nonrt.wait_for("the joint to move", lambda: position(nonrt) > 0.01)
    written_from = time.monotonic_ns()
    nonrt.cb.write(Mode.RUNNING, TOKEN, written_from - 1)  # the lease ran out already
    written_by = time.monotonic_ns()
    nonrt.wait_for("a FAULT record", lambda: bool(faults(nonrt)))
    (fault,) = faults(nonrt)
    assert fault.f64()[FAULT_CAUSE] == FaultCause.LEASE_EXPIRED
    assert fault.f64()[FAULT_LEASE_LEFT_NS] <= 0
    assert fault.t_ns >= written_from  # decided after the lease was withdrawn
    # Every cycle published its status, stamped with the time it decided. The first
    # cycle that decided after the write had completed must have seen the expired lease;
    # a cycle that decided during the write may have seen it too. The fault belongs to
    # one of those two cycles, and to the status record of that same cycle.
    nonrt.wait_for(
        "status after the fault",
        lambda: nonrt.of_type(RecordType.CYCLE_STATUS)[-1].cycle > fault.cycle,
    )
    status = nonrt.of_type(RecordType.CYCLE_STATUS)
    first_after = min(r.cycle for r in status if r.t_ns > written_by)
    last_before = max(r.cycle for r in status if r.t_ns < written_from)
    assert last_before < fault.cycle <= first_after
    assert [r.cycle for r in status if last_before < r.cycle <= first_after] in (
        [first_after],
        [first_after - 1, first_after],
    ), "the cycles around the write must be consecutive"
    same_cycle = next(r for r in status if r.cycle == fault.cycle)
    assert same_cycle.t_ns == fault.t_ns and same_cycle.f64()[STATUS_DRIVING] == 0.0
    assert all(
        r.f64()[STATUS_DRIVING] == 1.0 for r in status if last_before <= r.cycle < fault.cycle
    )
    assert all(r.f64()[STATUS_DRIVING] == 0.0 for r in status if r.cycle >= fault.cycle)
    # Outputs are held: the joint no longer follows the trajectory.
    held = nonrt.store.get("joint_position")
    time.sleep(0.1)
    assert nonrt.store.get("joint_position") == held
    assert len(faults(nonrt)) == 1  # one record for the edge, not one per held cycle


def test_token_change_while_running_is_a_fault(nonrt: Nonrt) -> None:
    nonrt.start()
    nonrt.wait_status()
    nonrt.grant(TOKEN)
    nonrt.wait_driving()
    nonrt.grant(TOKEN + 1)  # a different leader's permission: never honoured mid-run
    nonrt.wait_for("a FAULT record", lambda: bool(faults(nonrt)))
    (fault,) = faults(nonrt)
    assert fault.f64()[FAULT_CAUSE] == FaultCause.TOKEN_CHANGED
    nonrt.poll()
    time.sleep(0.05)
    nonrt.poll()
    latest = nonrt.of_type(RecordType.CYCLE_STATUS)[-1]
    assert latest.f64()[STATUS_DRIVING] == 0.0  # still fenced while the mode stays RUNNING


def test_ring_with_another_layout_is_refused(tmp_path: Path) -> None:
    peer = Nonrt(tmp_path, RingLayout(capacity=RING_LAYOUT.capacity, payload_size=128))
    try:
        proc = peer.start()
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == RtLayoutError.exit_code
        said = messages(err)  # one error record, not also a second copy by the CLI
        assert len(said) == 1 and len(err.strip().splitlines()) == 1, err
        assert said[0].startswith("shared memory segment")
        assert "record_size" in said[0] and "expected 128, found 192" in said[0]
        assert out == ""
    finally:
        peer.close()


def test_sigterm_holds_outputs_and_writes_a_final_record(nonrt: Nonrt) -> None:
    nonrt.start()
    nonrt.wait_status()
    nonrt.grant()
    nonrt.wait_driving()
    code, _out, err = nonrt.stop()
    assert code == 0, err
    said = messages(err)
    assert said[0].startswith("mxrc rt: node ") and len(said) == 1, said
    nonrt.poll()
    last = nonrt.records[-1]
    assert last.rtype == RecordType.STOPPED
    assert last.f64()[STOPPED_WAS_DRIVING] == 1.0
    assert not faults(nonrt)


def test_keys_declared_in_the_config_are_the_ones_attached(tmp_path: Path) -> None:
    keys = KeyTable([*DEFAULT_KEYS.keys, KeySpec("gain", "f64[3]", Side.NONRT, critical=True)])
    peer = Nonrt(tmp_path, keys=keys, config_keys=keys)
    try:
        peer.start()
        peer.wait_status()
        peer.store.set("gain", [1.0, 2.0, 3.0])
        peer.grant()
        peer.wait_for("the joint to move", lambda: position(peer) > 0.01)
        code, _out, err = peer.stop()
        assert code == 0, err
        start = messages(err)[0]
        assert f"{segment_names('mxrc-test', f't{os.getpid()}')[2]} (4 keys)" in start
    finally:
        peer.close()


def test_a_store_with_another_key_table_is_refused_naming_the_key(tmp_path: Path) -> None:
    # nonrt was configured with setpoint as i64; mxrc rt runs with the default table.
    keys = KeyTable([KeySpec("setpoint", "i64", Side.NONRT), *DEFAULT_KEYS.keys[1:]])
    peer = Nonrt(tmp_path, keys=keys)
    try:
        proc = peer.start()
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == RtLayoutError.exit_code, err
        said = messages(err)  # one line, logged at error level (journalctl -p err)
        assert len(said) == 1 and len(err.strip().splitlines()) == 1, err
        assert "key 'setpoint' is f64 here but i64 in the segment" in said[0]
        assert json.loads(err)["log.level"] == "error"
        assert out == ""
    finally:
        peer.close()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two allowed CPUs")
def test_the_cycle_thread_is_pinned_again_when_its_affinity_is_lost(nonrt: Nonrt) -> None:
    proc = nonrt.start()
    nonrt.wait_status()
    pinned = []
    for task in Path(f"/proc/{proc.pid}/task").iterdir():
        with suppress(ProcessLookupError, FileNotFoundError):
            if os.sched_getaffinity(int(task.name)) == {CPU}:
                pinned.append(int(task.name))
    assert len(pinned) == 1  # the cycle thread; the main thread is not pinned
    (tid,) = pinned
    everywhere = os.sched_getaffinity(0)
    os.sched_setaffinity(tid, everywhere)  # as the kernel does when the CPU goes offline
    deadline = time.monotonic() + 5
    while os.sched_getaffinity(tid) != {CPU}:
        assert time.monotonic() < deadline, "the cycle thread was not pinned again"
        time.sleep(0.05)
    code, _out, err = nonrt.stop()
    assert code == 0, err
    lines = messages(err)
    assert len(lines) == 2, err
    assert lines[1].startswith(f"mxrc rt: re-pinned the cycle thread (tid {tid}) to CPU {CPU}")


# --- wake-up latency histogram records --------------------------------------------------------


def histograms(peer: Nonrt) -> list[Record]:
    return peer.of_type(RecordType.CYCLE_HISTOGRAM)


def histogram_words(record: Record) -> tuple[list[int], int, float]:
    """(cumulative counts per WAKE_BUCKETS_NS bound, total, sum ns) of one record."""
    p = record.f64()
    counts = [p[HISTOGRAM_COUNTS + i] for i in range(len(WAKE_BUCKETS_NS))]
    assert all(c == int(c) for c in counts) and p[HISTOGRAM_TOTAL] == int(p[HISTOGRAM_TOTAL])
    return [int(c) for c in counts], int(p[HISTOGRAM_TOTAL]), p[HISTOGRAM_SUM_NS]


def test_the_hook_counts_wake_latencies_into_cumulative_buckets_exact_at_the_bounds(
    nonrt: Nonrt,
) -> None:
    law = load_control_law("mxrc.rt.plant:SimulatedJoint", PERIOD_NS / 1e9)
    executive = Executive(PERIOD_NS)
    executive.add("control_law", PERIOD_NS, law.step)
    hook = RtHook(
        law,
        executive,
        nonrt.control.reader(),
        nonrt.ring.writer(),
        nonrt.store_segment.store(Side.RT),
        frame_slots=10,
        status_every=3,
    )
    hook.wake_latency = Histogram()
    hook.deadlines = DeadlineCounter(budget_ns=500_000)
    # Each bound, and one nanosecond either side of it; a wake-up before the deadline
    # (impossible with clock_nanosleep, but not trusted) counts as zero.
    latencies = [-3, 0, 19_999, 20_000, 20_001, 50_000, 99_999, 100_000, 200_001]
    latencies += [500_000, 999_999, 1_000_000, 1_000_001, 7_000_000]
    info = CycleInfo(PERIOD_NS)
    for k, late in enumerate(latencies):
        info.tick = k
        info.deadline_ns = 10**12 + k * PERIOD_NS
        info.wake_ns = info.deadline_ns + late
        hook(info)
    records = nonrt.poll()
    assert records[0].rtype == RecordType.STARTED
    found = histograms(nonrt)
    assert [r.cycle for r in found] == [0, 3, 6, 9, 12]  # with every third status
    for hist in found:
        status = records[records.index(hist) - 1]
        assert status.rtype == RecordType.CYCLE_STATUS  # right after its status record
        assert (status.cycle, status.t_ns) == (hist.cycle, hist.t_ns)
        seen = [max(v, 0) for v in latencies[: hist.cycle + 1]]
        counts, total, sum_ns = histogram_words(hist)
        assert counts == [sum(v <= bound for v in seen) for bound in WAKE_BUCKETS_NS]
        assert total == len(seen) and sum_ns == sum(seen)
    assert histogram_words(found[-1])[0] == [4, 6, 8, 8, 10, 12]  # 200_001 is not ≤ 200 µs


def test_histogram_records_from_mxrc_rt_are_cumulative_and_count_every_cycle(
    nonrt: Nonrt,
) -> None:
    nonrt.start()
    nonrt.wait_for("300 CYCLE_HISTOGRAM records", lambda: len(histograms(nonrt)) >= 300)
    code, _out, err = nonrt.stop()
    assert code == 0, err
    nonrt.poll()
    records = nonrt.records
    started = records[0]
    assert started.rtype == RecordType.STARTED  # the first record, from the first cycle
    words = started.f64()
    assert words[STARTED_CPU] == CPU and words[STARTED_PERIOD_NS] == PERIOD_NS
    assert words[STARTED_PRIORITY] in (0.0, 80.0)  # 0: SCHED_FIFO refused here
    assert nonrt.reader is not None and nonrt.reader.dropped == 0  # nothing lost: exact
    found = histograms(nonrt)
    previous: tuple[list[int], int, float] = ([0] * len(WAKE_BUCKETS_NS), 0, 0.0)
    for hist in found:
        status = records[records.index(hist) - 1]
        assert status.rtype == RecordType.CYCLE_STATUS and status.cycle == hist.cycle
        counts, total, sum_ns = histogram_words(hist)
        assert counts == sorted(counts) and counts[-1] <= total  # cumulative, within total
        assert all(now >= before for now, before in zip(counts, previous[0], strict=True))
        assert total == previous[1] + 1  # one status per cycle: each record adds one sample
        assert sum_ns > previous[2]  # every wake-up is at least a little late
        previous = (counts, total, sum_ns)
    assert histogram_words(found[0])[1] == 1
    stopped = records[-1]
    assert stopped.rtype == RecordType.STOPPED
    assert previous[1] == stopped.f64()[STOPPED_CYCLES]  # the last record counted every cycle
    assert len(found) == len(nonrt.of_type(RecordType.CYCLE_STATUS))


# --- systemd: READY, STATUS, STOPPING, and a watchdog fed only by progress ---------------------


STALL_ENV = "MXRC_TEST_STALL_FILE"
STALLING_LAW = f"{__name__}:StallingJoint"


class StallingJoint(SimulatedJoint):
    """The default joint, until the file named by ``$MXRC_TEST_STALL_FILE`` exists: then
    its computation never returns (as a law stuck in a blocking call), so the cycle
    counter stops while the process and its main thread live on. Bounded to a minute in
    case the test that started it could not kill it."""

    def __init__(self, period_s: float) -> None:
        super().__init__(period_s)
        self.stall_file = os.environ.get(STALL_ENV, "")

    def compute(self, info: CycleInfo) -> None:
        super().compute(info)
        if self.stall_file and os.path.exists(self.stall_file):
            give_up = time.monotonic() + 60
            while time.monotonic() < give_up:
                time.sleep(0.05)


class NotifyReceiver:
    """systemd's end of NOTIFY_SOCKET: a bound AF_UNIX datagram socket."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="mxrc-rt-notify-"))  # short path
        self.address = str(self.directory / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.address)

    def recv(self, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        return self.sock.recv(65536)

    def collect(self, seconds: float) -> list[bytes]:
        """Every datagram that arrives within ``seconds``."""
        out = []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                out.append(self.recv(left))
            except TimeoutError:
                break
        return out

    def pending(self) -> list[bytes]:
        out = []
        self.sock.setblocking(False)
        with suppress(BlockingIOError):
            while True:
                out.append(self.sock.recv(65536))
        return out

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def receiver() -> Iterator[NotifyReceiver]:
    made = NotifyReceiver()
    try:
        yield made
    finally:
        made.close()


def pings(datagrams: list[bytes]) -> int:
    return sum(d == b"WATCHDOG=1" for d in datagrams)


def test_the_watchdog_is_fed_only_while_the_cycle_counter_advances(
    tmp_path: Path, receiver: NotifyReceiver
) -> None:
    stall_file = tmp_path / "stall"
    peer = Nonrt(tmp_path, control_law=STALLING_LAW)
    try:
        peer.start(
            {
                "NOTIFY_SOCKET": receiver.address,
                "WATCHDOG_USEC": "200000",  # WatchdogSec=0.2: a ping every 0.1 s
                STALL_ENV: str(stall_file),
            }
        )
        ready = receiver.recv(timeout=15)
        assert ready.startswith(b"READY=1\nSTATUS=holding outputs; "), ready
        idle = receiver.collect(1.0)
        assert 5 <= pings(idle) <= 12, idle  # every 0.1-0.125 s: within WatchdogSec, no more
        assert all(d == b"WATCHDOG=1" or d.startswith(b"STATUS=") for d in idle)

        peer.grant()
        peer.wait_driving()
        assert pings(receiver.collect(0.5)) >= 2  # driving the law: still progressing

        stall_file.touch()  # the law's next computation never returns
        quiet_since = time.monotonic()
        count = len(peer.records)
        deadline = time.monotonic() + 10
        while time.monotonic() - quiet_since < 0.4:  # the ring went quiet: the cycle is stuck
            assert time.monotonic() < deadline, "the cycle did not stall"
            assert peer.proc is not None and peer.proc.poll() is None
            time.sleep(0.01)
            peer.poll()
            if len(peer.records) != count:
                count, quiet_since = len(peer.records), time.monotonic()
        assert peer.of_type(RecordType.CYCLE_STATUS)[-1].f64()[STATUS_DRIVING] == 1.0
        receiver.pending()  # a last ping may have left before the main thread saw the stall
        stuck = receiver.collect(1.5)
        assert pings(stuck) == 0, stuck  # systemd's watchdog would fire now
        assert peer.proc is not None and peer.proc.poll() is None  # yet the process lives
        assert any(
            d.startswith(b"STATUS=driving; ") and b"cycle not progressing for " in d for d in stuck
        ), stuck
    finally:
        peer.close()  # SIGKILL by PID: the stuck cycle would not stop by itself in time


def test_systemd_hears_ready_pings_and_stopping(nonrt: Nonrt) -> None:
    abstract = f"mxrc-test-{secrets.token_hex(6)}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        listener.bind("\0" + abstract)
        listener.settimeout(15)
        nonrt.start({"NOTIFY_SOCKET": "@" + abstract})  # no WATCHDOG_USEC: a ping per 0.5 s
        ready = listener.recv(4096)
        assert re.fullmatch(
            rb"READY=1\nSTATUS=holding outputs; \d+ cycles?, \d+ deadline miss(es)?", ready
        )
        listener.settimeout(5)
        assert listener.recv(4096) == b"WATCHDOG=1"
        code, _out, err = nonrt.stop()
        assert code == 0, err
        listener.setblocking(False)
        last = b""
        with suppress(BlockingIOError):
            while True:
                last = listener.recv(4096)
        assert last.startswith(b"STOPPING=1\nSTATUS=stopping (SIGTERM): holding outputs; "), last
        assert b"deadline miss" in last
    finally:
        listener.close()


def test_a_bad_watchdog_usec_is_refused_with_one_line_naming_it(nonrt: Nonrt) -> None:
    proc = nonrt.start({"NOTIFY_SOCKET": "/run/nothing-here", "WATCHDOG_USEC": "soon"})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 8, err
    assert err.strip().splitlines() == [
        "mxrc: WATCHDOG_USEC='soon' is not a positive whole number of microseconds "
        "(systemd sets it from WatchdogSec=)"
    ]
    assert out == ""
