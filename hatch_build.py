"""Compiles mxrc's one C module, the ring's hot paths (``mxrc/rt/_ring_native.c``).

A hatchling build hook, so that ``pip install`` (plain or ``-e``) builds it with no other
build dependency: the module is one C file against CPython's headers, compiled with the
compiler and flags the interpreter was built with. An editable install compiles it next to
its source (where the editable import finds it); a wheel carries it and gets a platform tag.

A machine with no C compiler cannot install mxrc unless ``MXRC_PURE_PYTHON=1`` is set,
and then the ring runs its (slower) Python implementation and ``mxrc rt`` says so: the
choice is never made silently.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("mxrc", "rt", "_ring_native.c")
MODULE_DIR = "mxrc/rt"
PURE_PYTHON_VARIABLE = "MXRC_PURE_PYTHON"


def source_sha256(source: Path) -> str:
    """The fingerprint compiled into the module (``_ring_native.SOURCE_SHA256``)."""
    return hashlib.sha256(source.read_bytes()).hexdigest()


def compile_module(source: Path, target: Path, *, strict: bool = False) -> None:
    """Build ``source`` into the extension module ``target`` for this interpreter.

    ``strict`` makes warnings errors: the test suite builds it so, while an install does
    not, so that a newer compiler's new warning cannot stop someone installing mxrc."""
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")
    include = sysconfig.get_paths()["include"]
    command = [
        *compiler,
        "-shared",
        "-fPIC",
        "-O2",
        "-Wall",
        "-Wextra",
        *(["-Werror"] if strict else []),
        f'-DMXRC_SOURCE_SHA256="{source_sha256(source)}"',
        "-I",
        include,
        str(source),
        "-o",
        str(target),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    except FileNotFoundError as exc:
        raise RuntimeError(
            f"mxrc: no C compiler ({compiler[0]}) to build {source}; install gcc and the "
            f"Python headers (Debian: gcc python3-dev), or set {PURE_PYTHON_VARIABLE}=1 to "
            "install the slower pure-Python ring"
        ) from exc
    if done.returncode != 0:
        raise RuntimeError(
            f"mxrc: building {source} failed ({shlex.join(command)}):\n{done.stderr}"
            f"set {PURE_PYTHON_VARIABLE}=1 to install the slower pure-Python ring instead"
        )


class NativeRingHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        source = Path(self.root, SOURCE)
        name = "_ring_native" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")
        if os.environ.get(PURE_PYTHON_VARIABLE) == "1":
            if version == "editable":  # a module built earlier would still be imported
                source.with_name(name).unlink(missing_ok=True)
            return
        if version == "editable":
            compile_module(source, source.with_name(name))
            return
        self._build_dir = Path(tempfile.mkdtemp(prefix="mxrc-native-"))
        built = self._build_dir / name
        compile_module(source, built)
        build_data["force_include"][str(built)] = f"{MODULE_DIR}/{name}"
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        build_dir: Path | None = getattr(self, "_build_dir", None)
        if build_dir is not None:
            shutil.rmtree(build_dir, ignore_errors=True)
