"""Pipelines sent by wsnode.redis_lean against the real Redis: replies as
redis-py's ``execute(raise_on_error=False)`` gives them, a dropped connection
retried, and a cancelled call leaving no connection with unread replies."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import ResponseError

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
