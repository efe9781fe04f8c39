"""Config files for tests that start real nodes, and the timing they tolerate.

The deadline-miss rules (``health.miss_rate_unhealthy``, ``nonrt.fault_misses``) are
safety rules a real node must keep, and they are tested as such (``tests/service/
test_health.py`` with exact inputs, ``test_deadline_miss_burst_faults_the_node`` with a
law that really overruns). A test about something else — commands, traces, units, the
API — must not depend on how punctual a small shared test machine is: a VM's hypervisor
stalls the cycle (and cyclictest alike) for milliseconds at a time, and a run of them
would refuse or fault the start the test is about. Such tests take ``TOLERANT_TIMING``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Sections = Mapping[str, Mapping[str, Any]]

TOLERANT_TIMING: Sections = {
    "rt": {"budget_us": 1_000},  # the whole (default) period: only an overrun is a miss
    "health": {"miss_rate_unhealthy": 1.0},
    "nonrt": {"fault_misses": 1_000_000},
}


def merged(*layers: Sections) -> dict[str, dict[str, Any]]:
    """Sections merged key by key, later layers winning (a section is not replaced)."""
    doc: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, values in layer.items():
            doc.setdefault(section, {}).update(values)
    return doc


def toml_text(doc: Sections) -> str:
    """The TOML for flat sections of strings, booleans and numbers."""
    lines: list[str] = []
    for section, values in doc.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, str):
                lines.append(f"{key} = {quoted(value)}")
            else:
                lines.append(f"{key} = {value!r}")
    return "\n".join(lines) + "\n"


def quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
