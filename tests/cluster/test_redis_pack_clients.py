"""Every kind of Redis client wsnode opens (one server, Sentinel's master, a
Redis Cluster) packs its commands with hiredis (wsnode/redis_pack.py), and
binary values, scripts and pipelines round-trip through it unchanged."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support.cluster import REDIS_URL
from tests.support.redis_cluster import RedisClusterServers, SentinelServers
from wsnode import redis_conn
from wsnode.redis_pack import HiredisPacking

pytestmark = pytest.mark.timeout(120)


def connections_of(client: Any) -> list[Any]:
    if redis_conn.is_cluster(client):
        return [c for node in client.get_nodes() for c in node._connections]
    pool = client.connection_pool
    return [*pool._in_use_connections, *pool._available_connections]


async def round_trip(url: str) -> None:
    client = redis_conn.connect(url, max_connections=4)
    try:
        key = f"{{pack}}:{uuid.uuid4().hex}"
        value = b"\x00\xff\r\n" + "é".encode() * 50
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(key, value, px=60_000)
            pipe.get(key)
            pipe.zadd(key + ":z", {"m": 2.5})
            pipe.zscore(key + ":z", "m")
            pipe.execute_command("EVAL", "return {KEYS[1], ARGV[1]}", 1, key, "a b")
            pipe.delete(key, key + ":z")
            replies = await pipe.execute()
        assert replies == [True, value, 1, 2.5, [key.encode(), b"a b"], 2]
        used = connections_of(client)
        assert used and all(isinstance(c, HiredisPacking) for c in used)
    finally:
        await client.aclose()


async def test_one_server() -> None:
    await round_trip(REDIS_URL)


async def test_sentinel(redis_sentinel_servers: SentinelServers) -> None:
    await round_trip(redis_sentinel_servers.url)


async def test_cluster(redis_cluster_servers: RedisClusterServers) -> None:
    await round_trip(redis_cluster_servers.url)
