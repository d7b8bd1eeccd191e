"""Backend factories for the contract suites: one param per backend.

Each contract test takes a factory (``make_presence``, ``make_topics``,
``make_limiter``, ``make_acks``, ``make_tracer``) and runs once per backend in :data:`BACKENDS`.
Only the memory backends run in process; the Redis ones against the real Redis
(``WSNODE_TEST_REDIS_URL``, default the shared one on 6379) under a key prefix
of the test alone, whose keys are deleted when the test ends (never FLUSHALL).
Objects a factory makes within one test share that prefix, so for a shared
backend they are two pods on one store.

``redis-cluster``: the same Redis backends on a private Redis Cluster of 3
masters with a replica each (``redis_cluster_servers``, shared by the
session; skipped with the reason where it cannot start), so every script and
pipeline is shown to keep to one slot per call and to follow the cluster.

``make_bus`` runs once per bus in :data:`BUSES`: the in-process one,
RabbitMQ (``WSNODE_TEST_AMQP_URL``, default the shared broker) under AMQP names
of the test alone, whose queues and exchanges are deleted when it ends, and a
private 3-node RabbitMQ cluster (:mod:`tests.support.rabbit_cluster`, started
once per module that asks for it, skipped with the reason where it cannot
start): every bus gets the three URLs, each starting with another node, so
the pods of one test sit on different nodes. Buses a factory makes within one
test are pods of one cluster.

Time: the Redis backends use Redis server time, so contract tests run on the
real clock with short durations and bounded polls (``poll.eventually``); the
exact time arithmetic is pinned in ``tests/unit`` against the memory backends
with a ManualClock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable

import aio_pika
import pytest

from tests.contract.factories import (
    AcksFactory,
    BusFactory,
    LimiterFactory,
    PresenceFactory,
    TopicsFactory,
    TracerFactory,
)
from tests.integration.conftest import AMQP_URL, Broker, Inbox
from tests.support.pods import free_port
from tests.support.rabbit_cluster import rabbit_cluster_up
from wsnode import redis_conn
from wsnode.acks import AckBackend, AckPolicy
from wsnode.acks_memory import MemoryAcks
from wsnode.acks_redis import RedisAcks
from wsnode.bus import Bus, MemoryBus
from wsnode.clock import Clock
from wsnode.errors import WsnodeError
from wsnode.ids import PodId
from wsnode.keys import RedisKeys
from wsnode.limiter import MemoryLimiter, RateLimiter
from wsnode.limiter_redis import RedisLimiter
from wsnode.presence import MemoryPresence, Presence
from wsnode.presence_redis import RedisPresence
from wsnode.redis_conn import Redis
from wsnode.settings import Rate
from wsnode.topics import MemoryTopics, TopicRegistry
from wsnode.topics_redis import RedisTopics
from wsnode.trace import MemoryTracer, Tracer
from wsnode.trace_redis import RedisTracer

BACKENDS = ["memory", "redis", "redis-cluster"]
# The private RabbitMQ cluster (three Erlang VMs, started through getfixturevalue,
# which tests/conftest.py's grouping cannot see) must start once, in the xdist
# worker of its other users: two at once on a busy 2-core machine time out.
# Its start may take up to 200 s there, inside the first user's timeout. A
# Redis Cluster is light: workers may each start one.
BUSES = ["memory", "rabbitmq", pytest.param("rabbitmq-cluster", marks=[
    pytest.mark.xdist_group("rabbit_cluster"), pytest.mark.timeout(300)])]
REDIS_URL = os.environ.get("WSNODE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def key_prefix() -> str:
    """A key prefix of this test alone (Redis backends)."""
    return f"wstest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_client(backend: str, key_prefix: str,
                       request: pytest.FixtureRequest) -> AsyncIterator[Redis | None]:
    """A client of the real Redis (or of the private cluster) for the redis
    params (None for memory); the test's keys are deleted afterwards."""
    if backend == "memory":
        yield None
        return
    url = REDIS_URL
    if backend == "redis-cluster":
        url = request.getfixturevalue("redis_cluster_servers").url
    client = redis_conn.connect(url, max_connections=16)
    # Warm, as a pod's client is: learning the cluster's slot map takes a round
    # trip to each node, which would otherwise fall inside the test's timings.
    await client.ping()
    yield client
    keys = [k async for k in client.scan_iter(match=f"{key_prefix}:*", count=500)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def make_presence(backend: str, key_prefix: str,
                  redis_client: Redis | None) -> PresenceFactory:
    """``await make_presence(lease_ms=...)`` -> a fresh, empty Presence store.

    Several pods share one store: the pod is an argument of every method.
    """

    async def make(lease_ms: int = 10_000) -> Presence:
        if backend == "memory":
            return MemoryPresence(lease_ms=lease_ms)
        assert redis_client is not None
        # live_cache_ms must stay well under the tests' 300 ms lease: with the 1 s
        # default, readers report a silent pod for up to 1 s past its lease.
        return RedisPresence(redis_client, RedisKeys(key_prefix), lease_ms=lease_ms,
                             live_cache_ms=50)

    return make


@pytest.fixture
def make_topics(backend: str, key_prefix: str, redis_client: Redis | None) -> TopicsFactory:
    """``await make_topics(lease_ms=...)`` -> (a fresh Presence, the TopicRegistry
    that lives by its leases), on an empty store. Pods are arguments, as for presence."""

    async def make(lease_ms: int = 10_000) -> tuple[Presence, TopicRegistry]:
        if backend == "memory":
            memory = MemoryPresence(lease_ms=lease_ms)
            return memory, MemoryTopics(memory)
        assert redis_client is not None
        redis = RedisPresence(redis_client, RedisKeys(key_prefix), lease_ms=lease_ms,
                              live_cache_ms=50)
        return redis, RedisTopics(redis_client, RedisKeys(key_prefix), redis)

    return make


@pytest.fixture
def make_limiter(backend: str, key_prefix: str,
                 redis_client: Redis | None) -> LimiterFactory:
    """``await make_limiter(Rate(count, period))`` -> a fresh RateLimiter."""

    async def make(rate: Rate) -> RateLimiter:
        if backend == "memory":
            return MemoryLimiter(rate)
        assert redis_client is not None
        return RedisLimiter(redis_client, RedisKeys(key_prefix), rate)

    return make


@pytest.fixture
def make_acks(backend: str, key_prefix: str, redis_client: Redis | None) -> AcksFactory:
    """``await make_acks(AckPolicy(...))`` -> a fresh, empty ACK store (every role)."""

    async def make(policy: AckPolicy) -> AckBackend:
        if backend == "memory":
            return MemoryAcks(policy)
        assert redis_client is not None
        return RedisAcks(redis_client, RedisKeys(key_prefix), policy)

    return make


@pytest.fixture
async def make_tracer(backend: str, key_prefix: str,
                      redis_client: Redis | None) -> AsyncIterator[TracerFactory]:
    """``await make_tracer(ttl_ms=..., clock=..., reachable=True)`` -> a Tracer on
    an empty store; ``reachable=False`` gives the Redis one a server that is not
    there (the memory one has no store to lose). Every tracer is closed at the end.
    Each is flushed as a pod flushes it: ``on_buffered`` wakes a flush."""
    made: list[Tracer] = []
    dead: list[Redis] = []
    flushes: set[asyncio.Task[None]] = set()

    def flusher(tracer: Tracer) -> Callable[[], None]:
        def wake() -> None:
            task = asyncio.get_running_loop().create_task(_flush(tracer))
            flushes.add(task)
            task.add_done_callback(flushes.discard)
        return wake

    async def make(ttl_ms: int = 60_000, clock: Clock | None = None,
                   reachable: bool = True) -> Tracer:
        tracer: Tracer
        if backend == "memory":
            tracer = MemoryTracer(ttl_ms=ttl_ms, clock=clock)
        elif reachable:
            assert redis_client is not None
            tracer = RedisTracer(redis_client, RedisKeys(key_prefix), ttl_ms=ttl_ms, clock=clock)
        else:
            client = redis_conn.connect(f"redis://127.0.0.1:{free_port()}/0")
            dead.append(client)
            tracer = RedisTracer(client, RedisKeys(key_prefix), ttl_ms=ttl_ms, clock=clock)
        tracer.on_buffered = flusher(tracer)
        made.append(tracer)
        return tracer

    yield make
    for task in list(flushes):
        await task
    for tracer in made:
        await tracer.aclose()
    for client in dead:
        await client.aclose()


async def _flush(tracer: Tracer) -> None:
    with contextlib.suppress(WsnodeError):  # an unreachable store drops the batch
        await tracer.flush()


@pytest.fixture(params=BUSES)
def bus_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class UrlsBroker(Broker):
    """A Broker whose buses take turns with ``urls`` (one per bus, in order)."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, prefix: str,
                 urls: list[str]) -> None:
        super().__init__(connection, prefix)
        self.urls = urls

    def next_url(self) -> str:
        return self.urls[len(self.buses) % len(self.urls)]


@pytest.fixture
async def amqp_broker(bus_backend: str,
                      request: pytest.FixtureRequest) -> AsyncIterator[UrlsBroker | None]:
    """The real RabbitMQ (or the private cluster) under names of this test alone
    (None for memory); its buses are stopped and its queues and exchanges
    deleted afterwards."""
    if bus_backend == "memory":
        yield None
        return
    urls: list[str] = [AMQP_URL]
    if bus_backend == "rabbitmq-cluster":
        cluster = await rabbit_cluster_up(request.getfixturevalue("rabbit_cluster"))
        urls = [cluster.url_list(i) for i in range(len(cluster.nodes))]
    try:
        connection = await aio_pika.connect(urls[0].split(",")[0], timeout=3)
    except (OSError, aio_pika.exceptions.AMQPError, TimeoutError) as exc:
        pytest.fail(f"RabbitMQ not reachable at {urls[0]} (make services starts it): {exc}")
    broker = UrlsBroker(connection, f"wscontract{uuid.uuid4().hex[:8]}", urls)
    try:
        yield broker
    finally:
        await broker.cleanup()
        await connection.close()


@pytest.fixture
async def make_bus(bus_backend: str,
                   amqp_broker: UrlsBroker | None) -> AsyncIterator[BusFactory]:
    """``await make_bus(pod, inbox=None)`` -> (a bus started as ``pod`` with the
    handlers of ``inbox`` (a fresh Inbox by default), that inbox);
    ``make_bus(None)`` -> a publish-only bus. Buses of one test reach each other."""
    registry = MemoryBus()
    made: list[Bus] = []

    async def make(pod: str | None, inbox: Inbox | None = None) -> tuple[Bus, Inbox]:
        inbox = inbox or Inbox()
        bus: Bus
        if amqp_broker is None:
            bus = registry.attach()
            if pod is not None:
                await bus.start(PodId(pod), inbox.on_deliveries, inbox.on_control,
                                inbox.on_stranded)
        else:
            bus = await amqp_broker.bus(pod, url=amqp_broker.next_url(), inbox=inbox)
        made.append(bus)
        return bus, inbox

    yield make
    for bus in made:  # the broker stops its own again: stop is idempotent
        await bus.stop()
