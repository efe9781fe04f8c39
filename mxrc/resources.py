"""Where the data directories (``statecharts/``, ``events/``) are found at run time.

They live at the top of the source tree, next to the package, so they are data a
reviewer reads rather than code; a wheel carries them inside the package
(``mxrc/_data``, see ``pyproject.toml``). Both layouts are looked up here, once.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


@cache
def data_dir(name: str) -> Path:
    """Return the directory ``name`` (``"statecharts"`` or ``"events"``)."""
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"mxrc data directory {name!r} not found next to the package ({_PACKAGE}); "
        "the installation is incomplete"
    )
