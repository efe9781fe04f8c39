"""The drill control law: the simulated joint, also commanding the fenced actuator.

A failover drill needs each node's cycle to command one shared "robot" with its fencing
token, so the actuator's record shows which leadership actually drove and whether a
deposed one ever got through. The joint model stays the default one so a drill node
behaves, times and reports exactly like a production node on the simulator.
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any, Final

from mxrc.drill.actuator import parse_address
from mxrc.drill.fencing import datagram_template
from mxrc.rt.plant import SimulatedJoint

if TYPE_CHECKING:
    from mxrc.rt.cycle import CycleInfo

ACTUATOR_ENV: Final = "MXRC_ACTUATOR"
NODE_ID_ENV: Final = "MXRC_NODE_ID"
DEFAULT_SEND_EVERY: Final = 10  # every 10th cycle: 100 commands/s at 1 kHz


class FencedJoint(SimulatedJoint):
    """:class:`SimulatedJoint` that sends its output to the fenced actuator while driving.

    Configure with ``rt.control_law = "mxrc.drill.fenced_joint:FencedJoint"``. The RT
    process constructs the law with the period only (no params from configuration), so
    the drill gives the rest through the environment of ``mxrc rt``, read once here:

    * ``MXRC_ACTUATOR`` — ``HOST:PORT`` of ``mxrc actuator``; unset or empty: no
      actuator, the law is exactly :class:`SimulatedJoint`;
    * ``MXRC_NODE_ID`` — the node id each command carries; required with
      ``MXRC_ACTUATOR``, because the record judges "one token, one node" by it (a
      per-process default would make a restarted RT process look like a second node).

    The keyword params ``actuator`` and ``node_id`` override the environment (for
    ``load_control_law(path, period, params)``); ``send_every`` sets the rate.

    Every ``send_every``-th call of :meth:`write_actuators` while not holding safe, one
    datagram goes out with the applied output, :attr:`fencing_token` and the cycle's
    tick. The socket is non-blocking and connected once here (any name resolved now,
    not in the cycle): a full send buffer or an ICMP "port unreachable" from an absent
    actuator is counted in :meth:`status`, never raised — the actuator, not the node,
    decides what was driven, so a lost command is the drill's evidence, not a cycle
    fault.
    """

    def __init__(
        self,
        period_s: float,
        *,
        actuator: str | None = None,
        node_id: str | None = None,
        send_every: int = DEFAULT_SEND_EVERY,
        **joint: Any,
    ) -> None:
        super().__init__(period_s, **joint)
        if send_every < 1:
            raise ValueError(f"send_every must be ≥ 1, got {send_every}")
        address = actuator if actuator is not None else os.environ.get(ACTUATOR_ENV, "")
        node = node_id if node_id is not None else os.environ.get(NODE_ID_ENV, "")
        self.send_every = send_every
        self.actuator = address or None
        self.node_id = node or None
        self.sent = 0
        self.send_full = 0  # the socket buffer was full (the datagram was dropped)
        self.send_refused = 0  # an earlier datagram found no listener (ICMP)
        self.send_failed = 0  # any other error
        self._countdown = send_every
        self._sock: socket.socket | None = None
        if address:
            if not node:
                raise ValueError(f"{ACTUATOR_ENV} is set but {NODE_ID_ENV} is not")
            self._template = datagram_template(node)
            self._sock = _connect(address)

    def write_actuators(self, info: CycleInfo) -> None:
        super().write_actuators(info)
        if self._sock is None or self.safe:
            return
        self._countdown -= 1
        if self._countdown > 0:
            return
        self._countdown = self.send_every
        data = self._template % (
            self.fencing_token,
            info.tick,
            self._applied,
            time.monotonic_ns(),
        )
        try:
            self._sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            self.send_full += 1
        except ConnectionRefusedError:
            self.send_refused += 1
        except OSError:
            self.send_failed += 1
        else:
            self.sent += 1

    def status(self) -> dict[str, Any]:
        out = super().status()
        if self._sock is not None:
            out.update(
                actuator=self.actuator,
                actuator_sent=self.sent,
                actuator_send_full=self.send_full,
                actuator_send_refused=self.send_refused,
                actuator_send_failed=self.send_failed,
            )
        return out

    def close(self) -> None:
        """Release the socket (the RT process simply exits; tests call this)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _connect(address: str) -> socket.socket:
    host, port = parse_address(address)
    try:
        family, kind, proto, _, target = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ValueError(f"actuator {address!r}: {exc}") from None
    try:
        sock.setblocking(False)
        sock.connect(target)  # UDP: no packet sent; fixes the peer and enables ICMP errors
    except OSError as exc:
        sock.close()
        raise ValueError(f"actuator {address!r}: {exc}") from None
    return sock
