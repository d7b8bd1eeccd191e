"""The node: one pod. It composes every concept and owns the pod's lifecycle.

Lifecycle (an explicit state machine; every transition is idempotent)::

    NEW --start()--> ACTIVE --drain()--> DRAINING --close()--> STOPPING --> STOPPED
                       └──────────────close()───────────────────┘

``async with Node(settings) as node:`` starts the WebSocket and admin servers
and the background loops, all supervised (``wsnode.supervisor``) and stopped
by ``close()``:

========== ============================================== =====================
loop       does                                           module
========== ============================================== =====================
heartbeat  presence lease, re-announce, reaper            ``wsnode.upkeep``
topics     topic membership: re-announce, reaper          ``wsnode.subscriptions``
resend     claims due resends of the users held here      ``wsnode.resend``
reconcile  every held user back in the due index          ``wsnode.resend``
sweep      dead-letters expired messages                  ``wsnode.resend``
trace      writes buffered message trails                 ``wsnode.trace_redis``
bus        connects the bus if the start's try failed     ``wsnode.bus_rabbitmq``
           (later outages: the bus's own supervisor)
========== ============================================== =====================

``/readyz`` is 200 only while the pod accepts connections and no loop fails;
it names every failing loop with its last error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from enum import StrEnum
from types import TracebackType
from typing import Any

from aiohttp import web
from websockets.asyncio.server import Server

from wsnode import failpoints
from wsnode.acks import AckBackend
from wsnode.admin import EVERY_INTERFACE, EXPOSED_WARNING, AdminApi, advertised_url
from wsnode.admission import Admission, connection_limits, fd_limit, quiet_accept_errors
from wsnode.auth import Authenticator, user_id_problem
from wsnode.backends import Backends, build_backends
from wsnode.bus import Bus, Unroutable
from wsnode.clock import Clock, SystemClock
from wsnode.drain import drain_hub
from wsnode.errors import NotFound, SendError, WsnodeError
from wsnode.fanout import Fanout, FanoutReport
from wsnode.frames import Frames
from wsnode.gateway import ConnHooks, Gateway
from wsnode.hub import Conn, Hub
from wsnode.ids import MsgId, PodId, UserId
from wsnode.inbound import Inbound
from wsnode.intake import Intake
from wsnode.metrics import Metrics
from wsnode.presence import PodState, Presence
from wsnode.presence_cache import CachedPresence
from wsnode.protocol import Envelope
from wsnode.replay import Replayer
from wsnode.resend import RECONCILE_S, Resender, Sweeper, scan_interval
from wsnode.router import HandlerT, Router
from wsnode.sender import FROM_CONTEXT, FromContext, Sender, SendReport
from wsnode.sendmany import ManyReport, ManySender
from wsnode.settings import NodeSettings, load_settings
from wsnode.subscriptions import Authorizer, Subscriptions
from wsnode.supervisor import Supervisor
from wsnode.trace import TracePolicy
from wsnode.upkeep import PresenceUpkeep

log = logging.getLogger("wsnode.node")

_SWEEP_INTERVAL = 1.0
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
        s = self.settings = settings if settings is not None else load_settings()
        if s.failpoints:
            failpoints.configure(s.failpoints)
        self.pod = PodId(s.pod_id)
        self.clock = clock or SystemClock()
        self.metrics = Metrics()
        self.router = Router()
        self.hub = Hub()
        self.backends = backends if backends is not None else build_backends(
            s, self.metrics, self.clock)
        self.tracer, self.topics = self.backends.tracer, self.backends.topics
        self.subscriptions = Subscriptions(self.pod, self.hub, self.topics, self.metrics,
                                           max_per_conn=s.max_subscriptions_per_connection)
        self.trace_policy = TracePolicy.parse(s.trace, int(s.trace_ttl * 1000))
        # Senders read presence through a cache the presence feed keeps true
        # (wsnode.presence_cache); without a feed (embedded) they read it directly.
        feed = self.backends.presence_feed
        self.presence_cache = CachedPresence(self.presence, counted=self.metrics.count_lookups) \
            if feed is not None else None
        self.sender = Sender(
            presence=self.presence_cache or self.presence, bus=self.bus, acks=self.acks,
            metrics=self.metrics, pod=self.pod, clock=self.clock,
            shared_bus=self.backends.shared_bus, tracer=self.tracer, trace_policy=self.trace_policy,
            stale=self.presence_cache.changed if self.presence_cache else None)
        self.inbound = Inbound(self.pod, self.hub, self.sender, self.metrics, self.tracer,
                               self.clock, self.subscriptions)
        self.sender.local = self.inbound
        self.fanout = Fanout(self.sender, self.topics, self.inbound)
        self.many = ManySender(self.sender, s.max_users_per_send)
        retry_ms = int(s.ack_retry_interval * 1000)
        self.resender = Resender(self.acks, self.presence, self.sender, self.metrics,
                                 holds=self.hub.has, held=self.hub.users, busy=self.hub.backed_up,
                                 interval=scan_interval(s.ack_retry_interval))
        self.upkeep = PresenceUpkeep(self.presence, self.pod, self.hub, self.metrics,
                                     state=self._pod_state, on_announced=self._reconcile_soon,
                                     feed=feed)
        replayer = Replayer(self.acks, self.acks, self.metrics, hold_ms=retry_ms,
                            trace=self._trace_ack)
        # A SettingsError when MAX_CONNECTIONS cannot hold under the descriptor limit.
        self.admission = Admission(connection_limits(
            s.max_connections, s.max_connections_per_user, fd_limit(), s.handshake_rate))
        self.intake = Intake(self.admission.limits.max_transports, s.handshakes_per_iteration,
                             self.metrics.handshakes_deferred.inc)
        self.gateway = Gateway(
            s, auth=Authenticator(s, insecure=insecure), hub=self.hub,
            hooks=ConnHooks(self._accepting, self._opened, self._closed),
            replayer=replayer,
            frames=Frames(self.router, self.backends.limiter, self.acks, replayer,
                          self.metrics, self._trace_ack, self.subscriptions),
            metrics=self.metrics, clock=self.clock, admission=self.admission)
        self.loops = Supervisor()
        self.state = NodeState.NEW
        self._ws_server: Server | None = None
        self._admin: web.AppRunner | None = None
        self._bus_started = False
        self._drain_task: asyncio.Task[None] | None = None
        self._exit_after_drain = False
        self.exit_requested = asyncio.Event()
        """Set when a drain asked the pod to exit afterwards (``wsctl drain --exit``)."""
        self._stopped = asyncio.Event()

    # -- public API ----------------------------------------------------------

    @property
    def presence(self) -> Presence:
        return self.backends.presence

    @property
    def acks(self) -> AckBackend:
        return self.backends.acks

    @property
    def bus(self) -> Bus:
        return self.backends.bus

    def on(self, msg_type: str) -> Callable[[HandlerT], HandlerT]:
        """Register the handler of a client message type (see :class:`Router`)."""
        return self.router.on(msg_type)

    async def send_to_user(self, user: str, env: Envelope, *,
                           on_behalf_of: UserId | FromContext | None = FROM_CONTEXT,
                           ) -> SendReport:
        """Deliver ``env`` to every connection of ``user`` on every pod. From an app
        handler it is sent on behalf of the client whose frame is handled (its id
        scoped to that client, and counted against the relayed limits); pass
        ``on_behalf_of=None`` to send as the server (see :mod:`wsnode.sender`).
        A user id no login could have (over 256 characters...) raises SendError."""
        if (problem := user_id_problem(user)) is not None:
            raise SendError(problem)
        return await self.sender.send_to_user(UserId(user), env, on_behalf_of=on_behalf_of)

    async def send_to_users(self, users: Iterable[str], env: Envelope, *,
                            on_behalf_of: UserId | FromContext | None = FROM_CONTEXT,
                            ) -> ManyReport:
        """``send_to_user`` for each user of a list, in a few round trips for all:
        one presence read, one broker message per pod (see :mod:`wsnode.sendmany`).
        At most ``MAX_USERS_PER_SEND`` users, else SendError."""
        return await self.many.send_to_users(users, env, on_behalf_of=on_behalf_of)

    async def broadcast(self, env: Envelope, *,
                        on_behalf_of: UserId | FromContext | None = FROM_CONTEXT,
                        ) -> FanoutReport:
        """Every connection of every pod, at most once (ACK-required: SendError)."""
        return await self.fanout.broadcast(env, on_behalf_of=on_behalf_of)

    async def publish(self, topic: str, env: Envelope, *,
                      on_behalf_of: UserId | FromContext | None = FROM_CONTEXT,
                      ) -> FanoutReport:
        """Every connection subscribed to ``topic``, on every pod, at most once
        (see :mod:`wsnode.fanout`); the report's ``subscribers`` is 0 when nobody was."""
        return await self.fanout.publish(topic, env, on_behalf_of=on_behalf_of)

    async def subscribe(self, conn: Conn, topic: str) -> bool:
        """Subscribe a connection of this pod to ``topic`` (False: it already was);
        SubscribeError for a bad name or a connection at its cap."""
        return await self.subscriptions.subscribe(conn, topic)

    async def unsubscribe(self, conn: Conn, topic: str) -> bool:
        return await self.subscriptions.unsubscribe(conn, topic)

    def authorize_subscribe(self, authorizer: Authorizer) -> Authorizer:
        """Register (as a decorator) who may subscribe to what with a client
        ``subscribe`` frame: ``(conn, topic) -> bool``, sync or async. Without
        one, clients' ``subscribe`` and ``unsubscribe`` get ``forbidden``."""
        self.subscriptions.authorizer = authorizer
        return authorizer

    async def retry_dead(self, msg_id: MsgId, user: UserId | None = None) -> list[SendReport]:
        """Send dead letters with this id again (see :meth:`Sender.retry_dead`)."""
        return await self.sender.retry_dead(msg_id, user)

    @property
    def port(self) -> int:
        """The bound WebSocket port (useful with ``port=0``)."""
        assert self._ws_server is not None, "node not started"
        return int(next(iter(self._ws_server.sockets)).getsockname()[1])

    @property
    def admin_port(self) -> int:
        assert self._admin is not None, "node not started"
        return int(self._admin.addresses[0][1])

    # -- the admin port's view (wsnode.admin.AdminPort) ------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether this pod should receive new connections, and why not: every
        failing loop is named with its last error."""
        problems = self.loops.problems()
        if self.resender.problem:
            problems.setdefault("resend", self.resender.problem)
        if not self._bus_started:
            # Until then this pod has no queue: deliveries to its users are unroutable.
            problems.setdefault("bus", self.bus.problem or "not started yet")
        elif not self.bus.ready:
            problems.setdefault("bus", self.bus.problem or "not ready")
        checks: dict[str, bool] = {"accepting": self.state is NodeState.ACTIVE}
        for name in ("heartbeat", "bus", "resend", "reconcile", "sweep", "trace",
                     "presence-feed"):
            checks["presence" if name == "heartbeat" else name] = name not in problems
        ready = all(checks.values())
        self.metrics.ready.set(1 if ready else 0)
        return ready, {"ready": ready, "pod": self.pod, "state": self.state.value,
                       "checks": checks, "problems": problems}

    async def metrics_text(self) -> bytes:
        await self.metrics.refresh(self.hub, self.bus, self.acks)
        self.readiness()
        return self.metrics.render()

    async def drain_pod(self, pod: PodId, over: float, *, then_exit: bool = False) -> None:
        """Drain ``pod``: this one directly, another through the bus. With
        ``then_exit`` the pod's process exits once drained (``wsnode serve``
        returns 0, as after a SIGTERM), for a supervisor to replace or not."""
        if pod == self.pod:
            self.start_drain(over, then_exit=then_exit)
            return
        try:
            await self.bus.control(pod, {"cmd": "drain", "over": over, "exit": then_exit})
        except Unroutable as exc:
            raise NotFound(f"pod {pod!r} is not running") from exc

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
        if failpoints.ACTIVE:
            log.warning("failpoints enabled (tests only): %s", s.failpoints)
        if s.admin_host is None and s.host in EVERY_INTERFACE:
            log.warning(EXPOSED_WARNING, s.host, s.admin_port)
        quiet_accept_errors(asyncio.get_running_loop())  # once a minute, not per accept
        # The admin port first: its URL is advertised in presence (wsctl doctor
        # asks each pod's /readyz there).
        runner = web.AppRunner(AdminApi(self, s.api_key).app(), access_log=None,
                               handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, s.admin_host or s.host, s.admin_port).start()
        self._admin = runner
        await self.upkeep.join(advertised_url(s, self.admin_port))
        await self._bus_step(at_start=True)
        self._ws_server = await self.gateway.serve(self.intake.connection_class())
        loops = self.loops
        loops.every("bus", self._bus_step, 1.0)
        for name, step in (("heartbeat", self.upkeep.step), ("topics", self.subscriptions.step)):
            loops.every(name, step, s.heartbeat_interval, max_backoff=s.heartbeat_interval)
        loops.every("resend", self.resender.resend_step, self.resender.interval)
        loops.every("reconcile", self.resender.reconcile_step, RECONCILE_S)
        loops.every("sweep", Sweeper(self.acks, self.sender).step, _SWEEP_INTERVAL)
        self.tracer.on_buffered = loops.every("trace", self.tracer.flush, 1.0).wake
        if self.presence_cache is not None and self.backends.presence_feed is not None:
            cache, feed = self.presence_cache, self.backends.presence_feed

            async def listen() -> None:
                await feed.listen(cache.changed, cache.listening)
            loops.every("presence-feed", listen, 1.0)
        self.state = NodeState.ACTIVE
        log.info("pod %s serving ws://%s:%d/ws (admin :%d, %s)", self.pod, s.host,
                 self.port, self.admin_port, s.mode, extra={"pod": self.pod})
        log.info("connection limits: %s", self.admission.limits, extra={"pod": self.pod})

    async def _bus_step(self, *, at_start: bool = False) -> float:
        """Start the bus; once started it reconnects by itself. The pod's start
        tries it before the WebSocket port opens: a client let in earlier could
        join a topic, or be told it is online, while no other pod can reach this
        pod's queue. A failure then does not stop the start: logged, named in
        ``/readyz``, retried with backoff by the ``bus`` loop."""
        if not self._bus_started:
            try:
                await self.bus.start(self.pod, self.inbound.on_deliveries, self._on_control,
                                     self.inbound.on_stranded)
            except Exception as exc:
                if not at_start:
                    raise
                log.warning("bus not started (%s): serving without it until it starts",
                            exc, extra={"pod": self.pod})
                return 0.0
            self._bus_started = True
        return 3600.0

    async def _on_control(self, command: dict[str, Any]) -> None:
        if command.get("cmd") == "drain":
            over = command.get("over", 0)
            self.start_drain(float(over) if isinstance(over, int | float) else 0.0,
                             then_exit=command.get("exit") is True)
        else:
            log.warning("unknown control command %r", command.get("cmd"))

    def _pod_state(self) -> PodState:
        return PodState.DRAINING if self.state is NodeState.DRAINING else PodState.ACTIVE

    def _reconcile_soon(self) -> None:
        """Presence was announced again (a new life): so must the topics be."""
        for name in ("reconcile", "topics"):
            if name in self.loops:
                self.loops[name].wake()

    async def _opened(self, conn: Conn) -> None:
        await self.upkeep.opened(conn)
        await self.subscriptions.subscribe_claimed(conn)

    async def _closed(self, conn: Conn) -> None:
        await self.subscriptions.drop(conn)
        await self.upkeep.closed(conn)

    def _trace_ack(self, msg_id: MsgId, user: UserId, event: str, **fields: Any) -> None:
        """A trail event of an ACK-required message, when those are traced."""
        if self.trace_policy.ack:
            self.tracer.record(msg_id, user, event, self.pod, **fields)

    def start_drain(self, over: float, *, then_exit: bool = False) -> asyncio.Task[None]:
        """Begin draining in the background (idempotent); returns the drain task.
        With ``then_exit``, :attr:`exit_requested` is set once it is drained."""
        if then_exit:
            self._exit_after_drain = True
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain_then(over))
        elif then_exit and self._drain_task.done():
            self.exit_requested.set()
        return self._drain_task

    async def _drain_then(self, over: float) -> None:
        await self.drain(over)
        if self._exit_after_drain:
            log.info("drained; exiting as asked", extra={"pod": self.pod})
            self.exit_requested.set()

    async def drain(self, over: float = 0.0) -> None:
        """Move every client to another pod: ``reconnect`` then close 1012, spread
        over ``over`` seconds, all within ``drain_timeout``. New handshakes get
        503 from the first moment; the pod stays listed as draining until it stops."""
        if self.state is not NodeState.ACTIVE:
            return
        self.state = NodeState.DRAINING
        self.metrics.draining.set(1)
        await drain_hub(self.hub, self.presence, self.pod, over, self.settings.drain_timeout)

    async def close(self) -> None:
        """Stop everything (clients still connected get 1001); bounded in time.
        Nothing pending is lost: resends are the store's, and any pod that holds
        the user takes them over."""
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
        await self.loops.stop()
        with contextlib.suppress(Exception):
            await self.bus.stop()
        with contextlib.suppress(WsnodeError):
            await self.subscriptions.leave()  # first: it needs the pod's life
        with contextlib.suppress(WsnodeError):
            await self.upkeep.leave()
        if self._admin is not None:
            await self._admin.cleanup()
        await self.backends.close()
        self.state = NodeState.STOPPED
        self._stopped.set()

    def _accepting(self) -> bool:
        return self.state is NodeState.ACTIVE
