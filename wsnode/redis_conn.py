"""Redis connections for the Redis backends: one bounded pool, every error translated.

:func:`connect` picks the client from the scheme of ``WSNODE_REDIS_URL``
(``wsnode.urls.parse_redis_url``): one server (``redis://``, ``rediss://``), a
Redis Cluster (``redis+cluster://``: redis-py's ``RedisCluster``, which routes
each command and each pipeline's commands to the node of their slot and follows
MOVED and ASK itself), or the master Sentinel names (``redis+sentinel://``,
``wsnode.redis_sentinel``). Every script and pipeline of wsnode works on all
three: a script's keys share one slot, pipelines never run MULTI across slots.

The single-server pool blocks (up to ``timeout``) instead of failing when every connection is
busy: redis-py's default pool raises past ``max_connections``, which turns a
burst of 1,000 connects into errors.

redis-py retries a command (or a whole pipeline) whose connection dropped. A
reply lost that way means the command may run twice, so every script that
changes state takes a request token and answers a repeat of the same request
as it answered the first (``lua/acks.lua``); the other commands we send are
idempotent (SADD, HSET, ZADD, ZREM, PEXPIRE) or harmless to repeat.

:func:`translated` is the boundary: no redis exception leaves a backend.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from typing import Any, TypeGuard

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError
from redis.backoff import EqualJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    ClusterCrossSlotError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wsnode.errors import BackendError, BackendUnavailable, CorruptRecord
from wsnode.redis_pack import hiredis_packing, pack_cluster_with_hiredis
from wsnode.urls import parse_redis_url

Redis = aioredis.Redis | RedisCluster
"""A client of one server (or Sentinel's master), or of a Redis Cluster."""

# Replies that mean "this server cannot serve now; another moment (or another
# server after a failover) will": the caller retries with backoff.
_UNAVAILABLE = ("LOADING", "MASTERDOWN", "READONLY", "OOM", "MISCONF", "NOREPLICAS",
                "TRYAGAIN", "CLUSTERDOWN", "BUSY", "NOSCRIPT", "UNBLOCKED", "MOVED", "ASK")
# redis-py raises some of those replies as classes of its own, with the code cut
# off the message: recognised by class, and the code put back for the logs.
_UNAVAILABLE_CLASSES: tuple[tuple[type[ResponseError], str], ...] = (
    (ReadOnlyError, "READONLY"), (OutOfMemoryError, "OOM"), (MasterDownError, "MASTERDOWN"),
    (ClusterDownError, "CLUSTERDOWN"), (TryAgainError, "TRYAGAIN"), (MovedError, "MOVED"),
    (AskError, "ASK"))


def connect(url: str, *, max_connections: int = 64, pool_timeout: float = 5.0) -> Redis:
    """A client of what ``url`` names (see the module); commands retried twice
    on a dropped connection. ``max_connections``: per server (per node of a
    cluster)."""
    target = parse_redis_url(url)
    options: dict[str, Any] = {
        "socket_connect_timeout": 2.0,
        "socket_timeout": 5.0,
        "health_check_interval": 15,
        "retry": Retry(EqualJitterBackoff(cap=0.5, base=0.05), 2),
    }
    if target.kind == "cluster":
        # A cluster node's pool does not block: it refuses past max_connections.
        # Pipelines in flight are capped (wsnode.coalescer), so that leaves
        # room for the other commands of a burst.
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            username=target.username, password=target.password,
            max_connections=4 * max_connections, **options)
        pack_cluster_with_hiredis(cluster)
        return cluster
    options["retry_on_error"] = [RedisConnectionError, RedisTimeoutError]
    if target.kind == "sentinel":
        from wsnode.redis_sentinel import connect_sentinel

        return connect_sentinel(target, max_connections=max_connections,
                                pool_timeout=pool_timeout, **options)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout, **options)
    pool.connection_class = hiredis_packing(pool.connection_class)
    return aioredis.Redis(connection_pool=pool)


def is_cluster(client: Redis) -> TypeGuard[RedisCluster]:
    """True for a Redis Cluster client."""
    return isinstance(client, RedisCluster)


