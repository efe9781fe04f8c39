"""Keeping the cycle thread on its CPU across CPU hotplug.

When the CPU a thread is pinned to goes offline, the kernel moves the thread and widens
its affinity to the CPUs it may still use; when the CPU comes back, nothing narrows it
again, so the cycle would go on running, unpinned, wherever the scheduler puts it. The
RT process's main thread (which only waits for signals) polls once a second: is the
cycle's CPU online, and is the cycle thread still pinned to it alone? If the CPU is
online and the thread is not on it, it is pinned again and one line says so.

:func:`decide` is the whole policy, without I/O; :class:`PinWatch` feeds it what the
system says and carries out the answer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Set
from enum import Enum
from pathlib import Path
from typing import Final

from mxrc.rt import sched

CPU_SYSFS: Final = Path("/sys/devices/system/cpu")
POLL_INTERVAL_S: Final = 1.0


class Action(Enum):
    NONE = "none"
    WENT_OFFLINE = "went offline"  # report once; nothing can be pinned to it meanwhile
    REPIN = "repin"  # the CPU is online and the thread is not pinned to it alone


def decide(cpu: int, online: bool, affinity: Set[int], was_online: bool) -> Action:
    """What to do about the cycle thread, pinned to ``cpu``, whose affinity is now
    ``affinity``; ``was_online`` is what the previous poll saw."""
    if not online:
        return Action.WENT_OFFLINE if was_online else Action.NONE
    if set(affinity) != {cpu}:
        return Action.REPIN
    return Action.NONE


def cpu_online(cpu: int, root: Path = CPU_SYSFS) -> bool:
    """Whether ``cpu`` is online. A CPU without an ``online`` file (often CPU 0) cannot be
    taken offline; it is online if it exists."""
    try:
        return (root / f"cpu{cpu}" / "online").read_text().strip() == "1"
    except FileNotFoundError:
        return (root / f"cpu{cpu}").exists() or not root.exists()
    except OSError:
        return True  # unreadable: assume online, the affinity check still applies


class PinWatch:
    """Polled by the main thread; re-pins thread ``tid`` to ``cpu`` when it has lost it."""

    def __init__(
        self,
        tid: int,
        cpu: int,
        print_line: Callable[[str], None],
        *,
        online: Callable[[int], bool] = cpu_online,
        affinity: Callable[[int], Set[int]] = os.sched_getaffinity,
        pin: Callable[[int, int], None] = sched.pin_thread,
    ) -> None:
        self.tid = tid
        self.cpu = cpu
        self.print_line = print_line
        self._online = online
        self._affinity = affinity
        self._pin = pin
        self.was_online = True
        self.offline_seen = False  # went offline since the last successful pin
        self.repins = 0
        self._last_error = ""

    def poll(self) -> Action:
        online = self._online(self.cpu)
        try:
            affinity = self._affinity(self.tid)
        except OSError:
            return Action.NONE  # the thread has ended; the main loop notices that itself
        action = decide(self.cpu, online, affinity, self.was_online)
        self.was_online = online
        if action is Action.WENT_OFFLINE:
            self.offline_seen = True
            self.print_line(
                f"mxrc rt: CPU {self.cpu} went offline; the cycle thread runs unpinned on "
                f"CPU(s) {_cpus(affinity)} until it is back"
            )
        elif action is Action.REPIN:
            self._repin(affinity)
        return action

    def _repin(self, affinity: Set[int]) -> None:
        try:
            self._pin(self.tid, self.cpu)
        except (OSError, ValueError) as exc:
            message = f"mxrc rt: could not pin the cycle thread to CPU {self.cpu} again: {exc}"
            if message != self._last_error:  # once per distinct problem, not every second
                self.print_line(message)
                self._last_error = message
            return
        why = "CPU came back online" if self.offline_seen else "its affinity had changed"
        self.print_line(
            f"mxrc rt: re-pinned the cycle thread (tid {self.tid}) to CPU {self.cpu}: {why} "
            f"(it was on CPU(s) {_cpus(affinity)})"
        )
        self.offline_seen = False
        self._last_error = ""
        self.repins += 1


def _cpus(cpus: Set[int]) -> str:
    return ",".join(map(str, sorted(cpus))) or "none"
