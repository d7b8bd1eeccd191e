"""The node: one pod, and the only module that knows every concept.

Lifecycle (an explicit state machine; every transition is idempotent)::

    NEW --start()--> ACTIVE --drain()--> DRAINING --close()--> STOPPING --> STOPPED
                       └──────────────close()───────────────────┘

``async with Node(settings) as node:`` starts the WebSocket and admin servers
and the background loops (presence heartbeat and reaping, resend timers, the
expiry sweeper), all owned by the node and stopped by ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Callable, Coroutine
from dataclasses import replace
from enum import StrEnum
from types import TracebackType
from typing import Any

from aiohttp import web
from websockets.asyncio.server import Server, serve

from wsnode.acks import AckStore, StoredMessage
from wsnode.admin import AdminApi
from wsnode.auth import Authenticator
from wsnode.backends import Backends, build_backends
from wsnode.bus import Bus, Delivery
from wsnode.clock import Clock, SystemClock
from wsnode.errors import BackendUnavailable, NotFound
from wsnode.gateway import Gateway
from wsnode.hub import Conn, Hub
from wsnode.ids import MsgId, PodId, UserId
from wsnode.metrics import Metrics
from wsnode.presence import PodState, Presence
from wsnode.protocol import CloseCode, Envelope, Reserved, control_frame
from wsnode.resend import Resender
from wsnode.router import H, Router
from wsnode.sender import Sender, SendReport
from wsnode.settings import NodeSettings, load_settings
from wsnode.trace import TracePolicy

log = logging.getLogger("wsnode.node")

_SWEEP_INTERVAL = 1.0
# Pending messages per user looked at after a re-announce (the oldest ones; a
# user with more gets the rest on their next replay).
_RESUME_LIMIT = 1000


class NodeState(StrEnum):
    NEW = "new"
    ACTIVE = "active"
    DRAINING = "draining"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Node:
    """A pod: hub, router, gateway, admin API and backends (DESIGN §4)."""

    def __init__(
        self,
        settings: NodeSettings | None = None,
        *,
        insecure: bool = False,
        backends: Backends | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.pod = PodId(self.settings.pod_id)
        self.clock = clock or SystemClock()
        self.metrics = Metrics()
        self.router = Router()
        self.hub = Hub()
        self.auth = Authenticator(self.settings, insecure=insecure)
        self.backends = backends if backends is not None else build_backends(
            self.settings, self.metrics, self.clock)
        self.trace_policy = TracePolicy.parse(self.settings.trace,
                                              int(self.settings.trace_ttl * 1000))
        self.tracer = self.backends.tracer
        self.resender = Resender(self.acks, self.metrics, resend=self._redeliver,
                                 reroute=self._reroute, holds=self.hub.has,
                                 busy=self.hub.backed_up, clock=self.clock,
                                 on_dead=lambda d: self._trace_ack(
                                     d.message.id, d.message.user, "dead",
                                     reason=d.reason.value))
        self.sender = Sender(presence=self.presence, bus=self.bus, acks=self.acks,
                             metrics=self.metrics, pod=self.pod, local=self, clock=self.clock,
                             on_unrouted=self.resender.track_unrouted,
                             remote=self.backends.remote, tracer=self.tracer,
                             trace_policy=self.trace_policy)
        self.gateway = Gateway(
            self.settings, pod=self.pod, auth=self.auth, hub=self.hub, router=self.router,
            limiter=self.backends.limiter, acks=self.acks, resender=self.resender,
            metrics=self.metrics, clock=self.clock, accepting=self._accepting,
            on_open=self._conn_opened, on_close=self._conn_closed,
            trace=self._trace_ack,
        )
        self.state = NodeState.NEW
        self._ws_server: Server | None = None
        self._admin: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._drain_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._presence_ok = True
        self._presence_dirty = False

    # -- public API ----------------------------------------------------------

    @property
    def presence(self) -> Presence:
        return self.backends.presence

    @property
    def acks(self) -> AckStore:
        return self.backends.acks

    @property
    def bus(self) -> Bus:
        return self.backends.bus

    def on(self, msg_type: str) -> Callable[[H], H]:
        """Register the handler of a client message type (see :class:`Router`)."""
        return self.router.on(msg_type)

    async def send_to_user(self, user: str, env: Envelope) -> SendReport:
        """Deliver ``env`` to every connection of ``user`` on every pod."""
        return await self.sender.send_to_user(UserId(user), env)

    @property
    def port(self) -> int:
        """The bound WebSocket port (useful with ``port=0``)."""
        assert self._ws_server is not None, "node not started"
        return int(next(iter(self._ws_server.sockets)).getsockname()[1])

    @property
    def admin_port(self) -> int:
        assert self._admin is not None, "node not started"
        return int(self._admin.addresses[0][1])

    @property
    def admin_url(self) -> str:
        """Where other tools reach this pod's admin port: ``ADMIN_ADVERTISE``, or
        the bound address (the hostname when bound to every interface)."""
        if self.settings.admin_advertise:
            return self.settings.admin_advertise.rstrip("/")
        host = self.settings.admin_host or self.settings.host
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 (a comparison, not a bind)
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.admin_port}"

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether this pod should receive new connections, and why not."""
        checks: dict[str, Any] = {
            "accepting": self.state is NodeState.ACTIVE,
            "presence": self._presence_ok,
            "bus": self.bus.ready,
        }
        ready = all(checks.values())
        self.metrics.ready.set(1 if ready else 0)
        return ready, checks

    async def refresh_gauges(self) -> None:
        self.metrics.connections.set(len(self.hub))
        # The RabbitMQ bus counts these itself; the in-process bus has none.
        self.metrics.bus_reconnects.set(getattr(self.bus, "reconnects", 0))
        rtt = getattr(self.bus, "last_canary_rtt", None)
        if rtt is not None:
            self.metrics.canary_rtt.set(rtt)
        self.metrics.users.set(self.hub.user_count)
        with contextlib.suppress(BackendUnavailable):
            stats = await self.acks.stats()
            self.metrics.acks_pending.set(stats.pending)
            self.metrics.acks_dead.set(stats.dead)
        self.readiness()

    async def retry_dead(self, msg_id: MsgId, user: UserId | None = None) -> list[SendReport]:
        """Send dead letters with this id again (see :meth:`Sender.retry_dead`)."""
        return await self.sender.retry_dead(msg_id, user)

    # -- delivery ------------------------------------------------------------

    def deliver_local(self, delivery: Delivery, *, from_bus: bool = False) -> int:
        """Queue a delivery on this pod's connections of its user."""
        count, refused = self.hub.deliver(delivery.user, delivery.frame, delivery.ack_id)
        if refused and delivery.ack_id is None:
            self.metrics.count_dropped("conn_closing", refused)
        if count:
            self.metrics.count_out(delivery.type, count)
            if from_bus:
                self.metrics.bus_delivered.inc(count)
            if delivery.ack_id is not None:
                self.resender.track(delivery.user, delivery.ack_id, delivery.due)
            if delivery.trace_id is not None and from_bus:
                # Local deliveries are in the sender's "routed" event (local=N).
                self.tracer.record(delivery.trace_id, delivery.user, "delivered", self.pod,
                                   conns=count, hops=delivery.hops)
        return count

    def _trace_ack(self, msg_id: MsgId, user: UserId, event: str, **fields: Any) -> None:
        """A trail event of an ACK-required message, when those are traced."""
        if self.trace_policy.ack:
            self.tracer.record(msg_id, user, event, self.pod, **fields)

    async def _redeliver(self, msg: StoredMessage) -> None:
        await self.sender.redeliver(msg)

    async def _reroute(self, delivery: Delivery) -> None:
        await self.sender.route(delivery, SendReport(delivery.user),
                                local=self.pod not in delivery.reached)

    async def _on_deliveries(self, batch: list[Delivery]) -> None:
        for delivery in batch:
            if self.deliver_local(delivery, from_bus=True):
                continue
            # The user left this pod after the sender read presence (or this pod is
            # draining): pass it on once to wherever the user is now.
            if delivery.hops == 0:
                await self._pass_on(delivery, "left_pod")
            elif delivery.ack_id is None:
                self.metrics.count_dropped("left_pod")

    async def _on_stranded(self, batch: list[Delivery]) -> None:
        """Deliveries stranded on a dead pod's queue: route them again."""
        for delivery in batch:
            await self._pass_on(delivery, "pod_died", local=self.pod not in delivery.reached)

    async def _pass_on(self, delivery: Delivery, reason: str, *, local: bool = False) -> None:
        moved = replace(delivery, hops=delivery.hops + 1)
        report = SendReport(delivery.user)
        await self.sender.route(moved, report, local=local)
        if not (report.local or report.pods or report.failed_pods) and delivery.ack_id is None:
            self.metrics.count_dropped(reason)

    async def _on_control(self, command: dict[str, Any]) -> None:
        if command.get("cmd") == "drain":
            over = command.get("over", 0)
            self.start_drain(float(over) if isinstance(over, int | float) else 0.0)
        else:
            log.warning("unknown control command %r", command.get("cmd"))

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Open backends and start serving. If any step fails, what was started
        is stopped again before the error propagates (no half-started pod)."""
        if self.state is not NodeState.NEW:
            return
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        s = self.settings
        # The admin port first: its URL is advertised in presence (wsctl doctor
        # asks each pod's /readyz there).
        runner = web.AppRunner(AdminApi(self).app(), access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, s.admin_host or s.host, s.admin_port).start()
        self._admin = runner
        try:
            await self.presence.join(self.pod, admin=self.admin_url)
        except BackendUnavailable:
            self._presence_ok, self._presence_dirty = False, True
            log.warning("presence store unreachable at start; retrying in the background")
        bus_up = await self._start_bus()
        self._ws_server = await serve(
            self.gateway.handle, s.host, s.port,
            process_request=self.gateway.process_request,
            select_subprotocol=self.gateway.select_subprotocol,
            compression="deflate" if s.compression else None,
            max_size=s.max_message_bytes,
            ping_interval=s.ping_interval,
            ping_timeout=s.ping_timeout or None,
            close_timeout=min(5.0, s.drain_timeout),
            server_header="wsnode",
        )
        self._spawn(self.resender.run())
        self._spawn(self._heartbeat_loop())
        self._spawn(self._sweep_loop())
        if not bus_up:
            self._spawn(self._bus_retry_loop())
        self.state = NodeState.ACTIVE
        log.info("pod %s serving ws://%s:%d/ws (admin :%d, %s mode)", self.pod, s.host,
                 self.port, self.admin_port, "cluster" if s.cluster else "embedded",
                 extra={"pod": self.pod})

    def start_drain(self, over: float) -> asyncio.Task[None]:
        """Begin draining in the background (idempotent); returns the drain task."""
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self.drain(over))
        return self._drain_task

    async def drain_pod(self, pod: PodId, over: float) -> None:
        """Drain ``pod``: this one directly, another through the bus."""
        if pod == self.pod:
            self.start_drain(over)
            return
        from wsnode.bus import Unroutable

        try:
            await self.bus.control(pod, {"cmd": "drain", "over": over})
        except Unroutable as exc:
            raise NotFound(f"pod {pod!r} is not running") from exc

    async def drain(self, over: float = 0.0) -> None:
        """Move every client to another pod: ``reconnect`` then close 1012, spread
        over ``over`` seconds, all within ``drain_timeout``. New handshakes get
        503 from the first moment; the pod stays listed as draining until it stops."""
        if self.state is not NodeState.ACTIVE:
            return
        self.state = NodeState.DRAINING
        self.metrics.draining.set(1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_timeout
        over = max(0.0, min(over, self.settings.drain_timeout * 0.8))
        log.info("draining %d connections over %.1fs", len(self.hub), over,
                 extra={"pod": self.pod})
        with contextlib.suppress(BackendUnavailable):
            await self.presence.heartbeat(self.pod, PodState.DRAINING)
        conns = list(self.hub)
        random.shuffle(conns)
        step = over / len(conns) if conns else 0.0
        start = loop.time()
        closers: list[asyncio.Task[None]] = []
        for i, conn in enumerate(conns):
            wait = start + i * step - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            closers.append(loop.create_task(self._send_away(conn)))
        # A handshake that was past its 503 check when the drain began opens a
        # connection after the snapshot above: send those away too.
        sent = {c.id for c in conns}
        while late := [c for c in self.hub if c.id not in sent and not c.closing]:
            if loop.time() >= deadline:
                break
            sent.update(c.id for c in late)
            closers += [loop.create_task(self._send_away(c)) for c in late]
            await asyncio.sleep(0.05)
        if closers:
            await asyncio.wait(closers, timeout=max(0.1, deadline - loop.time()))
        # Each closed connection left presence as it closed. The pod itself stays
        # listed, as draining with no connections, until it stops: operators see
        # a drained pod that is still up, and nothing routes to it.
        log.info("drained (%d connections left)", len(self.hub), extra={"pod": self.pod})

    async def _send_away(self, conn: Conn) -> None:
        conn.push(control_frame(Reserved.RECONNECT, {
            "reason": "drain", "retryAfterMs": random.randint(0, 250)}))
        await conn.close(CloseCode.DRAIN, "pod draining: reconnect")

    async def close(self) -> None:
        """Stop everything (clients still connected get 1001); bounded in time."""
        if self.state in (NodeState.STOPPING, NodeState.STOPPED):
            await self._stopped.wait()
            return
        self.state = NodeState.STOPPING
        if self._drain_task is not None and not self._drain_task.done():
            self._drain_task.cancel()
        if self._ws_server is not None:
            self._ws_server.close(close_connections=True)
            try:
                # Bounded apart from the drain: clients still here get 1001 and
                # each has close_timeout (5 s at most) to answer.
                async with asyncio.timeout(min(self.settings.drain_timeout, 10.0)):
                    await self._ws_server.wait_closed()
            except TimeoutError:
                log.warning("connections did not close in time")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.bus.stop()
        with contextlib.suppress(BackendUnavailable):
            await self.presence.leave(self.pod)
        if self._admin is not None:
            await self._admin.cleanup()
        await self.backends.close()
        self.state = NodeState.STOPPED
        self._stopped.set()

    def _accepting(self) -> bool:
        return self.state is NodeState.ACTIVE

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro))

    # -- connection hooks and loops -----------------------------------------

    async def _conn_opened(self, conn: Conn) -> None:
        self.metrics.connections.set(len(self.hub))
        try:
            await self.presence.add(self.pod, conn.user, conn.id, conn.since)
        except BackendUnavailable:
            self._presence_dirty = True  # the heartbeat loop re-announces

    async def _conn_closed(self, conn: Conn) -> None:
        self.metrics.connections.set(len(self.hub))
        try:
            await self.presence.remove(self.pod, conn.user, conn.id)
        except BackendUnavailable:
            self._presence_dirty = True

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval
        backoff = 0.1
        while True:
            state = PodState.DRAINING if self.state is NodeState.DRAINING else PodState.ACTIVE
            try:
                if self._presence_dirty:
                    # Writes were lost while the store was unreachable (an add, or a
                    # remove, which would leave a phantom connection): start a new
                    # life, announce exactly the connections held now, and let the
                    # reaper purge the old life.
                    await self.presence.join(self.pod, state)
                    await self._announce()
                elif not await self.presence.heartbeat(self.pod, state):
                    await self._announce()
                await self.presence.reap()
                if not self._presence_ok:
                    log.info("presence store reachable again", extra={"pod": self.pod})
                self._presence_ok, backoff = True, 0.1
                await asyncio.sleep(interval)
            except BackendUnavailable as exc:
                if self._presence_ok:
                    log.warning("presence store unreachable: %s", exc, extra={"pod": self.pod})
                self._presence_ok, self._presence_dirty = False, True
                self.metrics.backend_errors.labels("presence").inc()
                # Full jitter, so pods do not return to a restarted Redis in step.
                await asyncio.sleep(random.uniform(0, backoff))
                backoff = min(interval, backoff * 2)

    async def _announce(self) -> None:
        """Write this pod's connections into presence again (a new life), then
        take care of what the gap may have cost: a connection that closed while
        its entry was being written back, and ACK-required messages sent while
        this pod's users looked offline (stored, routed nowhere, tracked by no
        pod): they are tracked here, so they are resent without a reconnect."""
        self._presence_dirty = False
        snapshot = [(c.user, c.id, c.since) for c in self.hub]
        await self.presence.add_many(self.pod, snapshot)
        for user, conn_id, _ in snapshot:
            if self.hub.get(conn_id) is None:
                await self.presence.remove(self.pod, user, conn_id)
        floor = self.clock.now_ms() + int(self.settings.ack_retry_interval * 1000)
        users = {c.user for c in self.hub}
        for user in users:
            for msg in await self.acks.pending(user, limit=_RESUME_LIMIT):
                self.resender.track(user, msg.id, max(msg.next_due, floor))
        log.info("presence re-announced (%d connections, %d users)", len(snapshot),
                 len(users), extra={"pod": self.pod})

    async def _start_bus(self) -> bool:
        try:
            await self.bus.start(self.pod, self._on_deliveries, self._on_control,
                                 self._on_stranded)
        except BackendUnavailable as exc:
            log.warning("bus unreachable at start (%s); retrying in the background", exc,
                        extra={"pod": self.pod})
            return False
        return True

    async def _bus_retry_loop(self) -> None:
        backoff = 0.2
        while not await self._start_bus():
            self.metrics.backend_errors.labels("bus").inc()
            await asyncio.sleep(random.uniform(backoff / 2, backoff))
            backoff = min(10.0, backoff * 2)
        log.info("bus connected", extra={"pod": self.pod})

    async def _sweep_loop(self) -> None:
        while True:
            try:
                for dead in await self.acks.sweep():
                    self.metrics.acks_dead_lettered.labels(dead.reason.value).inc()
                    self._trace_ack(dead.message.id, dead.message.user, "dead",
                                    reason=dead.reason.value)
                    log.info("message %s dead-lettered (%s)", dead.message.id,
                             dead.reason.value, extra={"user": dead.message.user})
            except BackendUnavailable:
                self.metrics.backend_errors.labels("acks").inc()
            await asyncio.sleep(_SWEEP_INTERVAL)
