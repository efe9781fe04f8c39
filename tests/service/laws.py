"""Control laws the tests load into a real ``mxrc rt`` through ``rt.control_law``."""

from __future__ import annotations

import time

from mxrc.rt.cycle import CycleInfo
from mxrc.rt.plant import SimulatedJoint


class OverrunningJoint(SimulatedJoint):
    """The default joint, but every computation takes 3 ms in a 1 ms period: each cycle
    ends far beyond the 500 µs budget, a genuine deadline-miss burst."""

    def compute(self, info: CycleInfo) -> None:
        super().compute(info)
        time.sleep(0.003)
