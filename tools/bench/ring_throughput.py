"""Shared-memory ring against multiprocessing.Queue and Pipe, between two real processes.

    .venv/bin/python tools/bench/ring_throughput.py [--quick] [--repeat N]

For each transport, in the same run and interleaved (ring, Queue, Pipe, ring, ...):

Two rings are measured: ``ring``, the package's default (the C hot paths when they are
built, see ``implementation`` in the JSON), and ``ring_python``, the same protocol in its
pure-Python reference implementation (``native=False``), so the gain of the C module is
measured too.

* **throughput**: a producer process sends messages as fast as it can, a consumer process
  receives them; messages/s = messages delivered / (last receipt − first send). Every
  message is one 128-byte record stamped with ``time.monotonic_ns()`` by the producer,
  the way the cycle stamps its records: a ring record (published one at a time with
  ``RingWriter.publish``) or the same 128 bytes through ``Queue.put`` /
  ``Connection.send_bytes``. A ring consumer that falls behind loses records instead of
  slowing the producer; those are reported as ``dropped`` and not counted as delivered.
* **latency**: the producer sends at a fixed pace (at most one message per
  ``--interval-us``, sleeping in between as the cycle does), and the consumer takes
  receipt time − send stamp (CLOCK_MONOTONIC is system-wide). The ring consumer
  busy-polls; the Queue and Pipe consumers block in ``get`` / ``recv_bytes``, as they
  would be used. The first messages are a warm-up and not counted.

The producer is pinned to the first CPU of this process's affinity set and the consumer
to the second when there are two; the JSON says what was done. With ``--repeat`` > 1 the
median run of each transport is reported. Prints one JSON object: the figures, the ratios,
the target (ring messages/s ≥ 20 × Queue's) and ``target_met``. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import struct
import sys
import time
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

from mxrc.rt import ring as ring_module
from mxrc.rt.ring import Ring, RingLayout
from mxrc.rt.shm import unlink_segment

TARGET_RATIO = 20.0
PAYLOAD_SIZE = 64
CAPACITY = 1 << 16
MESSAGE = struct.Struct(f"<QQq{128 - 24}s")  # seq, cycle, t_ns, filler: 128 bytes
WARMUP = 200
CHILD_TIMEOUT_S = 120.0
_CTX = mp.get_context("fork")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[int], q: float) -> float:
    """Nearest-rank percentile; NaN when there are no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return float(ordered[int(rank) - 1])


def cpu_plan() -> tuple[int, int] | None:
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


def pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def pace(start_ns: int, interval_ns: int, i: int) -> None:
    """Sleep until message ``i``'s slot. Sleeping, not spinning: a spinning producer
    would hold the GIL and starve Queue's feeder thread (pinned to the same CPU), which
    would charge Queue milliseconds of latency that are the benchmark's, not Queue's."""
    delay = start_ns + i * interval_ns - time.monotonic_ns()
    if delay > 0:
        time.sleep(delay / 1e9)


# --- producers: return (first send ns, last send ns) ------------------------------------


def ring_producer(name: str, count: int, interval_ns: int, native: bool) -> tuple[int, int]:
    ring = Ring.attach(name, RingLayout(CAPACITY, PAYLOAD_SIZE))
    try:
        writer = ring.writer(native=native)
        staged = writer.payload_f64
        publish = writer.publish
        mono = time.monotonic_ns
        start = mono()
        if interval_ns:
            for i in range(count):
                pace(start, interval_ns, i)
                publish(1, i, mono())
        else:
            for i in range(count):
                staged[0] = i
                publish(1, i, mono())
        return start, mono()
    finally:
        ring.close()


def queue_producer(queue: Any, count: int, interval_ns: int) -> tuple[int, int]:
    put = queue.put
    pack = MESSAGE.pack
    filler = bytes(MESSAGE.size - 24)
    mono = time.monotonic_ns
    start = mono()
    for i in range(count):
        if interval_ns:
            pace(start, interval_ns, i)
        put(pack(i, i, mono(), filler))
    end = mono()
    queue.close()
    queue.join_thread()  # the feeder thread has handed everything to the pipe
    return start, end


def pipe_producer(conn: Connection, count: int, interval_ns: int) -> tuple[int, int]:
    send = conn.send_bytes
    pack = MESSAGE.pack
    filler = bytes(MESSAGE.size - 24)
    mono = time.monotonic_ns
    start = mono()
    for i in range(count):
        if interval_ns:
            pace(start, interval_ns, i)
        send(pack(i, i, mono(), filler))
    return start, mono()


# --- consumers: return a result dict ----------------------------------------------------


