"""The RT cycle's part of a trace, recorded from its ring record.

The cycle must not trace (an exporter, a lock or an allocation in the loop would be a
deadline risk), yet "did the cycle act on the command, and when" belongs in the
command's trace. The cycle stamps its ``MODE_APPLIED`` ring record with the trace
context nonrt wrote into the control block with the mode; this observer turns that
record into a span with the cycle's own times (wake-up to having acted, moved from
CLOCK_MONOTONIC to the wall clock), child of the transition's span. The sampler
follows the parent, so the span exists exactly when the command's trace is recorded.
"""

from __future__ import annotations

from mxrc.obs.tracing import Tracing, wall_ns_from_monotonic
from mxrc.service.events import BusEvent, RtModeApplied
from mxrc.service.logbook import mode_name


class CycleSpans:
    """A bus observer (``bus.subscribe("cycle_spans", CycleSpans(tracing))``)."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing
        self.recorded = 0

    def __call__(self, event: BusEvent) -> None:
        if not isinstance(event, RtModeApplied) or event.traceparent is None:
            return
        start = wall_ns_from_monotonic(event.mono_ns)
        self.tracing.record_span(
            f"rt.cycle apply {mode_name(event.mode)}",
            parent=event.traceparent,
            start_ns=start,
            end_ns=start + max(event.acted_ns, 0),
            attributes={
                "mxrc.rt.cycle": event.cycle,
                "mxrc.rt.slot": event.slot,
                "mxrc.rt.mode": mode_name(event.mode),
                "mxrc.rt.previous_mode": (
                    mode_name(event.previous_mode) if event.previous_mode >= 0 else None
                ),
                "mxrc.rt.driving": event.driving,
                "mxrc.lease.token": event.token,
            },
        )
        self.recorded += 1
