"""ACK-required messages: their stored form, and the three roles of the store.

Life of a message (DESIGN §3)::

    store() ──> PENDING ──settle()──> ACKED (kept for idempotency until ack_ttl)
                  │  claim_due(): RESEND (attempts+1, next_due by backoff) ... until
                  │               max attempts; defer(): routed nowhere, attempt refunded
                  └──> DEAD (expired, ttl passed, attempts exhausted, overflow)
                          └── dead letters: dead_letters(); revive() -> PENDING

The store owns the resend schedule: every pending message has a ``next_due``
in the store, and the store keeps an index of the users with something due.
Pods that hold a user claim that user's due messages from it (see
:class:`ResendSchedule`), so a resend happens whichever pod stored the message
and whether or not that pod is still alive. Times are the store's clock.

Contracts shared by every backend (``tests/contract`` holds both to them):

* ``store`` is idempotent on ``(user, id)`` while a record of the id exists
  (pending, acked or dead, for ``ack_ttl``): a second store returns the
  existing message with ``duplicate=True`` and changes nothing.
* A message stored with ``relayed_from`` (a client on whose behalf it is sent)
  counts against :class:`AckPolicy`'s relayed limits; past them ``store``
  raises :class:`~wsnode.errors.QuotaExceeded` and stores nothing.
* Every call that changes state is safe to repeat after a lost reply: a
  backend that may re-send a request (redis-py does) answers the repeat as it
  answered the first.
* ``seq`` increases by one per stored message of a user, never reused while
  the user has pending messages.
* ``pending`` lists a user's unexpired pending messages in ``seq`` order.
* ``claim_due`` is the only way a resend happens, atomically per user: of
  several pods claiming at once, each due message is handed to one of them per
  attempt.
* Nothing leaves PENDING except by ``settle`` or by becoming a dead letter,
  and every dead letter is reported exactly once to the caller whose call
  made it dead (so it is counted, logged and traced once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import orjson

from wsnode.errors import QuotaExceeded
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
    OVERFLOW = "overflow"  # the user had too many pending messages: the oldest goes


@dataclass(frozen=True, slots=True)
class AckPolicy:
    """Resend schedule and bounds shared by every backend."""

    retry_interval_ms: int = 5_000
    max_attempts: int = 5
    ttl_ms: int = 86_400_000
    max_pending_per_user: int = 10_000
    dead_ttl_ms: int = 7 * 86_400_000
    max_dead: int = 100_000
    # A delivery that reached no connection (the bus was down, the pod gone) is
    # tried again after this, doubling per failure up to reroute_max_ms, and
    # does not spend an attempt: no client saw it.
    reroute_first_ms: int = 250
    reroute_max_ms: int = 10_000
    # Messages relayed from clients (an app handler sending on a client's behalf)
    # cost the store what any client decides: a recipient holds at most
    # relayed_max_pending of them, a client has at most relayed_budget of its own
    # pending or dead-lettered at once, and once acked their record is kept
    # relayed_keep_ms (not ttl_ms) for idempotency.
    relayed_max_pending: int = 100
    relayed_budget: int = 100
    relayed_keep_ms: int = 3_600_000

    def backoff_ms(self, attempts: int) -> int:
        """Wait after delivery number ``attempts`` (1-based): doubling, capped at 16x."""
        return self.retry_interval_ms * (1 << min(max(attempts - 1, 0), 4))

    def reroute_ms(self, defers: int) -> int:
        """Wait after the ``defers``-th delivery that reached nobody (1-based)."""
        return min(self.reroute_max_ms, self.reroute_first_ms << min(max(defers - 1, 0), 16))


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
    """What ``store`` did. ``message`` is None only for a duplicate of an id that
    is no longer pending. ``evicted``: the user's oldest pending messages that
    this store dead-lettered (reason ``overflow``) to stay within the cap."""

    seq: int
    message: StoredMessage | None
    duplicate: bool = False
    state: MsgState = MsgState.PENDING
    evicted: list[DeadLetter] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Claimed:
    """What ``claim_due`` handed to its caller: ``resend`` must be delivered again
    now (attempts already counted); ``dead`` were just dead-lettered."""

    resend: list[StoredMessage] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DueScan:
    """Users with a resend due now, by the store's clock.

    ``users`` pairs each user with the time (store clock, ms) it has been due
    since; ``now_ms`` is the store's clock at the scan; ``next_in_ms`` is how
    long until the next user not yet due falls due (None: nobody waits)."""

    users: list[tuple[UserId, int]]
    now_ms: int
    next_in_ms: int | None


@dataclass(frozen=True, slots=True)
class AckStats:
    """Store-wide counts; ``first_expiry`` is the earliest expiry of a pending
    message (store clock, ms; None when nothing is pending): how old the oldest
    one is, for operators."""

    pending: int
    dead: int
    first_expiry: int | None = None


def new_message(
    user: UserId, env: Envelope, seq: int, now: int, policy: AckPolicy
) -> StoredMessage:
    """Build the stored form of ``env`` (which must carry an id)."""
    assert env.id is not None
    expires = now + policy.ttl_ms
    if env.expires_at is not None:
        expires = min(expires, env.expires_at)
    return StoredMessage(
        user=user, id=MsgId(env.id), seq=seq, type=env.type, body=stored_body(env),
        stored_at=now, expires_at=expires, attempts=1, next_due=now + policy.backoff_ms(1),
    )


def stored_body(env: Envelope) -> bytes:
    """The encoded envelope as stored: ACK-required, without ``seq``."""
    return env.copy(id=env.id, requires_ack=True, seq=None).encode()


def without_expiry(body: bytes) -> bytes:
    """``body`` (an encoded envelope) without ``expiresAt``: an operator's retry of
    a dead letter overrides its old deadline."""
    obj = orjson.loads(body)
    if isinstance(obj, dict) and "expiresAt" in obj:
        del obj["expiresAt"]
        return orjson.dumps(obj)
    return body


def expiry_reason(msg: StoredMessage, policy: AckPolicy) -> DeadReason:
    """Why a message whose expiry passed is dead: its own ``expiresAt``, or ``ack_ttl``."""
    return DeadReason.EXPIRED if msg.expires_at < msg.stored_at + policy.ttl_ms \
        else DeadReason.TTL


class AckStore(Protocol):
    """The messages themselves (see the module contract)."""

    async def store(self, user: UserId, env: Envelope, *,
                    relayed_from: UserId | None = None) -> StoreResult: ...

    async def store_many(self, users: Sequence[UserId], env: Envelope, *,
                         relayed_from: UserId | None = None,
                         ) -> list[StoreResult | QuotaExceeded]:
        """``store`` of ``env`` for each of ``users`` (distinct), with the same
        results, in one round trip per store shard where it can: one result per
        user, in order; a user refused by a relayed limit gets its QuotaExceeded
        in its place, and the others are stored."""
        ...

    async def settle(self, user: UserId, msg_id: MsgId) -> MsgState | None:
        """Mark acked. Returns the state *before* (PENDING when this call settled it,
        ACKED for a repeat ack, DEAD, or None when the id is unknown)."""
        ...

    async def pending(
        self, user: UserId, since_ms: int | None = None, *, after_seq: int = 0,
        limit: int | None = None, hold_ms: int = 0,
    ) -> list[StoredMessage]:
        """The user's unexpired pending messages with ``seq > after_seq`` (stored
        at or after ``since_ms``), in seq order, at most ``limit`` of them. With
        ``hold_ms`` (a replay: the client is getting them right now), none of
        them falls due for a resend sooner than ``hold_ms`` from now."""
        ...

    async def status(self, user: UserId, msg_id: MsgId) -> MsgState | None: ...


class ResendSchedule(Protocol):
    """The resend schedule the store owns (see the module docstring).

    A pod runs, for as long as it lives: ``due()``; ``claim_due(user)`` for each
    due user it holds (then delivers what it got to every pod of the user);
    ``forget(user, since)`` for a due user nobody holds any more. A pod that
    starts holding a user calls ``schedule(user)``.
    """

    async def due(self, limit: int = 1000) -> DueScan: ...

    async def claim_due(self, user: UserId) -> Claimed: ...

    async def defer(self, user: UserId, ids: Sequence[MsgId]) -> None:
        """Deliveries of ``ids`` reached no connection: try again soon
        (``AckPolicy.reroute_ms``) and give back the attempt they spent."""
        ...

    async def schedule(self, user: UserId) -> None:
        """Make sure every pending message of ``user`` is in the due index (after a
        connect, or in a reconciliation)."""
        ...

    async def forget(self, user: UserId, since_ms: int) -> bool:
        """Drop ``user`` from the due index if it is still due since ``since_ms``
        (nobody holds the user: they get their messages on their next connect).
        False when the entry changed meanwhile (someone scheduled it)."""
        ...


class DeadLetters(Protocol):
    """Expiry and the dead-letter store."""

    async def sweep(self, limit: int = 1000) -> list[DeadLetter]:
        """Dead-letter pending messages whose expiry passed (at most ``limit``)."""
        ...

    async def dead_letters(
        self, user: UserId | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        """Dead letters, newest first (of ``user`` when given)."""
        ...

    async def revive(self, msg_id: MsgId, user: UserId | None = None) -> list[StoredMessage]:
        """Make the dead letters with this id (of ``user`` when given) pending
        again, atomically per message: a new seq, attempts 1, stored now, no
        ``expiresAt``. The caller then routes them. Empty when there is none."""
        ...

    async def stats(self) -> AckStats: ...


class AckBackend(AckStore, ResendSchedule, DeadLetters, Protocol):
    """One backend plays all three roles (``MemoryAcks``, ``RedisAcks``)."""
