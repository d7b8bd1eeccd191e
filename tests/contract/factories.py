"""Types of the backend factory fixtures defined in conftest.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from wsnode.acks import AckBackend, AckPolicy
from wsnode.limiter import RateLimiter
from wsnode.presence import Presence
from wsnode.settings import Rate

PresenceFactory = Callable[..., Awaitable[Presence]]
LimiterFactory = Callable[[Rate], Awaitable[RateLimiter]]
AcksFactory = Callable[[AckPolicy], Awaitable[AckBackend]]
Closer = Callable[[], Awaitable[None]]
