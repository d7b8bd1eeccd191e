"""The ACK store in process memory: the embedded pod's backend (contract: ``wsnode.acks``).

Lost on restart, by design (an embedded pod has no durable state). One event
loop, so every method is atomic without locks.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

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
    expiry_reason,
    new_message,
    without_expiry,
)
from wsnode.clock import Clock, SystemClock
from wsnode.errors import QuotaExceeded
from wsnode.ids import MsgId, UserId
from wsnode.protocol import Envelope

_FORGET_EVERY_MS = 60_000


@dataclass(frozen=True, slots=True)
class _Done:
    """An id that is no longer pending, remembered for idempotency."""

    state: MsgState
    forget_at: int
    seq: int


@dataclass
class _UserBox:
    seq: int = 0
    pending: dict[MsgId, StoredMessage] = field(default_factory=dict)  # in seq order
    done: dict[MsgId, _Done] = field(default_factory=dict)
    defers: dict[MsgId, int] = field(default_factory=dict)
    relayed: dict[MsgId, UserId] = field(default_factory=dict)  # pending, from a client


class MemoryAcks:
    """AckStore, ResendSchedule and DeadLetters in process memory."""

    def __init__(self, policy: AckPolicy | None = None, clock: Clock | None = None) -> None:
        self.policy = policy or AckPolicy()
        self._clock = clock or SystemClock()
        self._users: dict[UserId, _UserBox] = {}
        self._expiry: list[tuple[int, UserId, MsgId]] = []
        self._due: dict[UserId, int] = {}  # the due index: user -> when
        self._due_heap: list[tuple[int, UserId]] = []
        self._dead: OrderedDict[tuple[UserId, MsgId], DeadLetter] = OrderedDict()
        self._pending_count = 0
        self._next_forget = 0
        # A client's budget: (recipient, id) -> until (ms), see AckPolicy.
        self._budgets: dict[UserId, dict[tuple[UserId, MsgId], int]] = {}

    # -- AckStore -------------------------------------------------------------

    async def store(self, user: UserId, env: Envelope, *,
                    relayed_from: UserId | None = None) -> StoreResult:
        now = self._clock.now_ms()
        box = self._users.setdefault(user, _UserBox())
        msg_id = MsgId(env.id or "")
        if msg_id in box.pending:
            found = box.pending[msg_id]
            return StoreResult(found.seq, found, duplicate=True)
        done = box.done.get(msg_id)
        if done is not None and done.forget_at > now:
            dead = self._dead.get((user, msg_id))
            return StoreResult(done.seq, dead.message if dead else None, True, done.state)
        if relayed_from is not None:
            self._take_budget(relayed_from, user, box, msg_id, now)
        box.seq += 1
        msg = new_message(user, env, box.seq, now, self.policy)
        box.pending[msg_id] = msg
        self._pending_count += 1
        heapq.heappush(self._expiry, (msg.expires_at, user, msg_id))
        self._index(user, msg.next_due, lower=True)
        evicted = []
        while len(box.pending) > self.policy.max_pending_per_user:
            oldest = next(iter(box.pending))
            evicted.append(self._kill(user, box, oldest, DeadReason.OVERFLOW, now))
        return StoreResult(msg.seq, msg, evicted=evicted)

    async def store_many(self, users: Sequence[UserId], env: Envelope, *,
                         relayed_from: UserId | None = None,
                         ) -> list[StoreResult | QuotaExceeded]:
        out: list[StoreResult | QuotaExceeded] = []
        for user in users:
            try:
                out.append(await self.store(user, env, relayed_from=relayed_from))
            except QuotaExceeded as exc:
                out.append(exc)
        return out

    async def settle(self, user: UserId, msg_id: MsgId) -> MsgState | None:
        box = self._users.get(user)
        if box is None:
            return None
        msg = box.pending.pop(msg_id, None)
        if msg is not None:
            self._pending_count -= 1
            box.defers.pop(msg_id, None)
            keep = self.policy.ttl_ms
            sender = box.relayed.pop(msg_id, None)
            if sender is not None:
                keep = min(keep, self.policy.relayed_keep_ms)
                self._budgets.get(sender, {}).pop((user, msg_id), None)
            box.done[msg_id] = _Done(MsgState.ACKED, msg.stored_at + keep, msg.seq)
            return MsgState.PENDING
        done = box.done.get(msg_id)
        return done.state if done else None

    async def pending(
        self, user: UserId, since_ms: int | None = None, *, after_seq: int = 0,
        limit: int | None = None, hold_ms: int = 0,
    ) -> list[StoredMessage]:
        box = self._users.get(user)
        if box is None:
            return []
        now = self._clock.now_ms()
        out = []
        for m in list(box.pending.values()):  # insertion order is seq order
            if m.seq > after_seq and m.expires_at > now and \
                    (since_ms is None or m.stored_at >= since_ms):
                if hold_ms and m.next_due < now + hold_ms:
                    m = box.pending[m.id] = replace(m, next_due=now + hold_ms)
                out.append(m)
                if limit is not None and len(out) >= limit:
                    break
        return out

    async def status(self, user: UserId, msg_id: MsgId) -> MsgState | None:
        box = self._users.get(user)
        if box is None:
            return None
        if msg_id in box.pending:
            return MsgState.PENDING
        done = box.done.get(msg_id)
        return done.state if done else None

    # -- ResendSchedule -------------------------------------------------------

    async def due(self, limit: int = 1000) -> DueScan:
        now = self._clock.now_ms()
        heap, users, taken = self._due_heap, dict[UserId, int](), []
        while heap:
            when, user = heap[0]
            if self._due.get(user) != when or user in users:
                heapq.heappop(heap)  # superseded (or a second entry of the same)
                continue
            if when > now or len(users) >= limit:
                break
            taken.append(heapq.heappop(heap))
            users[user] = when
        next_in = max(0, heap[0][0] - now) if heap else None
        for item in taken:  # still due until claimed or forgotten
            heapq.heappush(heap, item)
        return DueScan(list(users.items()), now, next_in)

    async def claim_due(self, user: UserId) -> Claimed:
        box = self._users.get(user)
        if box is None:
            self._unindex(user)
            return Claimed()
        now = self._clock.now_ms()
        p = self.policy
        resend: list[StoredMessage] = []
        dead: list[DeadLetter] = []
        for msg_id, msg in list(box.pending.items()):
            if msg.expires_at <= now:
                dead.append(self._kill(user, box, msg_id, expiry_reason(msg, p), now))
            elif msg.next_due > now:
                continue
            elif msg.attempts >= p.max_attempts:
                dead.append(self._kill(user, box, msg_id, DeadReason.MAX_ATTEMPTS, now))
            else:
                attempts = msg.attempts + 1
                msg = box.pending[msg_id] = replace(
                    msg, attempts=attempts, next_due=now + p.backoff_ms(attempts))
                resend.append(msg)
        await self.schedule(user)
        return Claimed(resend, dead)

    async def defer(self, user: UserId, ids: Sequence[MsgId]) -> None:
        box = self._users.get(user)
        if box is None:
            return
        now = self._clock.now_ms()
        for msg_id in ids:
            msg = box.pending.get(msg_id)
            if msg is None:
                continue
            defers = box.defers[msg_id] = box.defers.get(msg_id, 0) + 1
            box.pending[msg_id] = replace(msg, attempts=max(msg.attempts - 1, 0),
                                          next_due=now + self.policy.reroute_ms(defers))
        await self.schedule(user)

    async def schedule(self, user: UserId) -> None:
        box = self._users.get(user)
        if box is None or not box.pending:
            self._unindex(user)
            return
        self._index(user, min(m.next_due for m in box.pending.values()))

    async def forget(self, user: UserId, since_ms: int) -> bool:
        if self._due.get(user) != since_ms:
            return False
        self._unindex(user)
        return True

    # -- DeadLetters ----------------------------------------------------------

    async def sweep(self, limit: int = 1000) -> list[DeadLetter]:
        now = self._clock.now_ms()
        out: list[DeadLetter] = []
        while self._expiry and self._expiry[0][0] <= now and len(out) < limit:
            _, user, msg_id = heapq.heappop(self._expiry)
            box = self._users.get(user)
            msg = box.pending.get(msg_id) if box else None
            if box is None or msg is None or msg.expires_at > now:
                continue
            out.append(self._kill(user, box, msg_id, expiry_reason(msg, self.policy), now))
        self._forget_old(now)
        return out

    async def dead_letters(
        self, user: UserId | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        rows = [d for (u, _), d in reversed(self._dead.items()) if user is None or u == user]
        return rows[:limit]

    async def revive(self, msg_id: MsgId, user: UserId | None = None) -> list[StoredMessage]:
        keys = [k for k in self._dead if k[1] == msg_id and (user is None or k[0] == user)]
        now = self._clock.now_ms()
        out = []
        for key in keys:
            old = self._dead.pop(key).message
            box = self._users.setdefault(old.user, _UserBox())
            box.done.pop(msg_id, None)
            box.seq += 1
            msg = replace(old, seq=box.seq, body=without_expiry(old.body), stored_at=now,
                          expires_at=now + self.policy.ttl_ms, attempts=1,
                          next_due=now + self.policy.backoff_ms(1))
            box.pending[msg_id] = msg
            self._pending_count += 1
            heapq.heappush(self._expiry, (msg.expires_at, msg.user, msg_id))
            self._index(msg.user, msg.next_due, lower=True)
            out.append(msg)
        return out

    async def stats(self) -> AckStats:
        first = min((m.expires_at for b in self._users.values() for m in b.pending.values()),
                    default=None)
        return AckStats(pending=self._pending_count, dead=len(self._dead), first_expiry=first)

    # -- internals ------------------------------------------------------------

    def _take_budget(self, sender: UserId, user: UserId, box: _UserBox, msg_id: MsgId,
                     now: int) -> None:
        """Count a message relayed from ``sender`` against both relayed limits, or
        raise QuotaExceeded (see AckPolicy)."""
        p = self.policy
        if len(box.relayed) >= p.relayed_max_pending:
            raise QuotaExceeded("recipient", f"user {user!r} already has "
                                f"{p.relayed_max_pending} pending messages from clients")
        budget = self._budgets.setdefault(sender, {})
        for key in [k for k, until in budget.items() if until <= now]:
            del budget[key]
        if len(budget) >= p.relayed_budget:
            raise QuotaExceeded("sender", f"{p.relayed_budget} of your messages wait for "
                                "their recipients: wait for them to be delivered")
        budget[(user, msg_id)] = now + p.ttl_ms + p.dead_ttl_ms
        box.relayed[msg_id] = sender

    def _index(self, user: UserId, when: int, *, lower: bool = False) -> None:
        current = self._due.get(user)
        if current == when or (lower and current is not None and current < when):
            return
        self._due[user] = when
        heapq.heappush(self._due_heap, (when, user))

    def _unindex(self, user: UserId) -> None:
        self._due.pop(user, None)  # heap entries are skipped lazily

    def _kill(
        self, user: UserId, box: _UserBox, msg_id: MsgId, reason: DeadReason, now: int
    ) -> DeadLetter:
        msg = box.pending.pop(msg_id)
        box.defers.pop(msg_id, None)
        box.relayed.pop(msg_id, None)  # its budget stays taken while it is a dead letter
        self._pending_count -= 1
        box.done[msg_id] = _Done(MsgState.DEAD, msg.stored_at + self.policy.ttl_ms, msg.seq)
        dead = DeadLetter(msg, reason, now)
        # Re-insert rather than overwrite in place: the dict's order is dead_at
        # order, which dead_letters() (newest first) and _forget_old() rely on.
        self._dead.pop((user, msg_id), None)
        self._dead[(user, msg_id)] = dead
        while len(self._dead) > self.policy.max_dead:
            self._dead.popitem(last=False)
        return dead

    def _forget_old(self, now: int) -> None:
        # Idempotency records and dead letters are bounded by time as well as count.
        cutoff = now - self.policy.dead_ttl_ms
        while self._dead:
            key, dead = next(iter(self._dead.items()))
            if dead.dead_at > cutoff:
                break
            del self._dead[key]
        if now < self._next_forget:
            return
        self._next_forget = now + _FORGET_EVERY_MS
        for user, box in list(self._users.items()):
            for msg_id in [i for i, d in box.done.items() if d.forget_at <= now]:
                del box.done[msg_id]
            if not box.pending and not box.done:
                # Nothing left to remember; like the Redis counter, seq restarts
                # after a long silence.
                del self._users[user]
        if len(self._expiry) > 2 * self._pending_count + 1024:
            # Settled messages leave their entries behind (lazy deletion): rebuild.
            self._expiry = [(m.expires_at, u, i) for u, b in self._users.items()
                            for i, m in b.pending.items()]
            heapq.heapify(self._expiry)
        if len(self._due_heap) > 2 * len(self._due) + 1024:
            self._due_heap = [(w, u) for u, w in self._due.items()]
            heapq.heapify(self._due_heap)
