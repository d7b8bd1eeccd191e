"""Lua scripts survive Redis losing its script cache (what a restart does): every
backend call that runs a script loads it again and succeeds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer
from wsnode import redis_conn
from wsnode.acks import AckPolicy, MsgState
from wsnode.acks_redis import RedisAcks
from wsnode.errors import QuotaExceeded
from wsnode.ids import ConnId, MsgId, PodId, UserId
from wsnode.keys import RedisKeys, bucket_of, member
from wsnode.limiter_redis import RedisLimiter
from wsnode.presence import PodState
from wsnode.presence_redis import RedisPresence
from wsnode.protocol import Envelope
from wsnode.redis_conn import Redis
from wsnode.settings import Rate
from wsnode.trace_redis import RedisTracer


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Redis]:
    server = RedisServer(tmp_path, aof=False).start()
    client = redis_conn.connect(server.url)
    try:
        yield client
    finally:
        await client.aclose()
        server.kill()


async def test_every_script_path_reloads_after_a_script_flush(client: Redis) -> None:
    keys = RedisKeys("ws")
    presence = RedisPresence(client, keys, live_cache_ms=0)
    acks = RedisAcks(client, keys, AckPolicy(retry_interval_ms=50))
    limiter = RedisLimiter(client, keys, Rate(10, 1.0))
    alice, pod = UserId("alice"), PodId("p")
    await presence.join(pod)
    await client.script_flush()
    assert await presence.heartbeat(pod, PodState.ACTIVE)
    await presence.add(pod, alice, ConnId("c1"), 1)
    await client.script_flush()
    assert (await limiter.hit(alice)).allowed
    await client.script_flush()
    stored = await acks.store(alice, Envelope(type="n", id="m1", requires_ack=True))
    assert stored.seq == 1
    await client.script_flush()
    assert [m.id for m in await acks.pending(alice)] == ["m1"]
    await client.script_flush()
    assert (await acks.due()).now_ms > 0
    await client.script_flush()
    await acks.defer(alice, [MsgId("m1")])
    await client.script_flush()
    assert (await acks.claim_due(alice)).dead == []
    await client.script_flush()
    assert await acks.sweep() == []
    await client.script_flush()
    assert await acks.settle(alice, MsgId("m1")) is MsgState.PENDING
    # Settled: only the idempotency record stays, not the body.
    assert await client.hget(keys.user_msg(alice, "m1"), "body") is None
    assert await client.hget(keys.user_msg(alice, "m1"), "state") == b"acked"
    await client.script_flush()
    await presence.remove(pod, alice, ConnId("c1"))
    assert await presence.connections(alice) == []
    await presence.add(pod, alice, ConnId("c2"), 2)
    await client.script_flush()
    await presence.leave(pod)  # reaps through a pipeline of unlink scripts
    assert await client.hlen(keys.user_conns(alice)) == 0


async def test_trails_reload_after_a_script_flush_and_skip_a_corrupt_key(
        client: Redis, caplog: pytest.LogCaptureFixture) -> None:
    keys = RedisKeys("ws")
    tracer = RedisTracer(client, keys)
    alice, bob = UserId("alice"), UserId("bob")
    await client.set(keys.trace(bob, "m2"), "not a list")  # corrupt: another type
    await client.script_flush()
    tracer.record(MsgId("m1"), alice, "stored", PodId("p"))
    tracer.record(MsgId("m2"), bob, "stored", PodId("p"))
    tracer.record(MsgId("m2"), alice, "stored", PodId("p"))
    await tracer.flush()
    assert [e["user"] for e in await tracer.trail(MsgId("m1"))] == ["alice"]
    # The corrupt trail was skipped and said so; the others of its call were written.
    assert [e["user"] for e in await tracer.trail(MsgId("m2"), alice)] == ["alice"]
    assert await client.get(keys.trace(bob, "m2")) == b"not a list"
    assert "trail of message m2 of user 'bob' was not written" in caplog.text


async def test_a_corrupt_index_bucket_is_moved_aside_and_the_store_keeps_its_entries(
        client: Redis) -> None:
    """On one server the store script writes the index entries itself: one that
    fails on a corrupt bucket is run again once the bucket is quarantined, and
    the message is stored with both entries (it expires and is resent)."""
    keys = RedisKeys("ws")
    acks = RedisAcks(client, keys, AckPolicy())
    alice = UserId("alice")
    bucket = bucket_of(alice)
    await client.set(keys.ack_expiry(bucket), "not a zset")
    stored = await acks.store(alice, Envelope(type="n", id="m1", requires_ack=True))
    assert stored.seq == 1 and not stored.duplicate
    assert await client.zscore(keys.ack_expiry(bucket), member(alice, "m1")) is not None
    assert await client.zscore(keys.ack_due(bucket), alice) is not None
    assert [m.id for m in await acks.pending(alice)] == ["m1"]
    assert await client.get(keys.quarantined(keys.ack_expiry(bucket))) == b"not a zset"


async def test_a_trail_joins_its_users_set_once_and_both_keep_its_expiry(client: Redis) -> None:
    """The trail script adds the user to the id's set only when the trail starts
    (one write fewer per event batch of a trail that exists: every delivered
    and acked message), and still gives the set the list's expiry at every
    write, so ``wsctl trace ID`` lists the user for as long as the trail lives."""
    keys = RedisKeys("ws")
    pod_a = RedisTracer(client, keys, ttl_ms=60_000)
    pod_b = RedisTracer(client, keys, ttl_ms=60_000)
    alice, bob = UserId("alice"), UserId("bob")
    pod_a.record(MsgId("m1"), alice, "stored", PodId("a"))
    await pod_a.flush()
    trail, users = keys.trace(alice, "m1"), keys.trace_users("m1")
    await client.pexpire(trail, 1000)
    await client.pexpire(users, 1000)
    await client.config_resetstat()
    pod_b.record(MsgId("m1"), alice, "delivered", PodId("b"))
    pod_b.record(MsgId("m1"), bob, "stored", PodId("b"))  # bob's trail starts here
    await pod_b.flush()
    stats = await client.info("commandstats")
    assert stats["cmdstat_sadd"]["calls"] == 1  # bob's, not alice's again
    assert {u.decode() for u in await client.smembers(users)} == {"alice", "bob"}
    assert await client.pttl(trail) > 50_000
    assert await client.pttl(users) > 50_000
    assert [(e["user"], e["event"]) for e in await pod_a.trail(MsgId("m1"))] in (
        [("alice", "stored"), ("alice", "delivered"), ("bob", "stored")],
        [("alice", "stored"), ("bob", "stored"), ("alice", "delivered")])


def test_trace_keys_are_the_three_trail_keys() -> None:
    keys = RedisKeys("ws")
    for user, msg_id in (("alice", "m1"), ("a b:ユ", "~x{y}.1/2")):
        assert keys.trace_keys(user, msg_id) == (
            keys.trace_bucket(msg_id), keys.trace(user, msg_id), keys.trace_users(msg_id))


def test_ack_keys_are_the_five_keys_of_a_users_message() -> None:
    keys = RedisKeys("ws")
    for user, msg_id in (("alice", "m1"), ("a b:ユ", "~x{y}.1/2")):
        assert keys.ack_keys(user, msg_id) == (
            keys.user_msg(user, msg_id), keys.user_seq(user), keys.user_pending(user),
            keys.user_due(user), keys.user_relayed(user))


async def test_a_full_budget_drops_the_places_whose_time_is_up(client: Redis) -> None:
    """Below its cap a budget takes a place without pruning (3 writes, not 5, per
    relayed message); at the cap the places whose time is up go first, so they
    never refuse a message."""
    keys = RedisKeys("ws")
    acks = RedisAcks(client, keys, AckPolicy(relayed_budget=3))
    sender, budget = UserId("mallory"), keys.user_budget("mallory")
    await client.zadd(budget, {"ghost0 x": 1, "ghost1 x": 2})  # their time is long up
    await acks.store(UserId("alice"), Envelope(type="n", id="a1"), relayed_from=sender)
    assert await client.zcard(budget) == 3  # below the cap: nothing pruned
    await acks.store(UserId("bob"), Envelope(type="n", id="b1"), relayed_from=sender)
    assert sorted(m.decode() for m in await client.zrange(budget, 0, -1)) == [
        "alice a1", "bob b1"]
    await acks.store(UserId("carol"), Envelope(type="n", id="c1"), relayed_from=sender)
    with pytest.raises(QuotaExceeded):  # three live places: full
        await acks.store(UserId("dave"), Envelope(type="n", id="d1"), relayed_from=sender)
    assert await acks.status(UserId("dave"), MsgId("d1")) is None


async def test_a_lost_seq_counter_restarts_above_the_pending_messages(client: Redis) -> None:
    keys = RedisKeys("ws")
    acks = RedisAcks(client, keys, AckPolicy())
    alice = UserId("alice")
    for n in range(1, 4):
        assert (await acks.store(alice, Envelope(type="n", id=f"m{n}"))).seq == n
    await acks.settle(alice, MsgId("m1"))
    await client.delete(keys.user_seq(alice))  # expired, or quarantined
    assert (await acks.store(alice, Envelope(type="n", id="m4"))).seq == 4
    assert (await acks.store(alice, Envelope(type="n", id="m5"))).seq == 5
    assert (await acks.store(UserId("bob"), Envelope(type="n", id="m1"))).seq == 1
