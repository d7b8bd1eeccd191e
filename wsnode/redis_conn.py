"""Redis connections for the Redis backends: one bounded pool, errors translated.

The pool blocks (up to ``timeout``) instead of failing when every connection is
busy: redis-py's default pool raises past ``max_connections``, which turns a
burst of 1,000 connects into errors. Connection failures surface as
:class:`~wsnode.errors.BackendUnavailable` and never as redis exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wsnode.errors import BackendUnavailable

Redis = aioredis.Redis


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


def queue_script(pipe: Any, script: AsyncScript, keys: Sequence[Any],
                 args: Sequence[Any]) -> None:
    """Add an EVALSHA of ``script`` to ``pipe``. Unlike passing the pipeline to the
    script object, this costs no SCRIPT EXISTS round trip per pipeline; callers
    handle NOSCRIPT (after a Redis restart) with :func:`execute`."""
    pipe.evalsha(script.sha, len(keys), *keys, *args)


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


class Coalescer:
    """Runs the Redis commands issued in one event-loop tick as one pipeline.

    Each ``await run(queue)`` call gets the reply of the one command its
    ``queue(pipe)`` adds to the shared pipeline (``await script(...)`` the
    reply of one script call). Under load, hundreds of concurrent lookups (one
    per message) become one round trip and one socket write, instead of one
    each: the difference between a few thousand and tens of thousands of
    commands per second from one process. Idle, a lone command waits for one
    loop iteration at most.
    """

    def __init__(self, client: Redis, *, max_batch: int = 512) -> None:
        self._client = client
        self._max = max_batch
        self._pending: list[tuple[Callable[[Any], Any], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, queue: Callable[[Any], Any]) -> Any:
        """``queue(pipe)`` adds one command to ``pipe``; returns that command's
        reply, or raises its error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((queue, future))
        if len(self._pending) >= self._max:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    async def script(self, script: AsyncScript, keys: Sequence[Any],
                     args: Sequence[Any]) -> Any:
        """One script call, coalesced; a NOSCRIPT (Redis restarted) is retried
        on its own, which loads the script again."""
        try:
            return await self.run(lambda pipe: queue_script(pipe, script, keys, args))
        except NoScriptError:
            return await script(keys=keys, args=args)

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _execute(
        self, batch: list[tuple[Callable[[Any], Any], asyncio.Future[Any]]]
    ) -> None:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for queue, _ in batch:
                    queue(pipe)
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
