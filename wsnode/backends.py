"""The backends of a node, chosen from settings: the one factory.

Embedded (nothing configured): every backend in memory. ``WSNODE_REDIS_URL``:
presence, rate limiter, ACK store and trails in Redis. ``WSNODE_AMQP_URL`` as
well: the RabbitMQ bus, so pods deliver to each other (cluster mode). Every
side implements the same Protocols, so the node's code paths are the same in
all modes. ``wsctl`` builds its backends here too (``tool=True``), so a send
from wsctl stores, schedules and routes exactly as a pod's does.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from wsnode.acks import AckBackend, AckPolicy
from wsnode.acks_memory import MemoryAcks
from wsnode.bus import Bus, MemoryBus
from wsnode.clock import Clock, SystemClock
from wsnode.errors import SettingsError
from wsnode.keys import AmqpNames, RedisKeys
from wsnode.limiter import MemoryLimiter, NoLimiter, RateLimiter
from wsnode.metrics import Metrics
from wsnode.presence import MemoryPresence, Presence
from wsnode.presence_cache import PresenceFeed
from wsnode.settings import NodeSettings
from wsnode.topics import MemoryTopics, TopicRegistry
from wsnode.trace import MemoryTracer, NoTracer, Tracer

log = logging.getLogger("wsnode.backends")


@dataclass
class Backends:
    presence: Presence
    limiter: RateLimiter
    acks: AckBackend
    bus: Bus
    # False when no other pod can be reached (no shared bus): sends skip the
    # presence lookup, which could only name this pod.
    shared_bus: bool = True
    tracer: Tracer = field(default_factory=NoTracer)
    # Announcements of presence changes, for the senders' caches (shared stores only).
    presence_feed: PresenceFeed | None = None
    # Topic membership of every pod (None: this pod's subscriptions are its own).
    topics: TopicRegistry | None = None
    # Called in order on close (connection pools and the like).
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def close(self) -> None:
        """Stop the bus, write buffered trails, close pools (idempotent)."""
        await self.bus.stop()
        await self.tracer.aclose()
        for close in self.closers:
            await close()


def ack_policy(settings: NodeSettings) -> AckPolicy:
    return AckPolicy(
        retry_interval_ms=int(settings.ack_retry_interval * 1000),
        max_attempts=settings.ack_max_attempts,
        ttl_ms=int(settings.ack_ttl * 1000),
        max_pending_per_user=settings.ack_max_pending,
        relayed_max_pending=settings.relayed_max_pending,
        relayed_budget=settings.relayed_budget,
    )


def memory_backends(settings: NodeSettings, clock: Clock | None = None) -> Backends:
    clock = clock or SystemClock()
    rate = settings.rate_limit
    presence = MemoryPresence(int(settings.lease_seconds * 1000), clock)
    return Backends(
        presence=presence,
        limiter=MemoryLimiter(rate, clock) if rate is not None else NoLimiter(),
        acks=MemoryAcks(ack_policy(settings), clock),
        bus=MemoryBus(),
        shared_bus=False,
        tracer=MemoryTracer(int(settings.trace_ttl * 1000), clock=clock),
        topics=MemoryTopics(presence),
    )


def build_backends(settings: NodeSettings, metrics: Metrics, clock: Clock | None = None,
                   *, tool: bool = False) -> Backends:
    """The backends ``settings`` ask for (see the module docstring). ``tool``:
    for a short-lived client such as wsctl (a small pool, presence read without
    a cache, a publish-only bus)."""
    if settings.redis_url is None:
        if settings.amqp_url is not None:
            raise SettingsError(
                "invalid settings: WSNODE_AMQP_URL needs WSNODE_REDIS_URL as well "
                "(presence tells the bus where users are)")
        return memory_backends(settings, clock)
    from wsnode import redis_conn
    from wsnode.acks_redis import RedisAcks
    from wsnode.limiter_redis import RedisLimiter
    from wsnode.presence_feed_redis import RedisPresenceFeed
    from wsnode.presence_redis import RedisPresence
    from wsnode.topics_redis import RedisTopics
    from wsnode.trace_redis import RedisTracer

    client = redis_conn.connect(settings.redis_url, max_connections=8 if tool else 64)
    keys = RedisKeys(settings.key_prefix)
    rate = settings.rate_limit
    limiter: RateLimiter = NoLimiter()
    if rate is not None:
        limiter = RedisLimiter(client, keys, rate, on_fail_open=metrics.limiter_fail_open.inc)
    bus: Bus
    if settings.amqp_url is not None:
        from wsnode.bus_rabbitmq import RabbitBus

        secret = settings.cluster_secret
        if secret is None and not tool:
            log.warning("WSNODE_CLUSTER_SECRET is not set: messages between pods are not "
                        "authenticated, so whoever can publish to RabbitMQ can forge them")
        bus = RabbitBus(settings.amqp_url, AmqpNames(settings.key_prefix),
                        canary_interval=settings.heartbeat_interval,
                        message_ttl_ms=int(settings.bus_message_ttl * 1000),
                        secret=secret.get_secret_value().encode() if secret else None,
                        on_batch=metrics.bus_batches_out.inc)
    else:
        if not tool:
            log.warning("WSNODE_REDIS_URL without WSNODE_AMQP_URL: state is shared in Redis, "
                        "but messages reach only this pod's connections")
        bus = MemoryBus()
    lease_ms = int(settings.lease_seconds * 1000)
    presence = RedisPresence(client, keys, lease_ms=lease_ms, live_cache_ms=0 if tool else 1000)
    return Backends(
        presence=presence,
        limiter=limiter,
        acks=RedisAcks(client, keys, ack_policy(settings)),
        bus=bus,
        shared_bus=settings.amqp_url is not None,
        tracer=RedisTracer(client, keys, int(settings.trace_ttl * 1000)),
        presence_feed=RedisPresenceFeed(client, keys) if settings.amqp_url else None,
        topics=RedisTopics(client, keys, presence),
        closers=[client.aclose],
    )
