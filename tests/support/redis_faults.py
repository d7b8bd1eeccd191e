"""Faults of a private ``redis-server`` (tests/support/redis_server.py), made
with commands instead of a restart. Never point these at the shared Redis.

* :func:`kill_clients`: ``CLIENT KILL TYPE normal`` drops every client
  connection but the caller's, as a network blip or a proxy restart would.
* :func:`readonly_window`: ``REPLICAOF`` a port nobody listens on turns the
  server into a replica that never syncs: writes fail with ``READONLY`` (what
  clients see after a failover) and the data stays; ``REPLICAOF NO ONE`` ends it.
* :func:`noreplicas_window`: ``min-replicas-to-write 1`` without any replica
  makes writes fail with ``NOREPLICAS``.

Each window restores the server on exit, retrying for a few seconds, and raises
if it could not: a run that leaves its Redis read-only must not pass unnoticed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tests.support.pods import free_port

_RESTORE_FOR = 10.0


async def kill_clients(url: str) -> int:
    """Drop every normal client connection but this one; returns how many."""
    client = aioredis.from_url(url, socket_timeout=5)
    try:
        return await client.client_kill_filter(_type="normal")
    finally:
        await client.aclose()


async def _restore(url: str, command: Callable[[aioredis.Redis], Awaitable[object]]) -> None:
    deadline = asyncio.get_running_loop().time() + _RESTORE_FOR
    while True:
        client = aioredis.from_url(url, socket_timeout=5)
        try:
            await command(client)
            return
        except (RedisError, OSError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
        finally:
            await client.aclose()


@contextlib.asynccontextmanager
async def readonly_window(url: str) -> AsyncIterator[None]:
    """Writes fail with READONLY inside the block."""
    client = aioredis.from_url(url, socket_timeout=5)
    try:
        await client.replicaof("127.0.0.1", free_port())
    finally:
        await client.aclose()
    try:
        yield
    finally:
        await _restore(url, lambda c: c.replicaof("NO", "ONE"))


@contextlib.asynccontextmanager
async def noreplicas_window(url: str) -> AsyncIterator[None]:
    """Writes fail with NOREPLICAS inside the block."""
    client = aioredis.from_url(url, socket_timeout=5)
    try:
        await client.config_set("min-replicas-to-write", 1)
    finally:
        await client.aclose()
    try:
        yield
    finally:
        await _restore(url, lambda c: c.config_set("min-replicas-to-write", 0))
