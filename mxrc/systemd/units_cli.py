"""``mxrc units render DIR`` and ``mxrc units install``: the node's systemd units, from
its configuration."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import Any

from mxrc.config import load_config
from mxrc.errors import MxrcError, UsageError
from mxrc.fsutil import atomic_write
from mxrc.systemd.units import (
    INSTALLED_AT,
    JOURNALD_DROP_IN,
    as_installed,
    host_placement,
    load_templates,
    render,
    unit_values,
    write_units,
)

#: present while systemd is the running init (sd_booted(3))
SYSTEMD_RUNNING = Path("/run/systemd/system")

EPILOG = """\
The CPU lists (rt.cpu, nonrt.cpus), the FIFO priority (rt.priority), the data and
shared-memory paths and the [systemd] keys (user, watchdog, restarts, limits) are
taken from the configuration; the NUMA node of the RT CPU from this host. The units
run `mxrc nonrt` / `mxrc rt` with the same configuration file, by absolute path.

examples:
  mxrc units render out/ --config mxrc.toml && systemd-analyze verify out/*.service
  mxrc units install --config /etc/mxrc/mxrc.toml --dry-run
  mxrc units install --config /etc/mxrc/mxrc.toml
  mxrc units install --config image/etc/mxrc/mxrc.toml --root image/
"""

INSTALL_HELP = """\
Writes the units into /etc/systemd/system and journald's limits into
/etc/systemd/journald.conf.d/mxrc.conf, each only if its text changed (so running it
again changes nothing). When systemd runs this machine it then reloads its units
(systemctl daemon-reload) and, if the journald drop-in changed, restarts
systemd-journald, which reads its configuration only when it starts. Running services
are not restarted: restart mxrc.target when you are ready. With --root DIR the files
go under DIR (an image being built) and paths under DIR are written as the installed
system will see them; nothing is reloaded.
"""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "units",
        help="render or install the node's systemd units from its configuration",
        description="systemd units of this node (mxrc-nonrt, mxrc-rt, mxrc-monitor, "
        "mxrc-failover@, mxrc.target) and journald's limits.",
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
    _config_argument(render_parser)
    render_parser.set_defaults(func=run_render)
    install_parser = actions.add_parser(
        "install",
        help="install the units and journald's limits, reload systemd",
        description=INSTALL_HELP,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_argument(install_parser)
    install_parser.add_argument(
        "--root", type=Path, metavar="DIR", help="install under DIR instead of / (staging)"
    )
    install_parser.add_argument(
        "--dry-run", action="store_true", help="say what would change, change nothing"
    )
    install_parser.set_defaults(func=run_install)


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        required=True,
        help="the node's configuration; the units start both processes with it",
    )


def _rendered(config_arg: Path, root: Path | None = None) -> dict[str, str]:
    config_path = config_arg.resolve()
    if not config_path.is_file():
        raise UsageError(f"--config {config_arg}: no such file")
    config = load_config(config_path)
    values = unit_values(config, config_path, host_placement(config))
    if root is not None:
        values = as_installed(values, root)
    return render(load_templates(), values)


def run_render(args: argparse.Namespace) -> int:
    for path in write_units(args.directory, _rendered(args.config)):
        print(path)
    return 0


def run_install(args: argparse.Namespace) -> int:
    root: Path | None = args.root.resolve() if args.root is not None else None
    if root == Path("/"):
        root = None
    if root is not None and not root.is_dir():
        raise UsageError(f"--root {args.root}: no such directory")
    changed: list[str] = []
    for name, text in _rendered(args.config, root).items():
        target = (root or Path("/")) / INSTALLED_AT[name]
        data = text.encode()
        if target.is_file() and target.read_bytes() == data:
            print(f"unchanged {target}")
            continue
        changed.append(name)
        if args.dry_run:
            print(f"would write {target}")
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, data)
        except OSError as exc:
            raise MxrcError(f"cannot write {target}: {exc.strerror} (run as root?)") from None
        print(f"wrote {target}")
    if root is None and SYSTEMD_RUNNING.is_dir() and changed:
        if any(name != JOURNALD_DROP_IN for name in changed):
            _systemctl(args.dry_run, "daemon-reload")
        if JOURNALD_DROP_IN in changed:
            _systemctl(args.dry_run, "restart", "systemd-journald.service")
    if root is None:
        print(
            "start with: systemctl enable --now mxrc.target (a running mxrc.target keeps its "
            "old units until: systemctl restart mxrc.target)"
        )
    return 0


def _systemctl(dry_run: bool, *args: str) -> None:
    command = ["systemctl", *args]
    if dry_run:
        print(f"would run {' '.join(command)}")
        return
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise MxrcError(f"{' '.join(command)} failed (exit {result.returncode}): {detail}")
    print(f"ran {' '.join(command)}")
