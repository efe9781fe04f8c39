"""The operating-system side of a real-time thread: policy, pinning, locked memory, idle
states and absolute sleeps.

Every call here either succeeds or says, in a :class:`Degradation`, exactly which
privilege was missing and the line an operator adds to get it. The cycle keeps running
without a privilege (a controller on a developer laptop must still start), but it never
hides that it is running without one. Nothing here is called per cycle except
:meth:`AbsoluteSleeper.sleep_until`, which is written not to allocate.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import resource
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from mxrc.config import Config
from mxrc.rt.cpu import format_cpulist, parse_cpulist

CLOCK_MONOTONIC = 1
TIMER_ABSTIME = 1
MCL_CURRENT = 1
MCL_FUTURE = 2
PR_SET_TIMERSLACK = 29
PR_GET_TIMERSLACK = 30
CAP_SYS_NICE = 23
CAP_IPC_LOCK = 14
DMA_LATENCY_PATH = "/dev/cpu_dma_latency"

_NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class Degradation:
    """A real-time property the cycle runs without, and how to get it back."""

    what: str  # short key: "sched_fifo", "mlockall", "dma_latency", "affinity"
    detail: str  # what happened, with the numbers that explain it
    fix: str  # the exact change an operator makes

    def as_dict(self) -> dict[str, str]:
        return {"what": self.what, "detail": self.detail, "fix": self.fix}

    def __str__(self) -> str:
        return f"{self.what}: {self.detail}; fix: {self.fix}"


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


def _load_libc() -> ctypes.CDLL:
    # CDLL (not PyDLL) releases the GIL around each call: a sleeping cycle thread must
    # not stop the rest of the process, and the rest must not hold it while we sleep.
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


_libc = _load_libc()
_clock_nanosleep = _libc.clock_nanosleep
_clock_nanosleep.argtypes = (
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(_Timespec),
    ctypes.POINTER(_Timespec),
)
_clock_nanosleep.restype = ctypes.c_int
_mlockall = _libc.mlockall
_mlockall.argtypes = (ctypes.c_int,)
_mlockall.restype = ctypes.c_int
_munlockall = _libc.munlockall
_munlockall.argtypes = ()
_munlockall.restype = ctypes.c_int
_prctl = _libc.prctl
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_prctl.restype = ctypes.c_int


class AbsoluteSleeper:
    """Sleeps until an absolute CLOCK_MONOTONIC time with ``clock_nanosleep``.

    Absolute deadlines are why the cycle does not drift: a relative sleep adds each
    cycle's wake-up latency and execution time to the next deadline, so after N cycles
    the error is N × (latency + work). With ``TIMER_ABSTIME`` the error never exceeds
    one wake-up. The timespec and its pointer are allocated once so a sleep creates no
    objects the garbage collector tracks. A signal ends the sleep early with EINTR; the
    deadline is absolute, so retrying with the same timespec is exactly right.
    """

    def __init__(self) -> None:
        self._ts = _Timespec(0, 0)
        self._ptr = ctypes.pointer(self._ts)
        self.eintr_retries = 0

    def sleep_until(self, deadline_ns: int) -> None:
        ts = self._ts
        ts.tv_sec = deadline_ns // _NS_PER_S
        ts.tv_nsec = deadline_ns % _NS_PER_S
        while True:
            # clock_nanosleep returns the error number itself (it does not set errno).
            rc = _clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, self._ptr, None)
            if rc == 0:
                return
            if rc == errno.EINTR:
                self.eintr_retries += 1
                continue
            raise OSError(rc, f"clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME): {os.strerror(rc)}")


# --- capabilities and limits (used to explain a refusal precisely) ---------------------


def effective_capabilities(status_text: str | None = None) -> int:
    """The CapEff bit mask of this process (from /proc/self/status, or given text)."""
    text = status_text if status_text is not None else Path("/proc/self/status").read_text()
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def has_capability(cap: int, status_text: str | None = None) -> bool:
    return bool(effective_capabilities(status_text) >> cap & 1)


def _limit_text(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def sched_fifo_fix(priority: int) -> str:
    return (
        f"allow real-time priority {priority}: LimitRTPRIO=99 in the systemd unit "
        "(or `ulimit -r 99` in the shell that starts mxrc), or grant CAP_SYS_NICE "
        "(AmbientCapabilities=CAP_SYS_NICE)"
    )


def mlockall_fix() -> str:
    return (
        "LimitMEMLOCK=infinity in the systemd unit (or `ulimit -l unlimited`), "
        "or grant CAP_IPC_LOCK (AmbientCapabilities=CAP_IPC_LOCK)"
    )


# --- per-thread scheduling -------------------------------------------------------------


def native_thread_id() -> int:
    return threading.get_native_id()


def set_timer_slack(ns: int) -> None:
    """Shrink this thread's timer slack (50 µs by default for SCHED_OTHER threads).

    Only matters when SCHED_FIFO was refused: the kernel may then defer our wake-up by
    the slack to batch timers, which would be added to every cycle's latency.
    """
    if _prctl(PR_SET_TIMERSLACK, ns, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_TIMERSLACK): {os.strerror(err)}")


def timer_slack_ns() -> int:
    """The calling thread's timer slack."""
    return int(_prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0))


