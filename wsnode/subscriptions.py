"""This pod's subscriptions: which of its connections are in which topic, kept
true in the cluster's :class:`~wsnode.topics.TopicRegistry`.

Contract:

* ``subscribe``, ``unsubscribe`` and ``drop`` (a connection closed) change the
  pod's own sets at once, so a publish on this pod sees the change at once;
  then they write the topics' new counts to the registry and return once that
  write is done: a publish from any pod that starts after ``subscribe``
  returned reaches the connection (unless the write failed, below).
* Writes are serialized, one at a time, each carrying every topic changed
  since the last, so the registry never sees them out of order.
* A write that fails (the store is unreachable) is no error for the caller:
  the subscription holds on this pod, and :meth:`step` (the pod's ``topics``
  loop, every heartbeat) announces the whole membership again once the store
  answers. Meanwhile publishes from other pods miss this pod's subscribers.
* :meth:`step` also announces everything when the pod's presence life
  changed (its lease lapsed and it joined again: the registry no longer
  counts the old life), and reaps the lives of dead pods.
* Client frames (:meth:`on_frame`): ``subscribe`` and ``unsubscribe`` are
  refused (``forbidden``) unless the app registered an authorizer;
  ``subscribe`` also needs the authorizer to allow that connection that
  topic. ``unsubscribe`` needs no permission beyond an authorizer existing:
  leaving is always harmless. Each is answered with a frame of its own type,
  ``{"topic"}`` (with the frame's ``id``), once the registry has it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable

from wsnode.errors import BackendUnavailable, SubscribeError
from wsnode.hub import Conn, Hub, deliver_each
from wsnode.ids import ConnId, PodId
from wsnode.metrics import Metrics
from wsnode.outage import LogThrottle
from wsnode.protocol import Envelope, ErrorCode, Reserved, control_frame, topic_of
from wsnode.topics import TopicRegistry, claimed_topics, topic_problem

log = logging.getLogger("wsnode.topics")

Authorizer = Callable[[Conn, str], Awaitable[bool] | bool]
"""``(conn, topic) -> bool``: may this connection subscribe to this topic."""


class Subscriptions:
    """The topics of one pod's connections (see the module contract)."""

    def __init__(self, pod: PodId, hub: Hub, registry: TopicRegistry | None, metrics: Metrics, *,
                 max_per_conn: int) -> None:
        self._pod = pod
        self._hub = hub
        self._registry = registry
        self._metrics = metrics
        self.max_per_conn = max_per_conn
        self.authorizer: Authorizer | None = None
        self._by_topic: dict[str, dict[ConnId, Conn]] = {}
        self._by_conn: dict[ConnId, set[str]] = {}
        self._pairs = 0  # (connection, topic) pairs: the subscriptions gauge, kept cheaply
        self._dirty: set[str] = set()
        self._lock = asyncio.Lock()
        self._announced: int | None = None  # the life last announced in full
        self._stale = False  # a write failed: announce everything again
        self._closed = False
        self._throttle = LogThrottle(log)

    # -- the pod's own view -------------------------------------------------

    def count(self, topic: str) -> int:
        """Connections of this pod subscribed to ``topic``."""
        return len(self._by_topic.get(topic, ()))

    def topics_of(self, conn: Conn) -> set[str]:
        return set(self._by_conn.get(conn.id, ()))

    def counts(self) -> dict[str, int]:
        return {topic: len(conns) for topic, conns in self._by_topic.items()}

    def deliver(self, topic: str, frame: bytes, expires_at: int | None) -> tuple[int, int]:
        """Queue ``frame`` on this pod's subscribers of ``topic``: ``(taken, refused)``."""
        conns = self._by_topic.get(topic)
        if not conns:
            return 0, 0
        return deliver_each(tuple(conns.values()), frame, expires_at)

    # -- changes ------------------------------------------------------------

    async def subscribe(self, conn: Conn, topic: str) -> bool:
        """Add ``conn`` to ``topic``; False when it already was (or is closed).
        Raises SubscribeError for a bad name or a connection at its cap."""
        return bool(await self.subscribe_many(conn, [topic]))

    async def subscribe_many(self, conn: Conn, topics: Iterable[str]) -> list[str]:
        """Add ``conn`` to each topic (all or none: the cap is checked first);
        the topics it was not in yet."""
        wanted = list(dict.fromkeys(topics))
        for topic in wanted:
            if (problem := topic_problem(topic)) is not None:
                raise SubscribeError(ErrorCode.BAD_ENVELOPE, f"{problem}: got {topic!r:.140}")
        if self._hub.get(conn.id) is not conn:
            return []  # closed (or not open yet): nothing would ever remove it
        mine = self._by_conn.setdefault(conn.id, set())
        new = [t for t in wanted if t not in mine]
        if len(mine) + len(new) > self.max_per_conn:
            raise SubscribeError(ErrorCode.QUOTA_EXCEEDED, f"a connection may subscribe to "
                                 f"{self.max_per_conn} topics (MAX_SUBSCRIPTIONS_PER_CONNECTION)")
        for topic in new:
            mine.add(topic)
            self._by_topic.setdefault(topic, {})[conn.id] = conn
        self._pairs += len(new)
        await self._changed(new)
        return new

    async def unsubscribe(self, conn: Conn, topic: str) -> bool:
        """Take ``conn`` out of ``topic``; False when it was not in it."""
        mine = self._by_conn.get(conn.id)
        if mine is None or topic not in mine:
            return False
        mine.discard(topic)
        if not mine:
            del self._by_conn[conn.id]
        self._remove(conn.id, topic)
        self._pairs -= 1
        await self._changed([topic])
        return True

    async def subscribe_claimed(self, conn: Conn) -> None:
        """At connect: the topics of the token's ``topics`` claim (checked by the
        authenticator, so it names at most the cap of valid topics)."""
        topics = claimed_topics(conn.claims, self.max_per_conn)
        if topics:
            await self.subscribe_many(conn, topics)

    async def drop(self, conn: Conn) -> None:
        """A connection closed: out of every topic."""
        mine = self._by_conn.pop(conn.id, None)
        if mine:
            for topic in mine:
                self._remove(conn.id, topic)
            self._pairs -= len(mine)
            await self._changed(mine)

    def _remove(self, conn_id: ConnId, topic: str) -> None:
        conns = self._by_topic.get(topic)
        if conns is not None:
            conns.pop(conn_id, None)
            if not conns:
                del self._by_topic[topic]

    # -- client frames --------------------------------------------------------

    async def on_frame(self, conn: Conn, env: Envelope) -> None:
        """A client's ``subscribe`` or ``unsubscribe`` (see the module contract).
        Raises ProtocolError or SubscribeError; the caller answers with an error."""
        topic = topic_of(env)
        if self.authorizer is None:
            raise SubscribeError(ErrorCode.FORBIDDEN, "this server does not let clients "
                                 "choose topics (no authorize_subscribe registered)")
        if env.type == Reserved.SUBSCRIBE:
            if (problem := topic_problem(topic)) is not None:
                raise SubscribeError(ErrorCode.BAD_ENVELOPE, problem)
            if not await self._allowed(conn, topic):
                raise SubscribeError(ErrorCode.FORBIDDEN, f"not allowed to subscribe to "
                                     f"{topic!r}")
            await self.subscribe(conn, topic)
        else:
            await self.unsubscribe(conn, topic)
        conn.push(control_frame(Reserved(env.type), {"topic": topic}, env.id))

    async def _allowed(self, conn: Conn, topic: str) -> bool:
        assert self.authorizer is not None
        try:
            verdict = self.authorizer(conn, topic)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception as exc:
            log.exception("authorize_subscribe failed", extra={"conn": conn.id,
                                                               "user": conn.user})
            raise SubscribeError(ErrorCode.HANDLER_ERROR, "authorize_subscribe failed: "
                                 f"{type(exc).__name__}") from exc
        return verdict is True

    # -- the registry ---------------------------------------------------------

    async def _changed(self, topics: Iterable[str]) -> None:
        self._dirty.update(topics)
        self._metrics.topics.set(len(self._by_topic))
        self._metrics.subscriptions.set(self._pairs)
        try:
            await self._sync()
        except BackendUnavailable:
            self._metrics.backend_errors.labels("topics").inc()
            self._throttle.warn("write", "topic membership not written (the store is "
                                "unreachable): announced again when it answers")

    async def _sync(self) -> None:
        """Write what changed, or everything when the life changed or a write was
        lost. One at a time: a caller that waited finds its topics written by the
        write before it, or writes them itself."""
        registry = self._registry
        if registry is None:  # this pod alone (no registry): nothing to tell
            return
        async with self._lock:
            if self._closed:
                return
            life = registry.life(self._pod)
            full = self._stale or life != self._announced
            if not full and not self._dirty:
                return
            dirty, self._dirty = self._dirty, set()
            try:
                if full:
                    if await registry.announce(self._pod, self.counts()):
                        self._announced, self._stale = life, False
                elif not await registry.write(self._pod, {t: self.count(t) for t in dirty}):
                    self._stale = True
            except BackendUnavailable:
                self._stale = True
                raise

    async def step(self) -> None:
        """The ``topics`` loop: announce again if needed, then reap dead lives."""
        try:
            await self._sync()
            if self._registry is not None:
                await self._registry.reap()
        except BackendUnavailable:
            self._metrics.backend_errors.labels("topics").inc()
            raise

    async def leave(self) -> None:
        """The pod stops: its membership goes from the registry; no more writes."""
        async with self._lock:
            self._closed = True
            if self._registry is not None:
                await self._registry.leave(self._pod)
