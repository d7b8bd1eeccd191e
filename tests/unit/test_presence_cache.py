"""CachedPresence over the memory presence, on a hand-moved clock."""

from __future__ import annotations

import asyncio

from wsnode.ids import ConnId, PodId, UserId
from wsnode.presence import MemoryPresence
from wsnode.presence_cache import CachedPresence

ANN, BOB = UserId("ann"), UserId("bob")
A, B = PodId("a"), PodId("b")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Counting(MemoryPresence):
    """The memory presence, counting reads (what the cache saves)."""

    def __init__(self) -> None:
        super().__init__(lease_ms=3_600_000)
        self.reads = 0

    async def pods_of(self, users):  # type: ignore[no-untyped-def]
        self.reads += 1
        return await super().pods_of(users)


async def setup() -> tuple[Counting, CachedPresence, Clock]:
    store, clock = Counting(), Clock()
    await store.join(A)
    await store.join(B)
    await store.add(A, ANN, ConnId("c1"), 0)
    cache = CachedPresence(store, ttl_s=10.0, clock=clock)
    cache.listening(True)
    return store, cache, clock


async def test_a_steady_conversation_reads_the_store_once() -> None:
    store, cache, _ = await setup()
    for _ in range(5):
        assert await cache.pods_of([ANN]) == {ANN: {A}}
    assert await cache.pods_of([BOB]) == {}  # offline is an answer too
    assert await cache.pods_of([BOB]) == {}
    assert store.reads == 2


async def test_an_announcement_drops_the_entry() -> None:
    store, cache, _ = await setup()
    await cache.pods_of([ANN])
    await store.add(B, ANN, ConnId("c2"), 0)  # a second device, on pod b
    cache.changed([ANN])
    assert await cache.pods_of([ANN]) == {ANN: {A, B}}
    assert store.reads == 2


async def test_a_read_that_crossed_an_announcement_is_not_kept() -> None:
    store, cache, clock = await setup()
    gate = asyncio.Event()
    slow = store.pods_of

    async def crossing(users):  # type: ignore[no-untyped-def]
        found = await slow(users)  # read before the change ...
        await gate.wait()  # ... answered after the announcement arrived
        return found

    store.pods_of = crossing  # type: ignore[method-assign]
    pending = asyncio.create_task(cache.pods_of([ANN]))
    await asyncio.sleep(0)
    clock.now += 0.001
    cache.changed([ANN])
    gate.set()
    assert await pending == {ANN: {A}}
    store.pods_of = slow  # type: ignore[method-assign]
    await cache.pods_of([ANN])
    assert store.reads == 2  # the crossed answer was not kept


async def test_entries_expire_and_nothing_is_kept_while_deaf() -> None:
    store, cache, clock = await setup()
    await cache.pods_of([ANN])
    clock.now += 10.0
    await cache.pods_of([ANN])
    assert store.reads == 2
    cache.listening(False)  # the feed is lost: every lookup reads the store
    await cache.pods_of([ANN])
    await cache.pods_of([ANN])
    assert store.reads == 4
    cache.listening(True)
    await cache.pods_of([ANN])
    await cache.pods_of([ANN])
    assert store.reads == 5


class Gated(Counting):
    """Reads wait for ``gate``: lookups that miss meanwhile overlap the read."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.fail: Exception | None = None

    async def pods_of(self, users):  # type: ignore[no-untyped-def]
        self.reads += 1
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return await MemoryPresence.pods_of(self, users)


async def gated() -> tuple[Gated, CachedPresence]:
    store = Gated()
    await store.join(A)
    await store.add(A, ANN, ConnId("c1"), 0)
    cache = CachedPresence(store, ttl_s=10.0, clock=Clock())
    cache.listening(True)
    return store, cache


async def test_concurrent_misses_for_one_user_share_one_read() -> None:
    store, cache = await gated()
    lookups = [asyncio.ensure_future(cache.pods_of([ANN])) for _ in range(50)]
    await asyncio.sleep(0)
    store.gate.set()
    assert await asyncio.gather(*lookups) == [{ANN: {A}}] * 50
    assert store.reads == 1


async def test_a_shared_read_that_fails_fails_every_lookup_waiting_on_it() -> None:
    store, cache = await gated()
    store.fail = ConnectionError("store gone")
    lookups = [asyncio.ensure_future(cache.pods_of([ANN])) for _ in range(3)]
    await asyncio.sleep(0)
    store.gate.set()
    outcomes = await asyncio.gather(*lookups, return_exceptions=True)
    assert [type(o) for o in outcomes] == [ConnectionError] * 3 and store.reads == 1
    store.fail = None
    assert await cache.pods_of([ANN]) == {ANN: {A}}  # nothing failed was kept


async def test_when_the_reading_lookup_is_cancelled_the_others_read_themselves() -> None:
    store, cache = await gated()
    first = asyncio.ensure_future(cache.pods_of([ANN]))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(cache.pods_of([ANN]))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    store.gate.set()
    assert await second == {ANN: {A}}
    assert first.cancelled() and store.reads == 2
