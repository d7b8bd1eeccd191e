"""Message trails in Redis (contract: ``wsnode.trace``), shared by every pod and
read by ``wsctl trace`` without a pod.

One list per message id (``keys.RedisKeys.trace``), capped and expiring.
``record`` only appends to a buffer; every ``FLUSH_S`` the buffer goes out as
one pipeline, in a task of the tracer's own, so tracing adds no round trip to
a send, and the events of one id that arrive together (stored and routed, say)
cost one RPUSH and one PEXPIRE. Write failures are dropped and logged once
per outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson

from wsnode.clock import Clock, SystemClock
from wsnode.errors import BackendUnavailable
from wsnode.ids import MsgId, PodId, UserId
from wsnode.keys import RedisKeys
from wsnode.redis_conn import Redis, execute, translated
from wsnode.trace import MAX_EVENTS, make_event

log = logging.getLogger("wsnode.trace")

FLUSH_S = 0.02
# Events a message can collect without bound (a client reconnecting over and
# over is replayed each time; a producer retrying one id): only lists that got
# one are trimmed.
_UNBOUNDED = frozenset({"replayed", "resent", "duplicate"})


class RedisTracer:
    def __init__(self, client: Redis, keys: RedisKeys, ttl_ms: int = 86_400_000,
                 clock: Clock | None = None) -> None:
        self._r = client
        self._k = keys
        self.ttl_ms = ttl_ms
        self._clock = clock or SystemClock()
        self._buffer: dict[str, list[bytes]] = {}
        self._trim: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._failing = False

    def record(self, msg_id: MsgId, user: UserId, event: str, pod: PodId | None,
               **fields: Any) -> None:
        entry = orjson.dumps(make_event(self._clock.now_ms(), user, event, pod, fields))
        if not self._buffer:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to flush with
                asyncio.get_running_loop().call_later(FLUSH_S, self._flush)
        key = self._k.trace(msg_id)
        self._buffer.setdefault(key, []).append(entry)
        if event in _UNBOUNDED:
            self._trim.add(key)

    def _flush(self) -> None:
        batch, self._buffer = self._buffer, {}
        trim, self._trim = self._trim, set()
        if batch:
            task = asyncio.get_running_loop().create_task(self._write(batch, trim))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _write(self, batch: dict[str, list[bytes]], trim: set[str]) -> None:
        def build(pipe: Any) -> None:
            for key, entries in batch.items():
                pipe.rpush(key, *entries)
                if key in trim:
                    pipe.ltrim(key, -MAX_EVENTS, -1)
                pipe.pexpire(key, self.ttl_ms)
        try:
            with translated("trace"):
                await execute(self._r, build)
        except BackendUnavailable as exc:
            if not self._failing:
                self._failing = True
                log.warning("message trails not written: %s", exc)
            return
        self._failing = False

    async def trail(self, msg_id: MsgId, user: UserId | None = None) -> list[dict[str, Any]]:
        with translated("trace"):
            raw = await self._r.lrange(self._k.trace(msg_id), 0, -1)
        # Pods append in batches, so the list is in write order: sort by time
        # (stable, so the events of one pod keep their order on a tie).
        events = sorted((orjson.loads(e) for e in raw), key=lambda e: e.get("at", 0))
        return [e for e in events if user is None or e.get("user") == user]

    async def aclose(self) -> None:
        self._flush()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
