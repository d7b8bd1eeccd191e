"""Client frames on an open connection: what each one does.

Contract of :meth:`Frames.handle`: one frame in, nothing raised (but a closed
connection): a bad frame, a refused one, a backend outage or a bug in a
handler becomes an ``error`` frame with its code, and the connection lives on.

* ``ack`` settles a message (``unknown_id`` when this user never had it);
* ``ping`` is answered ``pong`` with the same payload;
* ``restore`` replays the user's pending messages;
* any other type is counted by the rate limiter, then given to its handler;
  a frame with ``requiresAck`` and an ``id`` is answered ``ack`` once its
  handler returned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from websockets.exceptions import ConnectionClosed

from wsnode.acks import AckStore, MsgState
from wsnode.errors import BackendUnavailable, ProtocolError, QuotaExceeded
from wsnode.hub import Conn
from wsnode.ids import MsgId
from wsnode.limiter import RateLimiter
from wsnode.metrics import Metrics
from wsnode.protocol import (
    RESERVED_TYPES,
    UNCOUNTED_TYPES,
    Envelope,
    ErrorCode,
    Reserved,
    ack_target,
    control_frame,
    error_frame,
    parse_client_frame,
    restore_since,
)
from wsnode.replay import Replayer
from wsnode.router import Router
from wsnode.sender import RELAYED_FROM

log = logging.getLogger("wsnode.gateway")

TraceHook = Callable[..., None]  # (msg_id, user, event, **fields): a trail event


class Frames:
    """Handles the frames of every connection of one pod (see the module)."""

    def __init__(self, router: Router, limiter: RateLimiter, acks: AckStore,
                 replayer: Replayer, metrics: Metrics, trace: TraceHook) -> None:
        self._router = router
        self._limiter = limiter
        self._acks = acks
        self._replayer = replayer
        self._metrics = metrics
        self._trace = trace

    async def handle(self, conn: Conn, data: str | bytes) -> None:
        """Handle one client frame; every failure becomes an error frame."""
        try:
            env = parse_client_frame(data)
            if env.type in UNCOUNTED_TYPES:
                self._metrics.count_in(env.type)
                await self._on_uncounted(conn, env)
                return
            await self._on_message(conn, env)
        except ProtocolError as exc:
            self.error(conn, exc.code, exc.message, exc.msg_id)
        except BackendUnavailable:
            self._metrics.backend_errors.labels("gateway").inc()
            self.error(conn, ErrorCode.INTERNAL, "a backend is unavailable; retry shortly")
        except ConnectionClosed:
            raise
        except Exception:
            # A bug of ours must not cost the client its connection.
            log.exception("internal error on a client frame",
                          extra={"conn": conn.id, "user": conn.user})
            self.error(conn, ErrorCode.INTERNAL, "internal error")

    def error(self, conn: Conn, code: str, message: str, msg_id: str | None = None,
              **extra: object) -> None:
        self._metrics.errors_sent.labels(code).inc()
        conn.push(error_frame(code, message, msg_id, **extra))

    async def _on_uncounted(self, conn: Conn, env: Envelope) -> None:
        if env.type == Reserved.ACK:
            await self._settle(conn, env)
        elif env.type == Reserved.PING:
            conn.push(control_frame(Reserved.PONG, env.payload))
        else:
            await self._replayer.replay(conn, restore_since(env))

    async def _on_message(self, conn: Conn, env: Envelope) -> None:
        handler = self._router.get(env.type)
        self._metrics.count_in(env.type if handler else "other")
        decision = await self._limiter.hit(conn.user)
        if not decision.allowed:
            self._metrics.rate_limited.inc()
            self.error(conn, ErrorCode.RATE_LIMITED, "rate limit exceeded", env.id,
                       retryAfterMs=decision.retry_after_ms)
            return
        if handler is None:
            reason = ("is sent by the server only" if env.type in RESERVED_TYPES
                      else "has no handler")
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"type '{env.type}' {reason}", env.id)
        # What the handler sends, it sends on this client's behalf (wsnode.sender).
        relaying = RELAYED_FROM.set(conn.user)
        try:
            await handler(conn, env)
        except ProtocolError:
            raise
        except QuotaExceeded as exc:
            self.error(conn, ErrorCode.QUOTA_EXCEEDED, str(exc), env.id, limit=exc.limit)
            return
        except Exception as exc:
            log.exception("handler for %r failed", env.type,
                          extra={"conn": conn.id, "user": conn.user})
            self.error(conn, ErrorCode.HANDLER_ERROR,
                       f"handler for '{env.type}' failed: {type(exc).__name__}", env.id)
            return
        finally:
            RELAYED_FROM.reset(relaying)
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
