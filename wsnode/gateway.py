"""The public WebSocket endpoint: the handshake and each connection's life.

Handshake (before any upgrade): ``/healthz`` answers plain HTTP; anything but
``/ws`` is 404; a pod that is not accepting, or at its connection limit,
answers 503; a repeated ``Origin`` or ``Authorization`` header 400; a refused
origin 403; a missing or bad token 401; a user at their connection limit on
this pod 429 (``wsnode.admission``).

Connection: ``welcome``, then a replay of the user's pending ACK-required
messages and a ``restore`` end frame (``wsnode.replay``), then frames in
arrival order (``wsnode.frames``). Routed messages are held while the replay
runs, so they neither overtake it nor repeat what it carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from wsnode.admission import RETRY_AFTER_FULL_S, Admission
from wsnode.auth import BEARER_SUBPROTOCOL, Authenticator, Identity
from wsnode.budget import ConnBudget
from wsnode.errors import AuthError
from wsnode.frames import Frames
from wsnode.hub import Conn, Hub
from wsnode.ids import ConnId, PodId
from wsnode.metrics import Metrics
from wsnode.outage import LogThrottle
from wsnode.protocol import CloseCode, Reserved, control_frame
from wsnode.replay import Replayer

if TYPE_CHECKING:
    from wsnode.clock import Clock
    from wsnode.settings import NodeSettings

log = logging.getLogger("wsnode.gateway")

ConnHook = Callable[[Conn], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ConnHooks:
    """What the pod around the gateway does as connections come and go."""

    accepting: Callable[[], bool]  # False: handshakes get 503 (draining, stopping)
    opened: ConnHook  # after the hub has it (presence add)
    closed: ConnHook  # after the hub forgot it (presence remove)


class Gateway:
    """Serves ``/ws`` for one node."""

    def __init__(
        self,
        settings: NodeSettings,
        *,
        auth: Authenticator,
        hub: Hub,
        hooks: ConnHooks,
        replayer: Replayer,
        frames: Frames,
        metrics: Metrics,
        clock: Clock,
        admission: Admission,
    ) -> None:
        self._settings = settings
        self.admission = admission
        self._pod = PodId(settings.pod_id)
        self._auth = auth
        self._hub = hub
        self._hooks = hooks
        self._replayer = replayer
        self._frames = frames
        self._metrics = metrics
        self._clock = clock
        self._welcome_heartbeat_ms = int(settings.ping_interval * 1000)
        self._throttle = LogThrottle(log)

    async def serve(self, connection_class: type[ServerConnection]) -> Server:
        """Listen on the settings' host and port for ``/ws``; each accepted
        socket becomes a ``connection_class`` (``wsnode.intake``)."""
        s = self._settings
        return await serve(
            self.handle, s.host, s.port,
            process_request=self.process_request,
            select_subprotocol=self.select_subprotocol,
            compression="deflate" if s.compression else None,
            max_size=s.max_message_bytes,
            ping_interval=s.ping_interval,
            ping_timeout=s.ping_timeout or None,
            close_timeout=min(5.0, s.drain_timeout),
            server_header="wsnode",
            create_connection=connection_class,
        )

    # -- handshake ---------------------------------------------------------

    def process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return ws.respond(200, "ok\n")
        if path != "/ws":
            return ws.respond(404, "not found: the WebSocket endpoint is /ws\n")
        if not self._hooks.accepting():
            return self._refuse(ws, 503, "pod is draining: connect to another pod", 1)
        if self.admission.full():
            # Before the token is checked: a full pod spends nothing on a handshake.
            self._throttle.warn("503", "handshakes refused (503): pod at its limit of %d "
                                "connections", self.admission.limits.max_connections)
            return self._refuse(ws, 503, "pod at its connection limit: connect to another pod",
                                RETRY_AFTER_FULL_S)
        try:
            self._auth.check_origin(request.headers)
            identity = self._auth.authenticate(request.headers, request.path)
        except AuthError as exc:
            log.info("handshake refused (%d): %s", exc.status, exc.reason,
                     extra={"pod": self._pod, "peer": _peer(ws)})
            response = self._refuse(ws, exc.status, exc.reason)
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="wsnode"'
            return response
        refused = self.admission.admit(ws, identity.user)
        if refused is not None:
            # Once a minute per kind: a flood of refused handshakes is no log flood.
            self._throttle.warn(refused.limit, "handshakes refused (%d): %s",
                                refused.status, refused.reason)
            return self._refuse(ws, refused.status, refused.reason, refused.retry_after)
        ws.wsnode_identity = identity  # type: ignore[attr-defined]
        return None

    def _refuse(self, ws: ServerConnection, status: int, reason: str,
                retry_after: int | None = None) -> Response:
        """A refusal before the upgrade: one line of text, counted by status."""
        self._metrics.handshakes_refused.labels(str(status)).inc()
        response = ws.respond(status, reason + "\n")
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response

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
        if self._settings.socket_send_buffer:
            _cap_send_buffer(ws, self._settings.socket_send_buffer)
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
            budget=ConnBudget(self._settings.control_frames, self._settings.control_bytes,
                              self._settings.restore_rate, time.monotonic()),
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
            if identity.expires_at is not None:
                # From the first moment: a token that expires during a long replay
                # ends the replay too, and what is still queued is dropped (the
                # close frame goes out next, not after the backlog).
                expiry = asyncio.get_running_loop().call_later(
                    max(0.0, identity.expires_at - time.time()), self._expired, conn)
            await self._hooks.opened(conn)
            replayed = await self._replayer.on_connect(conn)
            # The replay written out first: what was held then fits the queue.
            await conn.flushed()
            expired = conn.release(replayed, self._clock.now_ms(),
                                   echo_s=min(1.0, self._settings.ack_retry_interval / 2))
            if expired:
                self._metrics.count_dropped("expired", expired)
            async for data in ws:
                await self._frames.handle(conn, data)
        except ConnectionClosed:
            pass
        finally:
            if expiry is not None:
                expiry.cancel()
            self._hub.remove(conn)
            await self._hooks.closed(conn)
            log.info("connection closed", extra={
                "pod": self._pod, "conn": conn.id, "user": conn.user,
                "code": ws.close_code, "reason": ws.close_reason or ""})

    @staticmethod
    def _expired(conn: Conn) -> None:
        conn.close_soon(CloseCode.TOKEN_EXPIRED, "token expired", discard=True)

    def _overflowed(self, conn: Conn) -> None:
        self._metrics.slow_consumers.inc()
        self._metrics.count_dropped("slow_consumer")


def _cap_send_buffer(ws: ServerConnection, size: int) -> None:
    """Bound the kernel's send buffer of this connection: autotuned, it grows to
    megabytes that a client which stopped reading still gets after its token
    expired or its queue overflowed, and that pin kernel memory."""
    sock = ws.transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def _peer(ws: ServerConnection) -> str:
    try:
        host, port = ws.remote_address[:2]
    except (TypeError, ValueError):
        return "?"
    return f"{host}:{port}"
