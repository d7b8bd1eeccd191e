"""Redis connections for the Redis backends: one bounded pool, errors translated.

The pool blocks (up to ``timeout``) instead of failing when every connection is
busy: redis-py's default pool raises past ``max_connections``, which turns a
burst of 1,000 connects into errors. Connection failures surface as
:class:`~wsnode.errors.BackendUnavailable` and never as redis exceptions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import resources
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wsnode.errors import BackendUnavailable

Redis = aioredis.Redis


def safe_url(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def connect(url: str, *, max_connections: int = 64, pool_timeout: float = 5.0) -> Redis:
    """A client over a blocking pool; commands retried twice on a dropped connection."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        health_check_interval=15,
        retry=Retry(EqualJitterBackoff(cap=0.5, base=0.05), 2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return aioredis.Redis(connection_pool=pool)


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Re-raise redis connection trouble as BackendUnavailable (``from`` the original)."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise BackendUnavailable(f"redis unavailable ({what}): {exc}") from exc
    except RedisError as exc:
        if "LOADING" in str(exc) or "MASTERDOWN" in str(exc):
            raise BackendUnavailable(f"redis not ready ({what}): {exc}") from exc
        raise


def script(client: Redis, name: str) -> AsyncScript:
    """Register ``wsnode/lua/<name>.lua``; redis-py re-loads it after a restart."""
    source = resources.files("wsnode.lua").joinpath(f"{name}.lua").read_text()
    return client.register_script(source)


def text(value: Any) -> str:
    """A reply value as str (replies are bytes: the client does not decode)."""
    return value.decode() if isinstance(value, bytes) else str(value)
