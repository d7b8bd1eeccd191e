"""Client frames on an open connection: what each one does.

Contract of :meth:`Frames.handle`: one frame in, nothing raised (but a closed
connection): a bad frame, a refused one, a backend outage or a bug in a
handler becomes an ``error`` frame with its code, and the connection lives on.

* ``ack`` settles a message (``unknown_id`` when this user never had it);
* ``ping`` is answered ``pong`` with the same payload (a ping frame over
  :data:`MAX_PING_BYTES` gets ``too_large`` instead: it is not echoed);
* ``restore`` replays the user's pending messages, at most
  ``RESTORE_RATE`` per connection (``rate_limited`` past it). Frames of a
  connection are handled one at a time, so a connection has at most one
  replay in progress: a ``restore`` sent during one waits for its end;
* ``subscribe`` / ``unsubscribe`` are counted by the rate limiter, then
  handled by the pod's subscriptions (``wsnode.subscriptions``: refused with
  ``forbidden`` unless the app registered an authorizer);
* any other type is counted by the rate limiter, then given to its handler;
  a frame with ``requiresAck`` and an ``id`` is answered ``ack`` once its
  handler returned.

What the rate limiter does not pay for (``ack``, ``ping``, ``restore``, and
frames refused as bad or over the rate limit) is charged to the connection's
budget (``wsnode.budget``); past it the connection is closed with 1008 and
its later frames are dropped unread, as are those of a connection whose token
expired or that was too slow (``Conn.dropping``). A connection closing
gracefully (a drain) still has its frames handled: its acks count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from websockets.exceptions import ConnectionClosed

from wsnode.acks import AckStore, MsgState
from wsnode.errors import (
    BackendUnavailable,
    ProtocolError,
    QuotaExceeded,
    SendError,
    SubscribeError,
)
from wsnode.hub import Conn
from wsnode.ids import MsgId
from wsnode.limiter import RateLimiter
from wsnode.metrics import Metrics
from wsnode.outage import LogThrottle
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
from wsnode.replay import Replayer
from wsnode.router import Router
from wsnode.sender import RELAYED_FROM
from wsnode.subscriptions import Subscriptions

log = logging.getLogger("wsnode.gateway")

TraceHook = Callable[..., None]  # (msg_id, user, event, **fields): a trail event

_SUBSCRIPTION_TYPES = frozenset({Reserved.SUBSCRIBE.value, Reserved.UNSUBSCRIBE.value})

MAX_PING_BYTES = 1024
"""A ``ping`` frame is echoed only up to this size (the whole frame, in bytes)."""


class Frames:
    """Handles the frames of every connection of one pod (see the module)."""

    def __init__(self, router: Router, limiter: RateLimiter, acks: AckStore,
                 replayer: Replayer, metrics: Metrics, trace: TraceHook,
                 subscriptions: Subscriptions | None = None) -> None:
        self._subscriptions = subscriptions
        self._router = router
        self._limiter = limiter
        self._acks = acks
        self._replayer = replayer
        self._metrics = metrics
        self._trace = trace
        self._throttle = LogThrottle(log)

    async def handle(self, conn: Conn, data: str | bytes) -> None:
        """Handle one client frame; every failure becomes an error frame."""
        if conn.dropping:
            return  # token expired, over budget or too slow: its frames count no more
        size = len(data.encode()) if isinstance(data, str) else len(data)
        charged = False
        try:
            env = parse_client_frame(data)
            if env.type in UNCOUNTED_TYPES:
                self._metrics.count_in(env.type)
                charged = True
                if self._charge(conn, size):
                    await self._on_uncounted(conn, env, size)
                return
            await self._on_message(conn, env, size)
        except ProtocolError as exc:
            if charged or self._charge(conn, size):
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

    def _charge(self, conn: Conn, size: int) -> bool:
        """Charge a frame the rate limiter does not pay for; past the budget,
        close the connection (1008) and answer False."""
        budget = conn.budget
        if budget is None or budget.charge(size, time.monotonic()):
            return True
        self._throttle.warn("budget", "closing a connection over its budget of frames the "
                            "rate limiter does not count (ping, ack, restore, refused frames)")
        conn.close_soon(CloseCode.POLICY, "too many control or refused frames", discard=True)
        return False

    def error(self, conn: Conn, code: str, message: str, msg_id: str | None = None,
              **extra: object) -> None:
        self._metrics.errors_sent.labels(code).inc()
        conn.push(error_frame(code, message, msg_id, **extra))

    async def _on_uncounted(self, conn: Conn, env: Envelope, size: int) -> None:
        if env.type == Reserved.ACK:
            if await self._settle(conn, env) and conn.budget is not None:
                conn.budget.refund(size)  # paid for by the message it settled
        elif env.type == Reserved.PING:
            if size > MAX_PING_BYTES:
                raise ProtocolError(ErrorCode.TOO_LARGE, f"a ping frame is echoed up to "
                                    f"{MAX_PING_BYTES} bytes; this one has {size}", env.id)
            conn.push(control_frame(Reserved.PONG, env.payload))
        else:
            since = restore_since(env)
            wait_ms = conn.budget.restore_wait_ms(time.monotonic()) \
                if conn.budget is not None else 0
            if wait_ms:
                self._metrics.rate_limited.inc()
                self.error(conn, ErrorCode.RATE_LIMITED, "restore rate exceeded", env.id,
                           retryAfterMs=wait_ms)
                return
            await self._replayer.replay(conn, since)

    async def _on_message(self, conn: Conn, env: Envelope, size: int) -> None:
        handler = self._router.get(env.type)
        topical = env.type in _SUBSCRIPTION_TYPES
        self._metrics.count_in(env.type if handler or topical else "other")
        decision = await self._limiter.hit(conn.user)
        if not decision.allowed:
            self._metrics.rate_limited.inc()
            if self._charge(conn, size):
                    self.error(conn, ErrorCode.RATE_LIMITED, "rate limit exceeded", env.id,
                           retryAfterMs=decision.retry_after_ms)
            return
        if topical and self._subscriptions is not None:
            try:
                await self._subscriptions.on_frame(conn, env)
            except SubscribeError as exc:
                extra = {"limit": "subscriptions"} if exc.code == ErrorCode.QUOTA_EXCEEDED \
                    else {}
                self.error(conn, exc.code, str(exc), env.id, **extra)
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
        except SendError as exc:
            # Our own words (a user id no login could have...): worth showing.
            self.error(conn, ErrorCode.HANDLER_ERROR,
                       f"handler for '{env.type}' failed: {exc}", env.id)
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

    async def _settle(self, conn: Conn, env: Envelope) -> bool:
        """Settle the message an ack names; True when it was pending."""
        msg_id = ack_target(env)
        if msg_id is None:
            raise ProtocolError(ErrorCode.BAD_ENVELOPE, "an ack needs payload.id")
        before = await self._acks.settle(conn.user, MsgId(msg_id))
        if before is MsgState.PENDING:
            self._metrics.acks_settled.inc()
            self._trace(MsgId(msg_id), conn.user, "acked", conn=conn.id)
            return True
        if before is None:
            raise ProtocolError(ErrorCode.UNKNOWN_ID, f"no message '{msg_id}' to ack", msg_id)
        # A repeat ack (resend crossed the first ack) or a late ack of a dead
        # letter is harmless and needs no answer.
        return False
