"""The admin API with a real ``mxrc rt`` child: the node gets to READY, a start over HTTP
makes it RUNNING (seen on the event stream and in the cycle's telemetry), and a node
that is not leader answers 403."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mxrc.config import Config
from mxrc.ha.backend import Leadership
from mxrc.ha.lease import LeaseTerms
from mxrc.ha.local import LocalBackend
from tests.configs import TOLERANT_TIMING
from tests.service.api_support import Served, serve, sse_records, until


class Demotable(LocalBackend):
    """The real local backend, whose leadership a test can hand to another node."""

    def __init__(self, config: Config) -> None:
        terms = LeaseTerms(
            float(config["ha.lease_ttl_s"]),
            float(config["ha.renew_interval_s"]),
            float(config["ha.safety_margin_s"]),
        )
        super().__init__(config.node_id, config.data_dir / "ha", terms)
        self.demoted = False

    async def renew(self) -> Leadership:
        own = await super().renew()
        if not self.demoted:
            return own
        return Leadership(False, True, own.token, 0, "n2", "n2 holds the lease")


async def healthy(s: Served) -> bool:
    r = await s.client.get("/health")
    return bool((await r.json())["status"] != "unhealthy")


async def records_until(stream: Any, seq: int, timeout: float) -> dict[str, Any]:
    """Read the stream up to the record ``seq`` (cycle records may come first)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        [(event_id, data)] = await sse_records(stream, 1, max(0.1, deadline - loop.time()))
        if event_id == seq:
            return data
        assert event_id < seq, (event_id, seq)


@pytest.mark.timeout(120)
def test_start_over_http_runs_the_cycle_and_a_follower_gets_403(tmp_path: Path) -> None:
    backends: list[Demotable] = []

    def backend(config: Config) -> Demotable:
        backends.append(Demotable(config))
        return backends[-1]

    async def main() -> None:
        async with serve(tmp_path, with_rt=True, sections=TOLERANT_TIMING, backend=backend) as s:
            await s.until_state("READY", 30)
            await until(lambda: healthy(s), 20, "health other than unhealthy")
            stream = await s.client.get("/v1/events/stream")

            r = await s.client.post(
                "/v1/commands/start", json={"cause": "pair test"}, headers=s.auth
            )
            assert r.status == 200, await r.text()
            record = await r.json()
            assert record["payload"]["source"] == "READY"
            assert record["payload"]["dest"] == "RUNNING"
            assert record["payload"]["guards"] == {
                "is_leader": True,
                "has_quorum": True,
                "is_healthy": True,
            }
            assert (await records_until(stream, record["seq"], 10)) == record
            view = await s.until_state("RUNNING", 5)
            assert view["legal_triggers"] == ["stop", "fault"]

            async def driving() -> bool:
                t = await s.json("/v1/telemetry")
                return bool(t.get("driving"))

            await until(driving, 10, "the cycle driving the joint")
            telemetry = await s.json("/v1/telemetry")
            assert telemetry["wake_p99_us"] > 0 and telemetry["cycle"] > 0

            r = await s.client.post("/v1/commands/reset", headers=s.auth)  # illegal now
            assert r.status == 409
            assert (await r.json())["legal_commands"] == ["stop", "safe_mode"]

            r = await s.client.post("/v1/commands/stop", headers=s.auth)
            assert r.status == 200, await r.text()
            await s.until_state("READY", 5)

            backends[0].demoted = True

            async def follower() -> bool:
                return not (await s.json("/v1/state"))["leader"]

            await until(follower, 10, "leadership handed to n2")
            r = await s.client.post("/v1/commands/start", headers=s.auth)
            body = await r.json()
            assert r.status == 403, body
            assert "is_leader" in body["reason"] and body["error"]
            assert (await s.json("/v1/state"))["state"] == "READY"
            rejected = (await s.json("/v1/events?type=command_rejected"))["events"]
            assert rejected[-1]["payload"]["trigger"] == "start"
            assert "is_leader" in rejected[-1]["payload"]["failed_guards"]
            stream.close()

    asyncio.run(asyncio.wait_for(main(), 100))
