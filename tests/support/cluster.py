"""A test's own slice of the shared Redis and RabbitMQ: a unique prefix, and
everything under it deleted afterwards (never FLUSHALL, never a broker restart)."""

from __future__ import annotations

import contextlib
import os
import uuid

import aio_pika
import redis.asyncio as aioredis

from tests.support.pods import PodProcess
from wsnode.keys import AmqpNames

REDIS_URL = os.environ.get("WSNODE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("WSNODE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


class ClusterSlice:
    def __init__(self) -> None:
        self.prefix = f"wse2e{uuid.uuid4().hex[:8]}"
        self.pods: set[str] = set()
        self.processes: list[PodProcess] = []

    def adopt(self, pod: PodProcess) -> PodProcess:
        """Kill ``pod`` before cleaning up: a live pod would re-declare what we delete."""
        self.pods.add(pod.pod_id)
        self.processes.append(pod)
        return pod

    def env(self, *, redis_url: str = REDIS_URL, amqp_url: str | None = AMQP_URL,
            **extra: str) -> dict[str, str]:
        """Settings of a pod (or wsctl) in this slice: fast heartbeats and retries."""
        env = {"WSNODE_REDIS_URL": redis_url, "WSNODE_KEY_PREFIX": self.prefix,
               "WSNODE_HEARTBEAT_INTERVAL": "500ms", "WSNODE_ACK_RETRY_INTERVAL": "300ms",
               "WSNODE_ACK_MAX_ATTEMPTS": "10"}
        if amqp_url is not None:
            env["WSNODE_AMQP_URL"] = amqp_url
        env.update(extra)
        return env

    async def cleanup(self) -> None:
        for pod in self.processes:
            pod.kill()
        client = aioredis.from_url(REDIS_URL)
        keys = [k async for k in client.scan_iter(match=f"{self.prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        names = AmqpNames(self.prefix)
        with contextlib.suppress(OSError, aio_pika.exceptions.AMQPError, TimeoutError):
            connection = await aio_pika.connect(AMQP_URL, timeout=3)
            async with connection:
                for queue in [*(names.pod_queue(p) for p in self.pods), names.stranded_queue,
                              names.poison_queue]:
                    channel = await connection.channel()
                    with contextlib.suppress(aio_pika.exceptions.AMQPError):
                        await channel.queue_delete(queue)
                for exchange in (names.exchange, names.stranded_exchange):
                    channel = await connection.channel()
                    with contextlib.suppress(aio_pika.exceptions.AMQPError):
                        await channel.exchange_delete(exchange)
