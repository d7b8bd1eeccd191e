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

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import NoScriptError

from wsnode.acks import (
    Claimed,
    DeadLetter,
    DueScan,
    MsgState,
    StoredMessage,
    StoreResult,
)
from wsnode.acks_redis_dead import EXPIRY_SLACK_MS, RedisDeadLetters, dead_of, message_of
from wsnode.acks_redis_plan import StorePlan
from wsnode.errors import QuotaExceeded
from wsnode.ids import MsgId, UserId
from wsnode.keys import BUCKETS, bucket_of, encode_id, member
from wsnode.protocol import Envelope
from wsnode.redis_conn import as_str, queue_script, request_token, translated

_CLAIM_BATCH = 64


class RedisAcks(RedisDeadLetters):
    """AckStore, ResendSchedule and DeadLetters over one Redis (see the module)."""

    # -- AckStore -------------------------------------------------------------

    async def store(self, user: UserId, env: Envelope, *,
                    relayed_from: UserId | None = None) -> StoreResult:
        return await self._guarded("ack store", lambda: self._store(user, env, relayed_from))

    async def store_many(self, users: Sequence[UserId], env: Envelope, *,
                         relayed_from: UserId | None = None,
                         ) -> list[StoreResult | QuotaExceeded]:
        """Every user's store in one pipeline (one round trip). A user whose store
        cannot be read in it (a corrupt record, a script reloaded) is stored on
        its own afterwards, as ``store`` would. A message relayed from a client
        is stored one user at a time: each store takes a place in the client's
        budget first, and a user refused must not have held one meanwhile (at
        most ``relayed_budget`` of them succeed anyway)."""
        if relayed_from is not None:
            return [await self._one(u, env, relayed_from) for u in users]
        out: list[StoreResult | QuotaExceeded] = []
        now = self._redis_now()
        plans = [StorePlan.of(self.policy, self._k, self._script.sha, self._folded, user, env,
                               None, now) for user in users]

        def queue(pipe: Any) -> None:
            for plan in plans:
                plan.queue(pipe)

        width = StorePlan.width(self._folded)
        with translated("ack store"):
            # Durable: each message and its expiry entry reach a replica before
            # the sender hears it is stored (a failover must not lose it).
            durable = [key for plan in plans for key in (plan.keys[0], plan.expiry_key)]
            replies = (await self._batch.run_group(queue, width * len(plans), durable=durable)
                       if plans else [])
            for other in (r for n, r in enumerate(replies) if n % width != StorePlan.at(width)):
                if isinstance(other, Exception):
                    raise other
        for plan, reply in zip(plans, replies[StorePlan.at(width)::width], strict=True):
            if isinstance(reply, Exception):
                # NOSCRIPT (Redis restarted), a corrupt record: as store() does it.
                out.append(await self._one(plan.user, env, None))
            else:
                out.append(await self._stored(plan, reply))
        return out

    async def _one(self, user: UserId, env: Envelope,
                   relayed_from: UserId | None) -> StoreResult | QuotaExceeded:
        try:
            return await self.store(user, env, relayed_from=relayed_from)
        except QuotaExceeded as exc:
            return exc

    async def _store(self, user: UserId, env: Envelope,
                     relayed_from: UserId | None) -> StoreResult:
        now = self._redis_now()
        if relayed_from is not None and not self._folded:
            enc = encode_id(env.id or "")
            await self._reserve(relayed_from, user, enc, now)
        plan = StorePlan.of(self.policy, self._k, self._script.sha, self._folded, user, env,
                            relayed_from, now)
        width = StorePlan.width(self._folded)
        with translated("ack store"):
            reply = await self._group(plan.queue, width, StorePlan.at(width), plan.keys, plan.args,
                                      durable=[plan.keys[0], plan.expiry_key])
        return await self._stored(plan, reply)

    async def _stored(self, plan: StorePlan, reply: Any) -> StoreResult:
        """What the store script's ``reply`` means for ``plan``'s message."""
        k, p, user, enc, env = self._k, self.policy, plan.user, plan.enc, plan.env
        b, entry = bucket_of(user), member(user, enc)
        with translated("ack store"):
            if int(reply[0]) == 3:
                raise self._over_budget()  # (folded) no place taken
            if int(reply[0]) == 2:
                sender = plan.relayed_from
                assert sender is not None
                if not self._folded:  # folded, the script refused before reserving
                    await self._batch.run(lambda pipe: pipe.zrem(k.user_budget(sender), entry))
                raise QuotaExceeded("recipient", f"user {user!r} already has "
                                    f"{p.relayed_max_pending} pending messages from clients")
            if int(reply[0]) == 1:
                state = MsgState(as_str(reply[2]))
                existing = None
                if state is MsgState.PENDING:
                    existing = await self._message(user, enc)
                elif not self._folded:
                    # Not pending: the expiry entry this call added is not wanted
                    # (folded, the script adds one only to a new message).
                    await self._batch.run(lambda pipe: pipe.zrem(k.ack_expiry(b), entry))
                if state is MsgState.DEAD:
                    existing = await self._message(user, enc)
                return StoreResult(int(reply[1]), existing, duplicate=True, state=state)
            seq, stored_at, expires, due = (int(x) for x in reply[1:5])
            self._saw_redis_time(stored_at)
        assert env.id is not None
        msg = StoredMessage(user=user, id=MsgId(env.id), seq=seq, type=env.type,
                            body=plan.body, stored_at=stored_at, expires_at=expires,
                            attempts=1, next_due=due)
        # (An async comprehension costs its machinery even when empty: the common case.)
        evicted = [d for e in reply[5:] if (d := await self._evict(user, as_str(e)))] \
            if len(reply) > 5 else []
        return StoreResult(seq, msg, evicted=evicted)

    def _over_budget(self) -> QuotaExceeded:
        return QuotaExceeded("sender", f"{self.policy.relayed_budget} of your messages wait "
                             "for their recipients: wait for them to be delivered")

    async def _reserve(self, sender: UserId, user: UserId, enc: str, now: int) -> None:
        """Take a place in ``sender``'s budget for this message (kept until it is
        acked, or its dead letter forgotten), or raise QuotaExceeded."""
        p = self.policy
        key = self._k.user_budget(sender)
        with translated("relay budget", key):
            taken = await self._batch.script(self._script, [key], [
                "reserve", "", member(user, enc), now + p.ttl_ms + p.dead_ttl_ms,
                p.relayed_budget])
        if not taken:
            raise self._over_budget()

    async def _evict(self, user: UserId, enc: str) -> DeadLetter | None:
        k = self._k
        keys = [self._msg_key(user, enc), k.user_pending(user), k.user_due(user),
                k.user_dlq(user), k.user_relayed(user)]
        with translated("ack evict"):
            reply = await self._batch.script(self._script, keys, [
                "evict", request_token(), enc, self.policy.dead_ttl_ms,
                self.policy.max_pending_per_user])
            if as_str(reply[0]) != "dead":
                return None
            dead = dead_of(user, enc, reply)
            await self._index_dead([dead])
        return dead

    async def settle(self, user: UserId, msg_id: MsgId) -> MsgState | None:
        return await self._guarded("ack settle", lambda: self._settle(user, msg_id))

    async def _settle(self, user: UserId, msg_id: MsgId) -> MsgState | None:
        k, enc, p = self._k, encode_id(msg_id), self.policy
        msg, _seq, pending, due, relayed = k.ack_keys(user, msg_id)
        keys = [msg, pending, due, relayed]
        args: list[str | int] = ["settle", request_token(), enc, p.ttl_ms, p.relayed_keep_ms]
        entry, expiry = member(user, enc), k.ack_expiry(bucket_of(user))
        if self._folded:
            keys.append(expiry)  # the script removes the entry
            args.append(entry)

        def queue(pipe: Any) -> None:
            queue_script(pipe, self._script, keys, args)
            if not self._folded:
                # Unconditional: an entry only exists while the message is pending.
                pipe.zrem(expiry, entry)

        with translated("ack settle"):
            reply = await self._group(queue, 1 if self._folded else 2, 0, keys, args)
            before, sender = as_str(reply[0]), as_str(reply[1])
            if sender:
                # Delivered: its place in the sender's budget is free again (if this
                # is lost, the place frees itself when its time is up).
                await self._batch.run(lambda pipe: pipe.zrem(k.user_budget(sender), entry))
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
                keys = [k.user_due(user), k.user_pending(user), k.user_relayed(user),
                        *(self._msg_key(user, e) for e in encs)]
                page = await self._batch.script(self._script, keys, [
                    "page", request_token(), hold_ms,
                    "" if since_ms is None else since_ms, *encs])
                out += [message_of(user, as_str(e), f) for e, f in page]
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
                queue_script(pipe, self._script, [key], ["due", "", limit])

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
            # The earliest always goes: our guess of the Redis clock can be off by
            # as much as this process lags, and the scan that called us saw it due.
            horizon = self._redis_now() + EXPIRY_SLACK_MS
            encs = [as_str(e) for i, (e, due) in enumerate(rows) if i == 0 or due <= horizon]
            resend: list[StoredMessage] = []
            dead: list[DeadLetter] = []
            next_due: int | None = int(rows[0][1]) if rows else None
            if encs:
                keys = [k.user_due(user), k.user_pending(user), k.user_dlq(user),
                        k.user_claim(user), k.user_relayed(user),
                        *(self._msg_key(user, e) for e in encs)]
                reply = await self._batch.script(self._script, keys, [
                    "claim", request_token(), p.max_attempts, p.retry_interval_ms, p.ttl_ms,
                    p.dead_ttl_ms, *encs])
                self._saw_redis_time(int(reply[0]))
                next_due = int(float(reply[1])) if reply[1] not in (b"", "") else None
                for row in reply[2:]:
                    if as_str(row[0]) == "resend":
                        resend.append(message_of(user, as_str(row[1]), row[2]))
                    else:
                        dead.append(dead_of(user, as_str(row[1]), ["dead", *row[2:]]))
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

    # -- internals ------------------------------------------------------------

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

    async def _group(self, queue: Callable[[Any], None], count: int, at: int,
                     keys: Sequence[Any], args: Sequence[Any],
                     durable: Sequence[str] = ()) -> Any:
        """Run a group whose command ``at`` is our script; its reply (raised if an
        error). After a Redis restart or a failover (NOSCRIPT) the script is
        loaded and runs again alone (as durably); the other commands of such
        groups are safe to repeat."""
        replies = await self._batch.run_group(queue, count, durable=durable)
        reply = replies[at]
        if isinstance(reply, NoScriptError):
            reply = await self._batch.script(self._script, keys, args, durable=bool(durable))
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
