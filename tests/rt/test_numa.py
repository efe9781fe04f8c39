"""NUMA placement: the plan on made-up topologies, then the real system calls, then real
``mxrc rt`` and ``mxrc nonrt`` processes read back through ``/proc/<pid>/numa_maps``.

``numa_maps`` prints, for every mapping, the mapping's own policy or else the policy of
the thread whose ``/proc`` directory it is (``/proc/<pid>/task/<tid>/numa_maps`` for one
thread), so a thread's policy and a segment's shared policy can both be read from
outside the process. On a kernel without NUMA support there is no ``numa_maps``: those
tests then assert the degraded message the processes print instead.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import IO, TypeVar

import pytest

from mxrc.config import build_config
from mxrc.rt import cpu
from mxrc.rt.cpu import MPOL_BIND, MPOL_DEFAULT, MPOL_LOCAL, MPOL_PREFERRED, format_cpulist
from mxrc.rt.numa import (
    Outcome,
    Policy,
    Step,
    apply,
    host_plan,
    place_segments,
    plan,
    plan_findings,
)
from mxrc.rt.process import RecordType
from mxrc.rt.ring import Ring, RingLayout
from tests.rt.test_process import Nonrt

T = TypeVar("T")

HAS_NUMA_MAPS = Path("/proc/self/numa_maps").exists()
NODES = cpu.read_nodes()
CPU = max(os.sched_getaffinity(0))  # rt.cpu = -1
NODE = cpu.node_of_cpu(NODES, CPU)
ONE_NODE = len(NODES) == 1
BOUND = f"bind:{NODE}"

TWO = {0: frozenset(range(0, 4)), 1: frozenset(range(4, 8))}
FOUR = {n: frozenset(range(4 * n, 4 * n + 4)) for n in range(4)}


# --- the plan, on made-up topologies ---------------------------------------------------


def test_one_node_binds_nothing_and_says_so() -> None:
    p = plan({0: frozenset(range(4))}, rt_cpu=3, nonrt_cpus={0, 1, 2})
    assert (p.rt.policy, p.nonrt.policy, p.shm.policy) == (None, None, None)
    assert p.rt_node == 0
    assert p.rt.sentence.startswith("one NUMA node: nothing to bind")
    assert "CPU 3" in p.rt.sentence
    assert p.nonrt.sentence == "one NUMA node: nothing for nonrt to prefer"
    assert p.shm.sentence == "one NUMA node: the segments are local to every CPU"


def test_one_node_with_always_binds_rt_and_segments_anyway() -> None:
    p = plan({0: frozenset(range(4))}, rt_cpu=3, nonrt_cpus={0, 1, 2}, mode="always")
    assert p.rt.policy == p.shm.policy == Policy(MPOL_BIND, frozenset({0}))
    assert p.nonrt.policy is None  # no other node to prefer
    assert 'rt.numa = "always"' in p.rt.sentence and "no page moves" in p.rt.sentence


def test_two_nodes_rt_on_node_1_nonrt_prefers_node_0() -> None:
    p = plan(TWO, rt_cpu=5, nonrt_cpus={0, 1, 2, 3})
    assert p.rt_node == 1
    assert p.rt.policy == Policy(MPOL_BIND, frozenset({1}))
    assert p.shm.policy == Policy(MPOL_BIND, frozenset({1}))
    assert p.nonrt.policy == Policy(MPOL_PREFERRED, frozenset({0}))
    assert p.rt.sentence == "mxrc rt: memory bound to node 1, the node of CPU 5"
    assert p.nonrt.sentence.startswith("mxrc nonrt: prefers node 0 (its CPUs 0-3 are there)")
    assert "placed on node 1" in p.shm.sentence
    assert [s.policy.label for s in (p.rt, p.nonrt, p.shm) if s.policy] == [
        "bind:1",
        "prefer:0",
        "bind:1",
    ]


def test_nonrt_all_on_the_rt_node_keeps_its_policy() -> None:
    p = plan(TWO, rt_cpu=7, nonrt_cpus={4, 5, 6})
    assert p.rt.policy == Policy(MPOL_BIND, frozenset({1}))
    assert p.nonrt.policy is None
    assert "(4-6) are all on the RT node 1" in p.nonrt.sentence


def test_nonrt_spanning_nodes_prefers_the_other_node_with_most_of_its_cpus() -> None:
    # RT CPU 5 on node 1; nonrt has one CPU on node 0, two on the RT node, three on node 2.
    p = plan(FOUR, rt_cpu=5, nonrt_cpus={0, 4, 6, 8, 9, 10})
    assert p.rt.policy == Policy(MPOL_BIND, frozenset({1}))
    assert p.nonrt.policy == Policy(MPOL_PREFERRED, frozenset({2}))
    assert "its CPUs 8-10 are there" in p.nonrt.sentence
    # A tie goes to the lower node, whatever the order of the map.
    tied = plan(dict(reversed(FOUR.items())), rt_cpu=5, nonrt_cpus={0, 1, 12, 13})
    assert tied.nonrt.policy == Policy(MPOL_PREFERRED, frozenset({0}))


def test_off_and_an_rt_cpu_on_no_node_set_nothing() -> None:
    off = plan(TWO, rt_cpu=5, nonrt_cpus={0}, mode="off")
    assert (off.rt.policy, off.nonrt.policy, off.shm.policy) == (None, None, None)
    assert 'rt.numa = "off"' in off.rt.sentence
    lost = plan(TWO, rt_cpu=9, nonrt_cpus={0})
    assert lost.rt_node is None and lost.rt.policy is None and lost.shm.policy is None
    assert lost.rt.sentence == "CPU 9 is on none of the NUMA nodes (0-1): nothing bound"
    with pytest.raises(ValueError, match=r"rt\.numa must be one of auto, always, off"):
        plan(TWO, rt_cpu=5, nonrt_cpus={0}, mode="yes")


def test_labels_are_what_numa_maps_prints() -> None:
    assert Policy(MPOL_BIND, frozenset({0, 1, 3})).label == "bind:0-1,3"
    assert Policy(MPOL_PREFERRED, frozenset({2})).label == "prefer:2"
    assert Policy(MPOL_DEFAULT, frozenset()).label == "default"
    assert Policy(MPOL_LOCAL, frozenset()).label == "local"


def test_host_plan_takes_cpus_and_mode_from_the_config() -> None:
    config = build_config({"rt": {"cpu": 5, "numa": "auto"}, "nonrt": {"cpus": "0-1,6"}})
    p = host_plan(config, nonrt_cpus=frozenset({0, 1, 6}), nodes=TWO)
    assert p.rt_cpu == 5 and p.rt.policy == Policy(MPOL_BIND, frozenset({1}))
    assert p.nonrt.policy == Policy(MPOL_PREFERRED, frozenset({0}))
    off = host_plan(build_config({"rt": {"cpu": 5, "numa": "off"}}), nodes=TWO)
    assert off.rt.policy is None


# --- the system calls, for real ---------------------------------------------------------


def task_policies(tid: int, skip: str = "/dev/shm/") -> set[str]:
    """The policy column of one thread of this process, mappings under ``skip`` (which
    may have a policy of their own) left out."""
    text = Path(f"/proc/self/task/{tid}/numa_maps").read_text()
    return {line.split()[1] for line in text.splitlines() if skip not in line}


def in_thread(work: Callable[[], T]) -> T:
    """Run ``work`` on a new thread (a memory policy is per thread: keep it off the test
    runner's) and return what it returned, or raise what it raised."""
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(work())
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return result[0]


def test_a_thread_inherits_its_creators_policy_when_it_is_created_only() -> None:
    """Why mxrc rt binds in its main thread before it creates the cycle thread: a thread
    gets a copy of its creator's policy at creation; one created earlier keeps its own."""
    step = plan(NODES, CPU, set(), mode="always").rt
    release = threading.Event()

    def started() -> threading.Thread:
        t = threading.Thread(target=release.wait)
        t.start()
        return t

    def bind_between_two_threads() -> tuple[Outcome, list[set[str]], tuple[int, frozenset[int]]]:
        early = started()
        outcome = apply(step)
        late = started()
        try:
            seen = [
                task_policies(t.native_id or 0) if HAS_NUMA_MAPS else set()
                for t in (early, late)
            ] + [task_policies(threading.get_native_id()) if HAS_NUMA_MAPS else set()]
            try:
                own = cpu.memory_policy()
            except OSError:
                own = (-1, frozenset())
        finally:
            release.set()
            early.join()
            late.join()
        return outcome, seen, own

    outcome, (early, late, binder), own = in_thread(bind_between_two_threads)
    if not HAS_NUMA_MAPS:
        assert outcome.degradation is not None
        assert "no NUMA support" in outcome.degradation.detail
        return
    assert outcome.degradation is None, outcome.text
    assert re.fullmatch(rf"memory {BOUND} \(set_mempolicy via (libnuma|syscall)\)", outcome.summary)
    assert own == (MPOL_BIND, frozenset({NODE}))
    assert binder == {BOUND}
    assert late == {BOUND}  # created after the call: inherited
    assert early == {"default"}  # created before it: untouched


def test_a_node_this_machine_lacks_is_refused_with_one_message() -> None:
    missing = max(NODES) + 1
    nodes = {**NODES, missing: frozenset({CPU})}
    nodes[NODE or 0] = nodes[NODE or 0] - {CPU}
    step = plan(nodes, CPU, set(), mode="always").rt
    assert step.policy == Policy(MPOL_BIND, frozenset({missing}))

    def attempt() -> tuple[Outcome, tuple[int, frozenset[int]] | None]:
        outcome = apply(step)
        try:
            after = cpu.memory_policy()
        except OSError:
            after = None  # no get_mempolicy either: a kernel without NUMA
        return outcome, after

    outcome, after = in_thread(attempt)
    d = outcome.degradation
    assert d is not None and d.what == "numa"
    assert outcome.summary == "memory not placed"
    if HAS_NUMA_MAPS:
        mems = format_cpulist(NODES)
        assert d.detail == (
            f"memory not placed: node {missing} is not one this process may use "
            f"(set_mempolicy: EINVAL; Mems_allowed_list {mems})"
        )
        assert "AllowedMemoryNodes=" in d.fix
        assert after == (MPOL_DEFAULT, frozenset())  # nothing half-set
    else:
        assert "no NUMA support" in d.detail
    assert outcome.text == f"memory not placed: {d.detail} (fix: {d.fix})"


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A directory on the tmpfs production uses: the shared policy is a tmpfs feature."""
    path = Path(tempfile.mkdtemp(prefix="mxrc-numa-test-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def segment_lines(numa_maps: str, directory: Path) -> dict[str, str]:
    """file name → its numa_maps line, for the mappings of files in ``directory``."""
    out = {}
    for line in numa_maps.splitlines():
        m = re.search(rf"file={re.escape(str(directory))}/(\S+)", line)
        if m:
            out[m.group(1)] = line
    return out


def pages_on(line: str, node: int | None) -> int:
    m = re.search(rf"\bN{node}=(\d+)", line)
    return int(m.group(1)) if m else 0


LAYOUT = RingLayout(capacity=512, payload_size=64)


@pytest.mark.parametrize("via", ["libnuma", "syscall"])
def test_segments_are_placed_for_every_process_and_the_thread_policy_restored(
    shm_dir: Path, via: str
) -> None:
    if via == "libnuma" and ctypes.util.find_library("numa") is None:
        pytest.skip("libnuma is not installed (apt-get install libnuma1); the syscall runs")
    step = plan(NODES, CPU, set(), mode="always").shm
    own = Step(Policy(MPOL_PREFERRED, frozenset({NODE or 0})), "nonrt's own")

    def create_and_look() -> tuple[Outcome, Outcome, tuple[int, frozenset[int]], int, str, str]:
        mine = apply(own)  # stands for nonrt's preferred policy, to be restored
        ring, placed = place_segments(
            step,
            lambda: Ring.create("placed-ring", LAYOUT, directory=shm_dir),
            lambda r: [r.segment.buf],
            via=via,
        )
        try:
            after = cpu.memory_policy()
            size = len(ring.segment.buf)
            here = Path(f"/proc/self/task/{threading.get_native_id()}/numa_maps").read_text()
            peer = subprocess.run(  # another process maps the file, sets no policy
                [
                    sys.executable,
                    "-c",
                    "import mmap, os, sys, pathlib\n"
                    "fd = os.open(sys.argv[1], os.O_RDWR)\n"
                    "m = mmap.mmap(fd, os.fstat(fd).st_size)\n"
                    "print(pathlib.Path('/proc/self/numa_maps').read_text())\n",
                    str(shm_dir / "placed-ring"),
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
        finally:
            ring.close()
        return mine, placed, after, size, here, peer

    if not HAS_NUMA_MAPS:
        placed = in_thread(lambda: place_segments(step, lambda: 0, lambda _x: [])[1])
        assert placed.degradation is not None
        assert "no NUMA support" in placed.degradation.detail
        return
    mine, placed, after, size, here, peer = in_thread(create_and_look)
    assert mine.degradation is None and placed.degradation is None, placed.text
    pages = -(-size // os.sysconf("SC_PAGESIZE"))
    assert re.fullmatch(
        rf"segments {BOUND}: 1 mappings, {pages} pages \(mbind via {via}\)", placed.summary
    )
    assert after == (MPOL_PREFERRED, frozenset({NODE}))  # the creator's own, restored
    line = segment_lines(here, shm_dir)["placed-ring"]
    assert line.split()[1] == BOUND
    assert pages_on(line, NODE) == pages  # every page allocated, all on the RT node
    # The policy lives with the tmpfs file: a process that set none sees it too.
    assert segment_lines(peer, shm_dir)["placed-ring"].split()[1] == BOUND


def test_a_failing_create_still_restores_the_thread_policy(shm_dir: Path) -> None:
    step = plan(NODES, CPU, set(), mode="always").shm

    def fail() -> Ring:
        raise RuntimeError("creation failed")

    def attempt() -> tuple[str, tuple[int, frozenset[int]] | None]:
        try:
            place_segments(step, fail, lambda r: [r.segment.buf])
        except RuntimeError as exc:
            try:
                return str(exc), cpu.memory_policy()
            except OSError:
                return str(exc), None
        return "no exception", None

    message, after = in_thread(attempt)
    assert message == "creation failed"
    if HAS_NUMA_MAPS:
        assert after == (MPOL_DEFAULT, frozenset())


# --- real processes ---------------------------------------------------------------------


def process_policies(pid: int, tid: int | None = None, skip: str = "file=/") -> set[str]:
    """The policy column of a process (or one of its threads), file mappings left out."""
    where = f"/proc/{pid}" + (f"/task/{tid}" if tid is not None else "")
    text = Path(f"{where}/numa_maps").read_text()
    return {line.split()[1] for line in text.splitlines() if skip not in line}


def cycle_threads(pid: int) -> list[int]:
    return [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir() if int(t.name) != pid]


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Nonrt]:
    p = Nonrt(tmp_path)
    try:
        yield p
    finally:
        p.close()


def message(line: str) -> str:
    """A process's line as it said it: plain text, or the message of a JSON log record
    (the processes log their start lines; where they go depends on the logging set-up)."""
    if line.startswith("{"):
        with suppress(ValueError):
            record = json.loads(line)
            text = record.get("message") if isinstance(record, dict) else None
            if isinstance(text, str):
                return text
    return line


def said(*outputs: str) -> str:
    return "\n".join(message(line) for text in outputs for line in text.splitlines())


def with_rt_numa(peer: Nonrt, mode: str) -> None:
    text = peer.config.read_text()
    assert "[rt]\n" in text
    peer.config.write_text(text.replace("[rt]\n", f'[rt]\nnuma = "{mode}"\n', 1))


def test_mxrc_rt_binds_itself_and_its_cycle_thread_inherits_it(peer: Nonrt) -> None:
    with_rt_numa(peer, "always")
    proc = peer.start()
    peer.wait_status(3)
    policies = process_policies(proc.pid) if HAS_NUMA_MAPS else set()
    threads = {tid: process_policies(proc.pid, tid) for tid in cycle_threads(proc.pid)}
    code, out, err = peer.stop()
    assert code == 0, err
    out = said(out, err)
    assert peer.of_type(RecordType.STARTED), "the cycle never started"
    if not HAS_NUMA_MAPS:
        assert "numa: memory not placed" in out and "no NUMA support" in out, out
        return
    assert re.search(rf"; numa: memory {BOUND} \(set_mempolicy via (libnuma|syscall)\); ", out)
    assert "numa:" not in out.split("degraded: ", 1)[1], out  # not among the degradations
    assert policies == {BOUND}, policies  # the main thread, where it was set
    assert threads and all(p == {BOUND} for p in threads.values()), threads  # inherited


def test_mxrc_rt_on_auto_says_what_it_did(peer: Nonrt) -> None:
    proc = peer.start()
    peer.wait_status(3)
    policies = process_policies(proc.pid) if HAS_NUMA_MAPS else set()
    code, out, err = peer.stop()
    assert code == 0, err
    out = said(out, err)
    if ONE_NODE:
        assert f"; numa: one NUMA node: nothing to bind (node {NODE} holds all memory" in out
        if HAS_NUMA_MAPS:
            assert policies == {"default"}, policies
    else:
        assert f"; numa: memory {BOUND} " in out, out
        assert policies == {BOUND}, policies


class Output:
    """A child's stdout and stderr read on threads (a pipe never fills, a test waits for
    a line with a timeout instead of blocking on the pipe)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.raw: list[str] = []
        assert proc.stdout is not None and proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._read, args=(stream,), daemon=True)
            for stream in (proc.stdout, proc.stderr)
        ]
        for t in self._threads:
            t.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.raw.append(line.rstrip("\n"))
            self.lines.append(message(self.raw[-1]))

    def wait_for(self, text: str, proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.lines):
                if text in line:
                    return line
            if proc.poll() is not None and not any(t.is_alive() for t in self._threads):
                raise AssertionError(f"exited ({proc.returncode}) before {text!r}: {self.lines}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} after {timeout} s: {self.lines}")
            time.sleep(0.02)