def set_fifo(tid: int, priority: int) -> Degradation | None:
    """Make thread ``tid`` SCHED_FIFO at ``priority``; explain a refusal."""
    try:
        os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError as exc:
        soft, _hard = resource.getrlimit(resource.RLIMIT_RTPRIO)
        cap = "has" if has_capability(CAP_SYS_NICE) else "lacks"
        detail = (
            f"SCHED_FIFO priority {priority} refused ({exc.strerror}); the process {cap} "
            f"CAP_SYS_NICE and RLIMIT_RTPRIO is {_limit_text(soft)}; running SCHED_OTHER, "
            "so any busy process on the CPU delays every cycle"
        )
        fix = sched_fifo_fix(priority)
        if cap == "has":
            detail += "; a cgroup without real-time runtime refuses even root"
            fix += (
                "; with cgroup v1 and CONFIG_RT_GROUP_SCHED give the service's cgroup "
                "cpu.rt_runtime_us > 0 (or run it in the root cpu cgroup)"
            )
        return Degradation("sched_fifo", detail, fix)
    return None


#: The real-time priority of the RT process's other threads (main, log writer): below
#: the cycle, above every SCHED_OTHER task.
HELPER_PRIORITY: Final = 1


def place_helpers(cycle_tid: int, priority: int = HELPER_PRIORITY) -> str:
    """Put every thread of this process but the cycle at SCHED_FIFO ``priority``; what
    was done, in words.

    A helper thread can delay the cycle in two ways, through the CPU or the GIL. Under
    systemd (``CPUSchedulingPolicy=fifo``) every thread inherits the cycle's priority,
    and a SCHED_FIFO thread is never preempted by one of equal priority: a log writer
    draining its queue on the RT CPU would hold the cycle's wake-up until it blocks.
    Left SCHED_OTHER, a helper that holds the GIL when the cycle wakes can be preempted
    by any busy process on its CPU, and the cycle waits for the GIL for a whole
    time slice. At priority 1 a helper yields the CPU to the cycle at once and gets it
    back before ordinary work, so it hands the GIL over within the switch interval.
    Threads the main thread starts later inherit its new policy. Call only when the
    cycle itself runs SCHED_FIFO above ``priority``.
    """
    placed, refused = [], []
    for entry in os.listdir(f"/proc/{os.getpid()}/task"):
        tid = int(entry)
        if tid == cycle_tid:
            continue
        try:
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
        except ProcessLookupError:
            continue  # ended meanwhile
        except PermissionError:
            refused.append(tid)
            continue
        placed.append(tid)
    text = f"{len(placed)} helper thread(s) SCHED_FIFO {priority}"
    if refused:
        text += f"; refused for tid(s) {', '.join(map(str, refused))}"
    return text


def thread_policy(tid: int) -> tuple[str, int]:
    """(policy name, real-time priority) of a thread, as the kernel sees it now."""
    names = {
        os.SCHED_OTHER: "SCHED_OTHER",
        os.SCHED_FIFO: "SCHED_FIFO",
        os.SCHED_RR: "SCHED_RR",
        os.SCHED_BATCH: "SCHED_BATCH",
        os.SCHED_IDLE: "SCHED_IDLE",
    }
    policy = os.sched_getscheduler(tid)
    return names.get(policy, str(policy)), os.sched_getparam(tid).sched_priority


def allowed_cpus() -> frozenset[int]:
    return frozenset(os.sched_getaffinity(0))


def default_cpu() -> int:
    """The highest-numbered CPU we may use: CPU 0 takes most housekeeping interrupts."""
    return max(allowed_cpus())


def online_cpus() -> frozenset[int]:
    """The machine's online CPUs (empty when the kernel does not say)."""
    try:
        return parse_cpulist(Path("/sys/devices/system/cpu/online").read_text())
    except (OSError, ValueError):
        return frozenset()


def resolve_rt_cpu(configured: int, online: frozenset[int], allowed: frozenset[int]) -> int:
    """``rt.cpu`` as every part of mxrc reads it: the CPU given, or for -1 the machine's
    highest-numbered online CPU (CPU 0 takes most housekeeping interrupts).

    The same answer in every process whatever its own affinity: a unit confines nonrt
    away from the RT CPU and rt onto it, so "the last CPU I may use" would name a
    different CPU in each, and nonrt could end up on the CPU the cycle runs on. A CPU
    that mxrc rt may not use is refused when it pins the cycle (:func:`pin_thread`),
    naming the CPUs it may use. ``allowed`` is the fallback when ``online`` is unknown.
    Pure.
    """
    if configured >= 0:
        return configured
    return max(online or allowed)


def rt_cpu_of(config: Config) -> int:
    """The RT CPU of this configuration on this machine (:func:`resolve_rt_cpu`)."""
    return resolve_rt_cpu(int(config["rt.cpu"]), online_cpus(), allowed_cpus())


