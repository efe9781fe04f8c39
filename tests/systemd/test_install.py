"""tools/install staged into a directory (``--root``), as an image build would use it:
what it writes, that a second run changes nothing, and what uninstall keeps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "tools" / "install"
UNITS = (
    "mxrc-failover@.service",
    "mxrc-monitor.service",
    "mxrc-nonrt.service",
    "mxrc-rt.service",
    "mxrc.target",
)


def install(stage: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INSTALL), "--root", str(stage), "--python", sys.executable, *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def files(stage: Path) -> list[str]:
    return sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    result = install(tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would: install -d -m 0750" in result.stdout and "would:" in result.stdout
    assert files(tmp_path) == []


def test_staged_install_is_complete_idempotent_and_uninstalls_cleanly(tmp_path: Path) -> None:
    first = install(tmp_path)
    assert first.returncode == 0, first.stderr
    assert files(tmp_path) == [
        "etc/mxrc/mxrc.toml",
        "etc/systemd/journald.conf.d/mxrc.conf",
        *(f"etc/systemd/system/{u}" for u in UNITS),
    ]
    nonrt = (tmp_path / "etc/systemd/system/mxrc-nonrt.service").read_text()
    # the units name the installed paths, not the staging directory
    assert f"ExecStart={sys.executable} -m mxrc nonrt --config /etc/mxrc/mxrc.toml" in nonrt
    assert str(tmp_path) not in nonrt and "ReadWritePaths=/var/lib/mxrc /dev/shm" in nonrt
    verify = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / "etc/systemd/system" / u) for u in UNITS)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr

    second = install(tmp_path)
    assert second.returncode == 0, second.stderr
    assert "wrote" not in second.stdout and second.stdout.count("unchanged") == 6
    assert "keeping" in second.stdout  # an existing configuration is never overwritten

    (tmp_path / "var/lib/mxrc/eventlog").mkdir(parents=True)
    removed = install(tmp_path, "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert files(tmp_path) == ["etc/mxrc/mxrc.toml"]
    assert (tmp_path / "var/lib/mxrc/eventlog").is_dir()  # the data stays
    purged = install(tmp_path, "--uninstall", "--purge")
    assert purged.returncode == 0 and not (tmp_path / "etc/mxrc").exists()
    assert not (tmp_path / "var/lib/mxrc").exists()


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    result = install(tmp_path, "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2 and "missing.toml: no such file" in result.stderr
    result = install(tmp_path, "--frobnicate")
    assert result.returncode == 2 and "unknown option --frobnicate" in result.stderr
