"""The JSON documents of the pod's admin API (DESIGN §6), as ``TypedDict``s.

Every :class:`~wsctl.target.Target` returns these documents, whatever it talks
to, and ``wsctl ... --json`` prints them unchanged (``send`` adds ``id`` and,
with ``--wait``, ``state``; ``drain --wait`` adds ``drained``). Times are epoch
milliseconds.

The types are closed: they name every key there is, no more. A ``NotRequired``
key is one that only some answers carry. tests/e2e/test_documents.py validates
real answers of pods and of ``wsctl --json`` (both targets) against them
strictly, so a change of shape in the pod must be made here too.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired

# typing_extensions, not typing: pydantic (which the tests validate these with)
# only reads typing.TypedDict from Python 3.12 on.
from typing_extensions import TypedDict


class SendReport(TypedDict):
    """``POST /v1/send``: what happened to one message."""

    user: str
    local: int  # connections reached on the pod that took the call
    pods: list[str]  # other pods it was published to
    stored: bool  # stored for ACK (redelivered until acked or dead-lettered)
    seq: int | None
    duplicate: bool  # an ACK-required id already stored: not stored again (routed again
    #                  while it is still pending)
    failedPods: list[str]  # pods that hold the user but could not be published to
    evicted: list[str]  # the user's oldest pending ids this store dead-lettered (overflow)
    id: NotRequired[str]  # added by wsctl: the message id, when it has one
    state: NotRequired[str]  # added by ``wsctl send --wait``: pending, acked or dead


class ManySendReport(TypedDict):
    """``POST /v1/send`` with ``users``: each user's outcome, as lists of users."""

    users: int  # distinct users sent to
    local: int  # connections reached on the pod that took the call
    pods: list[str]  # other pods published to (one message each)
    failedPods: list[str]
    reached: list[str]  # a connection took it, or a pod holding them was published to
    offline: list[str]  # the others
    stored: NotRequired[list[str]]  # ACK-required only: stored now
    duplicate: NotRequired[list[str]]  # the id was pending for them: routed again
    settled: NotRequired[list[str]]  # the id was acked or dead for them: not sent
    refused: NotRequired[dict[str, str]]  # user -> why (a relayed limit)
    evicted: NotRequired[dict[str, list[str]]]  # user -> ids dead-lettered (overflow)
    id: NotRequired[str]  # added by wsctl: the message id, when it has one


class BroadcastReport(TypedDict):
    """``POST /v1/broadcast``."""

    local: int  # connections reached on the pod that took the call
    pods: list[str]  # every other live pod, one message each
    failedPods: list[str]


class PublishReport(TypedDict):
    """``POST /v1/publish``."""

    topic: str
    subscribers: int  # connections subscribed when it was sent (0: nobody got it)
    local: int
    pods: list[str]  # the other pods with subscribers, one message each
    failedPods: list[str]


class TopicSummary(TypedDict):
    topic: str
    connections: int
    pods: list[str]


class TopicList(TypedDict):
    """``GET /v1/topics``: every topic with a subscriber."""

    topics: list[TopicSummary]


class TopicPod(TypedDict):
    pod: str
    connections: int


class TopicDetail(TypedDict):
    """``GET /v1/topics/{topic}`` (no subscriber: ``connections`` 0, no pod)."""

    topic: str
    connections: int
    pods: list[TopicPod]


class MessageStatus(TypedDict):
    """``GET /v1/messages/{user}/{id}``."""

    user: str
    id: str
    state: str  # pending, acked or dead


class UserSummary(TypedDict):
    user: str
    connections: int
    pods: list[str]


class PresenceList(TypedDict):
    """``GET /v1/presence``."""

    users: list[UserSummary]


class Connection(TypedDict):
    connId: str
    pod: str
    since: int


class UserPresence(TypedDict):
    """``GET /v1/presence/{user}``."""

    user: str
    connections: list[Connection]


class PodSummary(TypedDict):
    pod: str
    state: str  # active or draining
    connections: int
    users: int
    lastHeartbeat: int
    admin: str | None  # the pod's admin URL as it advertises it (None: not known)


class PodList(TypedDict):
    """``GET /v1/pods``."""

    pods: list[PodSummary]


class DrainStarted(TypedDict):
    """``POST /v1/drain`` (202)."""

    pod: str
    state: str
    overSeconds: float
    exit: bool  # the pod's process exits once drained
    drained: NotRequired[bool]  # added by ``wsctl drain --wait``


class DeadLetter(TypedDict):
    user: str
    id: str
    seq: int
    type: str
    storedAt: int
    expiresAt: int  # when it would have expired (ack_ttl or the envelope's expiresAt)
    attempts: int
    nextDue: int  # when the next resend was due when it died
    reason: str  # expired, ttl, max_attempts or overflow
    deadAt: int
    envelope: dict[str, Any]  # the wire frame, seq included


class DeadLetterList(TypedDict):
    """``GET /v1/dlq``."""

    messages: list[DeadLetter]


class RetryResult(TypedDict):
    """``POST /v1/dlq/retry``: one send report per dead letter sent again."""

    retried: list[SendReport]


class _Event(TypedDict):
    at: int  # epoch ms, by the clock of the pod that recorded it
    user: str
    pod: str | None  # None: recorded by wsctl (no pod)


class StoreEvent(_Event):
    """Stored (or a duplicate of a stored id), or revived from the DLQ, as ``seq``."""

    event: Literal["stored", "duplicate", "revived"]
    seq: int


class RoutedEvent(_Event):
    """Routed when sent: connections reached here, pods published to, pods failed."""

    event: Literal["routed"]
    local: int
    pods: list[str]
    failed: list[str]


class ResentEvent(_Event):
    """Resent by the pod holding the user, as delivery number ``attempt``."""

    event: Literal["resent"]
    local: int
    pods: list[str]
    failed: list[str]
    attempt: int


class DeliveredEvent(_Event):
    """Delivered by a pod that took it from the bus."""

    event: Literal["delivered"]
    conns: int
    hops: int  # times it was passed on after its first route


class AckedEvent(_Event):
    event: Literal["acked"]
    conn: str


class ReplayedEvent(_Event):
    """Replayed to a connection on connect or ``restore``."""

    event: Literal["replayed"]
    conn: str
    seq: int


class DeadEvent(_Event):
    event: Literal["dead"]
    reason: str


TraceEvent = (StoreEvent | RoutedEvent | ResentEvent | DeliveredEvent | AckedEvent
              | ReplayedEvent | DeadEvent)


class Trail(TypedDict):
    """``GET /v1/trace/{id}``: a message's events in time order."""

    id: str
    events: list[TraceEvent]
