"""Schemathesis against the live API: requests generated from ``/openapi.json`` (valid and
invalid ones) sent to the real controller over 127.0.0.1; every response must match the
document (status, content type, headers, body schema, each event of the stream) and
none may be a 5xx — except the probes' documented 503 (an RT-less node is unhealthy
and not ready, which is exactly what ``/health`` and ``/ready`` must say).

The seed is fixed so a failure reproduces; change ``SEED`` to explore further.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.service.api_support import Served, serve

SEED = 20261122
EXAMPLES = 40
DEFAULT_MAX_BODY = 16384
#: Statuses that count as "rejected" for invalid input: the defaults plus 413, the
#: documented answer to a body over api.max_body_bytes. 5xx is deliberately absent.
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422]

[[operations]]
include-path-regex = "^/(health|ready)$"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", 503]

# The stream never ends: read a few events, or give up waiting after a second.
[[operations]]
include-path = "/v1/events/stream"
request-timeout = 1.0
max-stream-events = 3
generation.max-examples = 8
"""


async def schemathesis(s: Served, work: Path, timeout: float) -> tuple[int, str]:
    (work / "schemathesis.toml").write_text(CONFIG)
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("schemathesis")),
        "--no-color",
        "--config-file",
        str(work / "schemathesis.toml"),
        "run",
        f"{s.url}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {s.token}",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        str(SEED),
        "--request-timeout",
        "10",
        "--workers",
        "1",
        cwd=work,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.timeout(240)
def test_schemathesis_finds_no_server_error_or_schema_violation(tmp_path: Path) -> None:
    work = tmp_path / "schemathesis"
    work.mkdir()

    async def main() -> tuple[int, str, Served]:
        async with serve(tmp_path, max_body=DEFAULT_MAX_BODY) as s:
            code, out = await schemathesis(s, work, 180)
            return code, out, s

    code, out, served = asyncio.run(main())
    assert code == 0, out
    assert "No issues found" in out, out
    server_errors = [
        q for q in served.requests if q.status >= 500 and q.route not in ("/health", "/ready")
    ]
    assert not server_errors, out
    tested = {q.route for q in served.requests}
    assert {
        "/v1/commands/{trigger}",
        "/v1/datastore/{key}",
        "/v1/events",
        "/v1/events/stream",
    } <= tested
    assert len(served.requests) > 200, len(served.requests)