def test_nonrt_places_the_segments_on_the_rt_node_for_both_processes(
    tmp_path: Path, shm_dir: Path
) -> None:
    """The real pair: mxrc nonrt creates the segments, mxrc rt attaches; numa_maps of
    both shows where the pages are and under which policy."""
    config = tmp_path / "mxrc.toml"
    config.write_text(
        f"""[node]
id = "numa{os.getpid()}"
[rt]
numa = "always"
shm_dir = "{shm_dir}"
shm_prefix = "mxrc-numa"
hold_dma_latency = false
[api]
port = 0
"""
    )
    mxrc = [sys.executable, "-m", "mxrc"]
    started: list[subprocess.Popen[str]] = []

    def spawn(*args: str) -> tuple[subprocess.Popen[str], Output]:
        p = subprocess.Popen(
            [*mxrc, *args, "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(p)
        return p, Output(p)

    try:
        nonrt, nonrt_out = spawn("nonrt", "--data-dir", str(tmp_path / "var"))
        running = nonrt_out.wait_for(": running on", nonrt)
        shared = nonrt_out.wait_for("mxrc nonrt: shared memory:", nonrt)
        nonrt_out.wait_for("admin API", nonrt)
        rt, rt_out = spawn("rt")
        start = rt_out.wait_for("mxrc rt: node", rt)
        nonrt_maps = Path(f"/proc/{nonrt.pid}/numa_maps").read_text() if HAS_NUMA_MAPS else ""
        rt_maps = Path(f"/proc/{rt.pid}/numa_maps").read_text() if HAS_NUMA_MAPS else ""
        nonrt_own = process_policies(nonrt.pid) if HAS_NUMA_MAPS else set()
        sizes = {f.name: f.stat().st_size for f in shm_dir.iterdir()}
        for p, output in ((rt, rt_out), (nonrt, nonrt_out)):
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=30) == 0, output.lines
    finally:
        for p in started:
            if p.poll() is None:
                with suppress(ProcessLookupError):
                    p.kill()
                p.wait(timeout=10)
    if not HAS_NUMA_MAPS:
        assert "no NUMA support" in shared and "no NUMA support" in start
        return
    assert "numa: one NUMA node: nothing for nonrt to prefer" in running or not ONE_NODE
    page = os.sysconf("SC_PAGESIZE")
    total = sum(-(-size // page) for size in sizes.values())
    assert re.fullmatch(
        rf"mxrc nonrt: shared memory: segments {BOUND}: 3 mappings, {total} pages "
        r"\(mbind via (libnuma|syscall)\)",
        shared,
    ), shared
    assert f"numa: memory {BOUND} " in start, start
    # Placed as asked is news, not a warning (the controller warns when the kernel refuses).
    placement = [line for line in nonrt_out.raw if "mxrc nonrt: shared memory:" in line]
    assert [json.loads(line)["log.level"] for line in placement] == ["info"], placement
    for maps in (nonrt_maps, rt_maps):
        lines = segment_lines(maps, shm_dir)
        assert sorted(lines) == sorted(sizes), (lines, sizes)
        for name, line in lines.items():
            assert line.split()[1] == BOUND, line
            assert pages_on(line, NODE) == -(-sizes[name] // page), line  # all there
    # nonrt's own memory keeps its own policy; the plan gives it none on one node.
    expected = plan(NODES, CPU, os.sched_getaffinity(0) - {CPU}, mode="always").nonrt.policy
    assert nonrt_own == {expected.label if expected else "default"}, nonrt_own


def test_check_reports_the_plan_and_tries_the_bind() -> None:
    listed = plan_findings(plan(TWO, rt_cpu=5, nonrt_cpus={0, 1}), probe=False)
    assert [(f.check, f.level) for f in listed] == [
        ("numa_rt", "ok"),
        ("numa_nonrt", "ok"),
        ("numa_shm", "ok"),
    ]
    assert listed[0].detail == "mxrc rt: memory bound to node 1, the node of CPU 5"
    tried = plan_findings(plan(NODES, CPU, set(), mode="always"))[-1]
    assert tried.check == "numa_bind"
    if HAS_NUMA_MAPS:
        assert (tried.level, tried.detail) == ("ok", f"set_mempolicy {BOUND} is allowed")
    else:
        assert tried.level == "warn" and "no NUMA support" in tried.detail
    missing = max(NODES) + 1
    refused = plan_findings(plan({missing: frozenset({CPU})}, CPU, set(), mode="always"))[-1]
    assert refused.level == "warn" and refused.fix, refused
    assert refused.detail.startswith("mxrc rt's memory not placed: ")
    # nothing to bind: nothing tried
    assert [f.check for f in plan_findings(plan({0: frozenset({CPU})}, CPU, set()))] == [
        "numa_rt",
        "numa_nonrt",
        "numa_shm",
    ]


def test_mxrc_check_prints_the_configured_plan(tmp_path: Path) -> None:
    config = tmp_path / "mxrc.toml"
    config.write_text(f'[rt]\ncpu = {CPU}\nnuma = "always"\n')
    run = subprocess.run(
        [sys.executable, "-m", "mxrc", "check", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode in (0, 1), run.stderr
    found = {f["check"]: f for f in json.loads(run.stdout)}
    assert found["numa_rt"]["detail"].startswith(
        f"mxrc rt: memory bound to node {NODE}, the node of CPU {CPU}"
    )
    assert "numa_nonrt" in found and "numa_shm" in found
    assert found["numa_bind"]["level"] == ("ok" if HAS_NUMA_MAPS else "warn")
