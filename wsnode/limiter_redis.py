"""The per-user rate limiter in Redis, shared by every pod (``lua/limiter.lua``).

Same GCRA as :class:`wsnode.limiter.MemoryLimiter`, one atomic script call per
hit, keyed by user, so a user cannot get N times the limit by spreading
connections over N pods. When Redis cannot be reached it fails open: the hit
is allowed, ``on_fail_open`` is called (a metric), and one warning is logged
per outage, not per message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from wsnode.coalescer import Coalescer
from wsnode.errors import WsnodeError
from wsnode.ids import UserId
from wsnode.keys import RedisKeys
from wsnode.limiter import ALLOW, Decision
from wsnode.outage import Outage
from wsnode.redis_conn import Redis, script, translated
from wsnode.settings import Rate

log = logging.getLogger("wsnode.limiter")


class RedisLimiter:
    def __init__(self, client: Redis, keys: RedisKeys, rate: Rate,
                 on_fail_open: Callable[[], None] | None = None) -> None:
        self.rate = rate
        self._k = keys
        self._script = script(client, "limiter")
        self._batch = Coalescer(client)
        self._period_ms = rate.period * 1000
        self._on_fail_open = on_fail_open
        self._outage = Outage(log, "rate limiter store (failing open)")

    async def hit(self, user: UserId) -> Decision:
        try:
            with translated("rate limit"):
                key, args = self._k.user_rate(user), [self.rate.count, self._period_ms]
                # One script call per client message: coalesced with this tick's others.
                allowed, retry = await self._batch.script(self._script, [key], args)
        except WsnodeError as exc:
            # Unreachable, or a corrupt record: either way a user is not locked out.
            self._outage.failed(exc)
            if self._on_fail_open is not None:
                self._on_fail_open()
            return ALLOW
        self._outage.recovered()
        return ALLOW if allowed else Decision(False, int(retry))
