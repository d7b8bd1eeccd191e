"""The Coalescer: Redis commands issued in one event-loop tick go out as one pipeline.

This is what lets one process do tens of thousands of Redis calls per second:
under load, hundreds of concurrent per-message calls (a presence lookup, a
limiter hit, an ACK store) become one round trip and one socket write instead
of one each. Idle, a lone command waits for one loop iteration at most.

Contract: each ``await run(queue)`` gets the reply of the one command its
``queue(pipe)`` adds to the shared pipeline, or raises that command's error
(a redis-py exception: callers translate it with ``redis_conn.translated``).
A pipeline that fails as a whole (connection lost) fails every caller in it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from wsnode.redis_conn import Redis, queue_script

# (queue, number of commands it adds (0: one, reply unwrapped), future)
_Queued = tuple[Callable[[Any], Any], int, asyncio.Future[Any]]


class Coalescer:
    """One shared pipeline per loop tick (see the module contract)."""

    def __init__(self, client: Redis, *, max_batch: int = 512) -> None:
        self._client = client
        self._max = max_batch
        self._pending: list[_Queued] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, queue: Callable[[Any], Any]) -> Any:
        """``queue(pipe)`` adds one command to ``pipe``; returns that command's
        reply, or raises its error."""
        return await self._add(queue, 0)

    async def run_group(self, queue: Callable[[Any], Any], count: int) -> list[Any]:
        """``queue(pipe)`` adds ``count`` commands, which go out together and in
        this order in one pipeline; returns their replies, errors included as
        exception objects (not raised)."""
        return list(await self._add(queue, count))

    def _add(self, queue: Callable[[Any], Any], count: int) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((queue, count, future))
        if len(self._pending) >= self._max:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    async def script(self, script: AsyncScript, keys: Sequence[Any],
                     args: Sequence[Any]) -> Any:
        """One script call, coalesced; a NOSCRIPT (Redis restarted) is retried
        on its own, which loads the script again. Scripts run through here must
        be safe to run twice (ours carry a request token)."""
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

    async def _execute(self, batch: list[_Queued]) -> None:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for queue, _, _ in batch:
                    queue(pipe)
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        at = 0
        for _, count, future in batch:
            if count:
                reply: Any = replies[at:at + count]
                at += count
            else:
                reply = replies[at]
                at += 1
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
