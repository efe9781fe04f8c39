"""A health check that changes is told: a log line and a counter, from the real node.

``/health`` only answers for the moment it is asked; which check turned a node
unhealthy, and when, is what the log and ``mxrc_health_check_changes_total`` keep.
Here the real RT process is killed under a served node, so the ring stops and the
``shared_memory`` check turns unhealthy on its own.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest

from tests.configs import TOLERANT_TIMING
from tests.service.api_support import Served, serve, until

CHANGE = re.compile(r"^health: (\w+) (\S+(?: check\))?) → (\w+): (.+)$")


async def check_status(s: Served, name: str) -> str:
    body = await (await s.client.get("/health")).json()
    return str(body["checks"][name]["status"])


async def changes_counted(s: Served, check: str, status: str) -> float:
    text = await (await s.client.get("/metrics")).text()
    pattern = rf'^mxrc_health_check_changes_total{{check="{check}",status="{status}"}} (\S+)$'
    match = re.search(pattern, text, re.M)
    assert match is not None, f"no {check}/{status} series in /metrics"
    return float(match.group(1))


@pytest.mark.timeout(120)
def test_a_check_that_turns_unhealthy_is_logged_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with serve(tmp_path, with_rt=True, sections=TOLERANT_TIMING) as s:
            assert s.rt is not None
            assert await changes_counted(s, "shared_memory", "unhealthy") == 0  # present at 0

            async def ring_healthy() -> bool:
                return await check_status(s, "shared_memory") == "healthy"

            await until(ring_healthy, 30, "the ring progressing")
            s.rt.kill()

            async def ring_unhealthy() -> bool:
                return await check_status(s, "shared_memory") == "unhealthy"

            await until(ring_unhealthy, 20, "the stalled ring found unhealthy")

            def told() -> list[tuple[str, ...]]:
                return [
                    m.groups()
                    for r in caplog.records
                    if r.name == "mxrc.nonrt" and (m := CHANGE.match(r.getMessage()))
                ]

            async def counted() -> bool:
                unhealthy = [g for g in told() if g[0] == "shared_memory" and g[2] == "unhealthy"]
                return await changes_counted(s, "shared_memory", "unhealthy") == len(unhealthy)

            await until(counted, 5, "the counter agreeing with the log")
            lines = told()
            ours = [(old, new) for name, old, new, _ in lines if name == "shared_memory"]
            assert ("healthy", "unhealthy") in ours, lines
            detail = next(
                d for name, old, new, d in lines
                if (name, old, new) == ("shared_memory", "healthy", "unhealthy")
            )  # fmt: skip
            assert "ring" in detail, detail
            warned = [r for r in caplog.records if "shared_memory healthy → unhealthy" in
                      r.getMessage()]
            assert warned and all(r.levelno == logging.WARNING for r in warned)

    with caplog.at_level(logging.INFO, logger="mxrc.nonrt"):
        asyncio.run(asyncio.wait_for(main(), 100))
