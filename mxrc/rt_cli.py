"""``mxrc rt`` (the process ``mxrc-rt.service`` runs) and ``mxrc check`` (is this machine
ready for it).

``check`` exists so an operator learns what is wrong with the machine *before* starting
the cycle: a late wake-up does not name its cause, but an unisolated CPU or a missing
privilege can be named, with the line to change.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mxrc.config import describe_defaults, load_config
from mxrc.errors import MxrcError
from mxrc.obs.logs import LogPipeline, LogSettings, set_process_fields
from mxrc.rt import cpu as rtcpu
from mxrc.rt import numa, process, sched
from mxrc.rt.cycle import DEFAULT_PRIORITY
from mxrc.service.notify import Notifier

log = logging.getLogger("mxrc.rt")

RT_EPILOG = f"""\
It attaches to the three shared-memory segments mxrc-nonrt creates (named
<rt.shm_prefix>-<node id>-control, -ring, -datastore in rt.shm_dir), waiting up to
rt.attach_wait_s for them, then runs the cycle on one pinned SCHED_FIFO thread. Outputs
are driven only while the control block says RUNNING, the lease deadline is ahead and
the fencing token is the one seen when RUNNING began; otherwise they are held safe in
that same cycle and a FAULT record with the cause goes to the ring. SIGTERM or SIGINT
holds the outputs, writes a final STOPPED record and exits 0.

Missing privileges do not stop it: it runs degraded and says so (with the fix) in its
start line. Run `mxrc check` first to see what the machine needs.

Under systemd (Type=notify, NOTIFY_SOCKET set) it sends READY=1 once the cycle runs,
a STATUS= line every second (cycles, deadline misses, driving or holding), STOPPING=1
on the way out, and WATCHDOG=1 at half of WatchdogSec= only while the cycle counter
advances: a cycle stuck in its control law stops the pings and systemd's watchdog fires.

examples:
  mxrc rt                                 # defaults: node-1, /dev/shm, 1 ms cycle
  mxrc rt --config /etc/mxrc/mxrc.toml --node-id cell-3

exit codes: 0 stopped by a signal, 8 bad configuration (or control law, or an unusable
  NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID),
  {process.RtLayoutError.exit_code} a segment has another layout (the line names the field),
  {process.RtAttachError.exit_code} nonrt's segments did not appear in time,
  {process.RtStartError.exit_code} the cycle thread could not start,
  {process.RtCycleFaultError.exit_code} the cycle stopped on a fault (outputs were held safe)

configuration (TOML; every key optional):
{describe_defaults()}
"""

CHECK_EPILOG = """\
Each finding is one of:
  ok    the property the cycle needs is there
  info  worth knowing, not a problem (e.g. one NUMA node)
  warn  wake-ups on that CPU will be late or jittery until it is fixed; the line
        after it ("fix:") is the exact change to make (kernel command line, unit
        file setting, package)

What is checked: that the CPU exists and is allowed; isolation (isolcpus, nohz_full,
rcu_nocbs); kernel preemption (PREEMPT_RT or not); NUMA placement of memory, and the
placement the configuration asks for (rt.numa: what mxrc rt binds, what nonrt prefers,
where the segments go; when mxrc rt would bind, the bind is tried in a throwaway
thread); DAMON; and the privileges the cycle asks for (SCHED_FIFO, mlockall,
/dev/cpu_dma_latency).
Without them `mxrc rt` still runs, degraded, and says so.

exit codes: 0 nothing blocks real-time running, 1 at least one warning

examples:
  mxrc check                # the CPU mxrc rt would use by default (the last one)
  mxrc check --cpu 3
  mxrc check --config /etc/mxrc/mxrc.toml   # rt.cpu and rt.priority from the file
  mxrc check --json | jq '.[] | select(.level == "warn")'
