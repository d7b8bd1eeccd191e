"""The ACK store in Redis: what its two halves share, and the dead letters.

See :mod:`wsnode.acks_redis` for the data layout and the order of writes;
:class:`RedisDeadLetters` is the base of :class:`~wsnode.acks_redis.RedisAcks`:
its constructor, the helpers both halves use (quarantine of corrupt records,
the Redis clock, the dead-letter index), and the ``DeadLetters`` role
(expiry sweep, listing, revive, stats).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote

from wsnode.acks import (
    AckPolicy,
    AckStats,
    DeadLetter,
    DeadReason,
    StoredMessage,
    without_expiry,
)
from wsnode.clock import SystemClock
from wsnode.coalescer import Coalescer
from wsnode.errors import BackendError, CorruptRecord
from wsnode.ids import MsgId, UserId
from wsnode.keys import BUCKETS, RedisKeys, bucket_of, encode_id, member, split_member
from wsnode.redis_conn import Redis, as_str, is_cluster, request_token, script, translated

log = logging.getLogger("wsnode.acks")

_T = TypeVar("_T")
FIELDS = ("seq", "type", "body", "stored_at", "expires_at", "attempts", "next_due")
_QUARANTINE_MS = 7 * 86_400_000
# Index entries written before the script that sets the real time are guesses
# this much late at most: the sweep checks the real expiry anyway.
EXPIRY_SLACK_MS = 1000
# This process's wall clock (shifted by the failpoint clock.skew in tests).
_CLOCK = SystemClock()


class RedisDeadLetters:
    """Shared state and helpers, and the DeadLetters role (see the module)."""

    def __init__(self, client: Redis, keys: RedisKeys, policy: AckPolicy | None = None, *,
                 replicas: int = 0) -> None:
        """``replicas``: how many replicas must confirm a store before it counts
        (``WAIT``; 0 for a single server, see ``wsnode.coalescer``)."""
        self.policy = policy or AckPolicy()
        self._r = client
        self._k = keys
        self._script = script(client, "acks")
        self._batch = Coalescer(client, replicas=replicas)
        # One server (or Sentinel's master): no slot rule, so the store and settle
        # scripts write the global index entries and the budget place themselves
        # (one command per message instead of four). A cluster does them beside,
        # and so does one endpoint that turns out to refuse it (see _guarded).
        self._folded = not is_cluster(client)
        self._skew_ms = 0  # the Redis clock minus ours, as last seen

    # -- DeadLetters ----------------------------------------------------------

    async def sweep(self, limit: int = 1000) -> list[DeadLetter]:
        p, k = self.policy, self._k
        out: list[DeadLetter] = []
        with translated("ack sweep"):
            now = await self._time()
            async with self._r.pipeline(transaction=False) as pipe:
                for b in range(BUCKETS):
                    # Index entries of dead letters past retention (records gone by TTL).
                    pipe.zremrangebyscore(k.dlq(b), "-inf", now - p.dead_ttl_ms)
                    pipe.zrangebyscore(k.ack_expiry(b), "-inf", now, start=0, num=limit)
                replies = await pipe.execute()
            due = [(b, as_str(m)) for b in range(BUCKETS) for m in replies[2 * b + 1]]
            for b, raw in due[:limit]:
                user_s, enc = split_member(raw)
                user = UserId(user_s)
                try:
                    dead = await self._expire(user, enc, raw, k.ack_expiry(b))
                except CorruptRecord as exc:
                    await self._quarantine(exc)
                    await self._r.zrem(k.ack_expiry(b), raw)
                    continue
                if dead is not None:
                    out.append(dead)
        return out

    async def _expire(self, user: UserId, enc: str, entry: str, index: str) -> DeadLetter | None:
        p, k = self.policy, self._k
        keys = [self._msg_key(user, enc), k.user_pending(user), k.user_due(user),
                k.user_dlq(user), k.user_relayed(user)]
        reply = await self._batch.script(self._script, keys, [
            "expire", request_token(), enc, p.ttl_ms, p.dead_ttl_ms])
        kind = as_str(reply[0])
        if kind == "alive":
            # Its entry was a guess made on a skewed clock: put the real time in.
            await self._batch.run(lambda pipe: pipe.zadd(index, {entry: int(reply[1])}, xx=True))
            return None
        if kind == "gone":
            await self._batch.run(lambda pipe: pipe.zrem(index, entry))
            return None
        dead = dead_of(user, enc, reply)
        await self._index_dead([dead])
        return dead

    async def dead_letters(
        self, user: UserId | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        k = self._k
        with translated("dlq list"):
            refs: list[tuple[UserId, str, float]] = []
            if user is not None:
                mine: Any = await self._r.zrevrange(k.user_dlq(user), 0, limit - 1,
                                                    withscores=True)
                refs = [(user, as_str(e), float(s)) for e, s in mine]
            else:
                async with self._r.pipeline(transaction=False) as pipe:
                    for b in range(BUCKETS):
                        pipe.zrevrange(k.dlq(b), 0, limit - 1, withscores=True)
                    buckets = await pipe.execute()
                for rows in buckets:
                    for m, s in rows:
                        u, e = split_member(as_str(m))
                        refs.append((UserId(u), e, float(s)))
                refs.sort(key=lambda r: -r[2])
                refs = refs[:limit]
            async with self._r.pipeline(transaction=False) as pipe:
                for u, e, _ in refs:
                    pipe.hgetall(self._msg_key(u, e))
                records = await pipe.execute()
        out = []
        for (u, e, _), row in zip(refs, records, strict=True):
            if row.get(b"state") != b"dead" or row.get(b"body") is None:
                continue  # retried or expired since it was indexed
            try:
                fields = [row.get(f.encode()) for f in FIELDS]
                out.append(DeadLetter(message_of(u, e, fields), DeadReason(as_str(row[b"reason"])),
                                      int(row[b"dead_at"])))
            except (KeyError, ValueError):
                log.error("skipping a corrupt dead letter %s", self._msg_key(u, e))
        return out

    async def revive(self, msg_id: MsgId, user: UserId | None = None) -> list[StoredMessage]:
        p, k, enc = self.policy, self._k, encode_id(msg_id)
        out = []
        with translated("dlq revive"):
            users = [user] if user is not None else await self._dead_owners(enc)
            for u in users:
                key = self._msg_key(u, enc)
                body = await self._r.hget(key, "body")
                if not isinstance(body, bytes):
                    continue
                reply = await self._script(
                    keys=[key, k.user_seq(u), k.user_pending(u), k.user_due(u), k.user_dlq(u)],
                    args=["revive", request_token(), enc, without_expiry(body), p.ttl_ms,
                          p.retry_interval_ms, p.dead_ttl_ms])
                if not reply:
                    continue  # no longer dead (revived or expired meanwhile)
                msg = message_of(u, enc, reply)
                b = bucket_of(u)
                async with self._r.pipeline(transaction=False) as pipe:
                    pipe.zrem(k.dlq(b), member(u, enc))
                    pipe.zadd(k.ack_expiry(b), {member(u, enc): msg.expires_at})
                    pipe.zadd(k.ack_due(b), {u: msg.next_due}, lt=True)
                    await pipe.execute()
                out.append(msg)
        return out

    async def _dead_owners(self, enc: str) -> list[UserId]:
        """Users with a dead letter of this id: the DLQ index says."""
        users = []
        for b in range(BUCKETS):
            async for raw in self._r.zscan_iter(self._k.dlq(b), match=f"* {enc}", count=500):
                name = raw[0] if isinstance(raw, tuple) else raw
                users.append(UserId(split_member(as_str(name))[0]))
        return users

    async def stats(self) -> AckStats:
        with translated("ack stats"):
            async with self._r.pipeline(transaction=False) as pipe:
                for b in range(BUCKETS):
                    pipe.zcard(self._k.ack_expiry(b))
                    pipe.zcard(self._k.dlq(b))
                    pipe.zrange(self._k.ack_expiry(b), 0, 0, withscores=True)
                rows = await pipe.execute()
        firsts = [int(r[0][1]) for r in rows[2::3] if r]
        return AckStats(pending=sum(rows[0::3]), dead=sum(rows[1::3]),
                        first_expiry=min(firsts) if firsts else None)

    # -- shared internals -----------------------------------------------------

    def _msg_key(self, user: UserId, enc: str) -> str:
        return self._k.user_msg(user, unquote(enc))

    async def _message(self, user: UserId, enc: str) -> StoredMessage | None:
        fields = await self._r.hmget(self._msg_key(user, enc), FIELDS)
        if fields[0] is None or fields[2] is None:
            return None
        return message_of(user, enc, fields)

    async def _index_dead(self, dead: list[DeadLetter]) -> None:
        if not dead:
            return
        k, keep = self._k, max(1, self.policy.max_dead // BUCKETS)

        def queue(pipe: Any) -> None:
            for d in dead:
                b, entry = bucket_of(d.message.user), member(d.message.user,
                                                           encode_id(d.message.id))
                pipe.zrem(k.ack_expiry(b), entry)
                pipe.zadd(k.dlq(b), {entry: d.dead_at})
                pipe.zremrangebyrank(k.dlq(b), 0, -(keep + 1))

        for reply in await self._batch.run_group(queue, 3 * len(dead)):
            if isinstance(reply, Exception):
                raise reply

    async def _guarded(self, what: str, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``call``; if a record it touched is corrupt, move that record aside
        (logged) and run it once more: one bad record must not block a user."""
        try:
            return await call()
        except CorruptRecord as exc:
            await self._quarantine(exc)
            return await call()
        except BackendError as exc:
            if "CROSSSLOT" not in str(exc):
                raise
            # One endpoint in front of a sharded store (a cluster proxy) refuses a
            # script over several slots: write the index entries beside it, as
            # on a cluster (nothing of the refused call was written). Calls made
            # folded before the switch land here too, and run again unfolded.
            if self._folded:
                log.warning("the Redis at WSNODE_REDIS_URL refuses scripts over several "
                            "hash slots (a cluster proxy?): ACK index entries are written "
                            "beside the scripts from now on")
                self._folded = False
            return await call()

    async def _quarantine(self, exc: CorruptRecord) -> None:
        if not exc.key.startswith(f"{self._k.prefix}:{{"):
            raise exc  # not a key we can name: nothing to move aside
        dest = self._k.quarantined(exc.key)
        with translated("quarantine"):
            moved = await self._script(keys=[exc.key, dest],
                                       args=["quarantine", "", _QUARANTINE_MS])
        log.error("quarantined a corrupt record: %s moved to %s (%s)", exc.key, dest,
                  exc.detail)
        if not moved:
            raise exc

    def _redis_now(self) -> int:
        return _CLOCK.now_ms() + self._skew_ms

    def _saw_redis_time(self, redis_ms: int) -> None:
        self._skew_ms = redis_ms - _CLOCK.now_ms()

    async def _time(self) -> int:
        seconds, micros = await self._r.time()
        now = int(seconds) * 1000 + int(micros) // 1000
        self._saw_redis_time(now)
        return now


def message_of(user: UserId, enc: str, f: Sequence[Any]) -> StoredMessage:
    body = f[2] if isinstance(f[2], bytes) else str(f[2]).encode()
    return StoredMessage(user=user, id=MsgId(unquote(enc)), seq=int(f[0]), type=as_str(f[1]),
                         body=body, stored_at=int(f[3]), expires_at=int(f[4]),
                         attempts=int(f[5]), next_due=int(float(f[6])))


def dead_of(user: UserId, enc: str, reply: Sequence[Any]) -> DeadLetter:
    """From ``{'dead', reason, dead_at, fields}``."""
    return DeadLetter(message_of(user, enc, reply[3]), DeadReason(as_str(reply[1])),
                      int(reply[2]))

