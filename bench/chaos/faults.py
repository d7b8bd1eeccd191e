"""Faults at random times, and the timeline of what was done when.

Kinds (weights in :data:`WEIGHTS`):

* ``pod_sigkill``: SIGKILL a pod, restart it with the same id 0.5-3 s later;
* ``pod_sigterm``: SIGTERM a pod (it drains), wait for it to exit (SIGKILL
  after the drain timeout), restart it with the same id;
* ``amqp_cut``: cut one pod's RabbitMQ proxy for 2-6 s (both ends see a reset);
* ``redis_client_kill``: ``CLIENT KILL TYPE normal`` on the private Redis;
* ``redis_readonly``: ``REPLICAOF`` a dead port for 2-5 s (writes: READONLY);
* ``redis_noreplicas``: ``min-replicas-to-write 1`` for 2-5 s (writes: NOREPLICAS);
* ``redis_restart``: SIGKILL the Redis server, start it again on the same port
  and directory 0.5-2 s later (AOF keeps the data).

Faults overlap, within limits that keep the run meaningful: one fault at a
time per pod and one at a time on Redis, and never every pod down at once (at
most ``pods - 1`` of them), so producers always have a pod to send to.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench.chaos.world import DRAIN_TIMEOUT, World
from tests.support.redis_faults import kill_clients, noreplicas_window, readonly_window

Clock = Callable[[], float]

WEIGHTS = {
    "pod_sigkill": 3, "pod_sigterm": 2, "amqp_cut": 3, "redis_client_kill": 2,
    "redis_readonly": 2, "redis_noreplicas": 2, "redis_restart": 1,
}
KINDS = tuple(WEIGHTS)


@dataclass(slots=True)
class FaultEvent:
    kind: str
    target: str
    start: float
    end: float | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "start": round(self.start, 3),
                "end": None if self.end is None else round(self.end, 3),
                "detail": self.detail}

    def describe(self) -> str:
        span = f"{self.start:.1f}s" if self.end is None or self.end - self.start < 0.05 \
            else f"{self.start:.1f}-{self.end:.1f}s"
        return f"{self.kind}({self.target}) at {span}"


class FaultInjector:
    def __init__(self, world: World, rng: random.Random, clock: Clock, *,
                 kinds: tuple[str, ...], mean_interval: float) -> None:
        self.world = world
        self.rng = rng
        self.clock = clock
        self.kinds = kinds
        self.mean_interval = mean_interval
        self.timeline: list[FaultEvent] = []
        self.errors: list[str] = []
        self._busy: set[str] = set()  # pods and "redis" with a fault in progress
        self._down: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, until: float) -> None:
        """Inject faults until ``until`` (clock time), then wait for the faults
        in progress to end (each is bounded)."""
        try:
            while self.clock() < until:
                pause = self.rng.expovariate(1.0 / self.mean_interval) if self.kinds \
                    else until - self.clock()
                await asyncio.sleep(min(pause, max(0.0, until - self.clock())))
                if self.clock() >= until:
                    break
                self._inject()
            if self._tasks:
                await asyncio.gather(*self._tasks)
        finally:
            for task in self._tasks:
                task.cancel()

    def _inject(self) -> None:
        kinds = list(self.kinds)
        weights = [WEIGHTS[k] for k in kinds]
        for _ in range(10):  # a few draws until one fits the limits
            kind = self.rng.choices(kinds, weights)[0]
            target = self._target(kind)
            if target is not None:
                break
        else:
            return
        self._busy.add(target)
        event = FaultEvent(kind, target, self.clock())
        self.timeline.append(event)
        task = asyncio.create_task(self._apply(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _target(self, kind: str) -> str | None:
        if kind.startswith("redis"):
            return None if "redis" in self._busy else "redis"
        free = [p for p in self.world.pod_ids if p not in self._busy]
        if kind.startswith("pod_") and len(self._down) >= len(self.world.pod_ids) - 1:
            return None
        return self.rng.choice(free) if free else None

    async def _apply(self, event: FaultEvent) -> None:
        action: dict[str, Callable[[FaultEvent], Awaitable[None]]] = {
            "pod_sigkill": self._pod_sigkill, "pod_sigterm": self._pod_sigterm,
            "amqp_cut": self._amqp_cut, "redis_client_kill": self._redis_client_kill,
            "redis_readonly": self._redis_readonly, "redis_noreplicas": self._redis_noreplicas,
            "redis_restart": self._redis_restart,
        }
        try:
            await action[event.kind](event)
        except Exception as exc:  # a fault that could not be made: part of the report
            event.detail = f"{event.detail} failed: {exc!r}".strip()
            self.errors.append(f"{event.describe()}: {exc!r}")
        finally:
            event.end = self.clock()
            self._busy.discard(event.target)
            self._down.discard(event.target)

    async def _restart(self, event: FaultEvent) -> None:
        if not await self.world.start_pod(event.target):
            raise RuntimeError(f"pod {event.target} did not come back")

    async def _pod_sigkill(self, event: FaultEvent) -> None:
        self._down.add(event.target)
        self.world.pods[event.target].kill()
        await asyncio.sleep(self.rng.uniform(0.5, 3.0))
        await self._restart(event)

    async def _pod_sigterm(self, event: FaultEvent) -> None:
        self._down.add(event.target)
        pod = self.world.pods[event.target]
        pod.signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(pod.wait, DRAIN_TIMEOUT + 5)
            event.detail = f"exit {code}"
        except Exception:
            pod.kill()
            event.detail = "drain overran: SIGKILL"
        await asyncio.sleep(self.rng.uniform(0.2, 2.0))
        await self._restart(event)

    async def _amqp_cut(self, event: FaultEvent) -> None:
        proxy = self.world.proxies[event.target]
        await proxy.cut()
        try:
            await asyncio.sleep(self.rng.uniform(2.0, 6.0))
        finally:
            await proxy.restore()

    async def _redis_client_kill(self, event: FaultEvent) -> None:
        event.detail = f"{await kill_clients(self.world.redis.url)} clients"

    async def _redis_readonly(self, event: FaultEvent) -> None:
        async with readonly_window(self.world.redis.url):
            await asyncio.sleep(self.rng.uniform(2.0, 5.0))

    async def _redis_noreplicas(self, event: FaultEvent) -> None:
        async with noreplicas_window(self.world.redis.url):
            await asyncio.sleep(self.rng.uniform(2.0, 5.0))

    async def _redis_restart(self, event: FaultEvent) -> None:
        self.world.redis.kill()
        await asyncio.sleep(self.rng.uniform(0.5, 2.0))
        await asyncio.to_thread(self.world.redis.start)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(self.kinds, 0)
        for event in self.timeline:
            out[event.kind] += 1
        return out

    def near(self, start: float, end: float) -> list[FaultEvent]:
        """Faults active at some point of ``[start, end]``."""
        return [e for e in self.timeline
                if e.start <= end and (e.end if e.end is not None else e.start) >= start]