"""


def add_parser(sub: Any) -> None:
    rt = sub.add_parser(
        "rt",
        help="run the real-time cycle (the mxrc-rt.service process)",
        description="Run the real-time control cycle for one node.",
        epilog=RT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rt.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    rt.add_argument(
        "--node-id", metavar="ID", help="node whose segments to attach (default: node.id)"
    )
    rt.set_defaults(func=_rt)

    check = sub.add_parser(
        "check",
        help="is this machine ready for the RT cycle? (findings with fixes)",
        description="Report what on this machine would make the RT cycle late: CPU "
        "isolation, preemption, NUMA and privileges, each problem with its fix.",
        epilog=CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML configuration file: its rt.cpu and rt.priority are the ones checked",
    )
    check.add_argument(
        "--cpu",
        type=int,
        metavar="N",
        help="the CPU the cycle would be pinned to (default: rt.cpu of the configuration; "
        "-1 or no configuration: the machine's last online CPU)",
    )
    check.add_argument("--json", action="store_true", help="findings as a JSON array")
    check.set_defaults(func=_check)


def _rt(args: argparse.Namespace) -> int:
    overrides = {"node.id": args.node_id} if args.node_id else None
    config = load_config(args.config, overrides)
    notifier = Notifier.from_environment()  # a bad WATCHDOG_USEC is refused before attaching
    placed = numa.bind_rt(config)  # before any other thread exists: all of them inherit it
    # The log writer thread is created here, before the cycle thread: it inherits this
    # thread's affinity and memory policy, never the cycle's CPU (the cycle pins itself).
    rt_cpu = sched.rt_cpu_of(config)
    set_process_fields(node=config.node_id, numa_node=rtcpu.node_of_cpu(rtcpu.read_nodes(), rt_cpu))
    with LogPipeline(
        LogSettings.from_config(config, "mxrc-rt"), process_name="mxrc-rt"
    ) as logs:
        log.debug("%s", logs.describe())
        try:
            return process.run(
                config,
                config.node_id,
                notifier=notifier,
                print_line=lambda line: log.info("%s", line),
                numa=placed,
            )
        except MxrcError as exc:
            logs.report(log, exc)
            raise
        finally:
            notifier.close()


def privilege_findings(priority: int = DEFAULT_PRIORITY) -> list[rtcpu.Finding]:
    """What the cycle would be refused: checked from capabilities and limits, without
    changing this process's scheduling."""
    out: list[rtcpu.Finding] = []
    rtprio, _ = resource.getrlimit(resource.RLIMIT_RTPRIO)
    fifo_ok = sched.has_capability(sched.CAP_SYS_NICE) or (
        rtprio == resource.RLIM_INFINITY or rtprio >= priority
    )
    if fifo_ok:
        out.append(rtcpu.Finding("sched_fifo", "ok", f"SCHED_FIFO priority {priority} allowed"))
    else:
        out.append(
            rtcpu.Finding(
                "sched_fifo",
                "warn",
                f"no CAP_SYS_NICE and RLIMIT_RTPRIO {rtprio} < {priority}: the cycle "
                "would run SCHED_OTHER",
                sched.sched_fifo_fix(priority),
            )
        )
    memlock, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if sched.has_capability(sched.CAP_IPC_LOCK) or memlock == resource.RLIM_INFINITY:
        out.append(rtcpu.Finding("mlockall", "ok", "memory can be locked"))
    else:
        out.append(
            rtcpu.Finding(
                "mlockall",
                "warn",
                f"no CAP_IPC_LOCK and RLIMIT_MEMLOCK {memlock} B: the cycle can take page faults",
                sched.mlockall_fix(),
            )
        )
    path = sched.DMA_LATENCY_PATH
    if not os.path.exists(path):
        out.append(
            rtcpu.Finding(
                "dma_latency",
                "warn",
                f"{path} does not exist: deep idle states add their exit latency to wake-ups",
                "boot with `processor.max_cstate=1 intel_idle.max_cstate=0`",
            )
        )
    elif os.access(path, os.W_OK):
        out.append(rtcpu.Finding("dma_latency", "ok", f"{path} is writable"))
    else:
        out.append(
            rtcpu.Finding(
                "dma_latency",
                "warn",
                f"{path} is not writable by this user: the CPU may enter deep idle states",
                'a udev rule `KERNEL=="cpu_dma_latency", GROUP="mxrc", MODE="0660"` and the '
                "service user in group mxrc (or run mxrc-rt as root)",
            )
        )
    return out


def _check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    cpu = args.cpu if args.cpu is not None else sched.rt_cpu_of(config)
    findings = (
        rtcpu.audit(cpu)
        + numa.plan_findings(numa.host_plan(config, rt_cpu=cpu))
        + privilege_findings(int(config["rt.priority"]))
    )
    if args.json:
        print(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        for f in findings:
            print(f)
        problems = sum(f.level == "warn" for f in findings)
        print(
            f"\nCPU {cpu}: "
            + (f"{problems} problem(s) to fix (see 'fix:')" if problems else "ready")
        )
    return 1 if any(f.level == "warn" for f in findings) else 0
