"""The operator's log lines, written from bus events: what the node did and why.

The cycle thread never logs (it must never block), and the state thread should not
have to know who reads about it; both already say everything on the EventBus. This
observer turns the events an operator or an incident analysis needs into log records
with the mxrc fields set (state, cycle, slot, lease token, data-store key), and keeps
the process-wide fields (:func:`mxrc.obs.logs.set_process_fields`) in step with the
state and the lease, so every other line of the process carries them too.

The bus runs observers under the event's trace context, so each line carries the trace
id of the command behind it (a fault the cycle reports after a stop command carries
the stop's trace id, which is how the two are joined afterwards).

Levels follow what needs a person: a rejected command, a lost RT process, ring drops
and faults are warnings or errors (``journalctl -p warning``), and so is a health check
turning unhealthy (``/health`` answers 503 from then on); transitions, lease changes,
other health changes and the cycle applying a mode are info.
"""

from __future__ import annotations

import logging

from mxrc.obs.ecs import mxrc_extra
from mxrc.obs.logs import set_process_fields
from mxrc.rt.controlblock import Mode
from mxrc.service.events import (
    BusEvent,
    HealthChanged,
    Journaled,
    LeaseChanged,
    RingDrops,
    RtFault,
    RtLost,
    RtModeApplied,
    RtStarted,
    RtStopped,
)
from mxrc.service.ringfeed import EXPECTED_RT_CAUSES

log = logging.getLogger("mxrc.nonrt")



def mode_name(mode: int) -> str:
    try:
        return Mode(mode).name
    except ValueError:
        return f"mode {mode}"


class Logbook:
    """A bus observer (``bus.subscribe("log", Logbook())``)."""

    def __init__(self, frame_slots: int) -> None:
        self.frame_slots = max(frame_slots, 1)

    def __call__(self, event: BusEvent) -> None:
        if isinstance(event, Journaled):
            self._journaled(event)
        elif isinstance(event, RtModeApplied):
            log.info(
                "RT cycle %d applied %s (from %s): %s", event.cycle, mode_name(event.mode),
                mode_name(event.previous_mode) if event.previous_mode >= 0 else "start",
                "driving" if event.driving else "holding outputs",
                extra=mxrc_extra(rt_cycle=event.cycle, rt_slot=event.slot,
                                 lease_token=event.token),
            )
        elif isinstance(event, RtFault):
            level = logging.INFO if event.cause in EXPECTED_RT_CAUSES else logging.ERROR
            log.log(
                level,
                "RT cycle %d stopped driving: %s (mode %s, token %d, expected token %d, "
                "lease left %.1f ms)", event.cycle, event.cause, mode_name(event.mode),
                event.token, event.expected_token, event.lease_left_ns / 1e6,
                extra=mxrc_extra(rt_cycle=event.cycle, rt_slot=event.cycle % self.frame_slots,
                                 lease_token=event.token),
            )
        elif isinstance(event, RtStarted):
            fifo = f"SCHED_FIFO {event.priority}" if event.priority else "not SCHED_FIFO"
            log.log(
                logging.INFO if event.priority else logging.WARNING,
                "RT process started on CPU %d (%s), period %d µs", event.cpu, fifo,
                event.period_ns // 1000, extra=mxrc_extra(rt_cycle=event.cycle),
            )
        elif isinstance(event, RtStopped):
            log.log(
                logging.WARNING if event.was_driving else logging.INFO,
                "RT process stopped after %d cycles (%d deadline misses)%s", event.cycles,
                event.misses, ", while driving" if event.was_driving else "",
                extra=mxrc_extra(rt_cycle=event.cycle),
            )
        elif isinstance(event, RtLost):
            log.error(
                "RT process silent for %.1f s: holding outputs (is mxrc-rt running? "
                "journalctl -u mxrc-rt)", event.silence_s,
            )
        elif isinstance(event, RingDrops):
            log.warning(
                "ring: %d record(s) overwritten before nonrt read them (%d in all): nonrt "
                "is falling behind the cycle", event.new, event.total,
            )
        elif isinstance(event, HealthChanged):
            log.log(
                logging.WARNING if event.status == "unhealthy" else logging.INFO,
                "health: %s %s → %s: %s", event.check, event.previous or "(first check)",
                event.status, event.detail,
            )
        elif isinstance(event, LeaseChanged):
            set_process_fields(lease_token=event.token or None)
            log.info(
                "lease: %s, %s, token %d", "leader" if event.leader else "not leader",
                "quorum" if event.quorum else "no quorum", event.token,
                extra=mxrc_extra(lease_token=event.token),
            )

    def _journaled(self, event: Journaled) -> None:
        record = event.record
        kind = record["type"]
        payload = record["payload"]
        if kind == "transition":
            set_process_fields(rt_state=payload["dest"])
            log.info(
                "%s: %s → %s (actor %s%s)", payload["trigger"], payload["source"],
                payload["dest"], payload.get("actor"),
                f", cause {payload['cause']}" if payload.get("cause") else "",
                extra=mxrc_extra(rt_state=payload["dest"], lease_token=record["token"]),
            )
        elif kind == "command_rejected":
            log.warning(
                "command %s rejected in %s (%s): %s", payload["trigger"], payload["state"],
                payload["reason"], payload["message"],
                extra=mxrc_extra(rt_state=payload["state"]),
            )
        elif kind == "datastore_write":
            log.info(
                "data store: %s = %r (was %r, actor %s)", payload["key"], payload["value"],
                payload.get("previous"), payload.get("actor"),
                extra=mxrc_extra(datastore_key=payload["key"]),
            )
