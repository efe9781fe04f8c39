"""``mxrc rt`` as a real process against real shared memory; the test plays nonrt.

Each test creates the three segments the way nonrt will, starts ``python -m mxrc rt``
with a temporary configuration, writes the control block and reads the ring. The RT
process publishes a CYCLE_STATUS record every cycle here (``status_every_cycles = 1``),
so the ring gives a cycle-by-cycle account (cycle number, decision time, driving or not)
that the lease test uses to show *when* the fault was raised, not only that it was.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from mxrc.rt.controlblock import ControlBlock, Mode
from mxrc.rt.datastore import DataStoreSegment, KeySpec, KeyTable, Side
from mxrc.rt.process import (
    DEFAULT_KEYS,
    FAULT_CAUSE,
    FAULT_LEASE_LEFT_NS,
    RING_LAYOUT,
    STATUS_DRIVING,
    STOPPED_WAS_DRIVING,
    FaultCause,
    RecordType,
    RtLayoutError,
    segment_names,
)
from mxrc.rt.ring import Record, Ring, RingLayout

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
            + (keys_toml(config_keys) if config_keys is not None else "")
        )
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> subprocess.Popen[str]:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mxrc", "rt", "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
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
    assert len(fifo) == 1  # only the cycle thread; the main thread stays SCHED_OTHER
    _tid, priority, cpus = fifo[0]
    assert priority == 80
    assert cpus == {CPU}
    code, out, _err = nonrt.stop()
    assert code == 0
    assert "SCHED_FIFO 80" in out and f"on CPU {CPU}" in out


def test_running_with_a_valid_lease_drives_the_joint(nonrt: Nonrt) -> None:
    nonrt.start()
    nonrt.wait_status()
    assert nonrt.store.get("joint_position") == 0.0
    nonrt.grant()
    nonrt.wait_driving()
    # The default law follows a 1 rad point-to-point move: the joint must get going.
    nonrt.wait_for("the joint to move", lambda: position(nonrt) > 0.05)
    assert not faults(nonrt)


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
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("mxrc: shared memory segment")
        assert "record_size" in lines[0] and "expected 128, found 192" in lines[0]
        assert out == ""
    finally:
        peer.close()


def test_sigterm_holds_outputs_and_writes_a_final_record(nonrt: Nonrt) -> None:
    nonrt.start()
    nonrt.wait_status()
    nonrt.grant()
    nonrt.wait_driving()
    code, out, err = nonrt.stop()
    assert code == 0, err
    assert out.startswith("mxrc rt: node ") and out.count("\n") == 1
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
        code, out, err = peer.stop()
        assert code == 0, err
        assert f"{segment_names('mxrc-test', f't{os.getpid()}')[2]} (4 keys)" in out
    finally:
        peer.close()


def test_a_store_with_another_key_table_is_refused_naming_the_key(tmp_path: Path) -> None:
    # nonrt was configured with setpoint as i64; mxrc rt runs with the default table.
    keys = KeyTable(
        [KeySpec("setpoint", "i64", Side.NONRT), *DEFAULT_KEYS.keys[1:]]
    )
    peer = Nonrt(tmp_path, keys=keys)
    try:
        proc = peer.start()
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == RtLayoutError.exit_code, err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert "key 'setpoint' is f64 here but i64 in the segment" in lines[0]
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
    code, out, err = nonrt.stop()
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert lines[1].startswith(f"mxrc rt: re-pinned the cycle thread (tid {tid}) to CPU {CPU}")