def translate(exc: BaseException, what: str, key: str | None = None) -> Exception:
    """The wsnode error for a redis (or socket) error met while doing ``what``.
    ``key`` is the key the call was about, named in a CorruptRecord."""
    if isinstance(exc, MasterNotFoundError):
        # redis-py's text goes on with the repr of every sentinel client.
        return BackendUnavailable(f"redis unavailable ({what}): "
                                  f"{str(exc).split(' : ')[0]} (no sentinel names one)")
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError | TimeoutError):
        return BackendUnavailable(f"redis unavailable ({what}): {exc}")
    if isinstance(exc, ResponseError):
        message = _reply_text(str(exc))
        for cls, code in _UNAVAILABLE_CLASSES:
            if isinstance(exc, cls):
                return BackendUnavailable(f"redis cannot serve ({what}): {code} {message}")
        if isinstance(exc, ClusterCrossSlotError):  # its code, cut off by redis-py, put back
            return BackendError(f"redis refused {what}: CROSSSLOT {message}")
        if message.startswith("CORRUPT "):
            # Raised by our scripts: "CORRUPT <key> <detail> script: ..."
            _, bad_key, detail = message.split(" ", 2)
            return CorruptRecord(bad_key, detail.split(" script:")[0])
        if message.startswith("WRONGTYPE") or "not an integer" in message \
                or "not a valid float" in message:
            return CorruptRecord(key or "?", f"{what}: {message.split(' script:')[0]}")
        if message.startswith(_UNAVAILABLE) or isinstance(exc, NoScriptError):
            return BackendUnavailable(f"redis cannot serve ({what}): {message}")
        return BackendError(f"redis refused {what}: {message}")
    if isinstance(exc, RedisError):
        return BackendError(f"redis client error ({what}): {exc}")
    if isinstance(exc, SlotNotCoveredError):
        # A cluster whose slot map is being repaired (a failover): retry later.
        return BackendUnavailable(f"redis cluster cannot serve ({what}): {exc}")
    if isinstance(exc, RedisClusterException):
        return BackendError(f"redis cluster client error ({what}): {exc}")
    return exc if isinstance(exc, Exception) else BackendError(str(exc))


def _reply_text(message: str) -> str:
    """The server's error reply in ``message``: redis-py puts the command before
    an error raised by a pipeline (and the reply after it, quoted in a tuple)."""
    _, annotated, reply = message.partition(" of pipeline caused error: ")
    if not annotated:
        return message
    return reply.lstrip("(").lstrip("'\"").rstrip(")").rstrip(",").rstrip("'\"")


@contextlib.contextmanager
def translated(what: str, key: str | None = None) -> Iterator[None]:
    """Re-raise every redis error as a wsnode error (``from`` the original):
    BackendUnavailable (retry later), CorruptRecord (naming the record) or
    BackendError (see :mod:`wsnode.errors`)."""
    try:
        yield
    except (RedisError, RedisClusterException, OSError) as exc:
        raise translate(exc, what, key) from exc


def script(client: Redis, name: str) -> AsyncScript:
    """Register ``wsnode/lua/<name>.lua``; redis-py re-loads it after a restart."""
    source = resources.files("wsnode.lua").joinpath(f"{name}.lua").read_text()
    return client.register_script(source)


def as_str(value: Any) -> str:
    """A reply value as str (replies are bytes: the client does not decode)."""
    return value.decode() if isinstance(value, bytes) else str(value)


_instance = os.urandom(4).hex()
_counter = itertools.count(1)


def request_token() -> str:
    """A token naming one request, unique across processes: a script that sees
    the same token twice (redis-py re-sent a request whose reply was lost)
    answers as it did the first time instead of acting again."""
    return f"{_instance}.{next(_counter)}"


def queue_script(pipe: Any, script: AsyncScript, keys: Sequence[Any],
                 args: Sequence[Any]) -> None:
    """Add an EVALSHA of ``script`` to ``pipe``. Unlike passing the pipeline to the
    script object, this costs no SCRIPT EXISTS round trip per pipeline; callers
    handle NOSCRIPT (after a Redis restart or a failover) with :func:`execute`.
    Queued as a raw command: redis-py's cluster pipeline refuses ``evalsha()``
    but routes a raw EVALSHA by the slot of its keys (one slot per script call)."""
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)


async def execute(client: Redis, build: Callable[[Any], None],
                  scripts: Sequence[AsyncScript] = ()) -> list[Any]:
    """Run the commands ``build(pipe)`` queues as one pipeline and return their
    replies, raising the first error. If Redis lost the scripts (a restart),
    load them and run the pipeline once more: pipelines given here must be
    idempotent."""
    for attempt in range(2):
        async with client.pipeline(transaction=False) as pipe:
            build(pipe)
            replies = await pipe.execute(raise_on_error=False)
        if attempt == 0 and scripts and any(isinstance(r, NoScriptError) for r in replies):
            for s in scripts:
                await client.script_load(s.script)
            continue
        break
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return list(replies)
