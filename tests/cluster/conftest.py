"""Fixtures of the tests against real broker clusters started by the suite.

``rabbit``: a private 3-node RabbitMQ cluster on loopback
(:mod:`tests.support.rabbit_cluster`), started once per module (it takes a
while) and stopped by pid at its end; a module that cannot start one is
skipped with the reason. Each test gets it with every node running: a node a
test stopped is started again (and has rejoined) before the next test.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from tests.integration.conftest import Broker
from tests.support.cluster import ClusterSlice
from tests.support.rabbit_cluster import RabbitCluster, rabbit_cluster_up


@pytest.fixture
async def rabbit(rabbit_cluster: RabbitCluster) -> RabbitCluster:
    """The session's cluster (tests/conftest.py), every node running and clustered."""
    return await rabbit_cluster_up(rabbit_cluster)


@pytest.fixture
async def cluster() -> AsyncIterator[ClusterSlice]:
    """A key prefix of the test's own on the shared Redis (the pods' AMQP
    names die with the private broker cluster)."""
    slice_ = ClusterSlice()
    yield slice_
    await slice_.cleanup()


@pytest.fixture
async def cluster_broker(rabbit: RabbitCluster) -> AsyncIterator[Broker]:
    """Names of the test's own on the private cluster, through its last node
    (tests stop the others), for in-process buses (``broker.bus(pod, url=...)``)."""
    connection = await aio_pika.connect(rabbit.nodes[-1].url, timeout=10)
    broker = Broker(connection, f"tc{uuid.uuid4().hex[:8]}")
    try:
        yield broker
    finally:
        await broker.cleanup()
        await connection.close()
