"""The systemd units of a node, rendered from the one configuration.

The templates are data (``units/*.in``, ``string.Template`` syntax); every value in
them comes from :class:`mxrc.config.Config` or from the host the units are rendered
on (which CPUs exist, the NUMA node of the RT CPU), so a CPU list, a priority or a
timeout is never kept by hand in a unit file and in the configuration at once.

Pure: :func:`unit_values` (configuration + placement → the template's fields) and
:func:`render` (templates + fields → unit texts). I/O: :func:`host_placement` reads
the host, :func:`write_units` writes the files.
"""

from __future__ import annotations

import ipaddress
import string
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from mxrc.config import Config
from mxrc.errors import ConfigError
from mxrc.fsutil import atomic_write
from mxrc.ha.members import parse_address, parse_members
from mxrc.resources import data_dir
from mxrc.rt.cpu import format_cpulist, node_of_cpu, parse_cpulist, read_nodes
from mxrc.rt.sched import allowed_cpus, housekeeping_cpus, rt_cpu_of

#: template file → unit file
UNITS: Mapping[str, str] = {
    "mxrc-nonrt.service.in": "mxrc-nonrt.service",
    "mxrc-rt.service.in": "mxrc-rt.service",
    "mxrc.target.in": "mxrc.target",
    "mxrc-failover@.service.in": "mxrc-failover@.service",
    "mxrc-monitor.service.in": "mxrc-monitor.service",
    "journald-mxrc.conf.in": "journald-mxrc.conf",
}

JOURNALD_DROP_IN: Final = "journald-mxrc.conf"
#: rendered file → where it is installed, relative to the system's root
INSTALLED_AT: Mapping[str, str] = {
    name: "etc/systemd/journald.conf.d/mxrc.conf"
    if name == JOURNALD_DROP_IN
    else f"etc/systemd/system/{name}"
    for name in UNITS.values()
}
#: template fields that are paths on the installed system
PATH_FIELDS: tuple[str, ...] = ("config", "python", "data_dir", "shm_dir")


@dataclass(frozen=True)
class Placement:
    rt_cpu: int
    nonrt_cpus: frozenset[int]
    numa_node: int


def host_placement(config: Config) -> Placement:
    """Where the processes go on this host: the same rules the processes apply to
    themselves (``rt.cpu`` as :func:`mxrc.rt.sched.rt_cpu_of` reads it; nonrt every
    other CPU, or ``nonrt.cpus``)."""
    allowed = allowed_cpus()
    rt_cpu = rt_cpu_of(config)
    configured = str(config["nonrt.cpus"])
    nonrt, _why = housekeeping_cpus(
        allowed, rt_cpu, parse_cpulist(configured) if configured else frozenset()
    )
    node = node_of_cpu(read_nodes(), rt_cpu)
    return Placement(rt_cpu, nonrt, 0 if node is None else node)


def _allowed_addresses(config: Config) -> list[str]:
    """IPAddressAllow= of nonrt: loopback, its HA peers or etcd, its API's address, and
    what ``systemd.ip_allow`` adds (the admin API's clients, when not loopback)."""
    allow = ["localhost"]
    hosts: list[str] = [str(config["api.host"])]
    backend = str(config["ha.backend"])
    if backend == "etcd":
        hosts += [parse_address(e)[0] for e in config["ha.etcd_endpoints"]]
    elif backend == "peers":
        hosts += [m.host for m in parse_members(config["ha.members"])]
    for host in hosts:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(
                f"{config.source}: {host!r} is a name, not an address: systemd's "
                "IPAddressAllow= needs addresses; use them in api.host, ha.members and "
                "ha.etcd_endpoints, or add the prefixes to systemd.ip_allow"
            ) from None
        if not address.is_loopback and str(address) not in allow:
            allow.append(str(address))
    allow += [str(a) for a in config["systemd.ip_allow"] if str(a) not in allow]
    return allow


def unit_values(
    config: Config, config_path: Path, placement: Placement, python: str = sys.executable
) -> dict[str, str]:
    """Every field the templates use. Pure."""

    def seconds(key: str) -> str:
        return f"{float(config[key]):g}"

    return {
        "config": str(config_path),
        "node": config.node_id,
        "python": python,
        "user": str(config["systemd.user"]),
        "group": str(config["systemd.group"]),
        "watchdog_s": seconds("systemd.watchdog_s"),
        "restart_sec": seconds("systemd.restart_sec"),
        "start_limit_burst": str(int(config["systemd.start_limit_burst"])),
        "start_limit_interval_s": seconds("systemd.start_limit_interval_s"),
        "start_timeout_s": seconds("systemd.start_timeout_s"),
        "stop_timeout_s": seconds("systemd.stop_timeout_s"),
        "priority": str(int(config["rt.priority"])),
        "rt_cpu": str(placement.rt_cpu),
        "nonrt_cpus": format_cpulist(placement.nonrt_cpus).replace(",", " "),
        "numa_node": str(placement.numa_node),
        "rt_cpu_quota": f"{int(config['systemd.rt_cpu_quota_percent'])}%",
        "rt_memory_max": str(config["systemd.rt_memory_max"]),
        "data_dir": str(config.data_dir.resolve()),
        "shm_dir": str(Path(str(config["rt.shm_dir"])).resolve()),
        "ip_allow": " ".join(_allowed_addresses(config)),
        "monitor_host": str(config["systemd.monitor_host"]),
        "monitor_port": str(int(config["systemd.monitor_port"])),
        "monitor_allow": " ".join(
            ["localhost", *(str(a) for a in config["systemd.ip_allow"])]
        ),
    }


def as_installed(values: Mapping[str, str], root: Path) -> dict[str, str]:
    """The fields of a system staged under ``root`` (an image being built) as that
    system sees them once it runs from ``/``: a path under ``root`` loses the prefix,
    so that the units name ``/etc/mxrc/mxrc.toml``, not the staging directory. Pure."""
    out = dict(values)
    for field in PATH_FIELDS:
        path = Path(values[field])
        if path.is_relative_to(root):
            out[field] = str(Path("/") / path.relative_to(root))
    return out


def load_templates(directory: Path | None = None) -> dict[str, str]:
    where = directory or data_dir("units")
    return {name: (where / name).read_text(encoding="utf-8") for name in UNITS}


def render(templates: Mapping[str, str], values: Mapping[str, str]) -> dict[str, str]:
    """Unit file name → text. A template field without a value is a bug here, named."""
    out: dict[str, str] = {}
    for template_name, text in templates.items():
        try:
            out[UNITS[template_name]] = string.Template(text).substitute(values)
        except KeyError as exc:
            raise ValueError(f"units/{template_name}: no value for ${{{exc.args[0]}}}") from None
    return out


def write_units(directory: Path, rendered: Mapping[str, str]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered.items():
        path = directory / name
        atomic_write(path, text.encode())
        written.append(path)
    return written
