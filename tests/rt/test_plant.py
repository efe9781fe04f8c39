"""The default control law: motor physics, PID tracking, and loading laws by path."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mxrc.errors import ConfigError
from mxrc.rt.control import DEFAULT_CONTROL_LAW, ControlLaw, load_control_law
from mxrc.rt.cycle import CycleInfo
from mxrc.rt.plant import DcMotorJoint, MotorParams, PointToPoint, SimulatedJoint

PERIOD_S = 0.001


def simulate(law: SimulatedJoint, seconds: float, skip: set[int] | None = None) -> None:
    info = CycleInfo(int(PERIOD_S * 1e9))
    for tick in range(int(seconds / PERIOD_S)):
        if skip and tick in skip:
            continue
        info.tick = tick
        law.step(info)


def test_motor_reaches_the_steady_speed_the_equations_give() -> None:
    p = MotorParams()
    joint = DcMotorJoint(p)
    for _ in range(2000):  # 2 s ≫ the 48 ms mechanical time constant
        joint.step(12.0, PERIOD_S)
    # Steady state: Kt·i = b·w + Fc and 12 V = R·i + Ke·w.
    k, r = p.torque_constant, p.resistance_ohm
    expected = (12.0 * k - r * p.coulomb) / (k * k + r * p.viscous)
    assert joint.velocity == pytest.approx(expected, rel=1e-3)
    assert joint.current == pytest.approx((12.0 - k * expected) / r, rel=1e-3)


def test_static_friction_holds_below_breakaway_torque() -> None:
    p = MotorParams()
    joint = DcMotorJoint(p)
    volts = 0.9 * p.coulomb / p.torque_constant * p.resistance_ohm  # 90 % of breakaway
    for _ in range(500):
        joint.step(volts, PERIOD_S)
    assert joint.position == 0.0 and joint.velocity == 0.0


@pytest.mark.parametrize("trajectory", ["point_to_point", "sine"])
def test_pid_tracks_the_trajectory_after_settling(trajectory: str) -> None:
    law = SimulatedJoint(PERIOD_S, trajectory=trajectory)
    simulate(law, 4.0)
    assert law.tracking.count > 3000
    assert law.tracking.max_abs < 0.004  # rad, about ten encoder counts
    assert law.tracking.rms < 0.001


def test_point_to_point_settles_at_the_goal() -> None:
    law = SimulatedJoint(PERIOD_S, move_s=0.5, dwell_s=0.5, amplitude_rad=1.0)
    simulate(law, 0.95)  # end of the first dwell
    assert law.trajectory.position == 1.0
    assert abs(law.plant.position - 1.0) < 3 * law.resolution


@pytest.mark.parametrize(
    "gains",
    [{"kp": 150_000.0}, {"kp": 1500.0}, {"kd": 900.0}, {"kp": -150.0, "ki": 0.0}],
    ids=["kp×1000", "kp×10", "kd×1000", "negative"],
)
def test_absurd_gains_do_not_track(gains: dict[str, float]) -> None:
    law = SimulatedJoint(PERIOD_S, **gains)  # type: ignore[arg-type]
    simulate(law, 4.0)
    assert law.tracking.max_abs > 0.05  # an order of magnitude past the good bound


def test_skipped_cycles_show_up_as_tracking_error() -> None:
    good = SimulatedJoint(PERIOD_S)
    simulate(good, 4.0)
    late = SimulatedJoint(PERIOD_S)
    # Five consecutive periods lost every 100 ms: the joint coasts on the held output.
    simulate(late, 4.0, skip={t for t in range(4000) if t % 100 in (50, 51, 52, 53, 54)})
    assert late.tracking.max_abs > 3 * good.tracking.max_abs
    assert late._plant_tick == 3999  # the model still integrated every period


def test_hold_safe_zeroes_the_output() -> None:
    law = SimulatedJoint(PERIOD_S)
    simulate(law, 0.3)  # mid-move: the controller is pushing
    assert abs(law.voltage) > 0.1
    law.hold_safe()
    info = CycleInfo(int(PERIOD_S * 1e9))
    info.tick = 300
    law.step(info)
    assert law._applied == 0.0 and law.status()["safe"] is True


def test_minimum_jerk_starts_and_ends_at_rest() -> None:
    traj = PointToPoint(2.0, move_s=1.0, dwell_s=0.0)
    traj.sample(0.0)
    assert (traj.position, traj.velocity) == (0.0, 0.0)
    traj.sample(0.5)
    assert traj.position == pytest.approx(1.0) and traj.velocity == pytest.approx(3.75)
    traj.sample(0.999999)
    assert traj.position == pytest.approx(2.0) and abs(traj.velocity) < 1e-6
    traj.sample(1.5)  # second leg goes back
    assert traj.position == pytest.approx(1.0) and traj.velocity == pytest.approx(-3.75)
    with pytest.raises(ValueError, match="move_s"):
        PointToPoint(1.0, 0.0, 0.0)


# --- loading a control law from configuration -----------------------------------------


def test_default_law_loads_by_path() -> None:
    law = load_control_law(DEFAULT_CONTROL_LAW, PERIOD_S, {"kp": 100.0, "trajectory": "sine"})
    assert isinstance(law, SimulatedJoint)
    assert law.pid.kp == 100.0 and law.period_s == PERIOD_S


@pytest.fixture
def user_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "lawpkg").mkdir()
    (tmp_path / "lawpkg" / "__init__.py").write_text("")
    (tmp_path / "lawpkg" / "good.py").write_text(
        "from mxrc.rt.control import ControlLaw\n"
        "class Law(ControlLaw):\n"
        "    def read_sensors(self, info): pass\n"
        "    def compute(self, info): pass\n"
        "    def write_actuators(self, info): pass\n"
        "class NotALaw:\n"
        "    pass\n"
    )
    (tmp_path / "lawpkg" / "broken.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "lawpkg" / "raises.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("lawpkg")]:
        del sys.modules[name]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("lawpkg.good", "expected 'package.module:Class'"),
        ("lawpkg.good:Law:x", "expected 'package.module:Class'"),
        ("lawpkg.nothere:Law", "no module named 'lawpkg.nothere'"),
        ("nopkg_xyz.mod:Law", "no module named 'nopkg_xyz'"),
        ("lawpkg.broken:Law", "importing 'lawpkg.broken' failed: No module named"),
        ("lawpkg.raises:Law", "importing 'lawpkg.raises' failed: RuntimeError: boom at import"),
        ("lawpkg.good:Missing", "module 'lawpkg.good' has no attribute 'Missing'"),
        ("lawpkg.good:NotALaw", "'NotALaw' is not a subclass of mxrc.rt.control.ControlLaw"),
        ("lawpkg.good:ControlLaw", "cannot construct ControlLaw with no params"),
    ],
)
def test_load_errors_name_the_path(user_modules: Path, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_control_law(path, PERIOD_S)
    assert str(err.value).startswith(f"control law {path!r}: ")
    assert message in str(err.value)


def test_user_law_loads_and_bad_params_are_named(user_modules: Path) -> None:
    law = load_control_law("lawpkg.good:Law", PERIOD_S)
    assert isinstance(law, ControlLaw)
    law.step(CycleInfo(1_000_000))
    with pytest.raises(ConfigError, match=r"cannot construct SimulatedJoint with gain=3"):
        load_control_law(DEFAULT_CONTROL_LAW, PERIOD_S, {"gain": 3})
    with pytest.raises(ConfigError, match="trajectory must be"):
        load_control_law(DEFAULT_CONTROL_LAW, PERIOD_S, {"trajectory": "zigzag"})


def test_coasting_over_a_gap_matches_stepping_through_it() -> None:
    stepped, coasted = DcMotorJoint(), DcMotorJoint()
    for _ in range(200):
        stepped.step(6.0, PERIOD_S)
    coasted.coast(6.0, 200, PERIOD_S)
    assert coasted.position == pytest.approx(stepped.position, rel=0.02)
    assert coasted.velocity == pytest.approx(stepped.velocity, rel=0.01)
