"""Closed-loop cross-pod chat, for wsnode and its peers, with CPU per message.

The workload of issue 13: 50 senders connected to pod A, 1,000 receivers to pod
B, the chat example's ``chat_message`` (~200-byte JSON payload), rate limit off,
at most 200 messages in flight in total: a sender sends its next message when
one of its earlier ones has been delivered. Figures: delivered msg/s, p50/p99
latency (send to receipt) and the CPU time per delivered message of every
server-side process (each pod, redis-server, RabbitMQ's beam.smp), from their
CPU time over the measured window. The load client runs in ``--workers``
processes of its own; its CPU is reported apart, never counted as the servers'.

Systems (``--systems``): ``wsnode``, ``socketio`` (socket.io 4.8 on Node.js with
``@socket.io/redis-adapter``; ``make peers-deps``), ``pysocketio``
(python-socketio with ``AsyncRedisManager``); see ``bench/systems.py``. Modes
(``--modes``): ``closed`` (the maximum), ``rate`` (a fixed offered rate, by
default half of the system's ``closed`` rate measured just before: the p99
there), ``ack`` (wsnode only: ``requiresAck``, the receivers ack; acked msg/s),
``burst`` (``bench/cross_pod.py``'s full load: ``-m`` messages at once).
``--pods 4 --spread`` spreads senders and receivers over every pod (targets
always on another pod than their sender's): the scaling run. ``--pods 1`` puts
everyone on one pod: the targets are then local, and no message crosses the bus.

For wsnode each row also has ``load``: Redis commands per delivered message
(``INFO stats``; with private brokers they are this run's alone), and from the
pods' ``/metrics`` the deliveries published to other pods and the broker messages
that carried them (the batch factor), and RabbitMQ's CPU per broker message
(``bench/counters.py``).

Brokers are private (a redis-server and a one-node RabbitMQ started here, so
their CPU is this run's alone) unless ``--shared-brokers``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.counters import per_message, read_all  # noqa: E402
from bench.loop_client import LoopConfig, Window, run_share  # noqa: E402
from bench.systems import (  # noqa: E402
    SYSTEMS,
    Brokers,
    CpuMeter,
    System,
    Unavailable,
    machine_busy,
    running,
    workdir,
)
from bench.wsload import percentiles  # noqa: E402


def _worker(pipe: Connection, cfg: dict[str, Any]) -> None:
    """One load-client process: connect, say ready, run the window it is given."""
    async def main() -> None:
        async def window_at() -> Window:
            pipe.send(("ready", os.getpid()))
            return Window(**await asyncio.to_thread(pipe.recv))
        tally = await run_share(LoopConfig(**cfg), window_at)
        pipe.send(("done", tally.as_dict()))
    try:
        asyncio.run(main())
    except BaseException as exc:
        pipe.send(("error", repr(exc)))
        raise


def shares(args: argparse.Namespace, ports: list[int], mode: str, rate: float,
           ) -> list[LoopConfig]:
    """Split the load over ``args.workers`` processes. Worker ``w`` holds the
    senders and receivers of index ``w mod W``, placed on pods round robin, and
    sends only to its own receivers: each worker is a closed loop of its own."""
    w_count = args.workers
    send_ports = ports if args.spread else ports[:1]
    recv_ports = ports if args.spread else ports[1:2] or ports[:1]
    out = []
    for w in range(w_count):
        senders = [send_ports[(i // w_count) % len(send_ports)]
                   for i in range(w, args.senders, w_count)]
        receivers = [recv_ports[(j // w_count) % len(recv_ports)]
                     for j in range(w, args.receivers, w_count)]
        inflight = args.inflight // w_count + (w < args.inflight % w_count)
        out.append(LoopConfig(
            proto="wsnode" if args.system == "wsnode" else "socketio", senders=senders,
            receivers=receivers, worker=w, mode="closed" if mode == "ack" else mode,
            inflight=inflight, rate=rate / w_count, ack=mode == "ack",
            messages=args.messages // w_count if mode == "burst" else 0,
            lost_after=60.0 if mode == "burst" else args.lost_after))
    return out


def measure(args: argparse.Namespace, system: System, mode: str, rate: float = 0.0,
            ) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for cfg in shares(args, system.ports, mode, rate):
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(theirs, cfg.__dict__), daemon=True)
        proc.start()
        pipes.append(mine)
        procs.append(proc)
    try:
        client_pids = [_expect(p, "ready", 120) for p in pipes]
        time.sleep(1.0)  # presence written, welcome frames in, on every pod
        start = time.time() + 0.3
        if mode == "burst":
            window = Window(start, start, float("inf"), start)
        else:
            window = Window(start, start + args.warmup, start + args.warmup + args.seconds,
                            start + args.warmup + args.seconds)
        meter = CpuMeter({**system.cpu_groups(), "client": client_pids})

        def counters() -> dict[str, float] | None:
            # wsnode only: Redis commands and the pods' bus counters (the peers
            # have no admin /metrics; their Redis is read by CPU alone).
            if system.kind != "wsnode":
                return None
            return read_all(system.brokers.redis_url, system.admin_ports)
        for p in pipes:
            p.send(window.__dict__)
        _sleep_until(window.measure_from)
        cpu0, busy0, t0, c0 = meter.read(), machine_busy(), time.time(), counters()
        if mode != "burst":
            _sleep_until(window.measure_to)
            cpu1, busy1, t1, c1 = meter.read(), machine_busy(), time.time(), counters()
        tallies = [_expect(p, "done", args.seconds + args.warmup + args.lost_after + 120)
                   for p in pipes]
        if mode == "burst":
            cpu1, busy1, c1 = meter.read(), machine_busy(), counters()
            t1 = max(t["last_delivery"] for t in tallies) or time.time()
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    row = _row(args, system, mode, rate, tallies, cpu0, cpu1, busy1 - busy0, t0, t1)
    if c0 is not None and c1 is not None:
        rabbit = cpu1["rabbitmq"] - cpu0["rabbitmq"] if "rabbitmq" in cpu0 else None
        row["load"] = per_message(c0, c1, row["in_window"] if mode != "burst"
                                  else row["delivered"], rabbit)
        row["load"]["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return row


def _row(args: argparse.Namespace, system: System, mode: str, rate: float,
         tallies: list[dict[str, Any]], cpu0: dict[str, float], cpu1: dict[str, float],
         busy: float, t0: float, t1: float) -> dict[str, Any]:
    total = {k: sum(t[k] for t in tallies) for k in (
        "sent", "delivered", "duplicates", "late", "lost", "misrouted", "unknown",
        "throttled", "acks_sent", "errors", "in_window")}
    lat = [x for t in tallies for x in t["latencies"]]
    if mode == "burst":
        first = min(t["first_send"] for t in tallies)
        span = max(t["last_delivery"] for t in tallies) - first
        counted = total["delivered"]
    else:
        span, counted = args.seconds, total["in_window"]
    wall = max(t1 - t0, 1e-9)
    used = {k: cpu1[k] - cpu0[k] for k in cpu0}
    servers = {k: v for k, v in used.items() if k != "client"}
    per_msg = {k: round(v / counted * 1e6, 1) if counted else None for k, v in servers.items()}
    per_msg["total"] = round(sum(servers.values()) / counted * 1e6, 1) if counted else None
    row: dict[str, Any] = {
        "bench": "closed_loop", "system": system.kind, "mode": mode,
        "pods": len(system.ports), "spread": args.spread, "workers": args.workers,
        "senders": args.senders, "receivers": args.receivers, "inflight": args.inflight,
        "msgs_per_s": round(counted / span) if span > 0 else 0, **percentiles(lat),
        **total, "cpu_us_per_msg": per_msg,
        "cpu_pct": {k: round(v / wall * 100, 1) for k, v in used.items()},
        "client_us_per_msg": round(used["client"] / counted * 1e6, 1) if counted else None,
        "machine_busy_pct": round(busy / wall * 100, 1),
        "other_load_pct": round((busy - sum(used.values())) / wall * 100, 1),
        "brokers": "shared" if args.shared_brokers else "private",
    }
    if mode == "burst":
        row["messages"] = args.messages
    else:
        row["seconds"] = args.seconds
    if mode == "rate":
        row["offered_per_s"] = round(rate)
        row["rate_given"] = bool(args.rates)
    return row


def _expect(pipe: Connection, what: str, timeout: float) -> Any:
    if not pipe.poll(timeout):
        raise TimeoutError(f"no {what!r} from a load-client worker within {timeout:.0f}s")
    kind, value = pipe.recv()
    if kind != what:
        raise RuntimeError(f"load-client worker: {kind} {value}")
    return value


def _sleep_until(at: float) -> None:
    time.sleep(max(0.0, at - time.time()))


def emit(row: dict[str, Any], out: Path | None) -> None:
    line = orjson.dumps(row).decode()
    print(line, flush=True)
    if out is not None:
        with out.open("a") as f:
            f.write(line + "\n")


def run_system(args: argparse.Namespace, brokers: Brokers, kind: str, out: Path | None,
               run: int) -> list[dict[str, Any]]:
    args.system = kind
    rows: list[dict[str, Any]] = []
    with running(kind, args.pods, brokers, args.workdir) as system:
        for mode in args.modes:
            if mode == "ack" and kind != "wsnode":
                continue
            offers = [0.0]
            if mode == "rate":
                closed = [r["msgs_per_s"] for r in rows if r["mode"] == "closed"]
                offers = args.rates or [closed[-1] / 2 if closed else 2000.0]
            for rate in offers:
                row = {**measure(args, system, mode, rate), "run": run}
                emit(row, out)
                rows.append(row)
    if kind == "wsnode":
        from bench.cluster import _cleanup
        with contextlib.suppress(Exception):
            asyncio.run(_cleanup(system.prefix, [f"{system.prefix}-{n}" for n in system.names],
                                 brokers.redis_url, brokers.amqp_url))
    return rows


def run_interleaved(args: argparse.Namespace, brokers: Brokers, systems: list[str],
                    out: Path | None) -> list[dict[str, Any]]:
    """Every system up at once, and their windows taken in turn: ``--interleave``
    rounds of one window per (system, mode), the order reversed every other
    round. A host whose speed drifts within minutes (a shared VM) then slows
    every system alike, and the ratios of a round compare windows a few seconds
    apart. Each round is a ``run`` of its own: its ratios are computed from its
    rows, and the summary gives their median. Modes: ``closed`` and ``ack``."""
    turns = [(kind, mode) for kind in systems for mode in args.modes
             if mode == "closed" or (mode == "ack" and kind == "wsnode")]
    if not turns:
        raise SystemExit("--interleave takes the closed and ack modes")
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        # Unavailable (a peer without its dependencies) stops the run: a round
        # without one of the systems has no ratio.
        up = {kind: stack.enter_context(running(kind, args.pods, brokers, args.workdir))
              for kind in systems}
        for n in range(1, args.interleave + 1):
            mine: list[dict[str, Any]] = []
            for kind, mode in (turns if n % 2 else turns[::-1]):
                args.system = kind
                row = {**measure(args, up[kind], mode), "run": n, "interleaved": True}
                emit(row, out)
                mine.append(row)
            emit({**ratios(mine), "run": n, "interleaved": True}, out)
            rows += mine
        if "wsnode" in up:
            from bench.cluster import _cleanup
            with contextlib.suppress(Exception):
                w = up["wsnode"]
                asyncio.run(_cleanup(w.prefix, [f"{w.prefix}-{m}" for m in w.names],
                                     brokers.redis_url, brokers.amqp_url))
    return rows


def ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """wsnode against each peer, per mode, from this run's rows."""
    out: dict[str, Any] = {"bench": "closed_loop", "ratios": True}
    by = {(r["system"], r["mode"], r["pods"]): r for r in rows}
    for (kind, mode, pods), row in by.items():
        base = by.get(("wsnode", mode, pods))
        # The rate mode offers each system half its own maximum: its p99 is the
        # figure, and the ratio of two offered rates says nothing.
        if kind == "wsnode" or mode == "rate" or base is None or not row["msgs_per_s"]:
            continue
        key = f"{mode}_{pods}pods_wsnode_vs_{kind}"
        out[key + "_msgs"] = round(base["msgs_per_s"] / row["msgs_per_s"], 2)
        theirs, ours = row["cpu_us_per_msg"]["total"], base["cpu_us_per_msg"]["total"]
        if theirs and ours:
            out[key + "_cpu"] = round(ours / theirs, 2)
    for pods in {r["pods"] for r in rows}:
        ack, closed = by.get(("wsnode", "ack", pods)), by.get(("wsnode", "closed", pods))
        if ack and closed and closed["msgs_per_s"]:
            out[f"wsnode_{pods}pods_ack_vs_closed_msgs"] = round(
                ack["msgs_per_s"] / closed["msgs_per_s"], 2)
    for kind in {r["system"] for r in rows}:
        by_pods = {r["pods"]: r for r in rows if r["system"] == kind and r["mode"] == "closed"}
        if len(by_pods) > 1:
            lo, hi = min(by_pods), max(by_pods)
            a, b = by_pods[lo]["cpu_us_per_msg"]["total"], by_pods[hi]["cpu_us_per_msg"]["total"]
            if a and b:
                out[f"{kind}_cpu_{hi}_vs_{lo}_pods"] = round(b / a, 2)
    return out


