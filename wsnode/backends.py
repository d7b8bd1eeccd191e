"""The four backends of a node, chosen from settings.

Embedded (nothing configured): every backend in memory. Cluster (Redis and
RabbitMQ URLs set): the shared implementations. Both sides implement the same
Protocols, so the node's code paths are the same in both modes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from wsnode.acks import AckPolicy, AckStore, MemoryAckStore
from wsnode.bus import Bus, MemoryBus
from wsnode.clock import Clock, SystemClock
from wsnode.limiter import MemoryLimiter, NoLimiter, RateLimiter
from wsnode.presence import MemoryPresence, Presence
from wsnode.settings import NodeSettings


@dataclass
class Backends:
    presence: Presence
    limiter: RateLimiter
    acks: AckStore
    bus: Bus
    # Called in order on close (connection pools and the like).
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Readiness checks: name -> True when the backend is reachable.
    checks: dict[str, Callable[[], bool]] = field(default_factory=dict)

    async def close(self) -> None:
        for close in self.closers:
            await close()


def ack_policy(settings: NodeSettings) -> AckPolicy:
    return AckPolicy(
        retry_interval_ms=int(settings.ack_retry_interval * 1000),
        max_attempts=settings.ack_max_attempts,
        ttl_ms=int(settings.ack_ttl * 1000),
    )


def memory_backends(settings: NodeSettings, clock: Clock | None = None) -> Backends:
    clock = clock or SystemClock()
    rate = settings.rate_limit
    return Backends(
        presence=MemoryPresence(int(settings.lease_seconds * 1000), clock),
        limiter=MemoryLimiter(rate, clock) if rate is not None else NoLimiter(),
        acks=MemoryAckStore(ack_policy(settings), clock),
        bus=MemoryBus(),
    )
