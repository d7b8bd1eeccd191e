"""The public WebSocket endpoint: the handshake and each connection's protocol loop.

Handshake (before any upgrade): ``/healthz`` answers plain HTTP; anything but
``/ws`` is 404; a pod that is not accepting answers 503; a refused origin 403;
a missing or bad token 401.

Connection: ``welcome``, then a replay of the user's pending ACK-required
messages and a ``restore`` end frame, then frames in arrival order. A bad frame
gets an ``error`` frame and the connection lives on; only a frame over
``max_message_bytes`` closes it (1009, done by websockets itself).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from wsnode.acks import AckStore, MsgState
from wsnode.auth import BEARER_SUBPROTOCOL, Authenticator, Identity
from wsnode.errors import AuthError, BackendUnavailable, ProtocolError
from wsnode.hub import Conn, Hub
from wsnode.ids import ConnId, MsgId, PodId
from wsnode.limiter import RateLimiter
from wsnode.metrics import Metrics
from wsnode.protocol import (
    RESERVED_TYPES,
    UNCOUNTED_TYPES,
    CloseCode,
    Envelope,
    ErrorCode,
    Reserved,
    ack_target,
    control_frame,
    error_frame,
    parse_client_frame,
    restore_since,
)
from wsnode.resend import Resender
from wsnode.router import Router

if TYPE_CHECKING:
    from wsnode.clock import Clock
    from wsnode.settings import NodeSettings

log = logging.getLogger("wsnode.gateway")

_REPLAY_PAGE = 200

ConnHook = Callable[[Conn], Awaitable[None]]
TraceHook = Callable[..., None]  # (msg_id, user, event, **fields): a trail event


class Gateway:
    """Serves ``/ws`` for one node; every collaborator is passed in."""

    def __init__(
        self,
        settings: NodeSettings,
        *,
        pod: PodId,
        auth: Authenticator,
        hub: Hub,
        router: Router,
        limiter: RateLimiter,
        acks: AckStore,
        resender: Resender,
        metrics: Metrics,
        clock: Clock,
        accepting: Callable[[], bool],
        on_open: ConnHook,
        on_close: ConnHook,
        trace: TraceHook | None = None,
    ) -> None:
        self._settings = settings
        self._pod = pod
        self._auth = auth
        self._hub = hub
        self._router = router
        self._limiter = limiter
        self._acks = acks
        self._resender = resender
        self._metrics = metrics
        self._clock = clock
        self._accepting = accepting
        self._on_open = on_open
        self._on_close = on_close
        self._trace: TraceHook = trace or (lambda msg_id, user, event, **fields: None)
        self._welcome_heartbeat_ms = int(settings.ping_interval * 1000)

    # -- handshake ---------------------------------------------------------

    def process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return ws.respond(200, "ok\n")
        if path != "/ws":
            return ws.respond(404, "not found: the WebSocket endpoint is /ws\n")
        if not self._accepting():
            self._metrics.handshakes_refused.labels("503").inc()
            response = ws.respond(503, "pod is draining: connect to another pod\n")
            response.headers["Retry-After"] = "1"
            return response
        try:
            self._auth.check_origin(request.headers)
            identity = self._auth.authenticate(request.headers, request.path)
        except AuthError as exc:
            self._metrics.handshakes_refused.labels(str(exc.status)).inc()
            log.info("handshake refused (%d): %s", exc.status, exc.reason,
                     extra={"pod": self._pod, "peer": _peer(ws)})
            response = ws.respond(exc.status, exc.reason + "\n")
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="wsnode"'
            return response
        ws.wsnode_identity = identity  # type: ignore[attr-defined]
        return None

    @staticmethod
    def select_subprotocol(
        ws: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        # A token sent as "bearer, <token>" is answered with "bearer" so that
        # browsers (which require the server to pick one) complete the handshake.
        if offered and offered[0].lower() == BEARER_SUBPROTOCOL:
            return Subprotocol(BEARER_SUBPROTOCOL)
        return None

    # -- connection --------------------------------------------------------

    async def handle(self, ws: ServerConnection) -> None:
        identity = cast(Identity, ws.wsnode_identity)  # type: ignore[attr-defined]
        conn = Conn(
            ws,
            ConnId(secrets.token_urlsafe(9)),
            identity.user,
            self._pod,
            self._clock.now_ms(),
            claims=identity.claims,
            max_queue_bytes=self._settings.send_queue_size,
            close_timeout=min(5.0, self._settings.drain_timeout),
            on_overflow=self._overflowed,
            on_held_dropped=lambda n: self._metrics.count_dropped("replay_overflow", n),
        )
        # The welcome goes out before the hub knows the connection, so nothing
        # routed can precede it; routed messages are then held until the replay
        # is out (they may neither overtake it nor repeat what it carries).
        conn.push(control_frame(Reserved.WELCOME, {
            "connId": conn.id, "podId": self._pod, "userId": conn.user,
            "heartbeatMs": self._welcome_heartbeat_ms,
        }))
        conn.hold()
        self._hub.add(conn)
        expiry: asyncio.TimerHandle | None = None
        log.info("connection open", extra={"pod": self._pod, "conn": conn.id,
                                           "user": conn.user, "peer": _peer(ws)})
        try:
            await self._on_open(conn)
            replayed = await self._replay_on_connect(conn)
            # The replay written out first: what was held then fits the queue.
            await conn.flushed()
            conn.release(replayed, echo_s=min(1.0, self._settings.ack_retry_interval / 2))
            if identity.expires_at is not None:
                expiry = asyncio.get_running_loop().call_later(
                    max(0.0, identity.expires_at - time.time()),
                    conn.close_soon, CloseCode.TOKEN_EXPIRED, "token expired",
                )
            async for data in ws:
                await self.on_frame(conn, data)
        except ConnectionClosed:
            pass
        finally:
            if expiry is not None:
                expiry.cancel()
            self._hub.remove(conn)
            await self._on_close(conn)
            log.info("connection closed", extra={
                "pod": self._pod, "conn": conn.id, "user": conn.user,
                "code": ws.close_code, "reason": ws.close_reason or ""})

    async def on_frame(self, conn: Conn, data: str | bytes) -> None:
        """Handle one client frame; every failure becomes an error frame."""
        try:
            env = parse_client_frame(data)
            if env.type in UNCOUNTED_TYPES:
                self._metrics.count_in(env.type)
                await self._on_uncounted(conn, env)
                return
            await self._on_message(conn, env)
        except ProtocolError as exc:
            self._error(conn, exc.code, exc.message, exc.msg_id)
        except BackendUnavailable:
            self._metrics.backend_errors.labels("gateway").inc()
            self._error(conn, ErrorCode.INTERNAL, "a backend is unavailable; retry shortly")
        except ConnectionClosed:
            raise
        except Exception:
            # A bug of ours must not cost the client its connection.
            log.exception("internal error on a client frame",
                          extra={"conn": conn.id, "user": conn.user})
            self._error(conn, ErrorCode.INTERNAL, "internal error")

    async def _on_uncounted(self, conn: Conn, env: Envelope) -> None:
        if env.type == Reserved.ACK:
            await self._settle(conn, env)
        elif env.type == Reserved.PING:
            conn.push(control_frame(Reserved.PONG, env.payload))
        else:
            await self._replay(conn, restore_since(env))

    async def _on_message(self, conn: Conn, env: Envelope) -> None:
        handler = self._router.get(env.type)
        self._metrics.count_in(env.type if handler else "other")
        decision = await self._limiter.hit(conn.user)
        if not decision.allowed:
            self._metrics.rate_limited.inc()
            self._error(conn, ErrorCode.RATE_LIMITED, "rate limit exceeded", env.id,
                        retryAfterMs=decision.retry_after_ms)
            return
        if handler is None:
            reason = ("is sent by the server only" if env.type in RESERVED_TYPES
                      else "has no handler")
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"type '{env.type}' {reason}", env.id)
        try:
            await handler(conn, env)
        except ProtocolError:
            raise
        except Exception as exc:
            log.exception("handler for %r failed", env.type,
                          extra={"conn": conn.id, "user": conn.user})
            self._error(conn, ErrorCode.HANDLER_ERROR,
                        f"handler for '{env.type}' failed: {type(exc).__name__}", env.id)
            return
        if env.requires_ack:
            conn.push(control_frame(Reserved.ACK, {"id": env.id}))

    async def _settle(self, conn: Conn, env: Envelope) -> None:
        msg_id = ack_target(env)
        if msg_id is None:
            raise ProtocolError(ErrorCode.BAD_ENVELOPE, "an ack needs payload.id")
        before = await self._acks.settle(conn.user, MsgId(msg_id))
        if before is MsgState.PENDING:
            self._metrics.acks_settled.inc()
            self._trace(MsgId(msg_id), conn.user, "acked", conn=conn.id)
        elif before is None:
            raise ProtocolError(ErrorCode.UNKNOWN_ID, f"no message '{msg_id}' to ack", msg_id)
        # A repeat ack (resend crossed the first ack) or a late ack of a dead
        # letter is harmless and needs no answer.

    async def _replay_on_connect(self, conn: Conn) -> set[str]:
        try:
            return await self._replay(conn, None)
        except BackendUnavailable:
            self._metrics.backend_errors.labels("gateway").inc()
            self._error(conn, ErrorCode.INTERNAL,
                        "pending messages could not be read now: send restore to retry")
            return set()

    async def _replay(self, conn: Conn, since: int | None) -> set[str]:
        """Push the user's pending messages in seq order, a page at a time and
        never faster than the client reads (a backlog larger than the send queue
        must not close the connection), then the ``restore`` end frame. Returns
        the ids replayed."""
        floor = self._clock.now_ms() + int(self._settings.ack_retry_interval * 1000)
        high_water = conn.max_queue_bytes // 2
        replayed: set[str] = set()
        after = 0
        while True:
            page = await self._acks.pending(conn.user, since, after_seq=after,
                                            limit=_REPLAY_PAGE)
            for msg in page:
                frame = msg.frame()
                if conn.queued_bytes and conn.queued_bytes + len(frame) > high_water:
                    await conn.flushed()
                if not conn.push(frame):
                    return replayed  # closing
                replayed.add(msg.id)
                self._trace(msg.id, conn.user, "replayed", conn=conn.id, seq=msg.seq)
                # Not before a full interval from now: the client just got it.
                self._resender.track(conn.user, msg.id, max(msg.next_due, floor))
            if len(page) < _REPLAY_PAGE:
                break
            after = page[-1].seq
        conn.push(control_frame(Reserved.RESTORE, {"replayed": len(replayed)}))
        return replayed

    def _error(self, conn: Conn, code: str, message: str, msg_id: str | None = None,
               **extra: object) -> None:
        self._metrics.errors_sent.labels(code).inc()
        conn.push(error_frame(code, message, msg_id, **extra))

    def _overflowed(self, conn: Conn) -> None:
        self._metrics.slow_consumers.inc()
        self._metrics.count_dropped("slow_consumer")


def _peer(ws: ServerConnection) -> str:
    try:
        host, port = ws.remote_address[:2]
    except (TypeError, ValueError):
        return "?"
    return f"{host}:{port}"
