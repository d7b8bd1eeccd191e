"""Contract of :class:`wsnode.topics.TopicRegistry`, run against every backend.

The registry lives by presence's leases: every test joins its pods in the
presence the factory made with it. Lease tests run on the backend's own clock
with a short lease and a bounded poll, as the presence contract's do.
"""

from __future__ import annotations

import time

import pytest

from tests.contract.factories import TopicsFactory
from tests.contract.poll import eventually
from wsnode.ids import PodId
from wsnode.presence import PodState, Presence
from wsnode.topics import TopicInfo, TopicRegistry

P1, P2, P3 = PodId("pod-1"), PodId("pod-2"), PodId("pod-3")
SHORT_LEASE_MS = 300


@pytest.fixture
async def pair(make_topics: TopicsFactory) -> tuple[Presence, TopicRegistry]:
    presence, topics = await make_topics(lease_ms=30_000)
    await presence.join(P1)
    await presence.join(P2)
    return presence, topics


def rows(infos: list[TopicInfo]) -> list[tuple[str, int, dict[PodId, int]]]:
    return [(i.topic, i.connections, i.pods) for i in infos]


async def test_empty(pair: tuple[Presence, TopicRegistry]) -> None:
    _, topics = pair
    assert await topics.pods_of("news") == {}
    assert await topics.topics() == []


async def test_counts_per_pod_are_absolute_and_zero_removes(
        pair: tuple[Presence, TopicRegistry]) -> None:
    _, topics = pair
    assert await topics.write(P1, {"news": 2, "room:1": 1}) is True
    assert await topics.write(P2, {"news": 1}) is True
    assert await topics.pods_of("news") == {P1: 2, P2: 1}
    assert await topics.pods_of("room:1") == {P1: 1}
    assert rows(await topics.topics()) == [("news", 3, {P1: 2, P2: 1}),
                                           ("room:1", 1, {P1: 1})]

    await topics.write(P1, {"news": 5})
    await topics.write(P1, {"news": 5})  # a repeated write changes nothing
    assert await topics.pods_of("news") == {P1: 5, P2: 1}
    await topics.write(P2, {"news": 0})
    await topics.write(P1, {"room:1": 0})
    assert await topics.pods_of("news") == {P1: 5}
    assert await topics.pods_of("room:1") == {}
    assert rows(await topics.topics()) == [("news", 5, {P1: 5})]


async def test_names_with_every_allowed_character(pair: tuple[Presence, TopicRegistry]) -> None:
    _, topics = pair
    name = "Az09_.:@-" + "x" * 119
    await topics.write(P1, {name: 1})
    assert await topics.pods_of(name) == {P1: 1}
    assert [i.topic for i in await topics.topics()] == [name]


async def test_a_pod_that_has_not_joined_writes_nothing(
        pair: tuple[Presence, TopicRegistry]) -> None:
    _, topics = pair
    assert topics.life(P3) is None
    assert await topics.write(P3, {"news": 1}) is False
    assert await topics.announce(P3, {"news": 1}) is False
    assert await topics.pods_of("news") == {}


async def test_announce_replaces_the_pods_membership(
        pair: tuple[Presence, TopicRegistry]) -> None:
    _, topics = pair
    await topics.write(P1, {"a": 1, "b": 2})
    await topics.write(P2, {"a": 1})
    assert await topics.announce(P1, {"b": 3, "c": 1}) is True
    assert rows(await topics.topics()) == [("a", 1, {P2: 1}), ("b", 3, {P1: 3}),
                                           ("c", 1, {P1: 1})]


async def test_leave_removes_only_that_pod(pair: tuple[Presence, TopicRegistry]) -> None:
    presence, topics = pair
    await topics.write(P1, {"a": 1})
    await topics.write(P2, {"a": 2})
    await topics.leave(P1)
    await presence.leave(P1)
    assert await topics.pods_of("a") == {P2: 2}
    assert await topics.reap() == 0


async def test_a_silent_pods_membership_is_gone_within_its_lease(
        make_topics: TopicsFactory) -> None:
    presence, topics = await make_topics(lease_ms=SHORT_LEASE_MS)
    await presence.join(P1)
    await presence.join(P2)
    await topics.write(P1, {"news": 1, "only-p1": 4})
    await topics.write(P2, {"news": 2})
    started = time.monotonic()
    assert await topics.pods_of("news") == {P1: 1, P2: 2}

    async def news() -> dict[PodId, int]:
        await presence.heartbeat(P2, PodState.ACTIVE)  # P2 lives on, P1 falls silent
        return await topics.pods_of("news")

    await eventually(news, lambda pods: pods == {P2: 2})
    # gone within the lease (plus slack for a slow store), before any reap
    assert time.monotonic() - started < SHORT_LEASE_MS / 1000 + 0.5
    assert rows(await topics.topics()) == [("news", 2, {P2: 2})]
    assert await topics.reap() == 1
    assert await topics.reap() == 0
    assert await topics.pods_of("only-p1") == {}


async def test_a_new_life_neither_inherits_nor_erases(make_topics: TopicsFactory) -> None:
    presence, topics = await make_topics(lease_ms=SHORT_LEASE_MS)
    await presence.join(P1)
    first = topics.life(P1)
    await topics.write(P1, {"old": 1})
    await eventually(lambda: topics.pods_of("old"), lambda pods: pods == {})
    await presence.join(P1)  # a new life, before anyone reaped the old one
    assert topics.life(P1) != first
    assert await topics.pods_of("old") == {}
    await topics.write(P1, {"new": 1})
    assert rows(await topics.topics()) == [("new", 1, {P1: 1})]
    await topics.reap()  # the old life, if the backend kept it apart
    assert await topics.reap() == 0
    assert await topics.pods_of("new") == {P1: 1}
    assert rows(await topics.topics()) == [("new", 1, {P1: 1})]
