"""The wheel carries the data directories the code reads at run time, and the ring's C
module compiled for this interpreter (so the wheel is tagged for this platform)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_and_unpack_wheel(tmp_path: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """Build mxrc's wheel as pip would, and unpack it as an installed site would hold it."""
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip_wheel, "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=120,
        env={**os.environ, **env},
    )
    [wheel] = tmp_path.glob("mxrc-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    return wheel, site


def run_from(site: Path, code: str) -> list[str]:
    """Run ``code`` importing mxrc from ``site`` (not the source tree); its output lines."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=True,
        cwd=site.parent,
        timeout=60,
    ).stdout.splitlines()


def test_installed_wheel_finds_charts_and_event_catalogue(tmp_path: Path) -> None:
    wheel, site = build_and_unpack_wheel(tmp_path, {})
    probe = (
        "import mxrc.resources as r, mxrc.statechart as s, mxrc.catalog as c;"
        "print(r.data_dir('statecharts'));"
        "print(s.default_registry().get('rt').ref);"
        "print(sorted(c.event_types()));"
        "import mxrc.rt.ring as ring; print(ring.implementation()); print(ring.__file__)"
    )
    out = run_from(site, probe)
    assert out[0] == str(site / "mxrc" / "_data" / "statecharts")
    assert out[1].startswith("rt@")
    assert "transition" in out[2]
    assert out[3] == "native"
    assert out[4].startswith(str(site))  # the wheel's module, not the source tree's
    assert not wheel.name.endswith("-py3-none-any.whl"), wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if n.startswith("mxrc/rt/_ring_native") and n.endswith(".so")]


def test_a_pure_python_install_runs_the_reference_ring_and_says_so(tmp_path: Path) -> None:
    """``MXRC_PURE_PYTHON=1``: no compiler needed, the wheel is pure, the ring still works
    (its Python implementation) and names itself as such."""
    wheel, site = build_and_unpack_wheel(tmp_path, {"MXRC_PURE_PYTHON": "1"})
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    assert not [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".so")]
    probe = (
        "from mxrc.rt.shm import LocalRegion; from mxrc.rt import ring;"
        "layout = ring.RingLayout(16); region = LocalRegion(layout.segment_layout());"
        "w = ring.RingWriter(region, layout); w.write(3, 4, 5, [1.5]);"
        "(r,) = ring.RingReader(region, layout).poll();"
        "print(ring.implementation()); print(w.native, r.rtype, r.cycle, r.f64()[0])"
    )
    out = run_from(site, probe)
    assert out[0].startswith("python (") and "_ring_native" in out[0]
    assert out[1] == "False 3 4 1.5"


def test_the_ring_module_compiles_without_a_warning(tmp_path: Path) -> None:
    """The install compiles with warnings allowed; here they are errors (``-Wall
    -Wextra -Werror``), with the compiler the install uses."""
    sys.path.insert(0, str(ROOT))
    try:
        import hatch_build
    finally:
        sys.path.remove(str(ROOT))
    target = tmp_path / "_ring_native.so"
    hatch_build.compile_module(ROOT / hatch_build.SOURCE, target, strict=True)
    # the module carries the fingerprint of the source it was built from
    probe = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('_ring_native', {str(target)!r}); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
        "print(m.SOURCE_SHA256)"
    )
    built_from = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert built_from == hatch_build.source_sha256(ROOT / hatch_build.SOURCE)


def test_the_module_in_use_was_built_from_the_source_beside_it() -> None:
    """What ``tools/setup`` built is what the tests exercise (after an edit of the C file,
    this fails until it is rebuilt, and the ring falls back to Python meanwhile)."""
    from mxrc.rt import ring

    assert ring.NATIVE_MISSING is None, ring.NATIVE_MISSING
    assert ring.implementation() == "native"


def test_a_module_built_from_another_source_is_not_used(tmp_path: Path) -> None:
    from mxrc.rt import _ring_native, ring

    source = tmp_path / "_ring_native.c"
    source.write_bytes(ring.NATIVE_SOURCE.read_bytes())
    assert ring.stale_native(_ring_native.SOURCE_SHA256, source) is None
    source.write_bytes(source.read_bytes() + b"/* edited */\n")
    reason = ring.stale_native(_ring_native.SOURCE_SHA256, source)
    assert reason is not None and "_ring_native.c" in reason and "tools/setup" in reason
    assert ring.stale_native("unknown", source) is not None  # built by hand, unmarked
    assert ring.stale_native(_ring_native.SOURCE_SHA256, tmp_path / "absent.c") is None
