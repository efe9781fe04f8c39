"""``mxrc command TRIGGER``: an operator's command to the local node, without curl.

It finds the node's admin API and token the way ``mxrc run`` announces them
(``<data_dir>/nonrt.json``, written by nonrt once its API listens) and POSTs
``/v1/commands/TRIGGER`` with the bearer token. The answer is the durable record (the
command was journalled) or the API's refusal, printed as it came, with the exit code
telling which.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Final

from mxrc.errors import MxrcError, UsageError
from mxrc.service.controller import ANNOUNCE_FILE
from mxrc.service.options import config_from_args
from mxrc.service.ports import OPERATOR_COMMANDS

TIMEOUT_S: Final = 10.0


class CommandRefusedError(MxrcError):
    """The node answered and refused (409 illegal now, 403 not leader, …)."""

    exit_code = 1


class NodeNotRunningError(MxrcError):
    """Nothing answers on that data directory (not started, or not yet listening)."""

    exit_code = 10


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "command",
        help="send start / stop / reset / safe_mode to the local node's admin API",
        description=(
            "Send a command to the node running on this machine: its API and token are "
            "found through <data_dir>/nonrt.json, which nonrt writes once it listens."
        ),
        epilog="examples:\n"
        "  mxrc command start                      # the node in ./var\n"
        "  mxrc command safe_mode --cause 'guard door open' --data-dir /var/lib/mxrc\n"
        "exit codes: 0 done (the record is printed), 1 refused (the reason is printed), "
        "2 usage, 8 bad configuration, 10 no node answering",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("trigger", choices=OPERATOR_COMMANDS, metavar="TRIGGER",
                        help=f"one of {', '.join(OPERATOR_COMMANDS)}")  # fmt: skip
    parser.add_argument("--cause", help="why (kept in the record; safe_mode's fault cause)")
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="the node's configuration (its data_dir)"
    )
    parser.add_argument(
        "--data-dir", type=Path, metavar="DIR", help="overrides node.data_dir (default ./var)"
    )
    parser.set_defaults(func=run)


def locate(data_dir: Path) -> tuple[str, str]:
    """The API URL and token of the node running on ``data_dir``."""
    announce = data_dir / ANNOUNCE_FILE
    try:
        info = json.loads(announce.read_text())
        token = Path(info["token_file"]).read_text().strip()
    except FileNotFoundError as exc:
        raise NodeNotRunningError(
            f"no node is running on {data_dir} ({exc.filename} is missing): start it "
            "with `mxrc run` or `systemctl start mxrc.target`"
        ) from None
    except (ValueError, KeyError) as exc:
        raise NodeNotRunningError(f"{announce}: unreadable ({exc})") from None
    return str(info["api"]), token


def run(args: argparse.Namespace) -> int:
    if args.cause is not None and not args.cause.strip():
        raise UsageError("--cause must not be empty")
    config = config_from_args(args)
    url, token = locate(config.data_dir)
    body = json.dumps({"cause": args.cause}).encode() if args.cause else b""
    request = urllib.request.Request(
        f"{url}/v1/commands/{args.trigger}",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            record = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        answer = json.loads(exc.read() or b"{}")
        if args.trigger == "safe_mode" and answer.get("state") == "SAFE_MODE":
            # The goal, not the transition: already safe (and its lease already released)
            print(f"safe_mode: already in SAFE_MODE (seq {answer.get('seq')})")
            return 0
        raise CommandRefusedError(
            f"{args.trigger} refused ({exc.code}): {answer.get('error', exc.reason)}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise NodeNotRunningError(f"the node's API at {url} does not answer: {exc}") from None
    payload = record.get("payload", {})
    print(
        f"{args.trigger}: {payload.get('source')} → {payload.get('dest')} "
        f"(seq {record.get('seq')}, token {record.get('token')})"
    )
    return 0
