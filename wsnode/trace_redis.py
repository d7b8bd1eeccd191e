"""Message trails in Redis (contract: ``wsnode.trace``), shared by every pod and
read by ``wsctl trace`` without a pod.

One list per (user, message id) (``keys.RedisKeys.trace``), capped and
expiring, and per id the set of users that have one (``trace_users``).
``record`` only appends to a buffer and wakes the flusher (the pod's
supervised ``trace`` loop), which waits ``FLUSH_S`` to gather more and writes
the buffer as one pipeline: tracing adds no round trip to a send, and the
events of one id that arrive together (stored and routed, say) cost one RPUSH
and one PEXPIRE. A batch the store cannot take is dropped (the loop reports
the outage); a trail key that cannot be written (corrupt) is skipped and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import orjson

from wsnode.clock import Clock, SystemClock
from wsnode.errors import BackendUnavailable, WsnodeError
from wsnode.ids import MsgId, PodId, UserId
from wsnode.keys import RedisKeys
from wsnode.outage import LogThrottle
from wsnode.redis_conn import Redis, as_str, translate, translated
from wsnode.trace import MAX_EVENTS, make_event

log = logging.getLogger("wsnode.trace")

FLUSH_S = 0.02
_MAX_BUFFERED = 100_000
_MAX_USERS = 100  # trails of one id listed at once, without a user


class RedisTracer:
    def __init__(self, client: Redis, keys: RedisKeys, ttl_ms: int = 86_400_000,
                 clock: Clock | None = None) -> None:
        self._r = client
        self._k = keys
        self.ttl_ms = ttl_ms
        self._clock = clock or SystemClock()
        self._buffer: dict[tuple[UserId, MsgId], list[bytes]] = {}
        self._throttle = LogThrottle(log)
        self.on_buffered: Callable[[], None] = lambda: None

    def record(self, msg_id: MsgId, user: UserId, event: str, pod: PodId | None,
               *, at: int | None = None, **fields: Any) -> None:
        # Never raises: a field JSON cannot hold is written as its str().
        entry = orjson.dumps(make_event(at or self._clock.now_ms(), user, event, pod, fields),
                             default=str)
        if not self._buffer:
            self.on_buffered()
        self._buffer.setdefault((user, msg_id), []).append(entry)
        if len(self._buffer) > _MAX_BUFFERED:
            # The store has been away a long time: keep the newest, drop the oldest.
            del self._buffer[next(iter(self._buffer))]

    async def flush(self) -> None:
        if not self._buffer:
            return
        await asyncio.sleep(FLUSH_S)  # gather what else this send or burst records
        batch, self._buffer = self._buffer, {}

        def build(pipe: Any) -> None:
            for (user, msg_id), entries in batch.items():
                key, users = self._k.trace(user, msg_id), self._k.trace_users(msg_id)
                pipe.rpush(key, *entries)
                pipe.ltrim(key, -MAX_EVENTS, -1)
                pipe.pexpire(key, self.ttl_ms)
                pipe.sadd(users, user)
                pipe.pexpire(users, self.ttl_ms)

        with translated("trace"):
            async with self._r.pipeline(transaction=False) as pipe:
                build(pipe)
                replies = await pipe.execute(raise_on_error=False)
        errors = [translate(r, "trace") for r in replies if isinstance(r, Exception)]
        for error in errors:
            if isinstance(error, BackendUnavailable):
                raise error  # Redis refuses writes (READONLY, OOM...): the loop says so
        for error in errors:
            self._throttle.warn("write", "a message trail was not written: %s", error)

    async def trail(self, msg_id: MsgId, user: UserId | None = None) -> list[dict[str, Any]]:
        with translated("trace"):
            if user is not None:
                users = [user]
            else:
                found: Any = await self._r.srandmember(self._k.trace_users(msg_id), _MAX_USERS)
                users = sorted(UserId(as_str(u)) for u in found or ())
            async with self._r.pipeline(transaction=False) as pipe:
                for u in users:
                    pipe.lrange(self._k.trace(u, msg_id), 0, -1)
                lists = await pipe.execute()
        # Pods append in batches, so a list is in write order: sort by time
        # (stable, so the events of one pod keep their order on a tie).
        return sorted((orjson.loads(e) for raw in lists for e in raw),
                      key=lambda e: e.get("at", 0))

    async def aclose(self) -> None:
        """Write what is buffered, within two seconds; what cannot be is dropped."""
        with contextlib.suppress(WsnodeError, TimeoutError):
            async with asyncio.timeout(2.0):
                await self.flush()
