"""What wsctl can ask of a cluster, and how the command line picks who answers.

A :class:`Target` is one way to reach wsnode: :class:`~wsctl.target_node.NodeTarget`
talks to one pod over its admin HTTP API; a ``ClusterTarget`` (reading Redis and
publishing through RabbitMQ, no pod needed) can be added beside it and chosen
in :func:`resolve_target`. Commands only see this protocol, so they work the
same over either.

Contract of every method:

* returns the admin API's document for the call (:mod:`wsctl.documents`);
* raises :class:`~wsctl.errors.NotFound` when the pod, message or dead letter
  does not exist, :class:`~wsctl.errors.Unreachable` when the target cannot be
  reached in time, :class:`~wsctl.errors.ApiError` for any refusal, and nothing
  else (third-party errors are translated at the boundary);
* a target is used inside one running event loop and released with ``aclose()``
  (``async with contextlib.aclosing(target)``), which is idempotent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit

from wsctl import documents as doc
from wsctl.errors import CtlError, UsageProblem
from wsnode.protocol import Envelope

NO_TARGET = ("no target: pass --node http://HOST:9765 to talk to one pod, or set "
             "WSNODE_REDIS_URL and WSNODE_AMQP_URL to reach a cluster")


class Target(Protocol):
    """The operations of wsctl (see the module contract)."""

    @property
    def name(self) -> str:
        """Where the target points, for messages (never contains a secret)."""
        ...

    async def send(self, user: str, envelope: Envelope, *,
                   trace: bool = False) -> doc.SendReport:
        """Send to every connection of ``user`` (stored first if ACK-required);
        ``trace`` asks for a trail of an at-most-once message too."""
        ...

    async def send_many(self, users: list[str], envelope: Envelope) -> doc.ManySendReport:
        """Send to every connection of each of ``users`` (distinct, at most the pods'
        MAX_USERS_PER_SEND): one presence read, one message per pod."""
        ...

    async def broadcast(self, envelope: Envelope) -> doc.BroadcastReport:
        """Send to every connection of every pod (at most once)."""
        ...

    async def publish(self, topic: str, envelope: Envelope) -> doc.PublishReport:
        """Send to every connection subscribed to ``topic`` (at most once)."""
        ...

    async def topics(self) -> doc.TopicList:
        """Every topic with a subscriber on a live pod."""
        ...

    async def topic(self, topic: str) -> doc.TopicDetail:
        """Who is subscribed to ``topic``: pods and connections (none: empty)."""
        ...

    async def trace(self, msg_id: str, user: str | None = None) -> doc.Trail:
        """The trail of a message (of ``user`` when given); NotFound when none."""
        ...

    async def message_status(self, user: str, msg_id: str) -> doc.MessageStatus:
        """State of an ACK-required message: pending, acked or dead."""
        ...

    async def presence(self, pod: str | None = None) -> doc.PresenceList:
        """Users online, on every pod or on ``pod`` only."""
        ...

    async def user_presence(self, user: str) -> doc.UserPresence:
        """Connections of one user (an empty list when offline, never NotFound)."""
        ...

    async def pods(self) -> doc.PodList:
        """Live pods (a pod whose heartbeat lapsed is not listed)."""
        ...

    async def drain(self, pod: str, over: float, then_exit: bool = False) -> doc.DrainStarted:
        """Start draining ``pod``, its reconnects spread over ``over`` seconds."""
        ...

    async def dead_letters(self, user: str | None = None,
                           limit: int = 100) -> doc.DeadLetterList:
        """Dead-lettered messages, of one user or of all."""
        ...

    async def retry_dead(self, msg_id: str, user: str | None = None) -> doc.RetryResult:
        """Send dead letters with this id again; NotFound when there is none."""
        ...

    async def aclose(self) -> None:
        """Release connections; idempotent."""
        ...


def check_node_url(url: str) -> str:
    """``url`` without a trailing slash, or UsageProblem if it is not http(s)://HOST[:PORT]."""
    parts = urlsplit(url.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise UsageProblem(f"--node {url!r} is not an admin URL",
                           "use the pod's admin address, e.g. --node http://127.0.0.1:9765")
    if parts.username is not None or parts.password is not None:
        raise UsageProblem("--node must not contain credentials: pass the key as WSNODE_API_KEY")
    try:
        parts.port  # noqa: B018 (a bad port raises ValueError only when read)
    except ValueError as exc:
        raise UsageProblem(f"--node {url!r}: {exc}") from None
    return url.strip().rstrip("/")


def resolve_target(node: str | None, *, api_key: str | None, timeout: float,
                   environ: Mapping[str, str] | None = None) -> Target:
    """The target the command line asks for.

    ``--node`` wins: one pod over its admin API. Without it, ``WSNODE_REDIS_URL``
    (and ``WSNODE_AMQP_URL`` for sending and draining; from the environment or
    ``.env``) selects the cluster itself, no pod needed. Neither: exit 1 with a hint.
    """
    env = os.environ if environ is None else environ
    if node:
        from wsctl.target_node import NodeTarget

        return NodeTarget(check_node_url(node), api_key=api_key, timeout=timeout)
    from wsnode.errors import SettingsError
    from wsnode.settings import load_settings

    try:
        settings = load_settings(redis_url=env.get("WSNODE_REDIS_URL"),
                                 amqp_url=env.get("WSNODE_AMQP_URL"))
    except SettingsError as exc:
        raise UsageProblem(str(exc)) from None
    if settings.redis_url:
        from wsctl.target_cluster import ClusterTarget

        return ClusterTarget(settings)
    raise CtlError(NO_TARGET)
