"""The ACK store in Redis, shared by every pod (contract: ``wsnode.acks``).

Per user (one hash slot, ``lua/acks.lua`` does every multi-step change
atomically): a ``seq`` counter, one hash per message (pending, acked or dead),
a ``pending`` zset in seq order, and a ``dlq`` zset. Two global indexes, each
updated right after the user-slot script (Redis Cluster forbids one script over
both): ``ack_expiry`` (what the sweeper visits) and ``dlq`` (what ``wsctl dlq
ls`` lists). The user slot is the truth; the indexes only say where to look, so
an index entry left by a crash between the two steps is skipped or repaired by
the next sweep.

Retention: a pending message lives until it is acked or dead; an acked one is
remembered (for idempotency) until ``ack_ttl`` after it was stored; a dead one
for ``dead_ttl``; the global DLQ index is capped at ``max_dead`` entries.
Survives a Redis restart when Redis persists (AOF, see the README).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import unquote

from wsnode.acks import (
    AckPolicy,
    AckStats,
    Claim,
    ClaimKind,
    DeadLetter,
    DeadReason,
    MsgState,
    StoredMessage,
    StoreResult,
    without_expiry,
)
from wsnode.ids import MsgId, UserId
from wsnode.keys import RedisKeys, encode_id, member, split_member
from wsnode.protocol import Envelope
from wsnode.redis_conn import Coalescer, Redis, script, text, translated


class RedisAckStore:
    def __init__(self, client: Redis, keys: RedisKeys, policy: AckPolicy | None = None) -> None:
        self.policy = policy or AckPolicy()
        self._r = client
        self._k = keys
        self._script = script(client, "acks")
        self._batch = Coalescer(client)

    def _msg_prefix(self, user: UserId) -> str:
        return self._k.user_msg(user, "")

    async def store(self, user: UserId, env: Envelope) -> StoreResult:
        assert env.id is not None
        p, k = self.policy, self._k
        enc = encode_id(env.id)
        # The body is encoded without seq; the frame gets seq spliced in per delivery.
        body = Envelope(type=env.type, payload=env.payload, id=env.id, requires_ack=True,
                        expires_at=env.expires_at).encode()
        keys = [k.user_msg(user, env.id), k.user_seq(user), k.user_pending(user),
                k.user_dlq(user)]
        args: list[str | int | bytes] = [
            "store", enc, env.type, body, p.ttl_ms, p.retry_interval_ms,
            "" if env.expires_at is None else env.expires_at, p.max_pending_per_user,
            p.dead_ttl_ms, self._msg_prefix(user)]
        # The expiry index entry goes in the same pipeline as the store: a crash
        # between the two would leave a message the sweeper never visits. Its
        # score is this clock's guess, a second late at most: the sweep checks
        # the real expiry in the script and keeps an entry that is not due yet.
        guess = int(time.time() * 1000) + p.ttl_ms + _EXPIRY_SLACK_MS
        if env.expires_at is not None:
            guess = min(guess, env.expires_at + _EXPIRY_SLACK_MS)
        entry = {member(user, enc): guess}
        with translated("ack store"):
            # One store per ACK-required message: coalesced with this tick's others.
            reply, _ = await asyncio.gather(
                self._batch.script(self._script, keys, args),
                self._batch.run(lambda pipe: pipe.zadd(k.ack_expiry, entry)))
            if int(reply[0]) == 1:
                state = MsgState(text(reply[2]))
                existing = None
                if state is not MsgState.ACKED:
                    existing = await self._message(user, MsgId(env.id))
                return StoreResult(int(reply[1]), existing, duplicate=True, state=state)
            seq, now, expires, due, overflow = (int(reply[1]), int(reply[2]), int(reply[3]),
                                                int(reply[4]), text(reply[5]))
            if overflow:
                await self._index_dead(user, overflow, now)
        msg = StoredMessage(user=user, id=MsgId(env.id), seq=seq, type=env.type, body=body,
                            stored_at=now, expires_at=expires, attempts=1, next_due=due)
        return StoreResult(seq, msg)

    async def settle(self, user: UserId, msg_id: MsgId) -> MsgState | None:
        enc = encode_id(msg_id)
        keys = [self._k.user_msg(user, msg_id), self._k.user_pending(user)]
        args: list[str | int] = ["settle", enc, self.policy.ttl_ms]
        with translated("ack settle"):
            before = text(await self._batch.script(self._script, keys, args))
            if before == MsgState.PENDING:
                entry = member(user, enc)
                await self._batch.run(lambda pipe: pipe.zrem(self._k.ack_expiry, entry))
        return MsgState(before) if before else None

    async def pending(
        self, user: UserId, since_ms: int | None = None, *, after_seq: int = 0,
        limit: int | None = None,
    ) -> list[StoredMessage]:
        with translated("ack pending"):
            # One page read per connect: coalesced with this tick's others.
            rows = await self._batch.script(
                self._script, [self._k.user_pending(user)],
                ["pending", self._msg_prefix(user), "" if since_ms is None else since_ms,
                 after_seq, limit or 0])
        return [_message(user, text(enc), f) for enc, f in rows]

    async def claim(self, user: UserId, msg_id: MsgId) -> Claim:
        p, enc = self.policy, encode_id(msg_id)
        with translated("ack claim"):
            reply = await self._script(
                keys=[self._k.user_msg(user, msg_id), self._k.user_pending(user),
                      self._k.user_dlq(user)],
                args=["claim", enc, p.max_attempts, p.retry_interval_ms, p.ttl_ms, p.dead_ttl_ms])
            kind = ClaimKind(text(reply[0]))
            if kind is ClaimKind.GONE:
                return Claim(kind)
            msg = _message(user, enc, reply[3])
            if kind is not ClaimKind.DEAD:
                return Claim(kind, message=msg)
            dead = DeadLetter(msg, DeadReason(text(reply[1])), int(reply[2]))
            await self._index_dead(user, enc, dead.dead_at)
        return Claim(kind, dead=dead)

    async def status(self, user: UserId, msg_id: MsgId) -> MsgState | None:
        with translated("ack status"):
            state = await self._r.hget(self._k.user_msg(user, msg_id), "state")
        return MsgState(text(state)) if state is not None else None

    async def sweep(self, limit: int = 1000) -> list[DeadLetter]:
        p = self.policy
        with translated("ack sweep"):
            now = await self._now_ms()
            # Index entries of dead letters past their retention (their records
            # are gone by TTL) would otherwise stay and be counted in stats().
            await self._r.zremrangebyscore(self._k.dlq, "-inf", now - p.dead_ttl_ms)
            due = await self._r.zrangebyscore(self._k.ack_expiry, "-inf", now, start=0,
                                              num=limit)
            out = []
            for raw in due:
                user_s, enc = split_member(text(raw))
                user = UserId(user_s)
                reply = await self._script(
                    keys=[self._msg_prefix(user) + enc, self._k.user_pending(user),
                          self._k.user_dlq(user)],
                    args=["expire", enc, p.ttl_ms, p.dead_ttl_ms])
                kind = text(reply[0])
                if kind == "alive":
                    continue  # its expiry moved (cannot happen today); keep the index entry
                await self._r.zrem(self._k.ack_expiry, text(raw))
                if kind == "dead":
                    dead = DeadLetter(_message(user, enc, reply[3]), DeadReason(text(reply[1])),
                                      int(reply[2]))
                    await self._index_dead(user, enc, dead.dead_at)
                    out.append(dead)
        return out

    async def dead_letters(
        self, user: UserId | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        with translated("dlq list"):
            if user is not None:
                encs = [text(e) for e in await self._r.zrevrange(self._k.user_dlq(user), 0,
                                                                 limit - 1)]
                refs = [(user, e) for e in encs]
            else:
                members = await self._r.zrevrange(self._k.dlq, 0, limit - 1)
                refs = [(UserId(u), e) for u, e in (split_member(text(m)) for m in members)]
            async with self._r.pipeline(transaction=False) as pipe:
                for u, e in refs:
                    pipe.hgetall(self._msg_prefix(u) + e)
                rows = await pipe.execute()
        out = []
        for (u, e), row in zip(refs, rows, strict=True):
            if row.get(b"state") != b"dead" or row.get(b"body") is None:
                continue  # retried or expired since it was indexed
            fields = [row.get(f.encode()) for f in _FIELDS]
            out.append(DeadLetter(_message(u, e, fields), DeadReason(text(row[b"reason"])),
                                  int(row[b"dead_at"])))
        return out

    async def revive(self, msg_id: MsgId, user: UserId | None = None) -> list[StoredMessage]:
        enc, p = encode_id(msg_id), self.policy
        with translated("dlq revive"):
            if user is not None:
                users = [user]
            else:
                # Which users have a dead letter with this id: the global index says.
                users = []
                async for raw in self._r.zscan_iter(self._k.dlq, match=f"* {enc}", count=500):
                    name = raw[0] if isinstance(raw, tuple) else raw
                    users.append(UserId(split_member(text(name))[0]))
            out = []
            for u in users:
                key = self._msg_prefix(u) + enc
                body = await self._r.hget(key, "body")
                if not isinstance(body, bytes):
                    continue
                reply = await self._script(
                    keys=[key, self._k.user_seq(u), self._k.user_pending(u), self._k.user_dlq(u)],
                    args=["revive", enc, without_expiry(body), p.ttl_ms, p.retry_interval_ms,
                          p.dead_ttl_ms])
                if not reply:
                    continue  # no longer dead (revived or expired meanwhile)
                msg = _message(u, enc, reply)
                async with self._r.pipeline(transaction=False) as pipe:
                    pipe.zrem(self._k.dlq, member(u, enc))
                    pipe.zadd(self._k.ack_expiry, {member(u, enc): msg.expires_at})
                    await pipe.execute()
                out.append(msg)
        return out

    async def stats(self) -> AckStats:
        with translated("ack stats"):
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.zcard(self._k.ack_expiry)
                pipe.zcard(self._k.dlq)
                pending, dead = await pipe.execute()
        return AckStats(pending=int(pending), dead=int(dead))

    async def _message(self, user: UserId, msg_id: MsgId) -> StoredMessage | None:
        fields = await self._r.hmget(self._k.user_msg(user, msg_id), _FIELDS)
        if fields[0] is None:
            return None
        return _message(user, encode_id(msg_id), fields)

    async def _index_dead(self, user: UserId, enc: str, dead_at: int) -> None:
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.zrem(self._k.ack_expiry, member(user, enc))
            pipe.zadd(self._k.dlq, {member(user, enc): dead_at})
            await pipe.execute()
        await self._trim_dlq()

    async def _trim_dlq(self) -> None:
        await self._r.zremrangebyrank(self._k.dlq, 0, -(self.policy.max_dead + 1))

    async def _now_ms(self) -> int:
        seconds, micros = await self._r.time()
        return int(seconds) * 1000 + int(micros) // 1000


_FIELDS = ("seq", "type", "body", "stored_at", "expires_at", "attempts", "next_due")
_EXPIRY_SLACK_MS = 1000


def _message(user: UserId, enc: str, f: list[Any]) -> StoredMessage:
    body = f[2] if isinstance(f[2], bytes) else str(f[2]).encode()
    return StoredMessage(user=user, id=MsgId(unquote(enc)), seq=int(f[0]), type=text(f[1]),
                         body=body, stored_at=int(f[3]), expires_at=int(f[4]),
                         attempts=int(f[5]), next_due=int(f[6]))
