"""The wheel carries the data directories the code reads at run time."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_installed_wheel_finds_charts_and_event_catalogue(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=120,
    )
    [wheel] = tmp_path.glob("mxrc-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import mxrc.resources as r, mxrc.statechart as s, mxrc.catalog as c;"
        "print(r.data_dir('statecharts'));"
        "print(s.default_registry().get('rt').ref);"
        "print(sorted(c.event_types()))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        timeout=60,
    ).stdout.splitlines()
    assert out[0] == str(site / "mxrc" / "_data" / "statecharts")
    assert out[1].startswith("rt@")
    assert "transition" in out[2]
