"""The Coalescer against the real Redis: one pipeline per tick, and a group
commit while pipelines are in flight (see wsnode/coalescer.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.support.cluster import REDIS_URL
from wsnode import redis_conn
from wsnode.coalescer import Coalescer
from wsnode.redis_conn import Redis


@pytest.fixture
async def client() -> AsyncIterator[Redis]:
    client = redis_conn.connect(REDIS_URL)
    yield client
    await client.aclose()


async def test_commands_of_one_tick_share_a_pipeline(client: Redis) -> None:
    batch = Coalescer(client)
    key = f"coalescer:{uuid.uuid4().hex}"
    replies = await asyncio.gather(*(batch.run(lambda p, i=i: p.rpush(key, i))
                                     for i in range(100)))
    assert sorted(replies) == list(range(1, 101)) and batch.pipelines == 1
    assert await client.llen(key) == 100
    await client.delete(key)


async def test_what_arrives_while_a_pipeline_is_in_flight_goes_out_together(
        client: Redis) -> None:
    batch = Coalescer(client, max_in_flight=1)
    key, empty = f"coalescer:{uuid.uuid4().hex}", f"coalescer:{uuid.uuid4().hex}"
    # The first pipeline holds a command Redis answers only after 300 ms.
    slow = asyncio.ensure_future(batch.run(lambda p: p.blpop([empty], 0.3)))
    await asyncio.sleep(0)  # its tick ends: it is in flight
    later = []
    for i in range(20):  # twenty ticks' worth of calls while it is out
        later.append(asyncio.ensure_future(batch.run(lambda p, i=i: p.rpush(key, i))))
        await asyncio.sleep(0)
    assert await slow is None
    assert sorted(await asyncio.gather(*later)) == list(range(1, 21))
    assert batch.pipelines == 2  # not 21: the twenty went out as one
    assert await client.lrange(key, 0, -1) == [str(i).encode() for i in range(20)]
    await client.delete(key)


async def test_a_long_queue_goes_out_in_pipelines_of_max_batch(client: Redis) -> None:
    batch = Coalescer(client, max_batch=10, max_in_flight=1)
    replies = await asyncio.gather(*(batch.run(lambda p: p.ping()) for _ in range(35)))
    assert all(replies) and batch.pipelines == 4
