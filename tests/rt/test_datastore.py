"""The data store: key declarations and layout as pure logic, typed access with the
writer side enforced, a peer with another key table refused naming the key, and entries
never read torn while another process hammers them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pytest

from mxrc.errors import ConfigError
from mxrc.rt.datastore import (
    DataStore,
    DataStoreError,
    DataStoreSegment,
    KeySpec,
    KeyTable,
    Side,
    TornReadError,
    write_key_table,
)
from mxrc.rt.shm import LocalRegion, SegmentKind, ShmLayoutError
from tests.rt import CHILD_TIMED_OUT, children, segment_names, wait_until

CONFIG: dict[str, dict[str, object]] = {
    "setpoint": {"type": "f64", "writer": "nonrt", "critical": True},
    "kp": {"type": "f64", "writer": "nonrt"},
    "enabled": {"type": "bool", "writer": "nonrt", "critical": True},
    "mode_request": {"type": "i64", "writer": "nonrt"},
    "joint_position": {"type": "f64[6]", "writer": "rt"},
    "cycle_count": {"type": "i64", "writer": "rt"},
}


def table(config: dict[str, dict[str, object]] | None = None) -> KeyTable:
    return KeyTable.from_config(CONFIG if config is None else config)


def local_stores(
    keys: KeyTable | None = None,
) -> tuple[DataStore, DataStore, LocalRegion]:
    keys = keys or table()
    region = LocalRegion(keys.segment_layout())
    write_key_table(region, keys)
    return DataStore(region, keys, Side.NONRT), DataStore(region, keys, Side.RT), region


# --- declarations and layout ------------------------------------------------------------


def test_entries_are_cache_line_aligned_in_declaration_order() -> None:
    keys = table()
    offsets = [keys.offset(k.name) for k in keys.keys]
    assert offsets == sorted(offsets)
    assert all(o % 64 == 0 for o in offsets)
    assert keys.offset("joint_position") + 64 == keys.offset("cycle_count")  # 8 + 48 bytes
    assert keys.spec("setpoint").critical and not keys.spec("kp").critical
    assert keys.critical == ("setpoint", "enabled")
    layout = keys.segment_layout()
    assert layout.kind is SegmentKind.DATA_STORE
    assert layout.capacity == len(CONFIG)
    assert layout.hash_name == "key_table_hash"


def test_key_table_hash_covers_name_type_writer_and_order_but_not_critical() -> None:
    base = table().layout_hash
    changed_type: dict[str, dict[str, object]] = {
        **CONFIG,
        "kp": {"type": "i64", "writer": "nonrt"},
    }
    changed_writer: dict[str, dict[str, object]] = {**CONFIG, "kp": {"type": "f64", "writer": "rt"}}
    reordered = dict(reversed(list(CONFIG.items())))
    critical_only = {**CONFIG, "kp": {"type": "f64", "writer": "nonrt", "critical": True}}
    for other in (changed_type, changed_writer, reordered):
        assert table(other).layout_hash != base
    assert table(critical_only).layout_hash == base


@pytest.mark.parametrize(
    ("config", "complaint"),
    [
        ({"Bad Name": {"type": "f64", "writer": "rt"}}, "Bad Name"),
        ({"x": {"type": "f32", "writer": "rt"}}, "f32"),
        ({"x": {"type": "i64[3]", "writer": "rt"}}, "i64"),
        ({"x": {"type": "f64[0]", "writer": "rt"}}, "vector length"),
        ({"x": {"type": "f64[65]", "writer": "rt"}}, "vector length"),
        ({"x": {"type": "f64", "writer": "both"}}, "writer"),
        ({"x": {"type": "f64"}}, "writer"),
        ({"x": {"type": "f64", "writer": "rt", "critical": "yes"}}, "critical"),
        ({"x": {"type": "f64", "writer": "rt", "unit": "m"}}, "unit"),
        ({}, "at least one key"),
    ],
)
def test_bad_declarations_are_config_errors_naming_the_key(
    config: dict[str, dict[str, object]], complaint: str
) -> None:
    with pytest.raises(ConfigError, match=complaint):
        KeyTable.from_config(config)


def test_duplicate_keys_are_refused() -> None:
    spec = KeySpec("x", "f64", Side.RT)
    with pytest.raises(ConfigError, match="twice"):
        KeyTable([spec, spec])


def test_difference_names_the_key() -> None:
    mine = table()
    assert mine.difference(mine.text) is None
    other = table({**CONFIG, "kp": {"type": "i64", "writer": "nonrt"}})
    assert mine.difference(other.text) == "key 'kp' is f64 here but i64 in the segment"
    other = table({**CONFIG, "kp": {"type": "f64", "writer": "rt"}})
    assert "written by nonrt here but by rt" in (mine.difference(other.text) or "")
    missing = {k: v for k, v in CONFIG.items() if k != "enabled"}
    assert mine.difference(table(missing).text) == "key 'enabled' is not in the segment's table"
    extra = table({**CONFIG, "torque": {"type": "f64", "writer": "rt"}})
    assert mine.difference(extra.text) == "the segment has key(s) not declared here: torque"
    reordered = table(dict(reversed(list(CONFIG.items()))))
    assert "position 0 here but 5" in (mine.difference(reordered.text) or "")


# --- typed access, sides ------------------------------------------------------------------


def test_values_round_trip_by_name_and_by_handle() -> None:
    nonrt, rt, _region = local_stores()
    nonrt.set("setpoint", 1.25)
    nonrt.set("kp", 3)  # an int is a fine float
    nonrt.set("enabled", True)
    nonrt.set("mode_request", -(1 << 63))
    rt.set("joint_position", [0.5, -1, 2, 3, 4, 5])
    rt.set("cycle_count", (1 << 63) - 1)
    assert rt.get("setpoint") == 1.25 and rt.get("kp") == 3.0
    assert rt.get("enabled") is True
    assert rt.get("mode_request") == -(1 << 63)
    assert nonrt.get("joint_position") == (0.5, -1.0, 2.0, 3.0, 4.0, 5.0)
    assert nonrt.get("cycle_count") == (1 << 63) - 1
    h = rt.handle("setpoint", "f64")
    assert rt.read_f64(h) == 1.25
    out = [0.0] * 6
    assert nonrt.read_vector_into(nonrt.handle("joint_position", "f64[6]"), out)
    assert out == [0.5, -1.0, 2.0, 3.0, 4.0, 5.0]
    nan_handle = nonrt.handle("kp", "f64", for_write=True)
    nonrt.write_f64(nan_handle, math.inf)
    assert rt.read_f64(rt.handle("kp", "f64")) == math.inf


def test_version_counts_writes_so_nonrt_can_spot_critical_changes() -> None:
    nonrt, rt, _region = local_stores()
    h = rt.handle("setpoint", "f64")
    assert rt.version(h) == 0
    nonrt.set("setpoint", 1.0)
    nonrt.set("setpoint", 1.0)
    assert rt.version(h) == 2


def test_each_key_is_written_only_by_its_declared_side() -> None:
    nonrt, rt, _region = local_stores()
    with pytest.raises(DataStoreError, match="written by nonrt; this process is rt"):
        rt.handle("setpoint", "f64", for_write=True)
    with pytest.raises(DataStoreError, match="written by rt"):
        nonrt.set("joint_position", [0.0] * 6)
    rt.handle("setpoint", "f64")  # reading is fine


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("setpoint", "1.0", "float"),
        ("setpoint", True, "float"),
        ("enabled", 1, "bool"),
        ("mode_request", 1.5, "int"),
        ("mode_request", 1 << 63, "i64"),
        ("nope", 1.0, "no key 'nope'"),
    ],
)
def test_set_checks_values_against_the_declaration(
    name: str, value: object, complaint: str
) -> None:
    nonrt, _rt, _region = local_stores()
    with pytest.raises(DataStoreError, match=complaint):
        nonrt.set(name, value)  # type: ignore[arg-type]


def test_handles_check_the_type() -> None:
    _nonrt, rt, _region = local_stores()
    with pytest.raises(DataStoreError, match="is f64, not i64"):
        rt.handle("setpoint", "i64")
    with pytest.raises(DataStoreError, match=r"f64\[6\], not f64\[3\]"):
        rt.handle("joint_position", "f64[3]")


def test_vector_length_is_checked_so_no_write_spills_into_the_next_key() -> None:
    nonrt, rt, _region = local_stores()
    rt.set("cycle_count", 77)
    with pytest.raises(DataStoreError, match="6 floats"):
        rt.set("joint_position", [1.0, 2.0])
    handle = rt.handle("joint_position", "f64[6]", for_write=True)
    with pytest.raises(DataStoreError, match="vector of 6 values, not 7"):
        rt.write_vector(handle, [1.0] * 7)
    with pytest.raises(DataStoreError, match="vector of 6 values, not 5"):
        nonrt.read_vector_into(handle, [0.0] * 5)
    assert nonrt.get("cycle_count") == 77


def test_an_entry_left_odd_by_a_dead_writer_is_refused_then_recovered() -> None:
    nonrt, rt, region = local_stores()
    nonrt.set("setpoint", 2.5)
    h = rt.handle("setpoint", "f64")
    region.u64()[h] += 1  # killed after its odd store
    assert rt.read_f64(h) is None
    with pytest.raises(TornReadError, match="setpoint"):
        rt.get("setpoint")
    assert rt.failed_reads == 2
    nonrt.set("setpoint", 3.5)  # a restarted nonrt writes again
    assert rt.get("setpoint") == 3.5


# --- real segments, real processes ---------------------------------------------------------


def test_attach_with_a_different_key_table_is_refused_naming_the_key() -> None:
    with segment_names("ds") as (name,), DataStoreSegment.create(name, table()) as created:
        other = table({**CONFIG, "kp": {"type": "i64", "writer": "nonrt"}})
        with pytest.raises(ShmLayoutError, match="key 'kp' is i64 here but f64") as info:
            DataStoreSegment.attach(name, other)
        assert info.value.field == "key_table_hash"
        fewer = {k: v for k, v in CONFIG.items() if k != "kp"}
        with pytest.raises(ShmLayoutError, match="capacity"):  # size differs first
            DataStoreSegment.attach(name, table(fewer))
        with DataStoreSegment.attach(name, table()) as attached:
            created.store(Side.NONRT).set("kp", 4.0)
            assert attached.store(Side.RT).get("kp") == 4.0


def vector_of(k: int) -> list[float]:
    return [k + 0.5, -k, k * 2.0, k / 4, 1e9 + k, -(k * 3.0)]


def _hammer(name: str, limit_s: float) -> int:
    segment = DataStoreSegment.attach(name, table())
    store = segment.store(Side.RT)
    joints = store.handle("joint_position", "f64[6]", for_write=True)
    count = store.handle("cycle_count", "i64", for_write=True)
    deadline = time.monotonic() + limit_s
    k = 1
    while True:
        for _ in range(256):
            store.write_vector(joints, vector_of(k))
            store.write_i64(count, -k * 1_000_003)
            k += 1
        if time.monotonic() > deadline:
            return CHILD_TIMED_OUT


def _beyond(store: DataStore, handle: int, version: int) -> Callable[[], bool]:
    return lambda: store.version(handle) > version


def hammer_drill(seconds: float) -> None:
    with (
        children() as kids,
        segment_names("ds") as (name,),
        DataStoreSegment.create(name, table()) as segment,
    ):
        store = segment.store(Side.NONRT)
        joints = store.handle("joint_position", "f64[6]")
        count = store.handle("cycle_count", "i64")
        pid = kids.fork(lambda: _hammer(name, seconds + 30))
        wait_until(_beyond(store, joints, 100), 10, "the hammer to start")
        out = [0.0] * 6
        reads = failed = 0
        last = 0
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            for _ in range(500):
                if not store.read_vector_into(joints, out):
                    failed += 1
                    continue
                reads += 1
                k = int(out[0])
                assert out == vector_of(k), f"torn vector: {out}"
                assert k >= last, "went back in time"
                last = k
                value = store.read_i64(count)
                assert value is None or value % 1_000_003 == 0
        kids.kill(pid)
        assert kids.exit_code(pid) == -9
    print(f"data store hammer: {reads} consistent vector reads, {failed} gave up, k={last}")
    assert reads > 1000 and last > 1000, "the hammer did not overlap the reads"


def test_data_store_entry_is_never_read_torn() -> None:
    hammer_drill(seconds=2.0)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_data_store_hammer_long() -> None:
    hammer_drill(seconds=30.0)
