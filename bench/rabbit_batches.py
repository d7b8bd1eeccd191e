"""RabbitMQ cost of cross-pod chat: broker messages per delivery and broker CPU
per delivered message, with 2 and 4 pods, on a private RabbitMQ (1 node, or a
3-node cluster) started here (tests/support/rabbit_cluster.py; the shared
broker's counters and CPU are other people's too).

Every pod holds ``--users`` clients; each client in turn sends a
``chat_message`` to a user on another pod (so every message crosses the bus):
the next pod (``--pattern ring``), or every other pod in turn (``spread``, as
random chat partners are), at ``--rates`` messages/s in total. After a warm-up,
a window of ``--seconds`` is measured from the broker's own counters
(``rabbit_global_counters``: AMQP messages received and routed), the CPU time
of the broker processes and of the pods (``/proc``), and the chat frames the
clients got.

Broker messages include the pods' canaries (one per pod per heartbeat, 5 s).
Figures: ``deliveries_per_broker_msg`` (the batch factor: deliveries carried by
one published message), ``broker_cpu_us_per_delivery``, ``pod_cpu_us_per_delivery``.
JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from cluster import REDIS_URL, Pod  # noqa: E402
from wsload import Conn, open_conns  # noqa: E402

from tests.support.rabbit_cluster import RabbitCluster, RabbitNode  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
COUNTERS = ("M = maps:get([{protocol, amqp091}], rabbit_global_counters:overview()), "
            "{maps:get(messages_received_total, M), maps:get(messages_routed_total, M)}.")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def beam_pid(node: RabbitNode) -> int:
    return int((node.dir / "pid").read_text().strip())


def broker_counters(nodes: list[RabbitNode]) -> tuple[int, int]:
    received = delivered = 0
    for node in nodes:
        text = node.ctl("eval", COUNTERS).strip().strip("{}")
        r, d = (int(x) for x in text.split(","))
        received, delivered = received + r, delivered + d
    return received, delivered


async def run(rabbit: RabbitCluster, pods_n: int, rate: float, args: argparse.Namespace,
              log_dir: Path) -> dict[str, object]:
    prefix = f"benchrb{uuid.uuid4().hex[:6]}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("WSNODE_")}
    base.update(WSNODE_REDIS_URL=REDIS_URL, WSNODE_KEY_PREFIX=prefix, WSNODE_RATE_LIMIT="0",
                WSNODE_LOG_LEVEL="WARNING", WSNODE_SEND_QUEUE_SIZE="8MiB")
    pods = [Pod(f"rb-{i}", {**base, "WSNODE_AMQP_URL": rabbit.url_list(i % len(rabbit.nodes))},
                log_dir) for i in range(pods_n)]
    got = 0

    def on_message(conn: Conn, payload: bytes | None) -> None:
        nonlocal got
        if payload is not None and b'"chat_message"' in payload:
            got += 1

    conns: list[list[Conn]] = []
    try:
        for pod in pods:
            await asyncio.to_thread(pod.wait_ready, 60)
        for k, pod in enumerate(pods):
            conns.append(await open_conns("127.0.0.1", pod.port,
                                          [f"/ws?user=p{k}u{j}" for j in range(args.users)],
                                          on_message, sample=1))
        await asyncio.sleep(1.0)
        stop = asyncio.Event()

        async def send() -> None:
            interval, i = 0.01, 0
            per_tick = rate * interval
            owed, next_at = 0.0, time.monotonic()
            while not stop.is_set():
                owed += per_tick
                while owed >= 1:
                    owed -= 1
                    k, j = i % pods_n, (i // pods_n) % args.users
                    # ring: to the next pod; spread: to any other pod, in turn.
                    hop = 1 if args.pattern == "ring" else 1 + (i // pods_n) % (pods_n - 1)
                    to = f"p{(k + hop) % pods_n}u{(j * 7 + i) % args.users}"
                    conns[k][j].send_json({"type": "chat_message",
                                           "payload": {"to": to, "text": "hello there"}})
                    i += 1
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

        sender = asyncio.create_task(send())
        await asyncio.sleep(args.warmup)
        beams = [beam_pid(n) for n in rabbit.nodes]
        counters0 = await asyncio.to_thread(broker_counters, rabbit.nodes)
        cpu0 = [cpu_seconds(p) for p in beams], [cpu_seconds(p.proc.pid) for p in pods]
        got0, t0 = got, time.monotonic()
        await asyncio.sleep(args.seconds)
        # As at the start: the counters (read as rabbitmqctl ends, a second or
        # more after it starts), then the rest at once, so the windows agree.
        counters1 = await asyncio.to_thread(broker_counters, rabbit.nodes)
        got1, t1 = got, time.monotonic()
        cpu1 = [cpu_seconds(p) for p in beams], [cpu_seconds(p.proc.pid) for p in pods]
        stop.set()
        await sender
    finally:
        for group in conns:
            for c in group:
                if c.transport is not None:
                    c.transport.close()
        for pod in pods:
            pod.stop()
        await forget(prefix)
    deliveries = got1 - got0
    published = counters1[0] - counters0[0]
    consumed = counters1[1] - counters0[1]
    broker_cpu = sum(cpu1[0]) - sum(cpu0[0])
    pod_cpu = sum(cpu1[1]) - sum(cpu0[1])
    window = t1 - t0
    per = max(deliveries, 1)
    return {"bench": "rabbit_batches", "rabbit_nodes": len(rabbit.nodes), "pods": pods_n,
            "pattern": args.pattern,
            "users_per_pod": args.users, "offered_per_s": rate,
            "delivered_per_s": round(deliveries / window), "window_s": round(window, 1),
            "broker_msgs_published": published, "broker_msgs_routed": consumed,
            "deliveries_per_broker_msg": round(deliveries / max(published, 1), 2),
            "broker_msgs_per_1k_deliveries": round(1000 * published / per, 1),
            "broker_cpu_pct": round(100 * broker_cpu / window, 1),
            "broker_cpu_us_per_delivery": round(1e6 * broker_cpu / per, 1),
            "pod_cpu_us_per_delivery": round(1e6 * pod_cpu / per, 1),
            "canaries_in_window": round(pods_n * window / 5.0)}


async def forget(prefix: str) -> None:
    """Delete the run's Redis keys (its AMQP names go with the private broker)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
    for i in range(0, len(keys), 1000):
        await client.delete(*keys[i:i + 1000])
    await client.aclose()


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="wsnode-bench-rabbit-"))
    for nodes in args.nodes:
        rabbit = await asyncio.to_thread(RabbitCluster(workdir, size=nodes).start)
        try:
            for pods_n in args.pods:
                for rate in args.rates:
                    row = await run(rabbit, pods_n, rate, args, workdir)
                    print(orjson.dumps(row).decode(), flush=True)
        finally:
            await asyncio.to_thread(rabbit.close)
    with contextlib.suppress(OSError):
        print(f"# logs in {workdir}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--pods", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--rates", type=float, nargs="+", default=[500.0, 2000.0])
    parser.add_argument("--users", type=int, default=100, help="clients per pod")
    parser.add_argument("--pattern", choices=["ring", "spread"], default="ring",
                        help="ring: each pod's users write to the next pod's; spread: to "
                        "every other pod's in turn")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
