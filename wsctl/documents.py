"""The JSON documents of the pod's admin API (DESIGN §6), as ``TypedDict``s.

Every :class:`~wsctl.target.Target` returns these documents, whatever it talks
to, and ``wsctl ... --json`` prints them unchanged (``send`` adds ``id`` and,
with ``--wait``, ``state``). Times are epoch milliseconds. Keys a pod adds later
pass through untouched: these types name what wsctl reads, not all there is.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class SendReport(TypedDict):
    """``POST /v1/send``: what happened to one message."""

    user: str
    local: int  # connections reached on the pod that took the call
    pods: list[str]  # other pods it was published to
    stored: bool  # stored for ACK (redelivered until acked or dead-lettered)
    seq: int | None
    duplicate: NotRequired[bool]  # an ACK-required id already stored: not sent again
    failedPods: NotRequired[list[str]]
    id: NotRequired[str]  # added by wsctl: the message id, when it has one
    state: NotRequired[str]  # added by ``wsctl send --wait``: pending, acked or dead


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


class PodList(TypedDict):
    """``GET /v1/pods``."""

    pods: list[PodSummary]


class DrainStarted(TypedDict):
    """``POST /v1/drain`` (202)."""

    pod: str
    state: str
    overSeconds: float
    drained: NotRequired[bool]  # added by ``wsctl drain --wait``


class DeadLetter(TypedDict):
    user: str
    id: str
    seq: int
    type: str
    storedAt: int
    attempts: int
    reason: str
    deadAt: int
    envelope: dict[str, Any]


class DeadLetterList(TypedDict):
    """``GET /v1/dlq``."""

    messages: list[DeadLetter]


class RetryResult(TypedDict):
    """``POST /v1/dlq/retry``: one send report per dead letter sent again."""

    retried: list[SendReport]


class TraceEvent(TypedDict):
    at: int  # epoch ms
    event: str  # stored, routed, delivered, replayed, resent, acked, dead, revived
    user: str
    pod: str | None  # None: sent by wsctl (no pod)


class Trail(TypedDict):
    """``GET /v1/trace/{id}``: a message's events in time order."""

    id: str
    events: list[TraceEvent]
