"""ClusterTarget: a :class:`~wsctl.target.Target` that needs no pod.

Reads presence, pods, message states and dead letters straight from Redis
(``WSNODE_REDIS_URL``; a pod whose admin port does not answer is listed
``unreachable``, see :mod:`wsnode.podprobe`), and sends and drains through RabbitMQ
(``WSNODE_AMQP_URL``) with the same :class:`~wsnode.sender.Sender` the pods
use: a message is stored first when it needs an ACK, then published once per
pod that holds the user. Broadcasts, topic publishes and sends to many users
go out as the pods' own do (:mod:`wsnode.fanout`, :mod:`wsnode.sendmany`).
Backend errors are translated here, at the boundary.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import cast

from wsctl import documents as doc
from wsctl.errors import ApiError, CtlError, NotFound, Unreachable
from wsnode import podprobe
from wsnode.backends import build_backends
from wsnode.bus import Bus, Unroutable
from wsnode.errors import BackendError, BackendUnavailable, SendError
from wsnode.errors import NotFound as NodeNotFound
from wsnode.fanout import Fanout
from wsnode.ids import MsgId, PodId, UserId
from wsnode.metrics import Metrics
from wsnode.protocol import Envelope
from wsnode.sender import Sender
from wsnode.sendmany import ManySender
from wsnode.settings import NodeSettings
from wsnode.topics import TopicInfo, TopicRegistry
from wsnode.trace import TracePolicy
from wsnode.urls import redact

NO_BUS = ("WSNODE_AMQP_URL is not set: sending and draining need the bus "
          "(or pass --node http://HOST:9765 to go through one pod)")


@contextlib.asynccontextmanager
async def _translated(where: str) -> AsyncIterator[None]:
    try:
        yield
    except BackendUnavailable as exc:
        raise Unreachable(f"cannot reach the cluster ({where}): {exc}",
                          "check WSNODE_REDIS_URL / WSNODE_AMQP_URL, or pass --node") from exc
    except BackendError as exc:
        raise CtlError(f"the cluster refused {where}: {exc}") from exc
    except SendError as exc:
        raise ApiError(str(exc), status=400, code="bad_request") from exc
    except NodeNotFound as exc:
        raise NotFound(str(exc)) from exc


class ClusterTarget:
    """The whole cluster, through Redis and RabbitMQ."""

    def __init__(self, settings: NodeSettings) -> None:
        assert settings.redis_url is not None
        self._settings = settings
        # The pods' own factory: a send from here is stored, scheduled and
        # routed exactly as one from a pod (no pod's memory is involved).
        self._backends = build_backends(settings, Metrics(), tool=True)
        b = self._backends
        self._presence, self._acks, self._tracer = b.presence, b.acks, b.tracer
        self._bus: Bus | None = b.bus if settings.amqp_url is not None else None
        ttl_ms = int(settings.trace_ttl * 1000)
        self._sender = Sender(presence=b.presence, bus=b.bus, acks=b.acks, metrics=Metrics(),
                              shared_bus=b.shared_bus, tracer=b.tracer,
                              trace_policy=TracePolicy.parse(settings.trace, ttl_ms))
        self._topics: TopicRegistry | None = b.topics
        self._fanout = Fanout(self._sender, b.topics)
        self._many = ManySender(self._sender, settings.max_users_per_send)

    @property
    def name(self) -> str:
        return redact(self._settings.redis_url or "")

    async def aclose(self) -> None:
        await self._backends.close()

    def _need_bus(self) -> Bus:
        if self._bus is None:
            raise CtlError(NO_BUS)
        return self._bus

    async def send(self, user: str, envelope: Envelope, *,
                   trace: bool = False) -> doc.SendReport:
        self._need_bus()
        async with _translated("send"):
            report = await self._sender.send_to_user(UserId(user), envelope, trace=trace)
        return cast(doc.SendReport, report.to_json())

    async def send_many(self, users: list[str], envelope: Envelope) -> doc.ManySendReport:
        self._need_bus()
        async with _translated("send"):
            report = await self._many.send_to_users(users, envelope, on_behalf_of=None)
        return cast(doc.ManySendReport, report.to_json())

    async def broadcast(self, envelope: Envelope) -> doc.BroadcastReport:
        self._need_bus()
        async with _translated("broadcast"):
            report = await self._fanout.broadcast(envelope, on_behalf_of=None)
        return cast(doc.BroadcastReport, report.to_json())

    async def publish(self, topic: str, envelope: Envelope) -> doc.PublishReport:
        self._need_bus()
        async with _translated("publish"):
            report = await self._fanout.publish(topic, envelope, on_behalf_of=None)
        return cast(doc.PublishReport, report.to_json())

    async def topics(self) -> doc.TopicList:
        async with _translated("topics"):
            infos = await self._registry().topics()
        return cast(doc.TopicList, {"topics": [t.summary() for t in infos]})

    async def topic(self, topic: str) -> doc.TopicDetail:
        async with _translated("topics"):
            info = TopicInfo(topic, await self._registry().pods_of(topic))
        return cast(doc.TopicDetail, info.to_json())

    def _registry(self) -> TopicRegistry:
        assert self._topics is not None  # Redis backends always have one
        return self._topics

    async def trace(self, msg_id: str, user: str | None = None) -> doc.Trail:
        async with _translated("trace"):
            events = await self._tracer.trail(MsgId(msg_id), UserId(user) if user else None)
        if not events:
            raise NotFound(f"no trail for message {msg_id!r}")
        return cast(doc.Trail, {"id": msg_id, "events": events})

    async def message_status(self, user: str, msg_id: str) -> doc.MessageStatus:
        async with _translated("message status"):
            state = await self._acks.status(UserId(user), MsgId(msg_id))
        if state is None:
            raise NotFound(f"no message {msg_id!r} for user {user!r}")
        return {"user": user, "id": msg_id, "state": state.value}

    async def presence(self, pod: str | None = None) -> doc.PresenceList:
        async with _translated("presence"):
            users = await self._presence.users(PodId(pod) if pod else None)
        return cast(doc.PresenceList, {"users": [u.to_json() for u in users]})

    async def user_presence(self, user: str) -> doc.UserPresence:
        async with _translated("presence"):
            conns = await self._presence.connections(UserId(user))
        return cast(doc.UserPresence,
                    {"user": user, "connections": [c.to_json() for c in conns]})

    async def pods(self) -> doc.PodList:
        async with _translated("pods"):
            pods = await self._presence.pods()
        # A lease outlives a SIGKILLed pod by up to 3 heartbeats: ask each pod.
        pods = await podprobe.probe(pods)
        return cast(doc.PodList, {"pods": [p.to_json() for p in pods]})

    async def drain(self, pod: str, over: float, then_exit: bool = False) -> doc.DrainStarted:
        bus = self._need_bus()
        async with _translated("drain"):
            if all(p.pod != pod for p in await self._presence.pods()):
                raise NotFound(f"pod {pod} not found")
            try:
                await bus.control(PodId(pod), {"cmd": "drain", "over": over, "exit": then_exit})
            except Unroutable as exc:
                raise NotFound(f"pod {pod} has no queue: {exc}") from exc
        return {"pod": pod, "state": "draining", "overSeconds": over, "exit": then_exit}

    async def dead_letters(self, user: str | None = None,
                           limit: int = 100) -> doc.DeadLetterList:
        async with _translated("dlq"):
            rows = await self._acks.dead_letters(UserId(user) if user else None, limit)
        return cast(doc.DeadLetterList, {"messages": [d.to_json() for d in rows]})

    async def retry_dead(self, msg_id: str, user: str | None = None) -> doc.RetryResult:
        self._need_bus()
        async with _translated("dlq retry"):
            reports = await self._sender.retry_dead(MsgId(msg_id),
                                                    UserId(user) if user else None)
        return cast(doc.RetryResult, {"retried": [r.to_json() for r in reports]})
