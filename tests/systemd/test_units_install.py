"""``mxrc units install``: staged under a root (an image build), and live under a real
systemd (252, booted in namespaces), where it must reload systemd for a changed unit
and restart journald for a changed drop-in — and do neither when nothing changed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mxrc.systemd.units import INSTALLED_AT, as_installed
from tests.configs import Sections, toml_text
from tests.systemd.namespaced import namespaced_systemd


def mxrc_units(*args: str, enter: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mxrc", "units", *args]
    return subprocess.run(
        [*(enter or []), *command], capture_output=True, text=True, timeout=120, check=False
    )


def write_config(path: Path, priority: int) -> Path:
    sections: Sections = {"node": {"data_dir": "/var/lib/mxrc"}, "rt": {"priority": priority}}
    path.write_text(toml_text(sections))
    return path


def test_staged_paths_lose_the_root_and_others_are_kept() -> None:
    values = {
        "config": "/stage/etc/mxrc/mxrc.toml",
        "python": "/usr/bin/python3",
        "data_dir": "/var/lib/mxrc",
        "shm_dir": "/stage/dev/shm",
        "node": "/stage/not-a-path-field",
    }
    installed = as_installed(values, Path("/stage"))
    assert installed == {
        "config": "/etc/mxrc/mxrc.toml",
        "python": "/usr/bin/python3",
        "data_dir": "/var/lib/mxrc",
        "shm_dir": "/dev/shm",
        "node": "/stage/not-a-path-field",
    }
    assert as_installed(values, Path("/stag"))["config"] == values["config"]  # not a prefix


def test_staged_install_writes_only_what_changed(tmp_path: Path) -> None:
    stage = tmp_path / "image"
    (stage / "etc/mxrc").mkdir(parents=True)
    config = write_config(stage / "etc/mxrc/mxrc.toml", 80)

    dry = mxrc_units("install", "--config", str(config), "--root", str(stage), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would write") == len(INSTALLED_AT)
    assert not (stage / "etc/systemd").exists()

    first = mxrc_units("install", "--config", str(config), "--root", str(stage))
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("wrote") == len(INSTALLED_AT) and "systemctl" not in first.stdout
    rt = (stage / "etc/systemd/system/mxrc-rt.service").read_text()
    assert "--config /etc/mxrc/mxrc.toml" in rt and str(stage) not in rt
    assert "SystemMaxUse=1G" in (stage / "etc/systemd/journald.conf.d/mxrc.conf").read_text()

    again = mxrc_units("install", "--config", str(config), "--root", str(stage))
    assert again.stdout.count("unchanged") == len(INSTALLED_AT) and "wrote" not in again.stdout

    write_config(config, 70)
    changed = mxrc_units("install", "--config", str(config), "--root", str(stage))
    wrote = [line for line in changed.stdout.splitlines() if line.startswith("wrote")]
    assert wrote == [f"wrote {stage}/etc/systemd/system/mxrc-rt.service"]
    assert "CPUSchedulingPriority=70" in (stage / "etc/systemd/system/mxrc-rt.service").read_text()


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    missing = mxrc_units("install", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode != 0 and "--config" in missing.stderr
    assert "nope.toml: no such file" in missing.stderr
    config = write_config(tmp_path / "mxrc.toml", 80)
    no_root = mxrc_units("install", "--config", str(config), "--root", str(tmp_path / "absent"))
    assert no_root.returncode != 0 and "absent: no such directory" in no_root.stderr


def test_live_install_reloads_systemd_and_restarts_journald_only_on_change(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "mxrc.toml", 80)
    with namespaced_systemd(tmp_path / "systemd", {}) as system:

        def show(unit: str, *props: str) -> dict[str, str]:
            return system.show(unit, *props)

        journald_before = show("systemd-journald.service", "ExecMainPID")["ExecMainPID"]
        first = mxrc_units("install", "--config", str(config), enter=system.enter())
        assert first.returncode == 0, first.stderr + first.stdout
        assert "ran systemctl daemon-reload" in first.stdout
        assert "ran systemctl restart systemd-journald.service" in first.stdout
        rt = show("mxrc-rt.service", "LoadState", "FragmentPath", "CPUSchedulingPriority")
        assert rt == {
            "LoadState": "loaded",
            "FragmentPath": "/etc/systemd/system/mxrc-rt.service",
            "CPUSchedulingPriority": "80",
        }
        journald_after = show("systemd-journald.service", "ExecMainPID", "ActiveState")
        assert journald_after["ActiveState"] == "active"
        assert journald_after["ExecMainPID"] != journald_before  # it was restarted

        write_config(config, 70)
        second = mxrc_units("install", "--config", str(config), enter=system.enter())
        assert second.returncode == 0, second.stderr + second.stdout
        assert "ran systemctl daemon-reload" in second.stdout
        assert "systemd-journald" not in second.stdout  # its drop-in did not change
        rt = show("mxrc-rt.service", "CPUSchedulingPriority", "NeedDaemonReload")
        assert rt == {"CPUSchedulingPriority": "70", "NeedDaemonReload": "no"}
        journald_pid = show("systemd-journald.service", "ExecMainPID")["ExecMainPID"]
        assert journald_pid == journald_after["ExecMainPID"]

        third = mxrc_units("install", "--config", str(config), enter=system.enter())
        assert third.returncode == 0 and "ran systemctl" not in third.stdout
        assert third.stdout.count("unchanged") == len(INSTALLED_AT)
    assert not Path("/etc/systemd/journald.conf.d/mxrc.conf").exists()  # the host untouched