def housekeeping_cpus(
    allowed: frozenset[int], rt_cpu: int, configured: frozenset[int] = frozenset()
) -> tuple[frozenset[int], str]:
    """Where the non-RT process runs, and why: the configured list (within what we may
    use), else every allowed CPU but the RT one, so that its API, fsyncs and garbage
    collections never queue behind, or wake up beside, the cycle. A one-CPU machine
    shares and says so."""
    if configured:
        usable = configured & allowed
        if not usable:
            return allowed, (
                f"nonrt.cpus names no CPU this process may use (allowed "
                f"{format_cpulist(allowed)}); running on all of them"
            )
        shared = " (shared with the RT CPU)" if rt_cpu in usable else ""
        return usable, f"CPU(s) {format_cpulist(usable)} from nonrt.cpus{shared}"
    rest = allowed - {rt_cpu}
    if not rest:
        return allowed, f"CPU(s) {format_cpulist(allowed)}, shared with the RT cycle (no other CPU)"
    return rest, f"CPU(s) {format_cpulist(rest)}, every allowed CPU but the RT CPU {rt_cpu}"


def pin_thread(tid: int, cpu: int) -> None:
    """Pin one thread (not the process) to ``cpu``; a CPU the kernel refuses is a config
    error. The kernel decides, not this process's affinity: a CPU isolated with
    ``isolcpus=`` is outside every default affinity, and it is the one to choose."""
    try:
        os.sched_setaffinity(tid, {cpu})
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EPERM):
            raise
        online = format_cpulist(online_cpus()) or "unknown"
        raise ValueError(
            f"CPU {cpu} is not one this process may run on ({exc.strerror}; online CPUs: "
            f"{online}; this process's affinity: {format_cpulist(allowed_cpus())}); choose "
            "an online CPU inside the service's cpuset (AllowedCPUs= in the systemd unit)"
        ) from None


# --- memory ----------------------------------------------------------------------------


def lock_memory() -> Degradation | None:
    """mlockall(MCL_CURRENT | MCL_FUTURE): no page fault may reach the disk or the
    allocator's slow path mid-cycle. Process-wide; undone by :func:`unlock_memory`."""
    if _mlockall(MCL_CURRENT | MCL_FUTURE) == 0:
        return None
    err = ctypes.get_errno()
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    cap = "has" if has_capability(CAP_IPC_LOCK) else "lacks"
    detail = (
        f"mlockall(MCL_CURRENT|MCL_FUTURE) failed: {errno.errorcode.get(err, err)} "
        f"({os.strerror(err)}); the process {cap} CAP_IPC_LOCK and RLIMIT_MEMLOCK is "
        f"{_limit_text(soft)} bytes; memory stays pageable, so a page fault can stall a cycle"
    )
    return Degradation("mlockall", detail, mlockall_fix())


def unlock_memory() -> None:
    _munlockall()


def thread_faults(tid: int) -> tuple[int, int]:
    """(minor, major) page faults of one thread of this process so far.

    With memory locked a running cycle should take none: each fault is a stall of
    microseconds (minor) to milliseconds (major) inside a cycle.
    """
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # the name in parentheses may contain spaces
    return int(fields[7]), int(fields[9])


def locked_kib(status_text: str | None = None) -> int:
    """VmLck of this process in KiB: proof that memory is actually locked."""
    text = status_text if status_text is not None else Path("/proc/self/status").read_text()
    for line in text.splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1])
    return 0


# --- CPU idle states -------------------------------------------------------------------


class DmaLatencyHold:
    """Holds /dev/cpu_dma_latency open with 0 written: no deep C-states while we run.

    Waking a core from a deep idle state costs tens to hundreds of microseconds, paid on
    every cycle because the cycle thread sleeps between deadlines. The PM QoS request
    lasts exactly as long as the file stays open, so this object owns the descriptor.
    """

    def __init__(self, path: str = DMA_LATENCY_PATH) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> Degradation | None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return Degradation(
                "dma_latency",
                f"{self.path} does not exist (kernel without CPU idle PM QoS); idle-state "
                "exit latency is added to wake-ups",
                "boot with `processor.max_cstate=1 intel_idle.max_cstate=0` (or `idle=poll`) "
                "on the kernel command line",
            )
        except PermissionError as exc:
            return Degradation(
                "dma_latency",
                f"cannot open {self.path} ({exc.strerror}); the CPU may enter deep idle "
                "states between cycles, adding their exit latency to every wake-up",
                "run mxrc-rt as root, or install a udev rule "
                '`KERNEL=="cpu_dma_latency", GROUP="mxrc", MODE="0660"` and add the '
                "service user to group mxrc",
            )
        try:
            os.write(fd, struct.pack("i", 0))
        except OSError as exc:
            os.close(fd)
            return Degradation(
                "dma_latency",
                f"writing 0 to {self.path} failed ({exc.strerror})",
                "boot with `processor.max_cstate=1 intel_idle.max_cstate=0` instead",
            )
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def current_dma_latency_us(path: str = DMA_LATENCY_PATH) -> int:
    """The system-wide PM QoS CPU latency target in µs (2000000000 means no request)."""
    with open(path, "rb") as f:
        data = f.read(4)
    value: int = struct.unpack("i", data)[0]
    return value
