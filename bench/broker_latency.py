"""One hop through the broker, without wsnode: how long a message takes from
publish to consumer, RabbitMQ as wsnode's bus uses it against Redis pub/sub as
socket.io's ``@socket.io/redis-adapter`` uses it.

The closed loop of issue 13 is bound by latency: 200 messages in flight, so
its rate is 200 over the time a message takes from sender to receiver, and the
broker hop is part of that time for every system. This measures the hop alone,
on a private redis-server and a private one-node RabbitMQ started here
(``bench/systems.py``'s ``Brokers``), one process, uvloop:

- ``rabbitmq``: aiormq (what aio-pika drives) publishes with publisher confirms
  and ``mandatory`` to a queue it consumes on another channel (prefetch 256,
  each message acked), as ``wsnode/bus_rabbitmq*.py`` does;
- ``redis_pubsub``: redis-py ``PUBLISH`` on one connection, a subscriber on
  another, as the socket.io adapter does.

Messages go out at ``--rates`` per second (each publish not awaited before the
next), for
``--seconds``; each carries its send time. Figures: p50/p95/p99 in ms from
publish call to the consumer's callback. JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiormq
import orjson
import redis.asyncio as aioredis
import uvloop
from aiormq.abc import DeliveredMessage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from amqp_roundtrip import loop_channels  # noqa: E402
from systems import Brokers  # noqa: E402
from wsload import percentiles  # noqa: E402

_CHANNEL = "wsnode-bench-latency"


async def _pace(rate: float, seconds: float, publish: Callable[[bytes], Awaitable[Any]],
                arrived: Callable[[], int]) -> None:
    """Start ``publish(send time)`` ``rate`` times a second for ``seconds``, each
    without awaiting the one before (a pod does not wait for a hop to publish the
    next message); return once every publish returned and ``arrived()`` counts
    them all (30 s at most)."""
    pending: set[asyncio.Future[Any]] = set()
    count, start = 0, time.perf_counter()
    while (now := time.perf_counter()) - start < seconds:
        due = start + count / rate
        if now < due:
            await asyncio.sleep(due - now)
        future = asyncio.ensure_future(publish(repr(time.perf_counter()).encode()))
        pending.add(future)
        future.add_done_callback(pending.discard)
        count += 1
    await asyncio.gather(*pending)
    deadline = time.monotonic() + 30.0
    while arrived() < count:  # the consumers' callbacks run on this loop: poll it
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count - arrived()} of {count} messages did not arrive")
        await asyncio.sleep(0.01)


async def rabbitmq(url: str, rate: float, seconds: float) -> list[float]:
    conn = await aiormq.connect(url)
    try:
        pub, sub, queue = await loop_channels(conn)
        took: list[float] = []

        async def on_message(message: DeliveredMessage) -> None:
            took.append(time.perf_counter() - float(message.body))
            await sub.basic_ack(message.delivery.delivery_tag or 0)

        await sub.basic_consume(queue, on_message)
        await _pace(rate, seconds, lambda body: pub.basic_publish(
            body, routing_key=queue, mandatory=True, timeout=5), lambda: len(took))
        return took
    finally:
        await conn.close()


async def redis_pubsub(url: str, rate: float, seconds: float) -> list[float]:
    publisher, subscriber = aioredis.from_url(url), aioredis.from_url(url)
    pubsub = subscriber.pubsub()
    try:
        await pubsub.subscribe(_CHANNEL)
        await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
        took: list[float] = []

        async def read() -> None:
            async for message in pubsub.listen():
                if message["type"] == "message":
                    took.append(time.perf_counter() - float(message["data"]))

        reader = asyncio.create_task(read())
        await _pace(rate, seconds, lambda body: publisher.publish(_CHANNEL, body),
                    lambda: len(took))
        reader.cancel()
        return took
    finally:
        await pubsub.aclose()
        await publisher.aclose()
        await subscriber.aclose()


async def main_async(args: argparse.Namespace, brokers: Brokers) -> None:
    for run in range(1, args.runs + 1):
        for rate in args.rates:
            for name, hop, url in (("rabbitmq", rabbitmq, brokers.amqp_url),
                                   ("redis_pubsub", redis_pubsub, brokers.redis_url)):
                took = await hop(url, rate, args.seconds)
                row = {"bench": "broker_latency", "broker": name, "rate": rate,
                       "messages": len(took), **percentiles(took), "run": run}
                print(orjson.dumps(row).decode(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="500,2000",
                        help="messages per second, comma-separated: a row each (low "
                             "rates: one process publishes, consumes and acks, and "
                             "from ~5,000/s its own loop, not the broker, sets the time)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",") if r]
    brokers = Brokers(Path(tempfile.mkdtemp(prefix="wsnode-bench-latency-")), shared=False)
    try:
        brokers.start()
        uvloop.run(main_async(args, brokers))
    finally:
        brokers.close()


if __name__ == "__main__":
    main()
