"""The deaf-pod check of :class:`~wsnode.bus_rabbitmq.RabbitBus` (DESIGN §8).

A pod that is alive but no longer consuming its queue is the most common
silent failure of a bus: publishes to it succeed, nothing arrives. So the pod
sends a ``canary`` message to its own queue every ``interval`` and watches for
it to come back:

* ``hearing`` is False once no canary came back for two intervals (also when
  the pod is that far behind its own queue): the bus is not ready;
* after four silent intervals with nothing else arriving on the pod queue
  either (a slow pod still receives its backlog), the session is failed, so
  the supervisor starts a new one.

Canary tokens name this bus instance, so the canaries of an earlier process
with the same pod id (left in the queue) are ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from wsnode.bus import Unroutable
from wsnode.bus_rabbitmq_session import Session
from wsnode.errors import BackendUnavailable
from wsnode.ids import PodId

log = logging.getLogger("wsnode.bus")

SendCanary = Callable[[Session, bytes, float], Awaitable[None]]
"""Publish a canary body to this pod's queue, confirmed within the given seconds;
raises Unroutable (no queue) or BackendUnavailable."""

_KEEP = 16  # canaries awaited at once; older ones are forgotten


class Canary:
    """Deaf-pod state of one bus and the loop that probes it (see the module)."""

    def __init__(self, interval: float, instance: str, publish_timeout: float) -> None:
        self.interval = interval
        self._instance = instance
        self._publish_timeout = publish_timeout
        self._sent: dict[str, float] = {}
        self._seq = 0
        self._heard_at = 0.0  # last canary back (monotonic)
        self._pod_heard_at = 0.0  # last message of any type on the pod queue
        self._deaf = False
        self.last_rtt: float | None = None
        """Seconds from publishing the last returned canary to consuming it."""

    @property
    def silent_for(self) -> float:
        """Seconds since the last canary came back (or the session began)."""
        return time.monotonic() - self._heard_at

    @property
    def hearing(self) -> bool:
        return self.silent_for <= 2 * self.interval

    def reset(self) -> None:
        """A fresh session gets a grace period of two intervals."""
        self._heard_at = self._pod_heard_at = time.monotonic()
        self._deaf = False

    def heard_pod(self) -> None:
        """Something (of any type) arrived on the pod queue."""
        self._pod_heard_at = time.monotonic()

    def back(self, body: bytes, pod: PodId | None) -> None:
        """A canary came back through the pod queue."""
        sent = self._sent.pop(body.decode(errors="replace"), None)
        if sent is None:
            return  # an earlier process with this pod id, or pruned
        now = time.monotonic()
        self.last_rtt = now - sent
        self._heard_at = now
        if self._deaf:
            self._deaf = False
            log.info("bus hears its own queue again", extra={"pod": pod})

    async def run(self, session: Session, pod: PodId, send: SendCanary) -> None:
        """Probe every ``interval`` until the session is failed (returns) or
        cancelled."""
        interval = self.interval
        loop = asyncio.get_running_loop()
        while True:
            tick = loop.time()
            now = time.monotonic()
            silent = now - self._heard_at
            if silent > 2 * interval and not self._deaf:
                self._deaf = True
                log.warning("bus is deaf: no canary back for %.1fs", silent, extra={"pod": pod})
            if silent > 4 * interval and now - self._pod_heard_at > 4 * interval:
                # Nothing at all arrives: the consumer is gone without us being
                # told (or the network holds back what the broker sends). Start over.
                session.fail(f"deaf for {silent:.1f}s")
                return
            self._seq += 1
            token = f"{self._instance}.{self._seq}"
            self._sent[token] = now
            while len(self._sent) > _KEEP:
                del self._sent[next(iter(self._sent))]
            try:
                await send(session, token.encode(),
                           min(self._publish_timeout, max(interval, 1.0)))
            except Unroutable:
                session.fail("this pod's own queue is gone")
                return
            except BackendUnavailable as exc:
                log.debug("canary publish failed: %s", exc)
            await asyncio.sleep(max(0.0, tick + interval - loop.time()))