def ring_consumer(
    name: str, count: int, ready: Any, timed: bool, native: bool
) -> dict[str, Any]:
    ring = Ring.attach(name, RingLayout(CAPACITY, PAYLOAD_SIZE))
    try:
        reader = ring.reader(from_oldest=False, native=native)
        poll = reader.poll
        mono = time.monotonic_ns
        latencies: list[int] = []
        record_latency = latencies.append
        ready.set()
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        last = 0
        while reader.received + reader.dropped < count:
            batch = poll(4096)  # decoded Records: the consumer's work is done here
            if batch:
                last = mono()
                if timed:
                    for record in batch:
                        record_latency(last - record.t_ns)
            elif time.monotonic() > deadline:
                break
        return {
            "received": reader.received,
            "dropped": reader.dropped,
            "last_ns": last,
            "latencies": latencies,
        }
    finally:
        ring.close()


def queue_consumer(queue: Any, count: int, ready: Any, timed: bool) -> dict[str, Any]:
    get = queue.get
    unpack = MESSAGE.unpack  # decode, as the ring reader does for its records
    mono = time.monotonic_ns
    latencies: list[int] = []
    ready.set()
    last = 0
    for _ in range(count):
        fields = unpack(get(timeout=CHILD_TIMEOUT_S))
        last = mono()
        if timed:
            latencies.append(last - fields[2])
    return {"received": count, "dropped": 0, "last_ns": last, "latencies": latencies}


def pipe_consumer(conn: Connection, count: int, ready: Any, timed: bool) -> dict[str, Any]:
    recv = conn.recv_bytes
    unpack = MESSAGE.unpack
    mono = time.monotonic_ns
    latencies: list[int] = []
    ready.set()
    last = 0
    received = 0
    for _ in range(count):
        if not conn.poll(CHILD_TIMEOUT_S):
            break
        fields = unpack(recv())
        last = mono()
        received += 1
        if timed:
            latencies.append(last - fields[2])
    return {"received": received, "dropped": 0, "last_ns": last, "latencies": latencies}


# --- running one measurement ---------------------------------------------------------------


def _child(results: Connection, cpu: int | None, start: Any, work: Callable[[], object]) -> None:
    try:
        pin(cpu)
        if start is not None:
            start.wait(CHILD_TIMEOUT_S)
        results.send(("ok", work()))
    except BaseException as exc:  # reported to the parent, which fails the run
        results.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


def measure(
    transport: str, count: int, interval_ns: int, cpus: tuple[int, int] | None
) -> dict[str, Any]:
    """One producer/consumer pair for ``count`` messages; returns the figures."""
    producer_cpu, consumer_cpu = cpus if cpus else (None, None)
    ready, go = _CTX.Event(), _CTX.Event()
    name = f"mxrc-bench-{os.getpid()}-{time.monotonic_ns()}"
    ring: Ring | None = None
    produce: Callable[[], object]
    consume: Callable[[], object]
    timed = interval_ns > 0
    if transport in ("ring", "ring_python"):
        native = transport == "ring" and ring_module.NATIVE_MISSING is None
        ring = Ring.create(name, RingLayout(CAPACITY, PAYLOAD_SIZE))
        produce = partial(ring_producer, name, count, interval_ns, native)
        consume = partial(ring_consumer, name, count, ready, timed, native)
    elif transport == "queue":
        queue = _CTX.Queue()
        produce = partial(queue_producer, queue, count, interval_ns)
        consume = partial(queue_consumer, queue, count, ready, timed)
    else:
        receiving, sending = _CTX.Pipe(duplex=False)
        produce = partial(pipe_producer, sending, count, interval_ns)
        consume = partial(pipe_consumer, receiving, count, ready, timed)
    consumer_out, consumer_in = _CTX.Pipe(duplex=False)
    producer_out, producer_in = _CTX.Pipe(duplex=False)
    consumer = _CTX.Process(target=_child, args=(consumer_in, consumer_cpu, None, consume))
    producer = _CTX.Process(target=_child, args=(producer_in, producer_cpu, go, produce))
    try:
        consumer.start()
        if not ready.wait(30):
            raise RuntimeError(f"{transport} consumer did not start")
        producer.start()
        go.set()
        if not consumer_out.poll(CHILD_TIMEOUT_S) or not producer_out.poll(CHILD_TIMEOUT_S):
            raise RuntimeError(f"{transport}: no result within {CHILD_TIMEOUT_S} s")
        status_c, got = consumer_out.recv()
        status_p, sent = producer_out.recv()
        if status_c != "ok" or status_p != "ok":
            raise RuntimeError(f"{transport}: consumer {got!r}, producer {sent!r}")
    finally:
        for process in (producer, consumer):
            if process.pid is not None and process.is_alive():
                process.kill()
            if process.pid is not None:
                process.join(10)
        if ring is not None:
            ring.close()
        unlink_segment(name)
    first_send, last_send = sent
    elapsed_ns = max(1, got["last_ns"] - first_send)
    latencies = got["latencies"][WARMUP:] if interval_ns else []
    return {
        "messages": count,
        "received": got["received"],
        "dropped": got["dropped"],
        "msgs_per_s": got["received"] / (elapsed_ns / 1e9),
        "producer_msgs_per_s": count / (max(1, last_send - first_send) / 1e9),
        "latency_us": {
            "p50": percentile(latencies, 50) / 1e3,
            "p99": percentile(latencies, 99) / 1e3,
            "max": max(latencies) / 1e3 if latencies else float("nan"),
            "samples": len(latencies),
        },
    }


