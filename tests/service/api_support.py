"""A real node behind the admin API on 127.0.0.1, for the API, schemathesis and page tests.

The controller is the real one (event log fsynced to disk, shared memory created);
``mxrc rt`` is started as a real child process only where a test needs the node to get
past INIT. Everything is bounded in time and every child is killed by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.trace import Tracer

from mxrc.config import Config, load_config
from mxrc.ha.backend import HaBackend
from mxrc.obs import correlation
from mxrc.obs.correlation import TraceIds
from mxrc.service.api import build_app
from mxrc.service.auth import load_or_create_token
from mxrc.service.controller import Controller
from mxrc.service.events import ApiRequest
from tests.configs import merged, toml_text

ROOT = Path(__file__).resolve().parents[2]
MAX_BODY = 1024


def parse_traceparent(header: str | None) -> TraceIds | None:
    """What the API makes of a ``traceparent``: the remote parent its span goes under."""
    context = correlation.parse_traceparent(header)
    return None if context is None else correlation.ids_of(context)


def write_config(
    tmp: Path, name: str = "n1", sections: Mapping[str, Mapping[str, Any]] | None = None
) -> Path:
    """One TOML file for both the controller and an ``mxrc rt`` child; segment names
    unique to this test process so parallel runs never meet."""
    doc: dict[str, dict[str, Any]] = {
        "node": {"id": name, "data_dir": str(tmp / name)},
        "rt": {
            "shm_dir": str(tmp / "shm"),
            "shm_prefix": f"mxrc-api{os.getpid()}",
            "hold_dma_latency": False,
            "attach_wait_s": 10.0,
            "status_every_cycles": 20,
        },
        "nonrt": {"rt_silence_s": 0.5},
        "api": {"port": 0, "max_body_bytes": MAX_BODY},
    }
    (tmp / "shm").mkdir(exist_ok=True)
    path = tmp / f"{name}.toml"
    path.write_text(toml_text(merged(doc, sections or {})))
    return path


class RtChild:
    """``python -m mxrc rt`` against the controller's segments; killed by PID."""

    def __init__(self, config_file: Path) -> None:
        self.config_file = config_file
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mxrc", "rt", "--config", str(self.config_file)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM, as systemd stops it: the process ends its cycle cleanly."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(30)


@dataclass
class Served:
    app: web.Application
    client: TestClient[Any, Any]
    controller: Controller
    config: Config
    token: str
    requests: list[ApiRequest] = field(default_factory=list)
    rt: RtChild | None = None  # the RT process, when served with_rt

    @property
    def url(self) -> str:
        return str(self.client.make_url("/")).rstrip("/")

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def json(self, path: str) -> Any:
        response = await self.client.get(path)
        assert response.status == 200, (path, response.status, await response.text())
        return await response.json()

    async def until_state(self, state: str, timeout: float = 20.0) -> dict[str, Any]:
        view: dict[str, Any] = {}

        async def reached() -> bool:
            nonlocal view
            view = await self.json("/v1/state")
            return bool(view["state"] == state)

        await until(reached, timeout, f"state {state} (last seen {view.get('state')})")
        return view


async def until(
    predicate: Callable[[], Awaitable[bool]], timeout: float, what: str, every: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def serve(
    tmp: Path,
    *,
    with_rt: bool = False,
    backend: Callable[[Config], HaBackend] | None = None,
    max_body: int = MAX_BODY,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
    health_max_age_s: float = 0.0,
    tracer: Tracer | None = None,
    on_probe: Callable[[ApiRequest], None] | None = None,
) -> AsyncIterator[Served]:
    """The real controller and its admin API on a real loopback socket; ``sections``
    override the test configuration. Requests are reported to ``Served.requests``, and
    so are untraced probes unless ``on_probe`` takes them."""
    config_file = write_config(tmp, sections=sections)
    config = load_config(config_file)
    token = load_or_create_token(config.data_dir.parent / "api-token")
    controller = Controller(
        config, notice=lambda _line: None, backend=backend(config) if backend else None
    )
    rt = RtChild(config_file)
    seen: list[ApiRequest] = []
    await controller.start()
    try:
        app = build_app(
            controller,
            token=token,
            max_body_bytes=max_body,
            on_request=seen.append,
            health_max_age_s=health_max_age_s,
            tracer=controller.tracer if tracer is None else tracer,
            on_probe=on_probe,
        )
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            if with_rt:
                rt.start()
            yield Served(app, client, controller, config, token, seen, rt if with_rt else None)
    finally:
        rt.kill()
        await controller.stop("test end")


async def sse_records(
    response: aiohttp.ClientResponse, count: int, timeout: float
) -> list[tuple[int, dict[str, Any]]]:
    """Read ``count`` events (id, decoded data) from an open event stream."""
    out: list[tuple[int, dict[str, Any]]] = []
    event: dict[str, str] = {}

    async def read() -> None:
        while len(out) < count:
            raw = await response.content.readline()
            if not raw:
                raise AssertionError(f"stream ended after {len(out)} of {count} events")
            line = raw.decode().rstrip("\n")
            if not line:
                if "data" in event:
                    out.append((int(event["id"]), orjson.loads(event["data"])))
                event.clear()
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                event[name] = value.removeprefix(" ")

    await asyncio.wait_for(read(), timeout)
    return out
