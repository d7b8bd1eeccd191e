"""Pipelines sent by wsnode.redis_lean against the real Redis: replies as
redis-py's ``execute(raise_on_error=False)`` gives them, a dropped connection
retried, and a cancelled call leaving no connection with unread replies."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.support.cluster import REDIS_URL
from wsnode import redis_conn
from wsnode.redis_conn import Redis
from wsnode.redis_lean import run_queued


@pytest.fixture
async def client() -> AsyncIterator[Redis]:
    client = redis_conn.connect(REDIS_URL, max_connections=2)
    yield client
    await client.aclose()


def key() -> str:
    return f"lean:{uuid.uuid4().hex}"


async def test_replies_and_errors_come_back_in_place(client: Redis) -> None:
    text, zset = key(), key()
    pipe = client.pipeline(transaction=False)
    pipe.set(text, "v", px=60_000)
    pipe.lpush(text, "x")  # WRONGTYPE: an error in its place, the others answered
    pipe.zadd(zset, {"m": 2.5})
    pipe.zrange(zset, 0, -1, withscores=True)  # redis-py's reply callback applied
    pipe.delete(text, zset)
    replies = await run_queued(client, pipe)
    assert replies[0] is True and isinstance(replies[1], ResponseError)
    assert "WRONGTYPE" in str(replies[1])
    assert replies[2:] == [1, [(b"m", 2.5)], 2]
    assert await run_queued(client, client.pipeline(transaction=False)) == []


async def test_a_connection_dropped_under_it_is_retried(client: Redis) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.client_id()
    [first] = await run_queued(client, pipe)
    # Kill that (pooled, idle) connection from another client: the next call
    # finds it dead, reconnects and gets its replies.
    other = redis_conn.connect(REDIS_URL)
    try:
        assert await other.client_kill_filter(_id=first) == 1
    finally:
        await other.aclose()
    pipe = client.pipeline(transaction=False)
    pipe.client_id()
    pipe.echo("after")
    second, echoed = await run_queued(client, pipe)
    assert second != first and echoed == b"after"


async def test_a_cancelled_call_leaves_no_unread_replies(client: Redis) -> None:
    empty, value = key(), key()
    await client.set(value, "mine", px=60_000)
    pipe = client.pipeline(transaction=False)
    pipe.blpop([empty], 1)  # Redis answers this one only after a second
    call = asyncio.ensure_future(run_queued(client, pipe))
    await asyncio.sleep(0.2)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # Each connection of the (two-connection) pool answers its own commands.
    for _ in range(4):
        pipe = client.pipeline(transaction=False)
        pipe.get(value)
        assert await run_queued(client, pipe) == [b"mine"]
    assert not client.connection_pool._in_use_connections


async def test_a_pipeline_past_the_socket_timeout_fails_and_leaves_a_clean_pool() -> None:
    """The replies are read under one deadline (socket_timeout): a reply that does
    not come fails the call as redis-py fails a read (redis TimeoutError, retried
    once here), and the pool's connections answer their own commands after."""
    client = aioredis.Redis.from_url(
        REDIS_URL, socket_timeout=0.3, max_connections=2,
        retry=Retry(NoBackoff(), 1), retry_on_error=[RedisTimeoutError])
    try:
        value = key()
        await client.set(value, "mine", px=60_000)
        pipe = client.pipeline(transaction=False)
        pipe.get(value)
        pipe.blpop([key()], 30)  # Redis would answer after 30 s
        started = asyncio.get_running_loop().time()
        with pytest.raises(RedisTimeoutError):
            await run_queued(client, pipe)
        assert asyncio.get_running_loop().time() - started < 10  # two deadlines, not 30 s
        for _ in range(4):
            pipe = client.pipeline(transaction=False)
            pipe.get(value)
            assert await run_queued(client, pipe) == [b"mine"]
        assert not client.connection_pool._in_use_connections
    finally:
        await client.aclose()


async def test_reply_options_are_applied_as_redis_py_applies_them() -> None:
    """NEVER_DECODE, EMPTY_RESPONSE and reply callbacks with their options, on a
    client that decodes replies: as ``Pipeline.execute(raise_on_error=False)``."""
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    used: list[str] = []

    def queue() -> Any:
        text, zset = key(), key()
        used.extend((text, zset))
        pipe = client.pipeline(transaction=False)
        pipe.set(text, "v", px=60_000)
        pipe.zadd(zset, {"a": 1.5, "b": 2})
        pipe.zrange(zset, 0, -1, withscores=True, score_cast_func=int)  # a callback option
        pipe.execute_command("GET", text, NEVER_DECODE=True)  # bytes despite decoding
        pipe.execute_command("LPUSH", text, "x", EMPTY_RESPONSE="wrong type")  # error replaced
        pipe.execute_command("LPUSH", text, "x")  # error in place
        return pipe

    try:
        lean = await run_queued(client, queue())
        executed = await queue().execute(raise_on_error=False)
        assert lean[:5] == executed[:5] == [True, 2, [("a", 1), ("b", 2)], b"v", "wrong type"]
        assert type(lean[5]) is type(executed[5]) and str(lean[5]) == str(executed[5])
        await client.delete(*used)
    finally:
        await client.aclose()
