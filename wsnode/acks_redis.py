"""The ACK store in Redis, shared by every pod (contract: ``wsnode.acks``).

Per user (one hash slot; ``lua/acks.lua`` does every multi-step change
atomically): a ``seq`` counter, one hash per message (pending, acked or dead),
a ``pending`` zset in seq order, a ``due`` zset of next resend times, a
``dlq`` zset and the record of the last resend claim. Three global indexes,
split into buckets by user (``keys.BUCKETS``): ``due`` (users with a resend
due: what pods scan), ``expiry`` (what the sweeper visits) and ``dlq`` (what
``wsctl dlq ls`` lists). Redis Cluster forbids one script over a user's slot
and a bucket's, so indexes are written next to the script, in an order that
keeps them safe:

* the expiry entry goes in before the store (an entry without a message is
  dropped by the sweeper; a message without an entry would never expire);
* a due entry is only ever *lowered* next to a store or defer, and after a
  claim it is set, the user's earliest due read again, and lowered to it if a
  store slipped in between. A due entry may be early (a claim then finds
  nothing and moves it), never late by more than a crash between two steps,
  which the holders' periodic ``schedule`` repairs.

Times come from the Redis clock inside the scripts; where a pod must guess
one before the script runs (an index entry written beside it), it corrects
its own clock by the offset it last saw, so a skewed pod neither resends late
nor makes others claim in a loop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote

from redis.exceptions import NoScriptError

from wsnode.acks import (
    AckPolicy,
    AckStats,
    Claimed,
    DeadLetter,
    DeadReason,
    DueScan,
    MsgState,
    StoredMessage,
    StoreResult,
    stored_body,
    without_expiry,
)
from wsnode.clock import SystemClock
from wsnode.coalescer import Coalescer
from wsnode.errors import CorruptRecord
from wsnode.ids import MsgId, UserId
from wsnode.keys import BUCKETS, RedisKeys, bucket_of, encode_id, member, split_member
from wsnode.protocol import Envelope
from wsnode.redis_conn import Redis, as_str, request_token, script, translated

log = logging.getLogger("wsnode.acks")

_T = TypeVar("_T")
_FIELDS = ("seq", "type", "body", "stored_at", "expires_at", "attempts", "next_due")
_EXPIRY_SLACK_MS = 1000
_CLAIM_BATCH = 64
_QUARANTINE_MS = 7 * 86_400_000
# This process's wall clock (shifted by the failpoint clock.skew in tests).
_CLOCK = SystemClock()


class RedisAcks:
    """AckStore, ResendSchedule and DeadLetters over one Redis (see the module)."""

    def __init__(self, client: Redis, keys: RedisKeys, policy: AckPolicy | None = None) -> None:
        self.policy = policy or AckPolicy()
        self._r = client
        self._k = keys
        self._script = script(client, "acks")
        self._batch = Coalescer(client)
        self._skew_ms = 0  # the Redis clock minus ours, as last seen

    # -- AckStore -------------------------------------------------------------

    async def store(self, user: UserId, env: Envelope) -> StoreResult:
        return await self._guarded("ack store", lambda: self._store(user, env))

    async def _store(self, user: UserId, env: Envelope) -> StoreResult:
        assert env.id is not None
        p, k, b = self.policy, self._k, bucket_of(user)
        enc, body = encode_id(env.id), stored_body(env)
        keys = [k.user_msg(user, env.id), k.user_seq(user), k.user_pending(user),
                k.user_due(user)]
        args: list[str | int | bytes] = [
            "store", request_token(), enc, env.type, body, p.ttl_ms, p.retry_interval_ms,
            "" if env.expires_at is None else env.expires_at, p.max_pending_per_user,
            p.dead_ttl_ms]
        now = self._redis_now()
        expiry = now + p.ttl_ms + _EXPIRY_SLACK_MS
        if env.expires_at is not None:
            expiry = min(expiry, env.expires_at + _EXPIRY_SLACK_MS)
        entry = member(user, enc)

        def queue(pipe: Any) -> None:
            pipe.zadd(k.ack_expiry(b), {entry: expiry}, lt=True)
            pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            pipe.zadd(k.ack_due(b), {user: now + p.retry_interval_ms}, lt=True)

        with translated("ack store"):
            reply = await self._group(queue, 3, 1, keys, args)
            if int(reply[0]) == 1:
                state = MsgState(as_str(reply[2]))
                existing = None
                if state is MsgState.PENDING:
                    existing = await self._message(user, enc)
                else:
                    # Not pending: the expiry entry this call added is not wanted.
                    await self._batch.run(lambda pipe: pipe.zrem(k.ack_expiry(b), entry))
                    if state is MsgState.DEAD:
                        existing = await self._message(user, enc)
                return StoreResult(int(reply[1]), existing, duplicate=True, state=state)
            seq, stored_at, expires, due = (int(x) for x in reply[1:5])
            self._saw_redis_time(stored_at)
        msg = StoredMessage(user=user, id=MsgId(env.id), seq=seq, type=env.type, body=body,
                            stored_at=stored_at, expires_at=expires, attempts=1, next_due=due)
        evicted = [d for e in reply[5:] if (d := await self._evict(user, as_str(e)))]
        return StoreResult(seq, msg, evicted=evicted)

    async def _evict(self, user: UserId, enc: str) -> DeadLetter | None:
        k = self._k
        keys = [self._msg_key(user, enc), k.user_pending(user), k.user_due(user),
                k.user_dlq(user)]
        with translated("ack evict"):
            reply = await self._batch.script(self._script, keys, [
                "evict", request_token(), enc, self.policy.dead_ttl_ms,
                self.policy.max_pending_per_user])
            if as_str(reply[0]) != "dead":
                return None
            dead = _dead(user, enc, reply)
            await self._index_dead([dead])
        return dead

    async def settle(self, user: UserId, msg_id: MsgId) -> MsgState | None:
        return await self._guarded("ack settle", lambda: self._settle(user, msg_id))

    async def _settle(self, user: UserId, msg_id: MsgId) -> MsgState | None:
        k, enc = self._k, encode_id(msg_id)
        keys = [k.user_msg(user, msg_id), k.user_pending(user), k.user_due(user)]
        args: list[str | int] = ["settle", request_token(), enc, self.policy.ttl_ms]
        entry, expiry = member(user, enc), k.ack_expiry(bucket_of(user))

        def queue(pipe: Any) -> None:
            pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            # Unconditional: an entry only exists while the message is pending.
            pipe.zrem(expiry, entry)

        with translated("ack settle"):
            before = as_str(await self._group(queue, 2, 0, keys, args))
        return MsgState(before) if before else None

    async def pending(
        self, user: UserId, since_ms: int | None = None, *, after_seq: int = 0,
        limit: int | None = None, hold_ms: int = 0,
    ) -> list[StoredMessage]:
        return await self._guarded("ack pending", lambda: self._pending(
            user, since_ms, after_seq, limit, hold_ms))

    async def _pending(self, user: UserId, since_ms: int | None, after_seq: int,
                       limit: int | None, hold_ms: int) -> list[StoredMessage]:
        k, want = self._k, limit or 0
        out: list[StoredMessage] = []
        with translated("ack pending"):
            while True:
                # Candidates first (ids and seqs), then their records in one script
                # that declares every key it reads; expired ones are skipped, so
                # read on until the page is full or there is nothing more.
                ask = min(want - len(out), 500) if want else 500
                lo, key = f"({after_seq}", k.user_pending(user)

                def candidates(pipe: Any, key: str = key, lo: str = lo, n: int = ask) -> None:
                    pipe.zrangebyscore(key, lo, "+inf", start=0, num=n, withscores=True)

                with translated("ack pending", key):
                    rows = await self._batch.run(candidates)
                if not rows:
                    return out
                encs = [as_str(e) for e, _ in rows]
                keys = [k.user_due(user), k.user_pending(user),
                        *(self._msg_key(user, e) for e in encs)]
                page = await self._batch.script(self._script, keys, [
                    "page", request_token(), hold_ms,
                    "" if since_ms is None else since_ms, *encs])
                out += [_message(user, as_str(e), f) for e, f in page]
                after_seq = int(rows[-1][1])
                if len(rows) < ask or (want and len(out) >= want):
                    return out

    async def status(self, user: UserId, msg_id: MsgId) -> MsgState | None:
        key = self._k.user_msg(user, msg_id)
        with translated("ack status", key):
            state = await self._r.hget(key, "state")
        return MsgState(as_str(state)) if state is not None else None

    # -- ResendSchedule -------------------------------------------------------

    async def due(self, limit: int = 1000) -> DueScan:
        k = self._k

        def queue(pipe: Any) -> None:
            for b in range(BUCKETS):
                key = k.ack_due(b)
                pipe.evalsha(self._script.sha, 1, key, "due", "", limit)

        with translated("due scan"):
            replies = await self._with_script(lambda: self._batch.run_group(queue, BUCKETS))
        now = max(int(r[0]) for r in replies)
        self._saw_redis_time(now)
        users: list[tuple[UserId, int]] = []
        upcoming: list[int] = []
        for reply in replies:
            if reply[1] not in (b"", ""):
                upcoming.append(int(float(reply[1])))
            rows = reply[2:]
            users += [(UserId(as_str(rows[i])), int(float(rows[i + 1])))
                      for i in range(0, len(rows), 2)]
        users.sort(key=lambda u: u[1])
        return DueScan(users[:limit], now, max(0, min(upcoming) - now) if upcoming else None)

    async def claim_due(self, user: UserId) -> Claimed:
        return await self._guarded("ack claim", lambda: self._claim_due(user))

    async def _claim_due(self, user: UserId) -> Claimed:
        p, k = self.policy, self._k
        with translated("ack claim", k.user_due(user)):
            rows = await self._batch.run(lambda pipe: pipe.zrange(
                k.user_due(user), 0, _CLAIM_BATCH - 1, withscores=True))
        with translated("ack claim"):
            # Only candidates that may be due (the script decides, on its clock).
            horizon = self._redis_now() + _EXPIRY_SLACK_MS
            encs = [as_str(e) for e, due in rows if due <= horizon]
            resend: list[StoredMessage] = []
            dead: list[DeadLetter] = []
            next_due: int | None = int(rows[0][1]) if rows else None
            if encs:
                keys = [k.user_due(user), k.user_pending(user), k.user_dlq(user),
                        k.user_claim(user), *(self._msg_key(user, e) for e in encs)]
                reply = await self._batch.script(self._script, keys, [
                    "claim", request_token(), p.max_attempts, p.retry_interval_ms, p.ttl_ms,
                    p.dead_ttl_ms, *encs])
                self._saw_redis_time(int(reply[0]))
                next_due = int(float(reply[1])) if reply[1] not in (b"", "") else None
                for row in reply[2:]:
                    if as_str(row[0]) == "resend":
                        resend.append(_message(user, as_str(row[1]), row[2]))
                    else:
                        dead.append(_dead(user, as_str(row[1]), ["dead", *row[2:]]))
                await self._index_dead(dead)
            await self._reindex(user, next_due)
        return Claimed(resend, dead)

    async def defer(self, user: UserId, ids: Sequence[MsgId]) -> None:
        if not ids:
            return
        p, k = self.policy, self._k
        encs = [encode_id(i) for i in ids]
        keys = [k.user_due(user), *(self._msg_key(user, e) for e in encs)]
        with translated("ack defer", keys[0]):
            reply = await self._batch.script(self._script, keys, [
                "defer", request_token(), p.reroute_first_ms, p.reroute_max_ms, *encs])
            if reply not in (b"", ""):
                due = int(float(reply))
                await self._batch.run(lambda pipe: pipe.zadd(
                    k.ack_due(bucket_of(user)), {user: due}, lt=True))

    async def schedule(self, user: UserId) -> None:
        with translated("ack schedule", self._k.user_due(user)):
            first = await self._earliest(user)
            if first is not None:
                await self._reindex(user, first)

    async def forget(self, user: UserId, since_ms: int) -> bool:
        key = self._k.ack_due(bucket_of(user))
        with translated("due forget"):
            return bool(await self._batch.script(self._script, [key], [
                "forget", "", user, since_ms]))

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
                k.user_dlq(user)]
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
        dead = _dead(user, enc, reply)
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
                fields = [row.get(f.encode()) for f in _FIELDS]
                out.append(DeadLetter(_message(u, e, fields), DeadReason(as_str(row[b"reason"])),
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
                msg = _message(u, enc, reply)
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

    # -- internals ------------------------------------------------------------

    def _msg_key(self, user: UserId, enc: str) -> str:
        return self._k.user_msg(user, unquote(enc))

    async def _message(self, user: UserId, enc: str) -> StoredMessage | None:
        fields = await self._r.hmget(self._msg_key(user, enc), _FIELDS)
        if fields[0] is None or fields[2] is None:
            return None
        return _message(user, enc, fields)

    async def _earliest(self, user: UserId) -> int | None:
        first = await self._batch.run(lambda pipe: pipe.zrange(
            self._k.user_due(user), 0, 0, withscores=True))
        return int(first[0][1]) if first else None

    async def _reindex(self, user: UserId, next_due: int | None) -> None:
        """Set the user's due entry to ``next_due`` (drop it when None), then lower
        it to the user's earliest due if a store slipped in meanwhile. Set, not
        lowered: a concurrent ``forget`` of the old entry must see it changed."""
        key = self._k.ack_due(bucket_of(user))
        if next_due is None:
            await self._batch.run(lambda pipe: pipe.zrem(key, user))
        else:
            await self._batch.run(lambda pipe: pipe.zadd(key, {user: next_due}))
        first = await self._earliest(user)
        if first is not None and (next_due is None or first < next_due):
            await self._batch.run(lambda pipe: pipe.zadd(key, {user: first}, lt=True))

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

    async def _group(self, queue: Callable[[Any], None], count: int, at: int,
                     keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run a group whose command ``at`` is our script; its reply (raised if an
        error). After a Redis restart (NOSCRIPT) the script alone runs again,
        which loads it; the other commands of such groups are safe to repeat."""
        replies = await self._batch.run_group(queue, count)
        reply = replies[at]
        if isinstance(reply, NoScriptError):
            reply = await self._script(keys=keys, args=args)
        for other in replies:
            if isinstance(other, Exception) and other is not replies[at]:
                raise other
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def _with_script(self, call: Callable[[], Awaitable[list[Any]]]) -> list[Any]:
        replies = await call()
        if any(isinstance(r, NoScriptError) for r in replies):
            await self._r.script_load(self._script.script)
            replies = await call()
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _guarded(self, what: str, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``call``; if a record it touched is corrupt, move that record aside
        (logged) and run it once more: one bad record must not block a user."""
        try:
            return await call()
        except CorruptRecord as exc:
            await self._quarantine(exc)
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


def _message(user: UserId, enc: str, f: Sequence[Any]) -> StoredMessage:
    body = f[2] if isinstance(f[2], bytes) else str(f[2]).encode()
    return StoredMessage(user=user, id=MsgId(unquote(enc)), seq=int(f[0]), type=as_str(f[1]),
                         body=body, stored_at=int(f[3]), expires_at=int(f[4]),
                         attempts=int(f[5]), next_due=int(float(f[6])))


def _dead(user: UserId, enc: str, reply: Sequence[Any]) -> DeadLetter:
    """From ``{'dead', reason, dead_at, fields}``."""
    return DeadLetter(_message(user, enc, reply[3]), DeadReason(as_str(reply[1])),
                      int(reply[2]))

