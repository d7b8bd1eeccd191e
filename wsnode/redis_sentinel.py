"""A client of the master that Redis Sentinel names, following failovers.

``redis+sentinel://h:p[,h:p...]/SERVICE[/DB]`` (``wsnode.urls``): the sentinels
are asked for the master of ``SERVICE`` whenever a connection is made, so after
a failover new connections go to the new master. A connection still open to
the old master fails (refused, or ``READONLY`` once it was demoted, which
redis-py turns into a connection error and a fresh look-up); the client's
retry then reconnects through the sentinels. What cannot be served meanwhile
is a ``BackendUnavailable`` for the caller (``redis_conn.translate``).

The pool blocks like the single-server one (``redis_conn.connect``): a burst of
commands waits for a connection instead of failing past ``max_connections``.
The URL's user and password authenticate to the sentinels and to the data
nodes alike.

Durability across a failover is not the client's job: ``wsnode.coalescer``
follows ACK-store writes with ``WAIT`` (see ``docs/architecture.md``).
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from wsnode.redis_pack import hiredis_packing
from wsnode.urls import RedisTarget


class BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's pool (master looked up per connection) that waits for a free
    connection instead of raising, and drops a connection to a former master
    when it is taken from the pool (redis-py only drops the idle ones at the
    moment it learns of a new master: a connection in use then would go on
    writing to the old one until Sentinel demotes it, which takes seconds)."""

    _rechecked = 0.0

    async def ensure_connection(self, connection: Any) -> None:
        if connection.is_connected and self.master_address is not None \
                and (connection.host, connection.port) != tuple(self.master_address):
            await connection.disconnect()
        await super().ensure_connection(connection)

    async def recheck(self) -> None:
        """Ask the sentinels for the master now (at most twice a second): a
        write the old master took but no replica confirmed says a failover
        may be under way."""
        now = time.monotonic()
        if now - self._rechecked >= 0.5:
            self._rechecked = now
            await self.get_master_address()  # type: ignore[no-untyped-call]

    @property
    def master_name(self) -> str:
        """``host:port`` of the master as last looked up ("" before the first)."""
        if self.master_address is None:
            return ""
        host, port = self.master_address
        return f"{host}:{port}"


def sentinel_pool(client: Any) -> BlockingSentinelPool | None:
    """The pool of a client made by :func:`connect_sentinel`, else None."""
    pool = getattr(client, "connection_pool", None)
    return pool if isinstance(pool, BlockingSentinelPool) else None


class SentinelMaster(aioredis.Redis):
    """The master's client; closing it closes the sentinels' connections too."""

    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            for sentinel in self.sentinels.sentinels:
                await sentinel.aclose()


def connect_sentinel(target: RedisTarget, *, max_connections: int, pool_timeout: float,
                     **connection: Any) -> aioredis.Redis:
    """A client of ``target.service``'s master (``target.kind == "sentinel"``);
    ``connection`` are socket and retry options for the data connections."""
    auth = {"username": target.username, "password": target.password}
    sentinels = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        list(target.nodes),
        sentinel_kwargs={"socket_connect_timeout": connection.get("socket_connect_timeout"),
                         "socket_timeout": connection.get("socket_timeout"), **auth},
        **connection, **auth)
    client: SentinelMaster = sentinels.master_for(
        target.service, redis_class=SentinelMaster, connection_pool_class=BlockingSentinelPool,
        db=target.db, max_connections=max_connections, timeout=pool_timeout,
        connection_class=hiredis_packing(SentinelManagedConnection))
    client.sentinels = sentinels
    return client
