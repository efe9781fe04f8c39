"""A real systemd (the host's) as PID 1 of new PID, mount, UTS and cgroup namespaces:
where the host's init is not systemd, the units can still be run, tested and timed.

The host's own init is not systemd, so this is the only systemd there is; what it
cannot enforce here (no cpu/memory/io controllers in its cgroup tree, no
CAP_SYS_RESOURCE for LimitRTPRIO/LimitMEMLOCK) is named in the README, not faked.

Layout, as the boot script sets it up: private mounts; a tmpfs ``/run`` holding the
test's units in ``/run/systemd/system`` (host units that would act on the machine are
masked); tmpfs over ``/var/tmp``, ``/var/lib/systemd`` and ``/var/log/journal`` (not
``/tmp``: the checkout under test may live there; units get their own through
PrivateTmp=); a private, empty ``/etc/systemd`` with ``system/`` and
``journald.conf.d/`` (what ``mxrc units install`` writes stays in the test);
``/proc/sys`` and ``/sys`` read-only; a fresh cgroup2 hierarchy; ``/dev/kmsg`` →
``/dev/null``. The launcher first moves itself into a child cgroup of the host's
cgroup2 mount so that systemd's slices never touch the host's hierarchies.
:meth:`NamespacedSystemd.stop` ends it (``systemctl exit``, then SIGKILL of PID 1)
and removes the cgroup directories.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from mxrc.errors import MxrcError

SYSTEMD: Final = Path("/lib/systemd/systemd")
CGROUP2: Final = Path("/sys/fs/cgroup/unified")  # hybrid hosts; pure cgroup2 otherwise
BOOT_TIMEOUT_S: Final = 20.0

MASKED: Final = (
    "systemd-timesyncd.service systemd-sysctl.service systemd-modules-load.service "
    "systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket "
    "systemd-udev-trigger.service systemd-udev-settle.service systemd-tmpfiles-setup.service "
    "systemd-tmpfiles-setup-dev.service systemd-tmpfiles-clean.timer "
    "systemd-tmpfiles-clean.service systemd-sysusers.service getty@.service "
    "serial-getty@.service console-getty.service systemd-logind.service "
    "systemd-random-seed.service systemd-binfmt.service systemd-firstboot.service "
    "systemd-hwdb-update.service systemd-machine-id-commit.service systemd-pstore.service "
    "systemd-remount-fs.service systemd-update-utmp.service kmod-static-nodes.service "
    "sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount "
    "sys-fs-fuse-connections.mount proc-sys-fs-binfmt_misc.automount "
    "proc-sys-fs-binfmt_misc.mount"
)

BOOT: Final = f"""#!/bin/bash
set -e
units=$1
mount --make-rprivate /
mount -n -t tmpfs tmpfs /run
mkdir -p /run/systemd/system
cp "$units"/* /run/systemd/system/
for u in {MASKED}; do ln -sf /dev/null /run/systemd/system/$u; done
for d in /var/tmp /var/lib/systemd /var/log/journal; do
  mkdir -p $d; mount -n -t tmpfs tmpfs $d
done
mount -n -t tmpfs -o mode=0755 tmpfs /etc/systemd
mkdir -p /etc/systemd/system /etc/systemd/journald.conf.d
mount -n --bind /proc/sys /proc/sys; mount -n -o remount,bind,ro /proc/sys
mount -n -o remount,ro /sys 2>/dev/null || true
mount -n -t cgroup2 none /sys/fs/cgroup
mount -n --bind /dev/null /dev/kmsg
export container=other
exec {SYSTEMD} --system --unit=mxrc-test.target --log-target=journal --show-status=no
"""

TARGET: Final = """[Unit]
Description=the test's boot target
DefaultDependencies=no
Wants=systemd-journald.socket systemd-journald.service
"""


def relax_for_code_location(units: dict[str, str], code: list[Path]) -> None:
    """Let the services see the code they run when it lives where the hardening hides
    it (a developer's interpreter under /root or /home, a checkout under /tmp):
    ``ProtectHome=read-only`` / ``PrivateTmp=no`` appended, only then. In production
    the code is in /opt/mxrc and nothing is relaxed."""
    extra = ""
    if any(str(p).startswith(("/root/", "/home/")) for p in code):
        extra += "ProtectHome=read-only\n"
    if any(str(p).startswith("/tmp/") for p in code):
        extra += "PrivateTmp=no\n"
    if extra:
        for name in units:
            if name.endswith(".service"):
                units[name] += f"\n[Service]\n{extra}"


def available() -> str | None:
    """Why a namespaced systemd cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (namespaces, mounts, cgroups)"
    if not SYSTEMD.exists():
        return f"{SYSTEMD} is missing (Debian package systemd)"
    if not CGROUP2.is_dir():
        return f"no cgroup2 mount at {CGROUP2}"
    return None


class NamespacedSystemd:
    def __init__(self, work: Path, units: dict[str, str]) -> None:
        self.work = work
        self.units = units
        self.name = f"mxrc-test-{os.getpid()}-{time.monotonic_ns() % 10**6}"
        self.process: subprocess.Popen[bytes] | None = None
        self.pid1 = 0

    def start(self) -> None:
        unit_dir = self.work / "units"
        unit_dir.mkdir(parents=True)
        (unit_dir / "mxrc-test.target").write_text(TARGET)
        for name, text in self.units.items():
            (unit_dir / name).write_text(text)
        boot = self.work / "boot.sh"
        boot.write_text(BOOT)
        boot.chmod(0o755)
        cgroup = CGROUP2 / self.name
        launcher = (
            f"mkdir -p {cgroup} && echo $$ > {cgroup}/cgroup.procs && exec unshare --pid "
            f"--fork --mount --mount-proc --uts --cgroup --propagation private {boot} {unit_dir}"
        )
        self.process = subprocess.Popen(
            ["bash", "-c", launcher],
            stdout=(self.work / "systemd.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while time.monotonic() < deadline:
            children = _children(self.process.pid)
            if children:
                self.pid1 = children[0]
                state = self.systemctl("is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        log = (self.work / "systemd.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise MxrcError(f"the namespaced systemd did not boot: {log}")

    def enter(self, *command: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid1), "-m", "-p", "-u", "-C", "--", *command]

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.enter("systemctl", *args), capture_output=True, text=True, check=False
        )
        if check and result.returncode != 0:
            raise MxrcError(f"systemctl {' '.join(args)}: {result.stderr or result.stdout}")
        return result

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> str:
        return subprocess.run(
            self.enter("journalctl", "--no-pager", *args),
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip

    def host_pid(self, unit: str) -> int:
        """The unit's main PID as the host sees it (systemctl reports the inner one)."""
        inner = int(self.show(unit, "MainPID")["MainPID"])
        if inner == 0:
            return 0
        for pid in _descendants(self.pid1):
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{pid}/status").read_text()
                nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
                if int(nspid.split()[-1]) == inner:
                    return pid
        return 0

    def stop(self) -> None:
        if self.pid1:
            subprocess.run(self.enter("systemctl", "exit"), capture_output=True, check=False)
        if self.process is not None:
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                if self.pid1:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid1, signal.SIGKILL)
                self.process.wait(10)
        cgroup = CGROUP2 / self.name
        if cgroup.exists():
            for directory in sorted(cgroup.rglob("*"), key=lambda p: -len(p.parts)):
                if directory.is_dir():
                    with contextlib.suppress(OSError):
                        directory.rmdir()
            with contextlib.suppress(OSError):
                cgroup.rmdir()


def _children(pid: int) -> list[int]:
    """Direct children: bash exec'd unshare, whose one child is the namespace's PID 1."""
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _descendants(pid: int) -> Iterator[int]:
    try:
        kids = [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return
    for kid in kids:
        yield kid
        yield from _descendants(kid)
