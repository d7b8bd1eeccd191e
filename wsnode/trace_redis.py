"""Message trails in Redis (contract: ``wsnode.trace``), shared by every pod and
read by ``wsctl trace`` without a pod.

One list per (user, message id) (``keys.RedisKeys.trace``), capped and
expiring, and per id the set of users that have one (``trace_users``).
``record`` only appends to a buffer and wakes the flusher (the pod's
supervised ``trace`` loop), which waits ``FLUSH_S`` to gather more and writes
the buffer in pipelines: tracing adds no round trip to a send. The trails
of an id live in its trail bucket (one hash slot of ``keys.BUCKETS``), so a
pipeline holds one ``lua/trail.lua`` call per bucket (at most ``_PER_CALL``
trails each) rather than five commands per trail: on the ACK path, where
every message has a trail on two pods, that was half the pod's Redis commands.
A large buffer (a burst of sends, replays at connect) goes out in pipelines of
at most ``_PER_PIPELINE`` trails, one after the other: building the commands of
thousands of trails at once would hold the event loop for tens of
milliseconds, and every connection of the pod with it.
A batch the store cannot take is dropped (the loop reports the outage); a
trail key that cannot be written (corrupt) is skipped and logged.
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
from wsnode.redis_conn import Redis, as_str, execute, queue_script, script, translated
from wsnode.trace import MAX_EVENTS, make_event

log = logging.getLogger("wsnode.trace")

FLUSH_S = 0.02
_MAX_BUFFERED = 100_000
_MAX_USERS = 100  # trails of one id listed at once, without a user
# Trails per script call: a call blocks Redis while it runs (~5 writes per trail).
_PER_CALL = 200
# Trails per pipeline: what the pod builds (and Redis answers) in one go.
_PER_PIPELINE = 100


_Call = tuple[list[str], list[Any], list[tuple[UserId, MsgId]]]


def _calls(k: RedisKeys, batch: dict[tuple[UserId, MsgId], list[bytes]],
           ttl_ms: int) -> list[_Call]:
    """The ``trail.lua`` calls that write ``batch``: keys, args and the trails
    in order, one call per trail bucket and at most ``_PER_CALL`` trails each."""
    open_calls: dict[str, _Call] = {}
    calls: list[_Call] = []
    for (user, msg_id), entries in batch.items():
        bucket, trail_key, users_key = k.trace_keys(user, msg_id)
        call = open_calls.get(bucket)
        if call is None or len(call[2]) >= _PER_CALL:
            call = open_calls[bucket] = ([], [ttl_ms, MAX_EVENTS], [])
            calls.append(call)
        keys, args, trails = call
        keys += (trail_key, users_key)
        # Only the newest MAX_EVENTS are kept anyway; and the script hands a
        # trail's events to one RPUSH, which Lua's unpack() limits.
        entries = entries[-MAX_EVENTS:]
        args += (user, len(entries), *entries)
        trails.append((user, msg_id))
    return calls


class RedisTracer:
    def __init__(self, client: Redis, keys: RedisKeys, ttl_ms: int = 86_400_000,
                 clock: Clock | None = None) -> None:
        self._r = client
        self._k = keys
        self._script = script(client, "trail")
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
        items = list(batch.items())
        for at in range(0, len(items), _PER_PIPELINE):
            chunk = dict(items[at:at + _PER_PIPELINE])
            if not await self._write(_calls(self._k, chunk, self.ttl_ms)):
                return

    async def _write(self, calls: list[_Call]) -> bool:
        """One pipeline of trail calls; False when the store did not take it
        (what is left of the batch is dropped with it)."""
        def build(pipe: Any) -> None:
            for keys, args, _trails in calls:
                queue_script(pipe, self._script, keys, args)

        try:
            with translated("trace"):
                replies = await execute(self._r, build, [self._script])
        except BackendUnavailable:
            raise  # Redis refuses writes (READONLY, OOM...): the loop says so
        except WsnodeError as exc:
            self._throttle.warn("write", "message trails were not written: %s", exc)
            return False
        for (_keys, _args, trails), reply in zip(calls, replies, strict=True):
            for index in reply:  # trails the script skipped: a key of another type
                user, msg_id = trails[int(index) - 1]
                self._throttle.warn("write", "the trail of message %s of user %r was not "
                                    "written: its key holds another type", msg_id, user)
        return True

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
