"""Replays: a user's pending ACK-required messages, pushed to one connection.

At connect (after ``welcome``) and on a client ``restore``, every pending
message of the user goes out in ``seq`` order, a page at a time and never
faster than the client reads (a backlog larger than the send queue must not
close the connection), then the ``restore`` end frame ``{"replayed": N}``.
Replayed messages are not due for a resend for a full retry interval (the
client just got them), and afterwards the user is in the store's due index,
so that this pod resends what the client does not ack.

A replay at connect that fails (the store unreachable) is retried by the
server with backoff for as long as the connection lives: no client has to ask
for it. Routed messages stay held meanwhile (``Conn.hold``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

from wsnode import failpoints
from wsnode.acks import AckStore, ResendSchedule
from wsnode.errors import BackendError, BackendUnavailable
from wsnode.hub import Conn
from wsnode.ids import UserId
from wsnode.metrics import Metrics
from wsnode.outage import LogThrottle
from wsnode.protocol import ErrorCode, Reserved, control_frame, error_frame

log = logging.getLogger("wsnode.replay")

PAGE = 200
_YIELD_EVERY = 32
_RETRY_FIRST_S = 0.2
_RETRY_MAX_S = 5.0

TraceHook = Callable[..., None]  # (msg_id, user, event, **fields): a trail event


class Replayer:
    """Replays for one pod (see the module)."""

    def __init__(self, acks: AckStore, schedule: ResendSchedule, metrics: Metrics, *,
                 hold_ms: int, trace: TraceHook) -> None:
        self._acks = acks
        self._schedule = schedule
        self._metrics = metrics
        self._hold_ms = hold_ms
        self._trace = trace
        self._throttle = LogThrottle(log)

    async def on_connect(self, conn: Conn) -> set[str]:
        """Replay everything pending to a new connection, retrying while the store
        is unreachable and the connection open; the ids replayed."""
        backoff = _RETRY_FIRST_S
        while True:
            try:
                if failpoints.ACTIVE:
                    await failpoints.hit("replay.connect")
                return await self.replay(conn, None, traced=True)
            except BackendUnavailable as exc:
                if conn.closing or conn.ws.close_code is not None:
                    return set()
                self._metrics.backend_errors.labels("replay").inc()
                self._throttle.warn("connect", "replay at connect failed (%s); retrying", exc)
            except BackendError as exc:
                # Data that cannot be read and could not be moved aside: the user
                # still connects and gets what is routed to them from now on.
                log.error("replay at connect failed: %s", exc, extra={"user": conn.user})
                conn.push(error_frame(ErrorCode.INTERNAL, "pending messages could not be "
                                      "read; the operator has been told"))
                return set()
            await asyncio.sleep(random.uniform(backoff / 2, backoff))
            backoff = min(_RETRY_MAX_S, backoff * 2)

    async def replay(self, conn: Conn, since: int | None, *, traced: bool = False) -> set[str]:
        """Push the user's pending messages (stored at or after ``since``), then
        the ``restore`` end frame; returns the ids replayed. ``traced``: a
        ``replayed`` trail event per message (the replay at connect; not a
        client's ``restore``, which a client can repeat at will)."""
        high_water = conn.max_queue_bytes // 2
        replayed: set[str] = set()
        after = 0
        while True:
            page = await self._acks.pending(conn.user, since, after_seq=after, limit=PAGE,
                                            hold_ms=self._hold_ms)
            for n, msg in enumerate(page):
                frame = msg.frame()
                if conn.queued_bytes and conn.queued_bytes + len(frame) > high_water:
                    await conn.flushed()
                elif n % _YIELD_EVERY == _YIELD_EVERY - 1:
                    await asyncio.sleep(0)  # a long replay must not hold the loop
                if not conn.push(frame):
                    return replayed  # closing
                replayed.add(msg.id)
                if traced:
                    self._trace(msg.id, conn.user, "replayed", conn=conn.id, seq=msg.seq)
            if len(page) < PAGE:
                break
            after = page[-1].seq
        conn.push(control_frame(Reserved.RESTORE, {"replayed": len(replayed)}))
        if replayed:
            await self._scheduled(conn.user)
        return replayed

    async def _scheduled(self, user: UserId) -> None:
        # If the store fails here, the pod's reconcile loop indexes the user later.
        with contextlib.suppress(BackendUnavailable):
            await self._schedule.schedule(user)

