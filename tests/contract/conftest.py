"""Backend factories for the contract suites: one param per backend.

Each contract test takes a factory (``make_presence``, ``make_limiter``,
``make_acks``) and runs once per backend in :data:`BACKENDS`. Only the memory
backends run in process; the Redis ones against the real Redis
(``WSNODE_TEST_REDIS_URL``, default the shared one on 6379) under a key prefix
of the test alone, whose keys are deleted when the test ends (never FLUSHALL).
Objects a factory makes within one test share that prefix, so for a shared
backend they are two pods on one store.

Time: the Redis backends use Redis server time, so contract tests run on the
real clock with short durations and bounded polls (``poll.eventually``); the
exact time arithmetic is pinned in ``tests/unit`` against the memory backends
with a ManualClock.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.contract.factories import AcksFactory, LimiterFactory, PresenceFactory
from wsnode import redis_conn
from wsnode.acks import AckBackend, AckPolicy
from wsnode.acks_memory import MemoryAcks
from wsnode.acks_redis import RedisAcks
from wsnode.keys import RedisKeys
from wsnode.limiter import MemoryLimiter, RateLimiter
from wsnode.limiter_redis import RedisLimiter
from wsnode.presence import MemoryPresence, Presence
from wsnode.presence_redis import RedisPresence
from wsnode.redis_conn import Redis
from wsnode.settings import Rate

BACKENDS = ["memory", "redis"]
REDIS_URL = os.environ.get("WSNODE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def key_prefix() -> str:
    """A key prefix of this test alone (Redis backends)."""
    return f"wstest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_client(backend: str, key_prefix: str) -> AsyncIterator[Redis | None]:
    """A client of the real Redis for the redis param (None for memory); the
    test's keys are deleted afterwards."""
    if backend != "redis":
        yield None
        return
    client = redis_conn.connect(REDIS_URL, max_connections=16)
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
