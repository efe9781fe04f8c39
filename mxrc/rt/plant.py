"""The default control law: a simulated joint under PID position control.

Until real hardware is attached the RT cycle still needs something worth timing and a
result worth checking, so the default law closes a loop around a model: a DC motor
(armature resistance and inductance, back-EMF) driving an inertia with viscous and
Coulomb friction, integrated every cycle, tracking a smooth trajectory. The tracking
error is measured, so a late or skipped cycle shows up as a number a test or an operator
can read, not only as a latency figure.

The model and the controller are plain arithmetic on floats (no I/O, no clock): the
simulation time is tick × period, so a run is reproducible regardless of how late the
thread woke, and the maths can be tested without a thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mxrc.rt.control import ControlLaw

if TYPE_CHECKING:
    from mxrc.rt.cycle import CycleInfo


MAX_COAST_PERIODS = 1000  # longer gaps are cut short: bounded work per cycle


@dataclass(frozen=True)
class MotorParams:
    """A small servo motor with a geared load, in SI units (reflected to the motor)."""

    resistance_ohm: float = 1.2
    inductance_h: float = 0.5e-3
    torque_constant: float = 0.05  # N·m/A, equal to the back-EMF constant in V·s/rad
    inertia: float = 1.0e-4  # kg·m², rotor plus reflected load
    viscous: float = 2.0e-5  # N·m·s/rad
    coulomb: float = 5.0e-3  # N·m
    supply_v: float = 24.0


class DcMotorJoint:
    """State (angle, velocity, current) advanced in sub-steps.

    The electrical time constant L/R (0.4 ms) is shorter than the 1 ms cycle, so an
    explicit Euler step for the current would be unstable at the cycle period. The
    current is instead advanced exactly for a velocity held over the sub-step (an
    exponential decay towards (V − Ke·ω)/R), which is stable for any step; the mechanics
    (time constant ≈ 50 ms) use semi-implicit Euler. Ten sub-steps per cycle keep the
    coupling error small; :meth:`coast` uses one per period so catching up after a long
    stall costs a bounded few microseconds per lost period. Coulomb friction holds the
    joint still while the motor torque is below it, instead of flipping sign every step
    around zero velocity.
    """

    __slots__ = ("_decay", "current", "p", "position", "substeps", "velocity")

    def __init__(self, params: MotorParams | None = None, substeps: int = 10) -> None:
        self.p = params or MotorParams()
        self.substeps = substeps
        self.position = 0.0
        self.velocity = 0.0
        self.current = 0.0
        self._decay: dict[float, float] = {}  # step length → exp(−h·R/L), computed once

    def step(self, voltage: float, dt: float) -> None:
        self._advance(voltage, dt / self.substeps, self.substeps)

    def coast(self, voltage: float, periods: int, dt: float) -> None:
        """``periods`` cycle periods under a held voltage, one sub-step each."""
        self._advance(voltage, dt, periods)

    def _advance(self, voltage: float, h: float, steps: int) -> None:
        p = self.p
        v = max(-p.supply_v, min(p.supply_v, voltage))
        decay = self._decay.get(h)
        if decay is None:
            decay = self._decay[h] = math.exp(-h * p.resistance_ohm / p.inductance_h)
        i, w, x = self.current, self.velocity, self.position
        for _ in range(steps):
            settled = (v - p.torque_constant * w) / p.resistance_ohm
            i = settled + (i - settled) * decay
            torque = p.torque_constant * i
            if w == 0.0 and abs(torque) <= p.coulomb:
                continue  # static friction holds
            direction = w if w != 0.0 else torque
            friction = p.viscous * w + math.copysign(p.coulomb, direction)
            w_next = w + h * (torque - friction) / p.inertia
            if w != 0.0 and w_next * w < 0.0 and abs(torque) <= p.coulomb:
                w_next = 0.0  # friction stops the joint; it cannot reverse it
            w = w_next
            x += h * w
        self.current, self.velocity, self.position = i, w, x


class Pid:
    """PID with derivative on the velocity error and integrator clamping.

    The derivative uses (reference velocity − filtered measured velocity) rather than the
    difference of errors: the trajectory's velocity is known exactly, and differentiating
    a quantised encoder every millisecond would mostly amplify its steps. The integrator
    stops while the output is saturated in the direction it would push (anti-windup).
    """

    def __init__(
        self,
        kp: float,
        ki: float,
        kd: float,
        dt: float,
        limit: float,
        velocity_filter_hz: float = 150.0,
    ) -> None:
        self.kp, self.ki, self.kd, self.dt, self.limit = kp, ki, kd, dt, limit
        tau = 1.0 / (2.0 * math.pi * velocity_filter_hz)
        self._alpha = dt / (tau + dt)
        self.integral = 0.0
        self.velocity = 0.0
        self._last: float | None = None

    def update(self, reference: float, reference_velocity: float, measured: float) -> float:
        if self._last is not None:
            raw = (measured - self._last) / self.dt
            self.velocity += self._alpha * (raw - self.velocity)
        self._last = measured
        error = reference - measured
        unclamped = self.kp * error + self.integral + self.kd * (reference_velocity - self.velocity)
        out = max(-self.limit, min(self.limit, unclamped))
        if out == unclamped or (unclamped > out) != (error > 0.0):
            self.integral += self.ki * error * self.dt
        return out


class PointToPoint:
    """Back and forth between 0 and ``amplitude`` with minimum-jerk moves and dwells.

    Minimum-jerk (the quintic 10s³ − 15s⁴ + 6s⁵) starts and ends at rest with zero
    acceleration, so the reference itself never asks for infinite torque.
    """

    def __init__(self, amplitude: float, move_s: float, dwell_s: float) -> None:
        if move_s <= 0 or dwell_s < 0:
            raise ValueError(f"move_s must be > 0 and dwell_s ≥ 0, got {move_s}, {dwell_s}")
        self.amplitude, self.move_s, self.dwell_s = amplitude, move_s, dwell_s
        self.position = 0.0
        self.velocity = 0.0

    def sample(self, t: float) -> None:
        leg = self.move_s + self.dwell_s
        n, within = divmod(t, leg)
        start, goal = (0.0, self.amplitude) if int(n) % 2 == 0 else (self.amplitude, 0.0)
        if within >= self.move_s:
            self.position, self.velocity = goal, 0.0
            return
        s = within / self.move_s
        shape = s * s * s * (10.0 - 15.0 * s + 6.0 * s * s)
        rate = 30.0 * s * s * (1.0 - s) * (1.0 - s) / self.move_s
        self.position = start + (goal - start) * shape
        self.velocity = (goal - start) * rate


class Sine:
    def __init__(self, amplitude: float, frequency_hz: float) -> None:
        self.amplitude, self.omega = amplitude, 2.0 * math.pi * frequency_hz
        self.position = 0.0
        self.velocity = 0.0

    def sample(self, t: float) -> None:
        self.position = self.amplitude * math.sin(self.omega * t)
        self.velocity = self.amplitude * self.omega * math.cos(self.omega * t)


class TrackingError:
    """Tracking error after a settling time: worst and RMS, kept without a sample list."""

    __slots__ = ("count", "last", "max_abs", "settle_s", "sum_sq")

    def __init__(self, settle_s: float) -> None:
        self.settle_s = settle_s
        self.last = 0.0
        self.max_abs = 0.0
        self.sum_sq = 0.0
        self.count = 0

    def observe(self, t: float, error: float) -> None:
        self.last = error
        if t < self.settle_s:
            return
        self.count += 1
        self.sum_sq += error * error
        self.max_abs = max(self.max_abs, abs(error))

    @property
    def rms(self) -> float:
        return math.sqrt(self.sum_sq / self.count) if self.count else 0.0


class SimulatedJoint(ControlLaw):
    """PID position control of :class:`DcMotorJoint`, with back-EMF feed-forward.

    Default gains were tuned for the default motor at a 1 ms period: the worst tracking
    error after settling is about 1.6 mrad on the default point-to-point profile (four
    encoder counts). Raising kp tenfold already destabilises the sampled loop, which is
    why the gains belong to the period they were tuned for.
    """

    def __init__(
        self,
        period_s: float,
        *,
        kp: float = 150.0,
        ki: float = 2000.0,
        kd: float = 0.9,
        trajectory: str = "point_to_point",
        amplitude_rad: float = 1.0,
        move_s: float = 0.5,
        dwell_s: float = 0.5,
        sine_hz: float = 0.5,
        encoder_counts_per_rev: int = 16384,
        settle_s: float = 0.5,
        motor: MotorParams | None = None,
    ) -> None:
        super().__init__(period_s)
        self.plant = DcMotorJoint(motor)
        self.pid = Pid(kp, ki, kd, period_s, self.plant.p.supply_v)
        self.trajectory: PointToPoint | Sine
        if trajectory == "point_to_point":
            self.trajectory = PointToPoint(amplitude_rad, move_s, dwell_s)
        elif trajectory == "sine":
            self.trajectory = Sine(amplitude_rad, sine_hz)
        else:
            raise ValueError(f"trajectory must be 'point_to_point' or 'sine', got {trajectory!r}")
        self.resolution = 2.0 * math.pi / encoder_counts_per_rev
        self.tracking = TrackingError(settle_s)
        self.measured = 0.0
        self.voltage = 0.0
        self.safe = False
        self._applied = 0.0  # the output the joint sees until the next write
        self._plant_tick = 0  # the tick up to which the model has been integrated

    def read_sensors(self, info: CycleInfo) -> None:
        # The physical joint does not wait for the controller: it moves under the last
        # output (zero-order hold) for every period since that output, including periods
        # the cycle skipped after an overrun — which is how a late cycle shows up here.
        # Skipped periods are integrated coarsely so a long stall does not make the next
        # cycle long too.
        behind = info.tick - self._plant_tick
        if behind == 1:
            self.plant.step(self._applied, self.period_s)
        elif behind > 1:
            self.plant.coast(self._applied, min(behind, MAX_COAST_PERIODS), self.period_s)
        self._plant_tick = info.tick
        # A quantised encoder: the controller never sees the model's exact angle.
        self.measured = round(self.plant.position / self.resolution) * self.resolution

    def compute(self, info: CycleInfo) -> None:
        traj = self.trajectory
        traj.sample(info.time_s)
        feedforward = self.plant.p.torque_constant * traj.velocity
        self.voltage = self.pid.update(traj.position, traj.velocity, self.measured) + feedforward
        self.tracking.observe(info.time_s, traj.position - self.measured)

    def write_actuators(self, info: CycleInfo) -> None:
        self._applied = 0.0 if self.safe else self.voltage

    def hold_safe(self) -> None:
        self.safe = True
        self.voltage = 0.0
        self._applied = 0.0

    def resume(self) -> None:
        self.safe = False
        self.pid.integral = 0.0  # no wind-up carried over from the time outputs were held

    def status(self) -> dict[str, Any]:
        return {
            "position_rad": self.plant.position,
            "reference_rad": self.trajectory.position,
            "error_rad": self.tracking.last,
            "max_abs_error_rad": self.tracking.max_abs,
            "rms_error_rad": self.tracking.rms,
            "voltage_v": self.voltage,
            "safe": self.safe,
        }
