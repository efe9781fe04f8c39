"""Helpers for the shared-memory tests: real processes, bounded waits, certain cleanup.

Children are forked and always leave through ``os._exit`` (never back into pytest);
every child is killed and reaped by PID when its test ends, pass or fail, and every
segment a test names is unlinked, so a failing test leaves nothing in ``/dev/shm``.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from mxrc.rt.shm import DEFAULT_DIRECTORY, unlink_segment

CHILD_FAILED = 70  # exit status of a child whose target raised
CHILD_TIMED_OUT = 71  # a child loop that ran out of its own time bound


def unique_name(tag: str) -> str:
    """A segment name no other test (or test run) uses."""
    return f"mxrc-test-{os.getpid()}-{secrets.token_hex(4)}-{tag}"


def seeded_rng(test: str) -> tuple[random.Random, int]:
    """An RNG whose seed is printed (and may be set with ``MXRC_SHM_SEED``) so a failing
    random trial can be replayed."""
    seed = int(os.environ.get("MXRC_SHM_SEED", secrets.randbits(32)))
    print(f"{test}: seed {seed} (set MXRC_SHM_SEED={seed} to replay)")
    return random.Random(seed), seed


class Children:
    """Forked children of one test, reaped by PID."""

    def __init__(self) -> None:
        self.pids: list[int] = []

    def fork(self, target: Callable[[], int | None]) -> int:
        """Run ``target`` in a child process; its return value is the exit status."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            status = CHILD_FAILED
            try:
                result = target()
                status = 0 if result is None else result
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(status)
        self.pids.append(pid)
        return pid

    def kill(self, pid: int) -> None:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def reap(self, pid: int, timeout: float = 10.0) -> int:
        """waitpid with a deadline; returns the raw wait status."""
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                self.pids.remove(pid)
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"child {pid} did not exit within {timeout} s")
            time.sleep(0.001)

    def exit_code(self, pid: int, timeout: float = 10.0) -> int:
        """Reap and return the child's exit code (negative: killed by that signal)."""
        status = self.reap(pid, timeout)
        if os.WIFSIGNALED(status):
            return -os.WTERMSIG(status)
        return os.WEXITSTATUS(status)

    def cleanup(self) -> None:
        for pid in list(self.pids):
            self.kill(pid)
            with suppress(ChildProcessError, AssertionError):
                self.reap(pid, timeout=5.0)


@contextmanager
def children() -> Iterator[Children]:
    group = Children()
    try:
        yield group
    finally:
        group.cleanup()


@contextmanager
def segment_names(*tags: str) -> Iterator[list[str]]:
    """Fresh segment names, unlinked at the end whatever happened (a crashed creator
    cannot unlink its own)."""
    names = [unique_name(tag) for tag in tags]
    try:
        yield names
    finally:
        for name in names:
            unlink_segment(name, DEFAULT_DIRECTORY)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.0005)
