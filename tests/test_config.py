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
        ({"ha": {}}, r"unknown section \[ha\]"),
        ({"node": 3}, "node must be a table"),
    ],
)
def test_errors_name_the_key(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(doc, "mxrc.toml")


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
