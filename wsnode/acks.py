"""ACK-required messages: the :class:`AckStore` interface and its memory backend.

Life of a message (DESIGN §3)::

    store() ──> PENDING ──settle()──> ACKED (tombstone until ack_ttl)
                  │  claim() when due: RESEND (attempts+1) ... until max attempts
                  └──> DEAD (expired, ttl passed, attempts exhausted, overflow)
                          └── dead-letter store: dead_letters(); revive() -> PENDING

Contracts shared by every backend (the contract tests in ``tests/contract``
hold both to them):

* ``store`` is idempotent on ``(user, id)`` while a record of the id exists
  (pending, acked or dead, for ``ack_ttl``): a second store returns the first
  message with ``duplicate=True`` and changes nothing.
* ``seq`` increases by one per stored message of a user, never reused.
* ``pending`` lists a user's unexpired pending messages in ``seq`` order.
* ``claim`` is the only way a resend happens: it is atomic, so of several
  pods racing on one message exactly one gets ``RESEND`` per attempt.
* Nothing leaves PENDING except by ``settle`` or by becoming a dead letter.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol

import orjson

from wsnode.clock import Clock, SystemClock
from wsnode.ids import MsgId, UserId
from wsnode.protocol import Envelope


class MsgState(StrEnum):
    PENDING = "pending"
    ACKED = "acked"
    DEAD = "dead"


class DeadReason(StrEnum):
    EXPIRED = "expired"  # its expiresAt passed
    TTL = "ttl"  # ack_ttl passed while pending (user never came back)
    MAX_ATTEMPTS = "max_attempts"
    OVERFLOW = "overflow"  # the user had too many pending messages


class ClaimKind(StrEnum):
    RESEND = "resend"  # caller must deliver msg again now
    WAIT = "wait"  # not due yet (another pod resent it); try again at next_due
    GONE = "gone"  # settled, dead or unknown: stop tracking it
    DEAD = "dead"  # just dead-lettered by this claim


@dataclass(frozen=True, slots=True)
class AckPolicy:
    """Resend schedule and bounds shared by every backend."""

    retry_interval_ms: int = 5_000
    max_attempts: int = 5
    ttl_ms: int = 86_400_000
    max_pending_per_user: int = 10_000
    dead_ttl_ms: int = 7 * 86_400_000
    max_dead: int = 100_000

    def backoff_ms(self, attempts: int) -> int:
        """Wait after delivery number ``attempts`` (1-based): doubling, capped at 16x."""
        return self.retry_interval_ms * (1 << min(max(attempts - 1, 0), 4))


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A pending ACK-required message as stored.

    ``body`` is the encoded envelope without ``seq``; :meth:`frame` adds it, so the
    JSON is produced once per message and never per connection.
    """

    user: UserId
    id: MsgId
    seq: int
    type: str
    body: bytes
    stored_at: int
    expires_at: int
    attempts: int
    next_due: int

    def frame(self) -> bytes:
        """The wire frame: ``body`` with ``"seq"`` spliced in before its final brace."""
        return b"%s,\"seq\":%d}" % (self.body[:-1], self.seq)

    def to_json(self) -> dict[str, object]:
        return {
            "user": self.user, "id": self.id, "seq": self.seq, "type": self.type,
            "storedAt": self.stored_at, "expiresAt": self.expires_at,
            "attempts": self.attempts, "nextDue": self.next_due,
            "envelope": orjson.loads(self.frame()),
        }


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that will not be delivered again unless retried by an operator."""

    message: StoredMessage
    reason: DeadReason
    dead_at: int

    def to_json(self) -> dict[str, object]:
        return {**self.message.to_json(), "reason": self.reason.value, "deadAt": self.dead_at}


@dataclass(frozen=True, slots=True)
class StoreResult:
    """``message`` is None only for a duplicate of an already acked id."""

    seq: int
    message: StoredMessage | None
    duplicate: bool = False
    state: MsgState = MsgState.PENDING


@dataclass(frozen=True, slots=True)
class Claim:
    kind: ClaimKind
    message: StoredMessage | None = None
    dead: DeadLetter | None = None


@dataclass(frozen=True, slots=True)
class AckStats:
    pending: int
    dead: int


def new_message(
    user: UserId, env: Envelope, seq: int, now: int, policy: AckPolicy
) -> StoredMessage:
    """Build the stored form of ``env`` (which must carry an id)."""
    assert env.id is not None
    expires = now + policy.ttl_ms
    if env.expires_at is not None:
        expires = min(expires, env.expires_at)
    body = replace(env, seq=None, requires_ack=True).encode()
    return StoredMessage(
        user=user, id=MsgId(env.id), seq=seq, type=env.type, body=body, stored_at=now,
        expires_at=expires, attempts=1, next_due=now + policy.backoff_ms(1),
    )


def without_expiry(body: bytes) -> bytes:
    """``body`` (an encoded envelope) without ``expiresAt``: an operator's retry of
    a dead letter overrides its old deadline."""
    obj = orjson.loads(body)
    if isinstance(obj, dict) and "expiresAt" in obj:
        del obj["expiresAt"]
        return orjson.dumps(obj)
    return body


class AckStore(Protocol):
    """Durable record of ACK-required messages (see the module contract)."""

    async def store(self, user: UserId, env: Envelope) -> StoreResult: ...

    async def settle(self, user: UserId, msg_id: MsgId) -> MsgState | None:
        """Mark acked. Returns the state *before* (PENDING when this call settled it,
        ACKED for a repeat ack, DEAD, or None when the id is unknown)."""
        ...

    async def pending(
        self, user: UserId, since_ms: int | None = None, *, after_seq: int = 0,
        limit: int | None = None,
    ) -> list[StoredMessage]:
        """The user's unexpired pending messages with ``seq > after_seq`` (stored
        at or after ``since_ms``), in seq order, at most ``limit`` of them."""
        ...

    async def claim(self, user: UserId, msg_id: MsgId) -> Claim: ...

    async def status(self, user: UserId, msg_id: MsgId) -> MsgState | None: ...

    async def sweep(self, limit: int = 1000) -> list[DeadLetter]:
        """Dead-letter pending messages whose expiry passed (at most ``limit``)."""
        ...

    async def dead_letters(
        self, user: UserId | None = None, limit: int = 100
    ) -> list[DeadLetter]: ...

    async def revive(self, msg_id: MsgId, user: UserId | None = None) -> list[StoredMessage]:
        """Make the dead letters with this id (of ``user`` when given) pending
        again, atomically per message: a new seq, attempts 1, stored now, no
        ``expiresAt``. The caller then routes them. Empty when there is none."""
        ...

    async def stats(self) -> AckStats: ...


@dataclass
class _UserBox:
    seq: int = 0
    pending: dict[MsgId, StoredMessage] = field(default_factory=dict)
    # Ids that are no longer pending, kept for idempotency: id -> (state, forget_at, seq).
    done: dict[MsgId, tuple[MsgState, int, int]] = field(default_factory=dict)


class MemoryAckStore:
    """AckStore in process memory (embedded pod). Lost on restart, by design."""

    def __init__(self, policy: AckPolicy | None = None, clock: Clock | None = None) -> None:
        self.policy = policy or AckPolicy()
        self._clock = clock or SystemClock()
        self._users: dict[UserId, _UserBox] = {}
        self._expiry: list[tuple[int, UserId, MsgId]] = []
        self._dead: OrderedDict[tuple[UserId, MsgId], DeadLetter] = OrderedDict()
        self._pending_count = 0
        self._next_forget = 0

    async def store(self, user: UserId, env: Envelope) -> StoreResult:
        now = self._clock.now_ms()
        box = self._users.setdefault(user, _UserBox())
        msg_id = MsgId(env.id or "")
        if msg_id in box.pending:
            found = box.pending[msg_id]
            return StoreResult(found.seq, found, duplicate=True)
        done = box.done.get(msg_id)
        if done is not None and done[1] > now:
            dead = self._dead.get((user, msg_id))
            return StoreResult(done[2], dead.message if dead else None, True, done[0])
        box.seq += 1
        msg = new_message(user, env, box.seq, now, self.policy)
        box.pending[msg_id] = msg
        self._pending_count += 1
        heapq.heappush(self._expiry, (msg.expires_at, user, msg_id))
        if len(box.pending) > self.policy.max_pending_per_user:
            oldest = next(iter(box.pending))
            self._kill(user, box, oldest, DeadReason.OVERFLOW, now)
        return StoreResult(msg.seq, msg)

    async def settle(self, user: UserId, msg_id: MsgId) -> MsgState | None:
        box = self._users.get(user)
        if box is None:
            return None
        msg = box.pending.pop(msg_id, None)
        if msg is not None:
            self._pending_count -= 1
            box.done[msg_id] = (MsgState.ACKED, msg.stored_at + self.policy.ttl_ms, msg.seq)
            return MsgState.PENDING
        done = box.done.get(msg_id)
        return done[0] if done else None

    async def pending(
        self, user: UserId, since_ms: int | None = None, *, after_seq: int = 0,
        limit: int | None = None,
    ) -> list[StoredMessage]:
        box = self._users.get(user)
        if box is None:
            return []
        now = self._clock.now_ms()
        out = []
        for m in box.pending.values():  # insertion order is seq order
            if m.seq > after_seq and m.expires_at > now and \
                    (since_ms is None or m.stored_at >= since_ms):
                out.append(m)
                if limit is not None and len(out) >= limit:
                    break
        return out

    async def claim(self, user: UserId, msg_id: MsgId) -> Claim:
        box = self._users.get(user)
        msg = box.pending.get(msg_id) if box else None
        if box is None or msg is None:
            return Claim(ClaimKind.GONE)
        now = self._clock.now_ms()
        if msg.expires_at <= now:
            reason = DeadReason.EXPIRED if msg.expires_at < msg.stored_at + self.policy.ttl_ms \
                else DeadReason.TTL
            return Claim(ClaimKind.DEAD, dead=self._kill(user, box, msg_id, reason, now))
        if msg.next_due > now:
            return Claim(ClaimKind.WAIT, message=msg)
        if msg.attempts >= self.policy.max_attempts:
            return Claim(ClaimKind.DEAD,
                         dead=self._kill(user, box, msg_id, DeadReason.MAX_ATTEMPTS, now))
        attempts = msg.attempts + 1
        msg = replace(msg, attempts=attempts, next_due=now + self.policy.backoff_ms(attempts))
        box.pending[msg_id] = msg
        return Claim(ClaimKind.RESEND, message=msg)

    async def status(self, user: UserId, msg_id: MsgId) -> MsgState | None:
        box = self._users.get(user)
        if box is None:
            return None
        if msg_id in box.pending:
            return MsgState.PENDING
        done = box.done.get(msg_id)
        return done[0] if done else None

    async def sweep(self, limit: int = 1000) -> list[DeadLetter]:
        now = self._clock.now_ms()
        out: list[DeadLetter] = []
        while self._expiry and self._expiry[0][0] <= now and len(out) < limit:
            _, user, msg_id = heapq.heappop(self._expiry)
            box = self._users.get(user)
            msg = box.pending.get(msg_id) if box else None
            if box is None or msg is None or msg.expires_at > now:
                continue
            reason = DeadReason.EXPIRED if msg.expires_at < msg.stored_at + self.policy.ttl_ms \
                else DeadReason.TTL
            out.append(self._kill(user, box, msg_id, reason, now))
        self._forget(now)
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
            out.append(msg)
        return out

    async def stats(self) -> AckStats:
        return AckStats(pending=self._pending_count, dead=len(self._dead))

    def _kill(
        self, user: UserId, box: _UserBox, msg_id: MsgId, reason: DeadReason, now: int
    ) -> DeadLetter:
        msg = box.pending.pop(msg_id)
        self._pending_count -= 1
        box.done[msg_id] = (MsgState.DEAD, msg.stored_at + self.policy.ttl_ms, msg.seq)
        dead = DeadLetter(msg, reason, now)
        # Re-insert rather than overwrite in place: the dict's order is dead_at
        # order, which dead_letters() (newest first) and _forget() rely on.
        self._dead.pop((user, msg_id), None)
        self._dead[(user, msg_id)] = dead
        while len(self._dead) > self.policy.max_dead:
            self._dead.popitem(last=False)
        return dead

    def _forget(self, now: int) -> None:
        # Idempotency records and dead letters are bounded by time as well as count.
        cutoff = now - self.policy.dead_ttl_ms
        while self._dead:
            key, dead = next(iter(self._dead.items()))
            if dead.dead_at > cutoff:
                break
            del self._dead[key]
        if now < self._next_forget:
            return
        self._next_forget = now + 60_000
        for user, box in list(self._users.items()):
            for msg_id in [i for i, (_, until, _) in box.done.items() if until <= now]:
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
