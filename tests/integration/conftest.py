"""Fixtures for tests against the real RabbitMQ (never stopped by a test).

Every test gets its own name prefix, so tests never see each other's queues,
and everything it declared under that prefix is deleted when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection
from yarl import URL

from wsnode.bus import Delivery
from wsnode.bus_rabbitmq import RabbitBus
from wsnode.ids import PodId
from wsnode.keys import AmqpNames

AMQP_URL = os.environ.get("WSNODE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


class Inbox:
    """What one bus's handlers received, with bounded waits on it."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.controls: list[dict[str, Any]] = []
        self.stranded: list[Delivery] = []
        self.batches = 0
        self._changed = asyncio.Event()

    async def on_deliveries(self, batch: list[Delivery]) -> None:
        self.batches += 1
        self.deliveries.extend(batch)
        self._changed.set()

    async def on_control(self, command: dict[str, Any]) -> None:
        self.controls.append(command)
        self._changed.set()

    async def on_stranded(self, batch: list[Delivery]) -> None:
        self.stranded.extend(batch)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait (at most ``timeout``) until a handler call makes ``predicate`` true."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0,
                     step: float = 0.02) -> float:
    """Bounded poll of observable state that has no event; returns the time taken."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(step)
    return loop.time() - start


class Broker:
    """A test's view of the shared broker: its names, an admin channel, its buses."""

    def __init__(self, connection: AbstractConnection, prefix: str) -> None:
        self.connection = connection
        self.names = AmqpNames(prefix)
        self.pods: set[str] = set()
        self.buses: list[RabbitBus] = []

    async def bus(self, pod: str | None, url: str = AMQP_URL, inbox: Inbox | None = None,
                  **options: Any) -> RabbitBus:
        """A RabbitBus, started as ``pod`` (or publish-only when ``pod`` is None)."""
        bus = RabbitBus(url, self.names, **options)
        self.buses.append(bus)
        if pod is not None:
            self.pods.add(pod)
            inbox = inbox or Inbox()
            await bus.start(PodId(pod), inbox.on_deliveries, inbox.on_control,
                            inbox.on_stranded)
        return bus

    async def channel(self) -> AbstractChannel:
        channel = self.connection.channel()
        await channel.initialize()
        return channel

    async def queue_info(self, name: str) -> tuple[int, int]:
        """(messages ready, consumers) of a queue, by a passive declare."""
        channel = await self.channel()
        try:
            queue = await channel.declare_queue(name, passive=True)
            result = queue.declaration_result
            return result.message_count or 0, result.consumer_count or 0
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def queue_exists(self, name: str) -> bool:
        try:
            await self.queue_info(name)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return False
        return True

    async def cleanup(self) -> None:
        for bus in self.buses:
            with contextlib.suppress(Exception):
                await bus.stop()
        n = self.names
        for queue in [*(n.pod_queue(p) for p in self.pods), n.stranded_queue, n.poison_queue]:
            with contextlib.suppress(Exception):
                channel = await self.channel()
                await channel.queue_delete(queue)
                await channel.close()
        for exchange in (n.exchange, n.stranded_exchange):
            with contextlib.suppress(Exception):
                channel = await self.channel()
                await channel.exchange_delete(exchange)
                await channel.close()


@pytest.fixture
def amqp_target() -> tuple[str, int]:
    url = URL(AMQP_URL)
    return url.host or "127.0.0.1", url.port or 5672


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    try:
        connection = await aio_pika.connect(AMQP_URL, timeout=3)
    except (OSError, aio_pika.exceptions.AMQPError, TimeoutError) as exc:
        pytest.fail(f"RabbitMQ not reachable at {AMQP_URL} (make services starts it): {exc}")
    broker = Broker(connection, f"t{uuid.uuid4().hex[:8]}")
    try:
        yield broker
    finally:
        await broker.cleanup()
        await connection.close()
