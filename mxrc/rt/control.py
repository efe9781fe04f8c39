"""The control-law interface, and loading one from configuration by import path.

A control law is the only application code that runs inside the cycle. It is split in
three phases — read sensors, compute, write actuators — because the phases have
different failure and timing rules: reads and writes touch hardware (or shared memory)
and must happen at a fixed point in the cycle so output jitter stays small, while the
computation in between may vary. ``hold_safe`` is what the cycle calls when anything
fails: outputs go to their safe value before anyone gets to investigate.

Configuration names the class as ``"package.module:Class"``; every way that can go wrong
produces one :class:`~mxrc.errors.ConfigError` naming the path, so a typo in a unit
file is reported at start-up rather than as a traceback from inside the RT process.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mxrc.errors import ConfigError

if TYPE_CHECKING:
    from mxrc.rt.cycle import CycleInfo

DEFAULT_CONTROL_LAW = "mxrc.rt.plant:SimulatedJoint"


class ControlLaw(ABC):
    """Subclass this; the constructor receives the cycle period and the configured params."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        #: The fencing token of the lease that permits driving now, set by the cycle
        #: before :meth:`resume`. A law that commands a real actuator sends it with
        #: every command, so the actuator can refuse a deposed leader's writes.
        self.fencing_token = 0

    @abstractmethod
    def read_sensors(self, info: CycleInfo) -> None: ...

    @abstractmethod
    def compute(self, info: CycleInfo) -> None: ...

    @abstractmethod
    def write_actuators(self, info: CycleInfo) -> None: ...

    def hold_safe(self) -> None:  # noqa: B027 - optional hook; most laws have no outputs to hold
        """Drive outputs to their safe value; called when the cycle faults."""

    def resume(self) -> None:  # noqa: B027 - optional hook; stateless laws need nothing
        """Outputs may be driven again (the edge from holding to driving): clear what
        :meth:`hold_safe` latched and any state built up while holding (integrators)."""

    def status(self) -> dict[str, Any]:
        """Measured quantities for observers (read outside the cycle)."""
        return {}

    def step(self, info: CycleInfo) -> None:
        """The slot task: the three phases in order."""
        self.read_sensors(info)
        self.compute(info)
        self.write_actuators(info)


def _problem(path: str, what: str) -> ConfigError:
    return ConfigError(f"control law {path!r}: {what}")


def load_control_law(
    path: str, period_s: float, params: Mapping[str, Any] | None = None
) -> ControlLaw:
    """Import ``package.module:Class`` and construct it with ``period_s`` and ``params``."""
    module_name, sep, class_name = path.partition(":")
    if not sep or not module_name or not class_name or ":" in class_name:
        raise _problem(path, "expected 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise _problem(path, f"no module named {missing!r}") from None
        raise _problem(path, f"importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise _problem(
            path, f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise _problem(path, f"module {module_name!r} has no attribute {class_name!r}")
    if not isinstance(cls, type) or not issubclass(cls, ControlLaw):
        raise _problem(path, f"{class_name!r} is not a subclass of mxrc.rt.control.ControlLaw")
    kwargs = dict(params or {})
    try:
        law = cls(period_s, **kwargs)
    except (TypeError, ValueError) as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no params"
        raise _problem(path, f"cannot construct {class_name} with {given}: {exc}") from exc
    return law