def median_run(
    runs: list[dict[str, Any]], key: Callable[[dict[str, Any]], float]
) -> dict[str, Any]:
    """The run in the middle by ``key`` (a real run, not an average of runs)."""
    ordered = sorted(runs, key=key)
    return ordered[(len(ordered) - 1) // 2]


def _round(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}") if math.isfinite(value) and value else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short run (smoke test); noisier")
    parser.add_argument("--repeat", type=int, default=None, help="runs per transport (median)")
    parser.add_argument("--interval-us", type=float, default=100.0, help="latency pacing")
    args = parser.parse_args(argv)
    quick = args.quick
    repeat = args.repeat or (1 if quick else 3)
    throughput_n = {"ring": 100_000, "ring_python": 50_000, "queue": 20_000, "pipe": 20_000}
    if not quick:
        throughput_n = {
            "ring": 2_000_000,
            "ring_python": 1_000_000,
            "queue": 200_000,
            "pipe": 200_000,
        }
    if ring_module.NATIVE_MISSING is not None:  # "ring" is the Python one already
        del throughput_n["ring_python"]
    latency_n = 1_000 + WARMUP if quick else 10_000 + WARMUP
    interval_ns = int(args.interval_us * 1000)
    cpus = cpu_plan()
    progress(
        f"ring_throughput: producer/consumer on CPUs {cpus if cpus else 'unpinned'}, "
        f"{repeat} run(s) per transport"
    )
    throughput: dict[str, list[dict[str, Any]]] = {t: [] for t in throughput_n}
    latency: dict[str, list[dict[str, Any]]] = {t: [] for t in throughput_n}
    for run in range(repeat):
        for transport, count in throughput_n.items():
            result = measure(transport, count, 0, cpus)
            throughput[transport].append(result)
            progress(
                f"  run {run + 1} {transport:11s} throughput {result['msgs_per_s']:>12,.0f} msg/s"
                f" (dropped {result['dropped']})"
            )
        for transport in throughput_n:
            result = measure(transport, latency_n, interval_ns, cpus)
            latency[transport].append(result)
            lat = result["latency_us"]
            progress(
                f"  run {run + 1} {transport:11s} latency p50 {lat['p50']:.1f} µs "
                f"p99 {lat['p99']:.1f} µs"
            )
    figures: dict[str, dict[str, Any]] = {}
    for transport in throughput_n:
        best = median_run(throughput[transport], lambda r: float(r["msgs_per_s"]))
        lat_run = median_run(latency[transport], lambda r: float(r["latency_us"]["p50"]))
        figures[transport] = {
            "msgs_per_s": _round(best["msgs_per_s"]),
            "producer_msgs_per_s": _round(best["producer_msgs_per_s"]),
            "messages": best["messages"],
            "dropped": best["dropped"],
            "latency_p50_us": _round(lat_run["latency_us"]["p50"], 3),
            "latency_p99_us": _round(lat_run["latency_us"]["p99"], 3),
            "latency_max_us": _round(lat_run["latency_us"]["max"], 3),
            "latency_samples": lat_run["latency_us"]["samples"],
            "runs_msgs_per_s": [_round(r["msgs_per_s"]) for r in throughput[transport]],
        }
    ring, queue, pipe = figures["ring"], figures["queue"], figures["pipe"]
    ring["implementation"] = ring_module.implementation()
    ratio = ring["msgs_per_s"] / queue["msgs_per_s"]
    result = {
        "benchmark": "ring_throughput",
        "quick": quick,
        "machine": {
            "arch": platform.machine(),
            "cpus_available": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
        },
        "pinned_cpus": {"producer": cpus[0], "consumer": cpus[1]} if cpus else None,
        "message_bytes": 128,
        "ring_capacity": CAPACITY,
        "latency_pacing_us": args.interval_us,
        "repeat": repeat,
        **figures,
        "ratios": {
            "ring_vs_queue_msgs_per_s": _round(ratio, 3),
            **(
                {
                    "ring_python_vs_queue_msgs_per_s": _round(
                        figures["ring_python"]["msgs_per_s"] / queue["msgs_per_s"], 3
                    )
                }
                if "ring_python" in figures
                else {}
            ),
            "ring_vs_pipe_msgs_per_s": _round(ring["msgs_per_s"] / pipe["msgs_per_s"], 3),
            "queue_vs_ring_latency_p50": _round(
                queue["latency_p50_us"] / ring["latency_p50_us"], 3
            ),
            "pipe_vs_ring_latency_p50": _round(pipe["latency_p50_us"] / ring["latency_p50_us"], 3),
        },
        "target": f"ring msgs/s >= {TARGET_RATIO:g} x multiprocessing.Queue msgs/s",
        "target_met": ratio >= TARGET_RATIO,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
