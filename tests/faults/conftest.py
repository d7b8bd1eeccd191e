"""Fixtures of the fault-injection suite.

Every test gets a :class:`FaultCluster`: a private ``redis-server`` of its own
(so breaking Redis harms nobody else), the shared RabbitMQ under a unique
prefix, and ``wsnode serve`` processes started in parallel. Teardown kills
every pod by pid, deletes the prefix's AMQP queues and exchanges, and stops
the Redis server.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import aio_pika
import pytest
import redis.asyncio as aioredis

from tests.support.cluster import AMQP_URL
from tests.support.pods import PodProcess, base_env
from tests.support.redis_server import RedisServer
from tests.support.waits import eventually
from wsnode.keys import AmqpNames, RedisKeys


class FaultCluster:
    """Pods on a private Redis and the shared RabbitMQ (see the module)."""

    def __init__(self, tmp_path: Path, redis_server: RedisServer) -> None:
        self.prefix = f"wsflt{uuid.uuid4().hex[:8]}"
        self.keys = RedisKeys(self.prefix)
        self.amqp = AmqpNames(self.prefix)
        self.redis_server = redis_server
        self._tmp = tmp_path
        self.processes: list[PodProcess] = []
        self._redis: aioredis.Redis | None = None

    def env(self, **extra: str) -> dict[str, str]:
        """Settings of a pod (or wsctl) here: fast heartbeats and resends, no
        rate limit; ``extra`` (full WSNODE_* names) wins."""
        env = {"WSNODE_REDIS_URL": self.redis_server.url, "WSNODE_AMQP_URL": AMQP_URL,
               "WSNODE_KEY_PREFIX": self.prefix, "WSNODE_HEARTBEAT_INTERVAL": "500ms",
               "WSNODE_ACK_RETRY_INTERVAL": "300ms", "WSNODE_ACK_MAX_ATTEMPTS": "10",
               "WSNODE_RATE_LIMIT": "0"}
        env.update(extra)
        return env

    async def pods(self, **named: dict[str, str]) -> list[PodProcess]:
        """Start pods in parallel: ``a={...}`` starts ``pod-a`` with those extra
        settings. Returned in the order given."""
        made = [PodProcess(f"pod-{name}", self._tmp, self.env(**extra),
                           ["--app", "tests.e2e.app"]) for name, extra in named.items()]
        self.processes += made
        await asyncio.gather(*(asyncio.to_thread(p.start, 60.0) for p in made))
        # Ready, not just up: a pod whose first bus start failed serves /ws
        # without a queue, and a fault injected then would test the start.
        for pod in made:
            await eventually(partial(_ready, pod), 30, f"{pod.pod_id} ready")
        return made

    @property
    def redis(self) -> aioredis.Redis:
        """A client of the private Redis (for faults and for looking at keys)."""
        if self._redis is None:
            self._redis = aioredis.from_url(self.redis_server.url)
        return self._redis

    async def wsctl(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``wsctl`` in cluster mode (Redis and RabbitMQ, no --node)."""
        return await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "wsctl", *args],
            env=base_env(**self.env(**env)), capture_output=True, text=True, timeout=60,
            check=False)

    async def cleanup(self) -> None:
        for pod in self.processes:
            # SIGCONT first: a stopped process cannot act on SIGKILL until it runs.
            with contextlib.suppress(OSError, AssertionError):
                pod.signal(signal.SIGCONT)
            pod.kill()
        if self._redis is not None:
            await self._redis.aclose()
        await asyncio.to_thread(self.redis_server.kill)
        with contextlib.suppress(OSError, aio_pika.exceptions.AMQPError, TimeoutError):
            connection = await aio_pika.connect(AMQP_URL, timeout=5)
            async with connection:
                names = self.amqp
                queues = [*(names.pod_queue(p.pod_id) for p in self.processes),
                          names.stranded_queue, names.poison_queue]
                for queue in queues:
                    channel = await connection.channel()
                    with contextlib.suppress(aio_pika.exceptions.AMQPError):
                        await channel.queue_delete(queue)
                for exchange in (names.exchange, names.stranded_exchange):
                    channel = await connection.channel()
                    with contextlib.suppress(aio_pika.exceptions.AMQPError):
                        await channel.exchange_delete(exchange)


async def _ready(pod: PodProcess) -> bool:
    status, _ = await asyncio.to_thread(pod.api, "GET", "/readyz", None, None)
    return status == 200


@pytest.fixture
async def faults(tmp_path: Path) -> AsyncIterator[FaultCluster]:
    server = await asyncio.to_thread(RedisServer(tmp_path, aof=False).start)
    cluster = FaultCluster(tmp_path, server)
    try:
        yield cluster
    finally:
        await cluster.cleanup()