def summary(rows: list[dict[str, Any]], runs: int) -> dict[str, Any]:
    """Medians over the runs: each system's figures per mode and pod count, and
    the ratios of each run (computed within that run, then the median)."""
    out: dict[str, Any] = {"bench": "closed_loop", "summary": True, "runs": runs}
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        # Rates given on the command line are rows of their own; the default
        # (half the closed rate) varies by run and is one group.
        offer = f"_{r['offered_per_s']}" if r["mode"] == "rate" and r.get("rate_given") else ""
        groups.setdefault(f"{r['system']}_{r['mode']}{offer}_{r['pods']}pods", []).append(r)
    for key, group in groups.items():
        out[key] = {
            "msgs_per_s": statistics.median(r["msgs_per_s"] for r in group),
            "p99_ms": round(statistics.median(r["p99_ms"] for r in group), 2),
            "cpu_us_per_msg": {k: round(statistics.median(r["cpu_us_per_msg"][k] or 0
                                                          for r in group), 1)
                               for k in group[0]["cpu_us_per_msg"]}}
        loads = [r["load"] for r in group if "load" in r]
        if loads:
            out[key]["load"] = {k: statistics.median(x[k] for x in loads if x[k] is not None)
                                for k in loads[0] if any(x[k] is not None for x in loads)}
    per_run = [ratios([r for r in rows if r["run"] == n]) for n in range(1, runs + 1)]
    for key in sorted({k for p in per_run for k in p if k not in ("bench", "ratios")}):
        out[key] = round(statistics.median(p[key] for p in per_run if key in p), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default="wsnode,socketio,pysocketio")
    parser.add_argument("--modes", default="closed,rate,ack")
    parser.add_argument("--pods", default="2", help="pod counts to run, e.g. 2,4")
    parser.add_argument("--spread", action="store_true",
                        help="senders and receivers on every pod (default: A -> B)")
    parser.add_argument("--senders", type=int, default=50)
    parser.add_argument("--receivers", type=int, default=1000)
    parser.add_argument("--inflight", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rate", default="",
                        help="offered msg/s of the rate mode, or several (500,2000: a row "
                        "each); default: half the closed rate")
    parser.add_argument("-m", "--messages", type=int, default=40_000, help="burst size")
    parser.add_argument("--workers", type=int, default=1, help="load-client processes")
    parser.add_argument("--lost-after", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                        help="every system up at once, windows taken in turn for ROUNDS "
                        "rounds (closed and ack modes; one pod count): ratios that the "
                        "host's drift cannot skew")
    parser.add_argument("--shared-brokers", action="store_true")
    parser.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    args = parser.parse_args()
    args.modes = [m for m in args.modes.split(",") if m]
    args.rates = [float(r) for r in args.rate.split(",") if r]
    args.workdir = workdir()
    systems = [s for s in args.systems.split(",") if s]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system {unknown[0]!r} (one of {', '.join(SYSTEMS)})")
    pod_counts = [int(p) for p in str(args.pods).split(",")]
    brokers = Brokers(args.workdir, shared=args.shared_brokers,
                      rabbit="wsnode" in systems)
    every: list[dict[str, Any]] = []
    failed = 0
    try:
        brokers.start()
        if args.interleave:
            args.pods = pod_counts[0]
            every = run_interleaved(args, brokers, systems, args.out)
            args.runs = args.interleave
        else:
            for run in range(1, args.runs + 1):
                rows: list[dict[str, Any]] = []
                for pods in pod_counts:
                    args.pods = pods
                    for kind in systems:
                        try:
                            rows += run_system(args, brokers, kind, args.out, run)
                        except Unavailable as exc:
                            failed += 1
                            emit({"bench": "closed_loop", "system": kind, "skipped": str(exc)},
                                 args.out)
                emit({**ratios(rows), "run": run}, args.out)
                every += rows
    finally:
        brokers.close()
    if failed == 0:
        shutil.rmtree(args.workdir, ignore_errors=True)
    else:
        print(f"logs: {args.workdir}", file=sys.stderr)
    emit(summary(every, args.runs), args.out)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
