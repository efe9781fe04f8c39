"""The one configuration object, read from TOML and validated at start-up.

Each key is declared once below with its type, default, bounds and a line of help;
validation walks that table, so every error names the key (``eventlog.segment_bytes``),
the value found and what is allowed, and ``mxrc run --help`` can list the defaults.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mxrc.errors import ConfigError
from mxrc.ha.lease import LeaseTerms
from mxrc.ha.members import parse_address, parse_members
from mxrc.rt.cpu import parse_cpulist

#: The peers backend is for a handful of nodes; etcd beyond that.
MAX_PEERS = 9


@dataclass(frozen=True)
class Key:
    kind: type
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None  # returns the problem, or None


def _at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"must be ≥ {low}"


def _between(low: int, high: int) -> Callable[[Any], str | None]:
    return lambda v: None if low <= v <= high else f"must be in {low}..{high}"


def _one_of(*allowed: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in allowed else f"must be one of {', '.join(allowed)}"


def _fraction(value: float) -> str | None:
    return None if 0.0 < value <= 1.0 else "must be in (0, 1]"


def _cpulist(value: str) -> str | None:
    if not value.strip():
        return None
    try:
        cpus = parse_cpulist(value)
    except ValueError as exc:
        return f"is not a CPU list ({exc}); write it as the kernel does, e.g. '0-2,4'"
    return None if cpus else "names no CPU"


def _size(value: str) -> str | None:
    ok = re.fullmatch(r"[0-9]+[KMGT]?", value.strip()) is not None
    return None if ok else "must be a number of bytes, optionally with K, M, G or T"


def _strings(value: list[Any]) -> str | None:
    return None if all(isinstance(v, str) for v in value) else "must be a list of strings"


def _per_process_file(value: str) -> str | None:
    if not value.strip() or "{process}" in value:
        return None
    return (
        "must contain {process} (e.g. 'logs/{process}.log'): each mxrc process rotates "
        "its own file, and two processes rotating one file would lose lines"
    )


def _node_id(value: str) -> str | None:
    ok = value and all(c.isalnum() or c in "-_." for c in value) and len(value) <= 64
    return None if ok else "must be 1-64 characters of letters, digits, '-', '_' or '.'"


SCHEMA: Mapping[str, Mapping[str, Key]] = {
    "node": {
        "id": Key(str, "node-1", "name of this controller node, written in every record", _node_id),
        "data_dir": Key(str, "var", "event log, checkpoints and lock live here"),
    },
    "eventlog": {
        "segment_bytes": Key(
            int, 64 * 1024 * 1024, "a new segment file starts past this size", _at_least(4096)
        ),
    },
    "checkpoint": {
        "interval_s": Key(
            float, 10.0, "periodic checkpoint (also one after every transition)", _at_least(0.1)
        ),
        "keep": Key(int, 3, "how many checkpoint files are kept", _at_least(1)),
    },
    "cycle": {
        "period_ms": Key(float, 1.0, "base period of the control cycle", _at_least(0.05)),
        "frame_slots": Key(
            int, 10, "slots of the major frame (cycle number modulo this)", _at_least(1)
        ),
        "status_interval_s": Key(float, 1.0, "how often cycle progress is logged", _at_least(0.05)),
    },
    "rt": {
        "cpu": Key(
            int,
            -1,
            "CPU the cycle thread is pinned to (-1: the machine's last online CPU)",
            _at_least(-1),
        ),
        "priority": Key(int, 80, "SCHED_FIFO priority of the cycle thread (1-99)", _between(1, 99)),
        "budget_us": Key(
            int,
            500,
            "a cycle whose work ends later than this after its deadline is a miss (≤ the period)",
            _at_least(1),
        ),
        "lock_memory": Key(bool, True, "mlockall so the cycle never takes a page fault"),
        "hold_dma_latency": Key(bool, True, "hold /dev/cpu_dma_latency at 0 (no deep C-states)"),
        "control_law": Key(
            str, "mxrc.rt.plant:SimulatedJoint", "the control law, as 'package.module:Class'"
        ),
        "shm_dir": Key(str, "/dev/shm", "directory (tmpfs) of the shared-memory segments"),
        "shm_prefix": Key(str, "mxrc", "segment names are <prefix>-<node id>-<segment>", _node_id),
        "status_every_cycles": Key(
            int, 100, "a CYCLE_STATUS ring record every this many cycles", _at_least(1)
        ),
        "attach_wait_s": Key(
            float, 5.0, "how long mxrc rt waits for nonrt's segments at start", _at_least(0.0)
        ),
        "numa": Key(
            str,
            "auto",
            "bind rt and the segments to rt.cpu's NUMA node, nonrt prefers another: auto "
            "(2+ nodes), always (one node too), off",
            _one_of("auto", "always", "off"),
        ),
    },
    "nonrt": {
        "ring_poll_ms": Key(
            float, 5.0, "how often nonrt drains the RT process's ring", _at_least(0.5)
        ),
        "bus_queue": Key(int, 4096, "EventBus queue size (oldest events dropped when full)",
                         _at_least(16)),
        "fault_misses": Key(
            int,
            10,
            "this many deadline misses within health.window_s fault a RUNNING node",
            _at_least(1),
        ),
        "rt_silence_s": Key(
            float, 1.0, "no ring record for this long: the RT process is lost", _at_least(0.05)
        ),
        "events_memory": Key(
            int, 10000, "recent records served from memory by /v1/events", _at_least(100)
        ),
        "cpus": Key(
            str, "", "CPU list for nonrt, e.g. '0' or '0-2' (empty: every CPU but rt.cpu)",
            _cpulist,
        ),
    },
    "ha": {
        "backend": Key(
            str,
            "local",
            "leader election: local (a quorum of one), etcd, or peers (3-5 nodes)",
            _one_of("local", "etcd", "peers"),
        ),
        "lease_ttl_s": Key(float, 2.0, "leader lease time-to-live", _at_least(0.1)),
        "renew_interval_s": Key(
            float, 0.5, "how often the lease is renewed (well below the TTL)", _at_least(0.01)
        ),
        "safety_margin_s": Key(
            float,
            0.2,
            "the control block's deadline is renewal start + TTL - this margin",
            _at_least(0.0),
        ),
        "request_timeout_s": Key(
            float, 0.3, "time limit of one backend call (below renew_interval_s)",
            _at_least(0.01),
        ),
        "members": Key(
            list, [], "peers: every member as 'node-id=host:port', this node included",
            _strings,
        ),
        "etcd_endpoints": Key(
            list, ["127.0.0.1:2379"], "etcd: client endpoints 'host:port', tried in turn",
            _strings,
        ),
        "etcd_prefix": Key(str, "/mxrc", "etcd: the leader key is <prefix>/<cell>/leader"),
        "cell": Key(
            str, "cell-1", "the robot cell the nodes compete for (one leader per cell)",
            _node_id,
        ),
        "auto_start": Key(
            bool, False, "a new leader with quorum starts by itself (default: an operator)"
        ),
    },
    "api": {
        "host": Key(str, "127.0.0.1", "admin API address (loopback unless you mean it)"),
        "port": Key(int, 8780, "admin API port (0: any free port)", _between(0, 65535)),
        "token_file": Key(
            str, "", "bearer token for mutating calls (empty: <data_dir>/api-token)"
        ),
        "max_body_bytes": Key(int, 16384, "largest request body accepted", _at_least(64)),
        "health_cache_ms": Key(
            float, 100.0, "GET /health re-evaluates at most this often (0: every request)",
            _at_least(0.0),
        ),
    },
    "systemd": {
        "user": Key(str, "mxrc", "User= of the units (tools/install creates it)", _node_id),
        "group": Key(str, "mxrc", "Group= of the units", _node_id),
        "watchdog_s": Key(
            float, 5.0, "WatchdogSec= of both services (pinged at half of it)", _at_least(1.0)
        ),
        "restart_sec": Key(float, 5.0, "RestartSec= (Restart=on-failure)", _at_least(0.1)),
        "start_limit_burst": Key(
            int, 5, "StartLimitBurst=: restarts allowed within the interval", _at_least(1)
        ),
        "start_limit_interval_s": Key(
            float, 60.0, "StartLimitIntervalSec= of that burst", _at_least(1.0)
        ),
        "start_timeout_s": Key(float, 60.0, "TimeoutStartSec= (until READY=1)", _at_least(1.0)),
        "stop_timeout_s": Key(float, 30.0, "TimeoutStopSec=", _at_least(1.0)),
        "rt_cpu_quota_percent": Key(int, 200, "CPUQuota= of mxrc-rt, in percent", _at_least(1)),
        "rt_memory_max": Key(
            str, "2G", "MemoryMax= of mxrc-rt (bytes, or K/M/G/T suffixed)", _size
        ),
        "ip_allow": Key(
            list, [], "more IPAddressAllow= prefixes for nonrt and the monitor (clients)",
            _strings,
        ),
        "monitor_host": Key(str, "127.0.0.1", "address of mxrc monitor's /metrics"),
        "monitor_port": Key(int, 9558, "port of mxrc monitor's /metrics", _between(1, 65535)),
    },
    "logging": {
        "level": Key(
            str, "info", "least severe level logged",
            _one_of("debug", "info", "warning", "error", "critical"),
        ),
        "queue_capacity": Key(
            int, 8192, "log records waiting for the writer thread (oldest dropped when full)",
            _at_least(16),
        ),
        "stderr": Key(
            str, "auto",
            "stderr sink: ecs (JSON lines), text, off; auto: off when journald takes the "
            "records, text on a terminal, ecs otherwise",
            _one_of("auto", "ecs", "text", "off"),
        ),
        "journald": Key(
            str, "auto",
            "journald's native protocol: on, off; auto: on when stderr is the journal "
            "(JOURNAL_STREAM)",
            _one_of("auto", "on", "off"),
        ),
        "file": Key(
            str, "",
            "rotating ECS JSON-lines file per process, e.g. 'logs/{process}.log' ({process}: "
            "mxrc-nonrt, mxrc-rt; relative: to node.data_dir); '' off",
            _per_process_file,
        ),
        "file_max_bytes": Key(
            int, 10 * 1024 * 1024, "rotate the log file at this size", _at_least(4096)
        ),
        "file_backups": Key(int, 5, "rotated log files kept", _at_least(1)),
    },
    "tracing": {
        "sample_ratio": Key(
            float, 0.01,
            "fraction of new traces recorded (parent-based: a sampled caller is always "
            "followed); changeable at run time through the admin API",
            lambda v: None if 0.0 <= v <= 1.0 else "must be in 0..1",
        ),
    },
    "health": {
        "window_s": Key(float, 10.0, "window of the deadline-miss rate", _at_least(0.1)),
        "miss_rate_unhealthy": Key(
            float, 0.001, "miss rate (misses/cycles) above which the node is unhealthy", _fraction
        ),
        "bus_fill_degraded": Key(
            float, 0.9, "EventBus queue fill above which the node is degraded", _fraction
        ),
        "ring_stall_s": Key(
            float, 1.0, "no new ring record for this long: shared memory unhealthy",
            _at_least(0.01)
        ),
    },
}


# --- [datastore]: a list of key declarations, which the flat schema above cannot hold ---

#: The data store's keys unless ``[[datastore.keys]]`` declares them. nonrt and the RT
#: process must be started with the same list: a segment whose table differs in any key
#: is refused at attach, naming the key.
DEFAULT_DATASTORE_KEYS: tuple[Mapping[str, Any], ...] = (
    {"name": "setpoint", "type": "f64", "writer": "nonrt", "critical": False},
    {"name": "joint_position", "type": "f64", "writer": "rt", "critical": False},
    {"name": "tracking_error", "type": "f64", "writer": "rt", "critical": False},
)
#: Keys the RT process writes every cycle: every key list must declare them like this.
REQUIRED_RT_KEYS: tuple[str, ...] = ("joint_position", "tracking_error")
DATASTORE_FIELDS: tuple[str, ...] = ("name", "type", "writer", "critical")
DATASTORE_TYPES = "f64, i64, bool or f64[N] with N in 1..64"
DATASTORE_WRITERS: tuple[str, ...] = ("nonrt", "rt")
_KEY_NAME = re.compile(r"[a-z_][a-z0-9_.]{0,63}")
_KEY_TYPE = re.compile(r"(?:f64|i64|bool|f64\[([1-9][0-9]?)\])")


def _datastore_entry(where: str, entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a table of {', '.join(DATASTORE_FIELDS)}")
    extra = sorted(set(entry) - set(DATASTORE_FIELDS))
    if extra:
        raise ConfigError(
            f"{where}.{extra[0]}: unknown setting; settings: {', '.join(DATASTORE_FIELDS)}"
        )
    for field in ("name", "type", "writer"):
        if field not in entry:
            raise ConfigError(f"{where}.{field}: missing (every key needs name, type, writer)")
        if not isinstance(entry[field], str):
            raise ConfigError(
                f"{where}.{field}: expected str, got {type(entry[field]).__name__} "
                f"{entry[field]!r}"
            )
    name, type_, writer = entry["name"], entry["type"], entry["writer"]
    if not _KEY_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}.name: {name!r} must be 1-64 characters of lower-case letters, digits, "
            "'_' or '.', starting with a letter or '_'"
        )
    match = _KEY_TYPE.fullmatch(type_)
    if match is None or (match.group(1) is not None and int(match.group(1)) > 64):
        raise ConfigError(f"{where}.type: {type_!r} must be one of {DATASTORE_TYPES}")
    if writer not in DATASTORE_WRITERS:
        raise ConfigError(f"{where}.writer: {writer!r} must be 'nonrt' or 'rt'")
    critical = entry.get("critical", False)
    if not isinstance(critical, bool):
        raise ConfigError(f"{where}.critical: expected true or false, got {critical!r}")
    return {"name": name, "type": type_, "writer": writer, "critical": critical}


def _datastore(source: str, given: Any) -> dict[str, Any]:
    """Validate ``[datastore]``: ``keys`` is an array of tables (``[[datastore.keys]]``)
    or a table of tables keyed by name (``[datastore.keys.setpoint]``)."""
    if not isinstance(given, dict):
        raise ConfigError(f"{source}: datastore must be a table, got {given!r}")
    extra = sorted(set(given) - {"keys"})
    if extra:
        raise ConfigError(f"{source}: unknown key datastore.{extra[0]}; keys of [datastore]: keys")
    raw = given.get("keys", DEFAULT_DATASTORE_KEYS)
    entries: list[tuple[str, Any]]
    if isinstance(raw, dict):
        entries = []
        for name, entry in raw.items():
            where = f"{source}: datastore.keys.{name}"
            if isinstance(entry, dict) and "name" in entry and entry["name"] != name:
                raise ConfigError(f"{where}.name: {entry['name']!r} differs from the table name")
            entries.append((where, {**entry, "name": name} if isinstance(entry, dict) else entry))
    elif isinstance(raw, list | tuple):
        entries = [(f"{source}: datastore.keys[{i}]", e) for i, e in enumerate(raw)]
    else:
        raise ConfigError(
            f"{source}: datastore.keys: expected an array of tables ([[datastore.keys]]), "
            f"got {type(raw).__name__} {raw!r}"
        )
    if not entries:
        raise ConfigError(f"{source}: datastore.keys: at least one key must be declared")
    keys: list[dict[str, Any]] = []
    for where, entry in entries:
        key = _datastore_entry(where, entry)
        if any(k["name"] == key["name"] for k in keys):
            raise ConfigError(f"{where}.name: {key['name']!r} is declared twice")
        keys.append(key)
    by_name = {k["name"]: k for k in keys}
    for name in REQUIRED_RT_KEYS:
        required = by_name.get(name)
        if required is None or required["type"] != "f64" or required["writer"] != "rt":
            found = (
                "missing"
                if required is None
                else f"declared {required['type']}, writer {required['writer']!r}"
            )
            raise ConfigError(
                f"{source}: datastore.keys: the RT process writes {name!r} every cycle, so "
                f'it must be declared with type "f64", writer "rt" ({found})'
            )
    return {"keys": tuple(keys)}


@dataclass(frozen=True)
class Config:
    values: Mapping[str, Mapping[str, Any]]
    source: str

    def __getitem__(self, dotted: str) -> Any:
        section, key = dotted.split(".", 1)
        return self.values[section][key]

    @property
    def node_id(self) -> str:
        return str(self["node.id"])

    @property
    def data_dir(self) -> Path:
        return Path(self["node.data_dir"])


def _coerce(where: str, spec: Key, value: Any) -> Any:
    if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, spec.kind) or isinstance(value, bool) != (spec.kind is bool):
        raise ConfigError(
            f"{where}: expected {spec.kind.__name__}, got {type(value).__name__} {value!r}"
        )
    problem = spec.check(value) if spec.check else None
    if problem:
        raise ConfigError(f"{where}: {value!r} {problem}")
    return value


def build_config(doc: Mapping[str, Any], source: str = "defaults") -> Config:
    """Validate a decoded TOML document (possibly empty) against :data:`SCHEMA`."""
    sections = [*SCHEMA, "datastore"]
    unknown = sorted(set(doc) - set(sections))
    if unknown:
        raise ConfigError(
            f"{source}: unknown section [{unknown[0]}]; sections: {', '.join(sections)}"
        )
    values: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        given = doc.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{source}: {section} must be a table, got {given!r}")
        extra = sorted(set(given) - set(keys))
        if extra:
            raise ConfigError(
                f"{source}: unknown key {section}.{extra[0]}; keys of [{section}]: "
                f"{', '.join(keys)}"
            )
        values[section] = {
            name: _coerce(f"{source}: {section}.{name}", spec, given.get(name, spec.default))
            for name, spec in keys.items()
        }
    values["datastore"] = _datastore(source, doc.get("datastore", {}))
    _check_budget(source, values["rt"]["budget_us"], values["cycle"]["period_ms"])
    _check_ha(source, values["ha"], values["node"]["id"])
    return Config(values, source)


def _check_budget(source: str, budget_us: int, period_ms: float) -> None:
    """Work ending past the next release has already cost a period (the cycle skips
    it), so a budget beyond the period would hide exactly the overruns it is for."""
    period_us = period_ms * 1000
    if budget_us > period_us:
        raise ConfigError(
            f"{source}: rt.budget_us: {budget_us} exceeds the cycle period "
            f"(cycle.period_ms = {period_ms}, {period_us:g} µs); set it to at most "
            f"{int(period_us)}, or lengthen the period"
        )


def _check_ha(source: str, ha: Mapping[str, Any], node_id: str) -> None:
    """The HA keys constrain each other; say which one to change."""
    try:
        LeaseTerms(ha["lease_ttl_s"], ha["renew_interval_s"], ha["safety_margin_s"])
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if ha["request_timeout_s"] >= ha["renew_interval_s"]:
        raise ConfigError(
            f"{source}: ha.request_timeout_s: {ha['request_timeout_s']} must be shorter than "
            f"ha.renew_interval_s ({ha['renew_interval_s']}), or one slow call delays renewal"
        )
    try:
        members = parse_members(ha["members"])
    except ValueError as exc:
        raise ConfigError(f"{source}: ha.members: {exc}") from None
    try:
        endpoints = [parse_address(e) for e in ha["etcd_endpoints"]]
    except ValueError as exc:
        raise ConfigError(f"{source}: ha.etcd_endpoints: {exc}") from None
    if ha["backend"] == "peers":
        if node_id not in {m.node_id for m in members}:
            listed = ", ".join(m.node_id for m in members) or "none"
            raise ConfigError(
                f"{source}: ha.members: this node ({node_id!r}, node.id) is not listed "
                f"(listed: {listed}); the peers backend needs every member, this one too"
            )
        if not 1 <= len(members) <= MAX_PEERS:
            raise ConfigError(
                f"{source}: ha.members: {len(members)} members; the peers backend takes "
                f"1 to {MAX_PEERS} (beyond a handful, use ha.backend = \"etcd\")"
            )
    if ha["backend"] == "etcd" and not endpoints:
        raise ConfigError(f"{source}: ha.etcd_endpoints: empty; name at least one host:port")


def load_config(path: Path | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read ``path`` (or defaults when None) and apply ``{"section.key": value}`` overrides
    (from command-line flags), validating the result as one object."""
    doc: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: configuration file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        doc.setdefault(section, {})[key] = value
    return build_config(doc, source)


def _toml(value: Any) -> str:
    """A default as it is written in a TOML file (so the reference can be pasted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def describe_defaults() -> str:
    """The configuration reference, for ``--help`` and the README."""
    lines = []
    for section, keys in SCHEMA.items():
        lines.append(f"[{section}]")
        for name, spec in keys.items():
            setting = f"{name} = {_toml(spec.default)}"
            lines.append(f"  {setting:<32} # {spec.help}")
    lines.append("[datastore]")
    lines.append("# one [[datastore.keys]] per data-store key, the same for nonrt and mxrc rt:")
    lines.append(f"#   type {DATASTORE_TYPES}; writer nonrt or rt;")
    lines.append("#   critical = true: its changes go through the event log (non-RT side).")
    lines.append(f"# {' and '.join(REQUIRED_RT_KEYS)} (f64, writer rt) must be declared.")
    for key in DEFAULT_DATASTORE_KEYS:
        lines.append("[[datastore.keys]]")
        lines.extend(f"  {field} = {_toml(key[field])}" for field in DATASTORE_FIELDS)
    return "\n".join(lines)
