"""Contract of :class:`wsnode.limiter.RateLimiter`, run against every backend.

Rates here are slow (one token every few seconds) so that a burst finishes
well inside one interval even against a remote store; the exact GCRA
arithmetic is pinned in tests/unit/test_limiter.py.
"""

from __future__ import annotations

import asyncio

from tests.contract.factories import LimiterFactory
from tests.contract.poll import eventually
from wsnode.ids import UserId
from wsnode.limiter import Decision
from wsnode.settings import Rate

ALICE = UserId("alice")
BOB = UserId("bob")


async def test_burst_of_count_then_refused(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter(Rate(5, 60.0))  # a token every 12 s
    decisions = [await limiter.hit(ALICE) for _ in range(7)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert all(d.retry_after_ms == 0 for d in decisions[:5])
    for refused in decisions[5:]:
        assert 0 < refused.retry_after_ms <= 12_000
        assert refused.retry_after_ms > 11_000  # coarse: the burst took < 1 s


async def test_concurrent_hits_never_exceed_the_rate(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter(Rate(10, 60.0))
    decisions = await asyncio.gather(*(limiter.hit(ALICE) for _ in range(50)))
    assert sum(d.allowed for d in decisions) == 10


async def test_users_are_independent(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter(Rate(3, 60.0))
    assert [(await limiter.hit(ALICE)).allowed for _ in range(4)] == [True, True, True, False]
    assert [(await limiter.hit(BOB)).allowed for _ in range(4)] == [True, True, True, False]
    odd = UserId("ユーザー a b:c{d}")
    assert [(await limiter.hit(odd)).allowed for _ in range(4)] == [True, True, True, False]


async def test_tokens_come_back_with_time(make_limiter: LimiterFactory) -> None:
    limiter = await make_limiter(Rate(4, 1.0))  # a token every 250 ms
    for _ in range(4):
        assert (await limiter.hit(ALICE)).allowed
    refused = await limiter.hit(ALICE)
    assert not refused.allowed
    assert 0 < refused.retry_after_ms <= 250

    async def hit() -> Decision:
        return await limiter.hit(ALICE)

    allowed = await eventually(hit, lambda d: d.allowed, timeout=2.0)
    assert allowed.retry_after_ms == 0
