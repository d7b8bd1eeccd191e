"""Types of the backend factory fixtures defined in conftest.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tests.integration.conftest import Inbox
from wsnode.acks import AckBackend, AckPolicy
from wsnode.bus import Bus
from wsnode.limiter import RateLimiter
from wsnode.presence import Presence
from wsnode.settings import Rate
from wsnode.topics import TopicRegistry
from wsnode.trace import Tracer

PresenceFactory = Callable[..., Awaitable[Presence]]
TopicsFactory = Callable[..., Awaitable[tuple[Presence, TopicRegistry]]]
"""``await make_topics(lease_ms=...)``: a presence and the topic registry living by it."""
LimiterFactory = Callable[[Rate], Awaitable[RateLimiter]]
AcksFactory = Callable[[AckPolicy], Awaitable[AckBackend]]
Closer = Callable[[], Awaitable[None]]
BusFactory = Callable[..., Awaitable[tuple[Bus, Inbox]]]
"""``await make_bus(pod, inbox=None)``: a bus started as ``pod`` with the handlers
of ``inbox`` (a fresh Inbox by default), and that inbox; ``make_bus(None)``: a
publish-only bus (never started) and an unused Inbox."""
TracerFactory = Callable[..., Awaitable[Tracer]]
"""``await make_tracer(ttl_ms=..., clock=..., reachable=True)``."""
