"""``mxrc nonrt`` (the process ``mxrc-nonrt.service`` runs): the controller, its admin API
and its systemd notifications on one asyncio loop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from mxrc import __version__
from mxrc.config import Config, describe_defaults
from mxrc.errors import CorruptLogError, MxrcError
from mxrc.obs.logs import LogPipeline, LogSettings
from mxrc.rt.cpu import parse_cpulist
from mxrc.rt.numa import prefer_for_nonrt
from mxrc.rt.sched import allowed_cpus, housekeeping_cpus, rt_cpu_of
from mxrc.service.api import build_app
from mxrc.service.auth import load_or_create_token
from mxrc.service.controller import Controller
from mxrc.service.health import watchdog_ok
from mxrc.service.notify import Notifier, WatchdogGate
from mxrc.service.options import add_node_options, config_from_args

WATCH_INTERVAL_S: Final = 0.1
DEFAULT_WATCHDOG_GATE_S: Final = 1.0
STATUS_EVERY_S: Final = 5.0

EPILOG = f"""\
It creates the shared memory mxrc rt attaches to, recovers the node's state from its
data directory, takes the lease (local backend: a quorum of one), and serves the admin
API (GET /health /ready /metrics, /v1/..., the page at /). Mutating calls need
'Authorization: Bearer <token>' with the token from api.token_file (default
<data_dir>/api-token, created with mode 0600 when absent).

Under systemd (Type=notify) it sends READY=1 once the API listens, STATUS= lines, and
WATCHDOG=1 at half of WatchdogSec only while its loop progresses and nothing a restart
would cure (event log, event bus) is unhealthy. SIGTERM / SIGINT: outputs held, final
events journalled, checkpoint written.

examples:
  mxrc nonrt --data-dir /var/lib/mxrc --api-port 8780
  curl -s localhost:8780/health | jq .

configuration (TOML; every key optional):
{describe_defaults()}
"""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "nonrt",
        help="run the non-RT process: statechart, event log, shared memory, admin API",
        description="Run mxrc-nonrt for one node (mxrc run starts it for you).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_node_options(parser)
    parser.set_defaults(func=run)


def token_path(config: Config) -> Path:
    configured = str(config["api.token_file"])
    return Path(configured) if configured else config.data_dir / "api-token"


log = logging.getLogger("mxrc.nonrt")


def say(line: str) -> None:
    log.info("%s", line)


async def serve(config: Config, notifier: Notifier) -> int:
    controller = Controller(config)
    say(controller.tracing.describe())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    token_file = token_path(config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    token = load_or_create_token(token_file)
    try:
        boot = await controller.start()
    except CorruptLogError as exc:
        raise CorruptLogError(
            exc.path,
            exc.offset,
            f"{exc.reason}; the node cannot start on it: see `mxrc log repair "
            f"{config.data_dir} --truncate-corrupt`",
        ) from None
    runner: web.AppRunner | None = None
    try:
        app = build_app(
            controller,
            token=token,
            max_body_bytes=int(config["api.max_body_bytes"]),
            on_request=controller.bus.publish,
            on_probe=controller.metrics.observe,
            health_max_age_s=float(config["api.health_cache_ms"]) / 1000,
            tracer=controller.tracer,
        )
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, str(config["api.host"]), int(config["api.port"]))
        try:
            await site.start()
        except OSError as exc:
            raise MxrcError(
                f"admin API cannot listen on {config['api.host']}:{config['api.port']}: "
                f"{exc.strerror or exc}; choose another --api-port (0: any free port)"
            ) from None
        url = api_url(runner, str(config["api.host"]))
        controller.announce(url, token_file)
        say(
            f"node {config.node_id}, state {controller.node.state} "
            f"(recovered {boot.recovered_state}, previous shutdown {boot.previous_shutdown}); "
            f"admin API {url}; token {token_file}"
        )
        notifier.ready(controller.status_line())
        await watch(controller, notifier, stop)
        reason = "signal"
    except BaseException:
        reason = "error"
        raise
    finally:
        notifier.stopping(f"stopping ({reason})")
        controller.withdraw_announcement()
        await controller.stop(reason)
        if runner is not None:
            await runner.cleanup()
        say(f"stopped cleanly; state {controller.node.state}")
    return 0


def api_url(runner: web.AppRunner, host: str) -> str:
    """The URL actually listened on (the port may have been 0)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            shown = f"[{address[0]}]" if ":" in str(address[0]) else address[0]
            return f"http://{shown}:{address[1]}"
    return f"http://{host}"


async def watch(controller: Controller, notifier: Notifier, stop: asyncio.Event) -> None:
    """Ping the watchdog while the loop progresses and nothing a restart would cure is
    unhealthy (:func:`mxrc.service.health.watchdog_ok`); STATUS= every few seconds."""
    gate = WatchdogGate(notifier.watchdog_interval_s or DEFAULT_WATCHDOG_GATE_S)
    next_status = time.monotonic() + STATUS_EVERY_S
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), WATCH_INTERVAL_S)
        now = time.monotonic()
        healthy = watchdog_ok(controller.health())
        if notifier.watchdog_interval_s and gate.should_ping(now, controller.loop_ticks, healthy):
            notifier.watchdog()
        if now >= next_status:
            next_status = now + STATUS_EVERY_S
            notifier.status(controller.status_line())


def place_process(config: Config) -> str:
    """Move this process off the RT CPU before any thread exists (threads inherit the
    affinity of the thread that creates them)."""
    rt_cpu = rt_cpu_of(config)
    configured = str(config["nonrt.cpus"])
    cpus, why = housekeeping_cpus(
        allowed_cpus(), rt_cpu, parse_cpulist(configured) if configured else frozenset()
    )
    os.sched_setaffinity(0, cpus)
    return why


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    placement = place_process(config)
    memory = prefer_for_nonrt(config)  # still the only thread: every later one inherits it
    # The log writer thread starts after both, so it inherits the placement too.
    with LogPipeline(
        LogSettings.from_config(config, "mxrc-nonrt"), process_name="mxrc-nonrt"
    ) as logs:
        say(f"mxrc nonrt {__version__}: running on {placement}; numa: {memory.text}")
        say(logs.describe())
        notifier = Notifier.from_environment()
        try:
            return asyncio.run(serve(config, notifier))
        except MxrcError as exc:
            logs.report(log, exc)
            raise
