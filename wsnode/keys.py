"""Every Redis key and AMQP name wsnode uses, in one place.

Redis keys live under ``KEY_PREFIX`` and are laid out for Redis Cluster: keys
that one script or transaction touches share a hash tag (``{u:<user>}`` for a
user's state, ``{p:<pod>}`` for a pod's), so nothing needs a cross-slot command.
User and pod ids are percent-encoded in keys, so ``:``, spaces, braces and
non-ASCII characters in ids cannot break the layout.

AMQP: one durable direct exchange; one queue per pod bound by its pod id; a
dead-letter exchange and queue through which messages stranded on a dead pod's
queue reach a live pod that re-routes them.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote

BUCKETS = 16
"""Global indexes are split over this many keys, each in a hash slot of its own
(``{b:<n>}``), so that no single key is hot and Redis Cluster spreads them."""


def bucket_of(user: str) -> int:
    """The bucket of the global indexes that ``user``'s entries live in."""
    return zlib.crc32(user.encode()) % BUCKETS


# What quote(value, safe="") leaves as it is: most ids are only that.
_PLAIN = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch


def encode_id(value: str) -> str:
    """An id as it appears in key names and set members (percent-encoded).
    Called a dozen times per stored message (every key of a user names it):
    an id that needs no escaping is returned as it is (0.16 µs, against 0.36
    through ``quote``)."""
    if _PLAIN(value):
        return value
    return _quoted(value)


@lru_cache(maxsize=16384)
def _quoted(value: str) -> str:
    # Cached: the ids that need escaping are mostly user ids, used again and again.
    return quote(value, safe="")


_enc = encode_id


