"""GCRA rate limiter on the memory backend, with a hand-moved clock."""

from __future__ import annotations

import pytest

from wsnode.clock import ManualClock
from wsnode.ids import UserId
from wsnode.limiter import MemoryLimiter, NoLimiter, gcra
from wsnode.settings import Rate

ALICE = UserId("alice")
BOB = UserId("bob")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def limiter(clock: ManualClock) -> MemoryLimiter:
    return MemoryLimiter(Rate(20, 10.0), clock)


async def test_burst_of_exactly_count(limiter: MemoryLimiter) -> None:
    for _ in range(20):
        assert (await limiter.hit(ALICE)).allowed
    refused = await limiter.hit(ALICE)
    assert not refused.allowed
    assert refused.retry_after_ms == 500


async def test_refusals_do_not_consume(limiter: MemoryLimiter, clock: ManualClock) -> None:
    for _ in range(20):
        await limiter.hit(ALICE)
    for _ in range(10):
        assert not (await limiter.hit(ALICE)).allowed
    clock.advance(500)
    assert (await limiter.hit(ALICE)).allowed


async def test_one_more_after_one_interval(limiter: MemoryLimiter, clock: ManualClock) -> None:
    for _ in range(20):
        await limiter.hit(ALICE)
    clock.advance(499)
    early = await limiter.hit(ALICE)
    assert not early.allowed
    assert early.retry_after_ms == 1
    clock.advance(1)
    assert (await limiter.hit(ALICE)).allowed
    again = await limiter.hit(ALICE)
    assert not again.allowed
    assert again.retry_after_ms == 500


async def test_retry_after_shrinks_as_time_passes(
    limiter: MemoryLimiter, clock: ManualClock
) -> None:
    for _ in range(20):
        await limiter.hit(ALICE)
    clock.advance(200)
    assert (await limiter.hit(ALICE)).retry_after_ms == 300


async def test_steady_rate_is_sustained(limiter: MemoryLimiter, clock: ManualClock) -> None:
    for _ in range(20):
        await limiter.hit(ALICE)
    allowed = 0
    for _ in range(100):  # 50 s at one hit every 500 ms: every hit allowed
        clock.advance(500)
        allowed += (await limiter.hit(ALICE)).allowed
    assert allowed == 100


async def test_full_bucket_after_a_period(limiter: MemoryLimiter, clock: ManualClock) -> None:
    for _ in range(20):
        await limiter.hit(ALICE)
    clock.advance(10_000)
    results = [(await limiter.hit(ALICE)).allowed for _ in range(21)]
    assert results == [True] * 20 + [False]


async def test_idle_time_does_not_bank_more_than_the_burst(
    limiter: MemoryLimiter, clock: ManualClock
) -> None:
    clock.advance(3_600_000)
    results = [(await limiter.hit(ALICE)).allowed for _ in range(21)]
    assert results.count(True) == 20


async def test_users_are_independent(limiter: MemoryLimiter) -> None:
    for _ in range(20):
        await limiter.hit(ALICE)
    assert not (await limiter.hit(ALICE)).allowed
    results = [(await limiter.hit(BOB)).allowed for _ in range(21)]
    assert results == [True] * 20 + [False]


async def test_pruning_does_not_change_answers(clock: ManualClock) -> None:
    """Enough hits to trigger the limiter's periodic pruning; answers match a
    reference that keeps every user's state forever."""
    rate = Rate(30, 1.0)
    limiter = MemoryLimiter(rate, clock)
    reference: dict[str, float] = {}
    mismatches = 0
    for i in range(12_000):
        # Bursts of 40 hits per user, then idle while the others take turns:
        # idle users are what pruning forgets.
        user = UserId(f"u{(i // 40) % 30}")
        clock.advance(3 if i % 4 else 0)
        decision = await limiter.hit(user)
        allowed, tat, retry = gcra(reference.get(user, 0.0), clock.now_ms(), rate)
        if allowed:
            reference[user] = tat
        mismatches += (decision.allowed, decision.retry_after_ms) != (allowed, retry)
    assert mismatches == 0


def test_gcra_step_arithmetic() -> None:
    rate = Rate(4, 2.0)  # one every 500 ms, burst 4
    allowed, tat, retry = gcra(0.0, 1000, rate)
    assert (allowed, tat, retry) == (True, 1500.0, 0)
    allowed, tat, retry = gcra(3000.0, 1000, rate)  # bucket full: 2000 ms of credit used
    assert (allowed, tat, retry) == (False, 3000.0, 500)


async def test_no_limiter_allows_everything() -> None:
    limiter = NoLimiter()
    assert all([(await limiter.hit(ALICE)).allowed for _ in range(1000)])
