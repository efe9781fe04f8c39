"""What the admin API needs from the node, as an interface.

The API (:mod:`mxrc.service.api`) is written against :class:`AdminBackend` only; the
real implementation is :class:`mxrc.service.controller.Controller`. Keeping the seam
explicit lets the HTTP layer stay a thin translation (status codes, validation, auth)
and keeps every decision about state in one place.

Errors the API maps to status codes:

* :class:`mxrc.statemachine.TriggerRejected` → 409, with ``legal`` triggers;
* :class:`NotPermitted` → 403 (start on a node that is not leader with quorum);
* :class:`BadInput` → 400, naming the field.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from mxrc.errors import MxrcError
from mxrc.segments import Record
from mxrc.service.health import HealthReport
from mxrc.statechart import Chart

#: The triggers an operator may send through ``POST /v1/commands/{trigger}``. ``safe_mode``
#: is the operator's name for the chart's ``fault`` trigger (cause ``operator``).
OPERATOR_COMMANDS: tuple[str, ...] = ("start", "stop", "reset", "safe_mode")


class NotPermitted(MxrcError):
    """The command is legal in this state but this node may not do it (not leader, no
    quorum): the API answers 403."""

    exit_code = 1

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class BadInput(MxrcError):
    """A request the node cannot act on; ``field`` names what is wrong (400)."""

    exit_code = 1

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str


class AdminBackend(Protocol):
    """The node as the admin API sees it. All methods are called on the event loop."""

    node_id: str
    chart: Chart
    registry: CollectorRegistry

    def state_view(self) -> Mapping[str, Any]:
        """``GET /v1/state``: ``node``, ``state``, ``since`` (ISO), ``since_seq``,
        ``cycle``, ``slot``, ``leader`` (bool), ``quorum`` (bool), ``token`` (int),
        ``lease_remaining_s`` (float or None), ``legal_triggers`` (list), ``last_seq``,
        ``rt`` (``{"attached": bool, "driving": bool, ...}``)."""
        ...

    def health(self) -> HealthReport: ...

    def readiness(self) -> Readiness: ...

    def telemetry(self) -> Mapping[str, Any]:
        """The latest cycle figures: ``cycle``, ``slot``, ``wake_p99_us``, ``misses``,
        ``tracking_error``, ``joint_position``, ``driving``, ``t`` (ISO) — or an empty
        mapping before the RT process reported."""
        ...

    def datastore_view(self) -> Sequence[Mapping[str, Any]]:
        """Every key: ``name``, ``type``, ``writer``, ``critical``, ``value``."""
        ...

    async def command(
        self, trigger: str, *, actor: str, cause: str | None, traceparent: str
    ) -> Record:
        """Fire an operator command; the transition record once it is durable.

        Raises :class:`TriggerRejected`, :class:`NotPermitted` or :class:`BadInput`."""
        ...

    async def write_key(self, key: str, value: Any, *, actor: str, traceparent: str) -> Record:
        """Write a nonrt-side data-store key: the ``datastore_write`` record (who, what,
        previous value, trace id) is durable before the value reaches the cycle.

        Raises :class:`BadInput` (unknown key, RT-side key, value of the wrong type)."""
        ...

    def tracing_view(self) -> Mapping[str, Any]:
        """``sample_ratio``, ``parent_based``, ``export`` (None: spans not exported)."""
        ...

    def set_sample_ratio(self, ratio: float, *, actor: str) -> Mapping[str, Any]:
        """Change the ratio of new traces now; the new :meth:`tracing_view`."""
        ...

    def events(self, *, after: int, limit: int, types: frozenset[str] | None) -> list[Record]:
        """Records with ``seq > after``, oldest first, at most ``limit``."""
        ...

    def subscribe(self) -> AsyncIterator[Record]:
        """Every record journalled from now on, until the node stops."""
        ...
