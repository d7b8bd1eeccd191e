"""What one broker message costs, without wsnode: RabbitMQ's CPU and the Python
client's (aiormq, which aio-pika drives) per message, publish to consume.

One process publishes ``--messages`` messages of ``--size`` bytes with
publisher confirms (``--in-flight`` unconfirmed at most) to a queue it
consumes itself (prefetch 256), acking each message (``--acks each``) or
every 16th with ``multiple`` (``--acks multiple``). The broker is a private
one-node RabbitMQ started here (``tests/support/rabbit_cluster.py``). Figures:
``rabbitmq_us_per_msg`` (CPU of the broker's process), ``client_us_per_msg``
(this process: publish, confirm, consume and ack), ``msgs_per_s``. Used in
docs/performance.md to show what a pod pays per broker message, whatever the
number of deliveries it carries. JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import aiormq
import orjson
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from rabbit_batches import beam_pid, cpu_seconds  # noqa: E402

from tests.support.rabbit_cluster import RabbitCluster  # noqa: E402

ACK_EVERY = 16


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


async def loop_channels(conn: AbstractConnection) -> tuple[AbstractChannel, AbstractChannel, str]:
    """On ``conn``: a publishing channel with confirms, a consuming one (prefetch
    256, as a pod's) and a private queue, so one process publishes to itself."""
    pub = await conn.channel(publisher_confirms=True)
    sub = await conn.channel()
    await sub.basic_qos(prefetch_count=256)
    queue = (await pub.queue_declare("", exclusive=True, auto_delete=True)).queue
    assert queue is not None
    return pub, sub, queue


async def run(url: str, broker_pid: int, args: argparse.Namespace, acks: str) -> dict[str, object]:
    conn = await aiormq.connect(url)
    try:
        pub, sub, queue = await loop_channels(conn)
        n, got, unacked = args.messages, 0, 0
        done = asyncio.Event()

        async def on_message(message: DeliveredMessage) -> None:
            nonlocal got, unacked
            got += 1
            unacked += 1
            if acks == "each" or unacked >= ACK_EVERY or got == n:
                await message.channel.basic_ack(message.delivery.delivery_tag,
                                                multiple=acks == "multiple")
                unacked = 0
            if got == n:
                done.set()

        await sub.basic_consume(queue, on_message)
        body = b"x" * args.size
        props = aiormq.spec.Basic.Properties(delivery_mode=1, message_type="deliver",
                                             content_type="application/x-wsnode-batch")
        slots = asyncio.Semaphore(args.in_flight)

        async def publish() -> None:
            async with slots:
                await pub.basic_publish(body, routing_key=queue, mandatory=True,
                                        properties=props)

        broker0, own0, t0 = cpu_seconds(broker_pid), own_cpu(), time.monotonic()
        await asyncio.gather(*(publish() for _ in range(n)))
        await asyncio.wait_for(done.wait(), 60)
        took = time.monotonic() - t0
        return {"bench": "amqp_roundtrip", "acks": acks, "size": args.size,
                "in_flight": args.in_flight, "messages": n,
                "msgs_per_s": round(n / took),
                "rabbitmq_us_per_msg": round((cpu_seconds(broker_pid) - broker0) / n * 1e6, 1),
                "client_us_per_msg": round((own_cpu() - own0) / n * 1e6, 1)}
    finally:
        await conn.close()


async def main_async(args: argparse.Namespace) -> None:
    rabbit = await asyncio.to_thread(
        RabbitCluster(Path(tempfile.mkdtemp(prefix="wsnode-bench-amqp-")), size=1).start)
    try:
        node = rabbit.nodes[0]
        for _ in range(args.runs):
            for acks in args.acks:
                row = await run(node.url, beam_pid(node), args, acks)
                print(orjson.dumps(row).decode(), flush=True)
    finally:
        await asyncio.to_thread(rabbit.close)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--size", type=int, default=2000, help="body bytes")
    parser.add_argument("--in-flight", type=int, default=8, help="unconfirmed publishes")
    parser.add_argument("--acks", default="each,multiple",
                        help="each, multiple (every 16th, multiple=True), or both")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    args.acks = [a for a in args.acks.split(",") if a]
    if any(a not in ("each", "multiple") for a in args.acks):
        parser.error("--acks takes each, multiple or both")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
