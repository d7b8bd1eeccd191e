"""How one ACK store is queued in a pipeline (:class:`StorePlan`), for
:class:`wsnode.acks_redis.RedisAcks`: the store script's keys and arguments,
and on a Redis Cluster the index entries written beside it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wsnode.acks import AckPolicy, stored_body
from wsnode.acks_redis_dead import EXPIRY_SLACK_MS
from wsnode.ids import UserId
from wsnode.keys import RedisKeys, bucket_of, encode_id, member
from wsnode.protocol import Envelope
from wsnode.redis_conn import request_token


@dataclass(frozen=True, slots=True)
class StorePlan:
    """One user's store, as queued in a pipeline. On a cluster: the expiry entry
    (first: an entry without a message is dropped by the sweeper; a message
    without one would never expire), the store script, then the due entry
    (lowered); the budget place was reserved before. Folded (one server): the
    store script alone, which does all of that itself, atomically."""

    user: UserId
    env: Envelope
    relayed_from: UserId | None
    enc: str
    body: bytes
    keys: list[str]
    args: list[str | int | bytes]
    expiry: int
    due: int
    expiry_key: str
    due_key: str
    sha: str
    folded: bool

    @staticmethod
    def width(folded: bool) -> int:
        """Commands a plan queues."""
        return 1 if folded else 3

    @staticmethod
    def at(width: int) -> int:
        """Where the store script's reply is among a plan's ``width`` replies."""
        return 0 if width == 1 else 1

    @classmethod
    def of(cls, p: AckPolicy, k: RedisKeys, sha: str, folded: bool, user: UserId,
           env: Envelope, relayed_from: UserId | None, now: int) -> StorePlan:
        """The plan of storing ``env`` for ``user`` (``now``: our guess of the
        Redis clock); ``folded``: one server (see the class)."""
        assert env.id is not None
        b = bucket_of(user)
        enc, body = encode_id(env.id), stored_body(env)
        keys = list(k.ack_keys(user, env.id))
        args: list[str | int | bytes] = [
            "store", request_token(), enc, env.type, body, p.ttl_ms, p.retry_interval_ms,
            "" if env.expires_at is None else env.expires_at, p.max_pending_per_user,
            p.dead_ttl_ms, relayed_from or "", p.relayed_max_pending]
        expiry = now + p.ttl_ms + EXPIRY_SLACK_MS
        if env.expires_at is not None:
            expiry = min(expiry, env.expires_at + EXPIRY_SLACK_MS)
        if folded:
            keys += [k.ack_expiry(b), k.ack_due(b)]
            args += [member(user, enc), user, EXPIRY_SLACK_MS, p.relayed_budget]
            if relayed_from is not None:
                keys.append(k.user_budget(relayed_from))
        return cls(user, env, relayed_from, enc, body, keys, args, expiry,
                   now + p.retry_interval_ms, k.ack_expiry(b), k.ack_due(b), sha,
                   folded)

    def queue(self, pipe: Any) -> None:
        if self.folded:
            pipe.execute_command("EVALSHA", self.sha, len(self.keys), *self.keys, *self.args)
            return
        pipe.zadd(self.expiry_key, {member(self.user, self.enc): self.expiry}, lt=True)
        # Raw: redis-py's cluster pipeline refuses evalsha() (see queue_script).
        pipe.execute_command("EVALSHA", self.sha, len(self.keys), *self.keys, *self.args)
        pipe.zadd(self.due_key, {self.user: self.due}, lt=True)
