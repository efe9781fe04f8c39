"""The units as rendered from a configuration, checked offline by the real
``systemd-analyze`` (verify, and the security exposure score); under a running systemd
in test_under_systemd.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mxrc.config import build_config, load_config
from mxrc.errors import ConfigError
from mxrc.systemd.units import Placement, load_templates, render, unit_values, write_units

ANALYZE = shutil.which("systemd-analyze")
PLACE = Placement(rt_cpu=3, nonrt_cpus=frozenset({0, 1, 2}), numa_node=0)


def rendered(tmp: Path, **sections: dict[str, object]) -> dict[str, str]:
    config = build_config(dict(sections), "mxrc.toml")
    return render(
        load_templates(), unit_values(config, tmp / "mxrc.toml", PLACE, "/usr/bin/python3")
    )


def keys(text: str) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )


def test_values_come_from_the_configuration_and_the_placement(tmp_path: Path) -> None:
    units = rendered(
        tmp_path,
        rt={"priority": 70},
        systemd={"watchdog_s": 4.0, "start_limit_burst": 3},
        node={"data_dir": "/srv/mxrc"},
    )
    rt, nonrt = keys(units["mxrc-rt.service"]), keys(units["mxrc-nonrt.service"])
    assert rt["CPUSchedulingPriority"] == "70" and rt["CPUSchedulingPolicy"] == "fifo"
    assert rt["CPUAffinity"] == "3" and nonrt["CPUAffinity"] == "0-2"
    assert rt["WatchdogSec"] == nonrt["WatchdogSec"] == "4"
    assert rt["StartLimitBurst"] == "3" and rt["Requires"] == "mxrc-nonrt.service"
    # restarts exhausted: the failover unit makes nonrt step down (SAFE_MODE, lease gone)
    assert rt["OnFailure"] == "mxrc-failover@%n.service"
    failover = keys(units["mxrc-failover@.service"])
    assert failover["ExecStart"] == (
        f'/usr/bin/python3 -m mxrc command safe_mode --cause "%i failed" '
        f"--config {tmp_path / 'mxrc.toml'}"
    )
    assert nonrt["ExecStart"] == f"/usr/bin/python3 -m mxrc nonrt --config {tmp_path / 'mxrc.toml'}"
    assert "/srv/mxrc" in nonrt["ReadWritePaths"]
    assert "$" not in "".join(units.values())  # every field was filled


def test_nonrt_may_talk_to_exactly_its_peers_or_etcd(tmp_path: Path) -> None:
    etcd = keys(rendered(tmp_path, ha={"backend": "etcd",
                                       "etcd_endpoints": ["10.0.0.5:2379", "10.0.0.6:2379"]})
                ["mxrc-nonrt.service"])  # fmt: skip
    assert etcd["IPAddressAllow"] == "localhost 10.0.0.5 10.0.0.6"
    with pytest.raises(ConfigError, match=r"'etcd.local' is a name, not an address"):
        rendered(tmp_path, ha={"backend": "etcd", "etcd_endpoints": ["etcd.local:2379"]})


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    config = tmp_path / "mxrc.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "var"}"\n')
    out = tmp_path / "units"
    run = subprocess.run(
        [sys.executable, "-m", "mxrc", "units", "render", str(out), "--config", str(config)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "journald-mxrc.conf", "mxrc-failover@.service", "mxrc-monitor.service",
        "mxrc-nonrt.service", "mxrc-rt.service", "mxrc.target",
    ]  # fmt: skip
    return out


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    if ANALYZE is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd)")
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, check=False)


def test_systemd_analyze_verify_finds_nothing(unit_dir: Path) -> None:
    names = ("mxrc-nonrt.service", "mxrc-rt.service", "mxrc.target", "mxrc-failover@.service",
             "mxrc-monitor.service")  # fmt: skip
    units = [str(unit_dir / n) for n in names]
    result = analyze("verify", *units)
    # a misspelt key only warns on stderr with exit 0: stderr must be empty too
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_verify_would_see_a_misspelt_key(unit_dir: Path) -> None:
    broken = unit_dir / "mxrc-nonrt.service"
    broken.write_text(broken.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    result = analyze("verify", str(broken))
    assert "WatchdogSecs" in result.stderr  # so the clean run above means something


@pytest.mark.parametrize(
    ("unit", "limit"),
    [
        ("mxrc-nonrt.service", 2.0),
        ("mxrc-rt.service", 3.0),
        ("mxrc-failover@.service", 2.0),
        ("mxrc-monitor.service", 2.0),
    ],
)
def test_security_exposure_is_within_the_limit(unit_dir: Path, unit: str, limit: float) -> None:
    result = analyze("security", "--offline=true", str(unit_dir / unit))
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert found, result.stdout[-500:] + result.stderr
    assert float(found.group(1)) <= limit, result.stdout


def test_rendering_is_reproducible(tmp_path: Path) -> None:
    config = load_config(None)
    values = unit_values(config, tmp_path / "mxrc.toml", PLACE)
    first = write_units(tmp_path / "a", render(load_templates(), values))
    second = write_units(tmp_path / "b", render(load_templates(), values))
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
