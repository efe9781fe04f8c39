"""``mxrc units render DIR``: the node's systemd units, from its configuration."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mxrc.config import load_config
from mxrc.errors import UsageError
from mxrc.systemd.units import host_placement, load_templates, render, unit_values, write_units

EPILOG = """\
The CPU lists (rt.cpu, nonrt.cpus), the FIFO priority (rt.priority), the data and
shared-memory paths and the [systemd] keys (user, watchdog, restarts, limits) are
taken from the configuration; the NUMA node of the RT CPU from this host. The units
run `mxrc nonrt` / `mxrc rt` with the same configuration file, by absolute path.

examples:
  mxrc units render /etc/systemd/system --config /etc/mxrc/mxrc.toml
  mxrc units render out/ --config mxrc.toml && systemd-analyze verify out/*.service
"""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "units",
        help="render the node's systemd units from its configuration",
        description="systemd units of this node (mxrc-nonrt, mxrc-rt, mxrc.target).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    render_parser = actions.add_parser(
        "render",
        help="write the unit files into DIR",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    render_parser.add_argument("directory", type=Path, metavar="DIR")
    render_parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        required=True,
        help="the node's configuration; the units start both processes with it",
    )
    render_parser.set_defaults(func=run_render)


def run_render(args: argparse.Namespace) -> int:
    config_path: Path = args.config.resolve()
    if not config_path.is_file():
        raise UsageError(f"--config {args.config}: no such file")
    config = load_config(config_path)
    values = unit_values(config, config_path, host_placement(config))
    for path in write_units(args.directory, render(load_templates(), values)):
        print(path)
    return 0
