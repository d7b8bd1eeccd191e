"""The Coalescer: Redis commands issued in one event-loop tick go out as one pipeline.

This is what lets one process do tens of thousands of Redis calls per second:
under load, hundreds of concurrent per-message calls (a presence lookup, a
limiter hit, an ACK store) become one round trip and one socket write instead
of one each. Idle, a lone command waits for one loop iteration at most.

It is a group commit: while ``max_in_flight`` pipelines await their replies,
the next one keeps filling and goes out as soon as one returns, so pipelines
grow with load instead of staying at the few commands of one tick (each
pipeline costs the client ~150 µs of CPU whatever it holds). A pipeline that
reaches ``max_batch`` commands goes out at once whatever is in flight.

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

    def __init__(self, client: Redis, *, max_batch: int = 512, max_in_flight: int = 2) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be positive")
        self._client = client
        self._max = max_batch
        self._max_in_flight = max_in_flight
        self._pending: list[_Queued] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.pipelines = 0
        """Pipelines sent so far (the figure group commit keeps low)."""

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
            loop.call_soon(self._tick)
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

    def _tick(self) -> None:
        """End of the tick: send unless enough pipelines are in flight; then the
        one that returns first sends what filled meanwhile."""
        self._scheduled = False
        if len(self._tasks) < self._max_in_flight:
            self._flush()

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            self.pipelines += 1
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._tasks.add(task)
            task.add_done_callback(self._returned)

    def _returned(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._pending and not self._scheduled:
            self._flush()

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
