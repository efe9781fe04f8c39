from __future__ import annotations

from pathlib import Path

import pytest

from mxrc.config import SCHEMA, build_config, describe_defaults, load_config
from mxrc.errors import ConfigError


def test_defaults_are_valid_and_documented() -> None:
    config = build_config({})
    assert config.node_id == "node-1" and config.data_dir == Path("var")
    text = describe_defaults()
    for section, keys in SCHEMA.items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"{key} = " in text


def test_file_and_overrides_merge(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[node]\nid = "cell-7"\n[checkpoint]\ninterval_s = 2\n')
    config = load_config(path, {"node.data_dir": "/srv/mxrc"})
    assert config.node_id == "cell-7"
    assert config["checkpoint.interval_s"] == 2.0
    assert config.data_dir == Path("/srv/mxrc")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"node": {"id": ""}}, "node.id: '' must be"),
        ({"cycle": {"period_ms": "fast"}}, "cycle.period_ms: expected float, got str"),
        ({"checkpoint": {"keep": True}}, "checkpoint.keep: expected int, got bool"),
        ({"cycle": {"frame": 3}}, "unknown key cycle.frame; keys of"),
        ({"hq": {}}, r"unknown section \[hq\]; sections: node, .*ha, api"),
        ({"node": 3}, "node must be a table"),
        ({"nonrt": {"cpus": "0-x"}}, "nonrt.cpus: '0-x' is not a CPU list"),
        ({"nonrt": {"cpus": "3-1"}}, "nonrt.cpus: '3-1' is not a CPU list .*bad CPU range"),
        (
            {"cycle": {"period_ms": 0.25}},  # the default budget, 500 µs, is two periods
            r"rt.budget_us: 500 exceeds the cycle period \(cycle.period_ms = 0.25, 250 µs\); "
            "set it to at most 250",
        ),
    ],
)
def test_errors_name_the_key(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(doc, "mxrc.toml")


def test_a_budget_of_one_whole_period_is_allowed() -> None:
    config = build_config({"cycle": {"period_ms": 0.25}, "rt": {"budget_us": 250}})
    assert config["rt.budget_us"] == 250


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    broken = tmp_path / "b.toml"
    broken.write_text("[node\n")
    with pytest.raises(ConfigError, match=r"b\.toml: not valid TOML"):
        load_config(broken)


def test_the_reference_is_valid_toml_giving_the_defaults() -> None:
    import tomllib

    assert build_config(tomllib.loads(describe_defaults())) == build_config({})


def _keys(*extra: dict[str, object]) -> dict[str, object]:
    base: list[dict[str, object]] = [
        {"name": "joint_position", "type": "f64", "writer": "rt"},
        {"name": "tracking_error", "type": "f64", "writer": "rt"},
    ]
    return {"datastore": {"keys": [*base, *extra]}}


def test_datastore_keys_are_read_from_an_array_of_tables(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        "[[datastore.keys]]\n"
        'name = "setpoint"\ntype = "f64"\nwriter = "nonrt"\ncritical = true\n'
        "[[datastore.keys]]\n"
        'name = "joint_position"\ntype = "f64"\nwriter = "rt"\n'
        "[[datastore.keys]]\n"
        'name = "tracking_error"\ntype = "f64"\nwriter = "rt"\n'
        "[[datastore.keys]]\n"
        'name = "gains"\ntype = "f64[6]"\nwriter = "nonrt"\n'
    )
    keys = load_config(path)["datastore.keys"]
    assert [(k["name"], k["type"], k["writer"], k["critical"]) for k in keys] == [
        ("setpoint", "f64", "nonrt", True),
        ("joint_position", "f64", "rt", False),
        ("tracking_error", "f64", "rt", False),
        ("gains", "f64[6]", "nonrt", False),
    ]
    assert [k["name"] for k in build_config({})["datastore.keys"]] == [
        "setpoint",
        "joint_position",
        "tracking_error",
    ]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            _keys({"name": "kp", "type": "f32", "writer": "nonrt"}),
            r"datastore\.keys\[2\]\.type: 'f32' must be one of f64, i64, bool or f64\[N\]",
        ),
        (
            _keys({"name": "v", "type": "f64[65]", "writer": "nonrt"}),
            r"datastore\.keys\[2\]\.type: 'f64\[65\]' must be one of",
        ),
        (
            _keys({"name": "kp", "type": "f64", "writer": "both"}),
            r"datastore\.keys\[2\]\.writer: 'both' must be 'nonrt' or 'rt'",
        ),
        (
            _keys({"name": "kp", "type": "f64", "writer": "rt", "critical": "yes"}),
            r"datastore\.keys\[2\]\.critical: expected true or false",
        ),
        (_keys({"name": "kp", "writer": "rt"}), r"datastore\.keys\[2\]\.type: missing"),
        (
            _keys({"name": "Kp", "type": "f64", "writer": "rt"}),
            r"datastore\.keys\[2\]\.name: 'Kp' must be",
        ),
        (
            _keys({"name": "kp", "type": "f64", "writer": "rt", "unit": "rad"}),
            r"datastore\.keys\[2\]\.unit: unknown setting",
        ),
        (
            _keys({"name": "joint_position", "type": "f64", "writer": "rt"}),
            r"datastore\.keys\[2\]\.name: 'joint_position' is declared twice",
        ),
        (
            {"datastore": {"keys": [{"name": "setpoint", "type": "f64", "writer": "nonrt"}]}},
            r"datastore\.keys: the RT process writes 'joint_position' every cycle.*missing",
        ),
        (
            {
                "datastore": {
                    "keys": [
                        {"name": "joint_position", "type": "f64", "writer": "rt"},
                        {"name": "tracking_error", "type": "f64", "writer": "nonrt"},
                    ]
                }
            },
            r"'tracking_error' every cycle, so it must be declared with type \"f64\", "
            r"writer \"rt\" \(declared f64, writer 'nonrt'\)",
        ),
        ({"datastore": {"keys": []}}, r"datastore\.keys: at least one key"),
        ({"datastore": {"keys": 3}}, r"datastore\.keys: expected an array of tables"),
        ({"datastore": {"key": []}}, r"unknown key datastore\.key"),
    ],
)
def test_bad_datastore_keys_are_named(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(doc, "mxrc.toml")


@pytest.mark.parametrize(
    ("ha", "key"),
    [
        ({"lease_ttl_s": 1.0, "safety_margin_s": 1.0}, "ha.safety_margin_s"),
        ({"lease_ttl_s": 1.0, "renew_interval_s": 0.9}, "ha.renew_interval_s"),
    ],
)
def test_lease_keys_are_checked_together(ha: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        build_config({"ha": ha})


def test_unknown_ha_backend_lists_the_allowed_ones() -> None:
    with pytest.raises(ConfigError, match=r"ha\.backend: 'zookeeper' must be one of local"):
        build_config({"ha": {"backend": "zookeeper"}})


PEERS = ["node-1=127.0.0.1:7701", "node-2=127.0.0.1:7702", "node-3=127.0.0.1:7703"]


@pytest.mark.parametrize(
    ("ha", "message"),
    [
        ({"request_timeout_s": 0.5}, r"ha\.request_timeout_s: 0\.5 must be shorter than"),
        ({"backend": "peers"}, r"ha\.members: this node \('node-1', node\.id\) is not listed"),
        ({"members": ["node-1"]}, r"ha\.members: 'node-1' is not 'node-id=host:port'"),
        ({"members": ["n=localhost:99999"]}, r"ha\.members: 'localhost:99999': port must be"),
        ({"members": [*PEERS, "node-2=127.0.0.1:7709"]}, "'node-2' is listed twice"),
        ({"members": [7701]}, r"ha\.members: \[7701\] must be a list of strings"),
        ({"etcd_endpoints": ["etcd"]}, r"ha\.etcd_endpoints: 'etcd' is not host:port"),
        ({"backend": "etcd", "etcd_endpoints": []}, r"ha\.etcd_endpoints: empty"),
        ({"backend": "peers", "members": [f"n{i}=h:{i + 1}" for i in range(10)]}, "not listed"),
    ],
)
def test_ha_keys_are_checked_together(ha: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config({"ha": ha}, "mxrc.toml")


def test_peers_members_are_read() -> None:
    config = build_config({"ha": {"backend": "peers", "members": PEERS}})
    assert config["ha.members"] == PEERS
    too_many = [f"node-{i}=127.0.0.1:{7700 + i}" for i in range(1, 11)]
    with pytest.raises(ConfigError, match=r"10 members; the peers backend takes 1 to 9"):
        build_config({"ha": {"backend": "peers", "members": too_many}})
