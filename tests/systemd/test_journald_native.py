"""mxrc.obs.journald against the real journald of a real systemd (booted in namespaces
for the test): a oneshot service sends structured entries over the native protocol,
one of them too big for any datagram this host allows, and journalctl reads them back
with their fields, their priority and ``_TRANSPORT=journal``.

The service runs the interpreter running this test, on this checkout (PYTHONPATH),
and gets the same code-location relaxation as the mxrc units."""

from __future__ import annotations

import json
import secrets
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mxrc
from mxrc.obs.journald import SNDBUF_BYTES
from mxrc.systemd.sandbox import relax_for_code_location
from tests.systemd.namespaced import namespaced_systemd

REPO = Path(__file__).resolve().parents[2]
UNIT = "mxrc-journald-native.service"

SCRIPT = """\
import json, sys
from mxrc.obs.journald import JournalSender, running_under_journald

trace, big_size = sys.argv[1], int(sys.argv[2])
base = {{"SYSLOG_IDENTIFIER": "mxrc-test", "TRACE_ID": trace}}
blob = ("0123456789abcde\\n" * (big_size // 16 + 1))[:big_size]
sender = JournalSender()
outcome = {{
    "under_journald": running_under_journald(),
    "error": sender.send({{**base, "MESSAGE": "{error}", "PRIORITY": "3",
                          "MXRC_RT_STATE": "RUNNING", "MXRC_MULTI": "a\\nb"}}),
    "info": sender.send({{**base, "MESSAGE": "{info}", "PRIORITY": "6"}}),
    "big": sender.send({{**base, "MESSAGE": "{big}", "PRIORITY": "6", "MXRC_BLOB": blob}}),
}}
outcome["sent"], outcome["errors"] = sender.sent, sender.errors
sender.close()
print(json.dumps(outcome), flush=True)
sys.exit(0 if all(v is True for k, v in outcome.items() if k not in ("sent", "errors")) else 1)
"""
ERROR, INFO, BIG = "native error entry", "native info entry", "native big entry"


def until(what: Callable[[], object], timeout_s: float, why: str) -> None:
    start = time.monotonic()
    while not what():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {why}")
        time.sleep(0.2)


def largest_datagram() -> int:
    """What an AF_UNIX datagram socket with JournalSender's buffer may send at most here
    (the namespaces share this network namespace, hence its net.core.wmem_max)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF_BYTES)
        granted: int = probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        return granted - 32


def test_native_entries_reach_the_real_journal(tmp_path: Path) -> None:
    trace = secrets.token_hex(16)
    big_size = max(300 * 1024, largest_datagram() + 64 * 1024)  # only a memfd can carry it
    script = tmp_path / "send.py"
    script.write_text(SCRIPT.format(error=ERROR, info=INFO, big=BIG))
    exec_start = f"{sys.executable} {script} {trace} {big_size}".replace("%", "%%")
    units = {
        UNIT: "[Unit]\nDescription=native journal protocol test\n\n[Service]\nType=oneshot\n"
        f"Environment=PYTHONPATH={REPO}\nExecStart={exec_start}\n"
    }
    relax_for_code_location(
        units, [Path(mxrc.__file__).resolve(), Path(sys.executable).resolve(), Path(sys.prefix)]
    )
    with namespaced_systemd(tmp_path / "systemd", units) as system:
        started = system.systemctl("start", UNIT, check=False)  # a oneshot: waits for it
        assert started.returncode == 0, started.stderr + system.journal("-u", UNIT)

        def printed() -> list[str]:  # what the script wrote on stdout
            out = system.journal("-u", UNIT, "-o", "json")
            found = [json.loads(line) for line in out.splitlines() if line.strip()]
            return [str(e["MESSAGE"]) for e in found if e.get("_TRANSPORT") == "stdout"]

        until(printed, 15, "the script's outcome in the journal")
        outcome = json.loads(printed()[-1])
        assert outcome == {"under_journald": True, "error": True, "info": True, "big": True,
                           "sent": 3, "errors": 0}, outcome  # fmt: skip

        def entries(*args: str) -> list[dict[str, object]]:
            out = system.journal("-t", "mxrc-test", "-o", "json", "--all", *args)
            found = [json.loads(line) for line in out.splitlines() if line.strip()]
            return [e for e in found if e.get("TRACE_ID") == trace]

        # journald reads its socket on its own time: wait for all three
        until(lambda: len(entries()) == 3, 15, "the three entries in the journal")
        by_message = {str(e["MESSAGE"]): e for e in entries()}
        assert set(by_message) == {ERROR, INFO, BIG}
        for entry in by_message.values():
            assert entry["_TRANSPORT"] == "journal"  # the native protocol, not stdout
            assert entry["_SYSTEMD_UNIT"] == UNIT
            assert entry["SYSLOG_IDENTIFIER"] == "mxrc-test"
        error = by_message[ERROR]
        assert error["PRIORITY"] == "3"
        assert error["MXRC_RT_STATE"] == "RUNNING"
        assert error["MXRC_MULTI"] == "a\nb"
        assert by_message[INFO]["PRIORITY"] == "6"
        blob = by_message[BIG]["MXRC_BLOB"]
        assert isinstance(blob, str) and len(blob) == big_size
        assert blob == ("0123456789abcde\n" * (big_size // 16 + 1))[:big_size]

        # PRIORITY= is what journalctl -p filters on
        errors_only = entries("-p", "err")
        assert [e["MESSAGE"] for e in errors_only] == [ERROR]
        short = system.journal("-t", "mxrc-test", "-p", "err")
        assert ERROR in short and INFO not in short and BIG not in short
