"""Draining a pod: every client is moved to another pod, gently and in bounded time.

``send_away`` gives each connection a ``reconnect`` frame (with a small random
``retryAfterMs``, so clients do not all come back in the same instant) and
closes it with 1012. ``move_everyone`` does that to every connection of the
hub, spread over ``over`` seconds, then to connections that a handshake already
past its 503 check opened after the drain began, all within ``deadline``.
``drain_hub`` is a pod's drain: listed as draining, then everyone moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from wsnode.errors import BackendUnavailable
from wsnode.hub import Conn, Hub
from wsnode.ids import PodId
from wsnode.presence import PodLifecycle, PodState
from wsnode.protocol import CloseCode, Reserved, control_frame

log = logging.getLogger("wsnode.node")


async def send_away(conn: Conn) -> None:
    conn.push(control_frame(Reserved.RECONNECT, {
        "reason": "drain", "retryAfterMs": random.randint(0, 250)}))
    await conn.close(CloseCode.DRAIN, "pod draining: reconnect")


async def move_everyone(hub: Hub, over: float, deadline: float) -> None:
    """Send every connection of ``hub`` away (see the module); ``deadline`` is a
    loop time."""
    loop = asyncio.get_running_loop()
    conns = list(hub)
    random.shuffle(conns)
    step = over / len(conns) if conns else 0.0
    start = loop.time()
    closers: list[asyncio.Task[None]] = []
    for i, conn in enumerate(conns):
        wait = start + i * step - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        closers.append(loop.create_task(send_away(conn)))
    # A handshake that was past its 503 check when the drain began opens a
    # connection after the snapshot above: send those away too.
    sent = {c.id for c in conns}
    while late := [c for c in hub if c.id not in sent and not c.closing]:
        if loop.time() >= deadline:
            break
        sent.update(c.id for c in late)
        closers += [loop.create_task(send_away(c)) for c in late]
        await asyncio.sleep(0.05)
    if closers:
        await asyncio.wait(closers, timeout=max(0.1, deadline - loop.time()))


async def drain_hub(hub: Hub, presence: PodLifecycle, pod: PodId, over: float,
                    within: float) -> None:
    """List ``pod`` as draining, then move everyone over ``over`` seconds (at most
    80% of ``within``), all within ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    over = max(0.0, min(over, within * 0.8))
    log.info("draining %d connections over %.1fs", len(hub), over, extra={"pod": pod})
    with contextlib.suppress(BackendUnavailable):
        await presence.heartbeat(pod, PodState.DRAINING)
    await move_everyone(hub, over, deadline)
    # Each closed connection left presence as it closed. The pod itself stays
    # listed, as draining with no connections, until it stops: operators see
    # a drained pod that is still up, and nothing routes to it.
    log.info("drained (%d connections left)", len(hub), extra={"pod": pod})