@dataclass(frozen=True, slots=True)
class AmqpNames:
    """Exchange and queue names for one ``KEY_PREFIX``."""

    prefix: str = "ws"

    @property
    def exchange(self) -> str:
        """Durable direct exchange; routing key = pod id."""
        return f"{self.prefix}.deliver"

    def pod_queue(self, pod: str) -> str:
        """The queue a pod consumes (bound to :attr:`exchange` with key = pod id)."""
        return f"{self.prefix}.pod.{pod}"

    @property
    def stranded_exchange(self) -> str:
        """Dead-letter exchange of every pod queue (fanout)."""
        return f"{self.prefix}.stranded"

    @property
    def stranded_queue(self) -> str:
        """Shared queue of stranded messages, consumed by every live pod."""
        return f"{self.prefix}.stranded"

    @property
    def poison_queue(self) -> str:
        """Bodies that could not be decoded: parked for an operator, never requeued."""
        return f"{self.prefix}.poison"


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """Redis key names for one ``KEY_PREFIX``.

    Slots: ``user_*`` keys of one user share ``{u:<user>}``; ``pod_*`` keys of one
    pod share ``{p:<pod>}``; a topic's keys are in ``{t:<topic>}``; the global ACK
    indexes are split over :data:`BUCKETS` buckets by user (:func:`bucket_of`),
    bucket ``n`` in ``{b:<n>}``, and so are the pods' lives (by pod id): no
    global index is one key, so none is one hot shard of a cluster (``topic_lives``
    is one key, read and written once per pod per heartbeat). Trails are in the
    trail bucket of their message id, ``{tr:<n>}``. Members of global sets name a
    user and an id (or a pod and an epoch) separated by a space, which the
    encoding never produces.
    """

    prefix: str = "ws"

    # -- presence ----------------------------------------------------------
    def lives(self, bucket: int) -> str:
        """SET of ``"<pod> <epoch>"``, one bucket (by pod: :func:`bucket_of`): the
        pod lives whose entries may exist. Readers read every bucket."""
        return f"{self.prefix}:{{b:{bucket}}}:lives"

    @property
    def lives_unbucketed(self) -> str:
        """The single SET of lives that earlier wsnode versions write: still read
        (and reaped), so old and new pods see each other in a rolling upgrade."""
        return f"{self.prefix}:lives"

    @property
    def presence_feed(self) -> str:
        """Pub/sub channel: users whose set of pods just changed (wsnode.presence_cache)."""
        return f"{self.prefix}:presence:changes"

    def pod_epoch(self, pod: str) -> str:
        """Counter: the epoch of the pod's latest life."""
        return f"{self.prefix}:{{p:{_enc(pod)}}}:epoch"

    def pod_lease(self, pod: str) -> str:
        """STRING epoch with a TTL: the pod's life counts while this exists."""
        return f"{self.prefix}:{{p:{_enc(pod)}}}:lease"

    def pod_info(self, pod: str) -> str:
        """HASH epoch, state, heartbeat."""
        return f"{self.prefix}:{{p:{_enc(pod)}}}:info"

    def pod_index(self, pod: str, epoch: int) -> str:
        """SET of ``"<user> <conn>"``: the connections of one life of a pod."""
        return f"{self.prefix}:{{p:{_enc(pod)}}}:idx:{epoch}"

    def user_slot(self, user: str) -> str:
        """What every key of ``user`` starts with: the prefix and the user's hash
        tag ``{u:<user>}`` (one hash slot), then ``:``."""
        return f"{self.prefix}:{{u:{_enc(user)}}}:"

    def user_conns(self, user: str) -> str:
        """HASH conn -> ``"<pod> <epoch> <since>"``."""
        return f"{self.user_slot(user)}conns"

    # -- topics (wsnode.topics_redis) ----------------------------------------
    @property
    def topic_lives(self) -> str:
        """SET of ``"<pod> <epoch>"``: every pod life whose topic membership may exist."""
        return f"{self.prefix}:topiclives"

    def pod_topics(self, pod: str, epoch: int) -> str:
        """HASH topic -> subscribed connections: one life of a pod (its index)."""
        return f"{self.prefix}:{{p:{_enc(pod)}}}:topics:{epoch}"

    def topic_pods(self, topic: str) -> str:
        """HASH ``"<pod> <epoch>"`` -> subscribed connections: the pods of a topic."""
        return f"{self.prefix}:{{t:{_enc(topic)}}}:pods"

    # -- limiter -----------------------------------------------------------
    def user_rate(self, user: str) -> str:
        """STRING: GCRA theoretical arrival time (ms) of the user."""
        return f"{self.user_slot(user)}rl"

    # -- ACK store ---------------------------------------------------------
    def user_seq(self, user: str) -> str:
        return f"{self.user_slot(user)}seq"

    def user_msg(self, user: str, msg_id: str) -> str:
        """HASH of one ACK-required message (pending, acked or dead)."""
        return f"{self.user_slot(user)}m:{_enc(msg_id)}"

    def user_pending(self, user: str) -> str:
        """ZSET id -> seq: the user's pending messages in order."""
        return f"{self.user_slot(user)}pending"

    def user_dlq(self, user: str) -> str:
        """ZSET id -> dead_at: the user's dead letters."""
        return f"{self.user_slot(user)}dlq"

    def user_due(self, user: str) -> str:
        """ZSET id -> next_due (ms): when each pending message is due for a resend."""
        return f"{self.user_slot(user)}due"

    def user_relayed(self, user: str) -> str:
        """ZSET id -> seq: the user's pending messages relayed from clients (capped)."""
        return f"{self.user_slot(user)}relayed"

    def user_budget(self, user: str) -> str:
        """ZSET ``"<recipient> <id>"`` -> until (ms): messages relayed from this
        client that still take a place in its budget (pending, or dead letters)."""
        return f"{self.user_slot(user)}budget"

    def ack_keys(self, user: str, msg_id: str) -> tuple[str, str, str, str, str]:
        """:meth:`user_msg`, :meth:`user_seq`, :meth:`user_pending`, :meth:`user_due`
        and :meth:`user_relayed` at once, the user's slot built once: every ACK
        store and settle names them."""
        slot = self.user_slot(user)
        return (f"{slot}m:{_enc(msg_id)}", slot + "seq", slot + "pending", slot + "due",
                slot + "relayed")

    def user_claim(self, user: str) -> str:
        """HASH req, ids: the user's last resend claim, so that a re-sent request
        (its reply was lost) gets the same answer instead of claiming again."""
        return f"{self.user_slot(user)}claim"

    def ack_due(self, bucket: int) -> str:
        """ZSET user -> ms: users with a resend due (the earliest of theirs, or
        earlier), in one bucket. The pods that hold a user claim from it."""
        return f"{self.prefix}:{{b:{bucket}}}:due"

    def ack_expiry(self, bucket: int) -> str:
        """ZSET ``"<user> <id>"`` -> expires_at (ms), one bucket: what the sweeper visits."""
        return f"{self.prefix}:{{b:{bucket}}}:expiry"

    def dlq(self, bucket: int) -> str:
        """ZSET ``"<user> <id>"`` -> dead_at, one bucket: every dead letter, newest last."""
        return f"{self.prefix}:{{b:{bucket}}}:dlq"

    def trace(self, user: str, msg_id: str) -> str:
        """LIST of the trail events (JSON) of one user's message, capped, expiring.
        Per (user, id): one user's events can never crowd out another's. In the
        trail bucket of the id (:meth:`trace_bucket`), beside :meth:`trace_users`,
        so a pod writes every trail of a bucket in one script call."""
        return self.trace_keys(user, msg_id)[1]

    def trace_users(self, msg_id: str) -> str:
        """SET of the users with a trail of this id (``wsctl trace ID`` without --user)."""
        return _trace_users(self.trace_bucket(msg_id), _enc(msg_id))

    def trace_keys(self, user: str, msg_id: str) -> tuple[str, str, str]:
        """:meth:`trace_bucket`, :meth:`trace` and :meth:`trace_users` at once
        (the id's bucket and encoding computed once: this runs per trail written)."""
        bucket, enc = self.trace_bucket(msg_id), _enc(msg_id)
        return bucket, f"{bucket}:trace:{_enc(user)}:{enc}", _trace_users(bucket, enc)

    def trace_bucket(self, msg_id: str) -> str:
        """The key prefix (and hash slot, ``{tr:<n>}``) of the trails of ``msg_id``."""
        return f"{self.prefix}:{{tr:{bucket_of(msg_id)}}}"

    @staticmethod
    def quarantined(key: str) -> str:
        """Where a corrupt record is moved (same hash slot, kept a week)."""
        return f"{key}:quarantined"


def _trace_users(bucket: str, enc_id: str) -> str:
    return f"{bucket}:traceusers:{enc_id}"


def member(a: str, b: str | int) -> str:
    """``"<a> <b>"`` with ``a`` percent-encoded (never contains a space)."""
    return f"{_enc(a)} {b}"


def split_member(value: str) -> tuple[str, str]:
    """Inverse of :func:`member`: ``(a, b)`` with ``a`` decoded."""
    from urllib.parse import unquote

    a, _, b = value.partition(" ")
    return unquote(a), b
