"""Command-line flags that override the configuration, shared by ``mxrc run`` and
``mxrc nonrt`` so that ``mxrc run`` can hand its own flags to its child unchanged."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mxrc.config import Config, load_config

#: flag attribute → configuration key
OVERRIDES: dict[str, str] = {
    "data_dir": "node.data_dir",
    "node_id": "node.id",
    "api_host": "api.host",
    "api_port": "api.port",
}


def add_node_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML configuration (default: built-in)"
    )
    parser.add_argument(
        "--data-dir", type=Path, metavar="DIR", help="overrides node.data_dir (default ./var)"
    )
    parser.add_argument("--node-id", metavar="ID", help="overrides node.id (default node-1)")
    parser.add_argument("--api-host", metavar="ADDR", help="overrides api.host (default 127.0.0.1)")
    parser.add_argument(
        "--api-port", type=int, metavar="PORT", help="overrides api.port (default 8780; 0: any)"
    )


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {}
    for attr, key in OVERRIDES.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides[key] = str(value) if isinstance(value, Path) else value
    return load_config(args.config, overrides)


def forwarded_flags(args: argparse.Namespace) -> list[str]:
    """The same overrides as flags for a child process (paths made absolute, since the
    child may run elsewhere)."""
    flags: list[str] = []
    if args.config is not None:
        flags += ["--config", str(Path(args.config).resolve())]
    for attr in OVERRIDES:
        value = getattr(args, attr, None)
        if value is not None:
            if isinstance(value, Path):
                value = value.resolve()
            flags += [f"--{attr.replace('_', '-')}", str(value)]
    return flags
