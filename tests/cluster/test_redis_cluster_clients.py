"""The Redis backends' client side on a real Redis Cluster (the session's, see
tests/conftest.py): what the contract suites do not show.

* the presence feed hears a change whichever node it subscribed on (plain
  pub/sub is broadcast over the cluster bus);
* scripts lost by every node (SCRIPT FLUSH, as after a restart or on a replica
  just promoted) are loaded again, per node, without an error reaching a caller;
* a slot moved to another master under a running client: MOVED and ASK are
  followed by the client, the data is read and written where it went;
* an ACK store whose replica does not confirm it (replica stopped) is refused
  as unavailable, and works again when the replica is back.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from functools import partial

import pytest

from tests.support.redis_cluster import RedisClusterServers, command
from wsnode import redis_conn
from wsnode.acks import AckPolicy
from wsnode.acks_redis import RedisAcks
from wsnode.errors import BackendUnavailable
from wsnode.ids import MsgId, UserId
from wsnode.keys import RedisKeys
from wsnode.presence_feed_redis import RedisPresenceFeed
from wsnode.protocol import Envelope
from wsnode.redis_conn import Redis

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def client(redis_cluster_servers: RedisClusterServers) -> AsyncIterator[Redis]:
    client = redis_conn.connect(redis_cluster_servers.url, max_connections=16)
    await client.ping()
    yield client
    await client.aclose()


@pytest.fixture
def keys() -> RedisKeys:
    return RedisKeys(f"wsrc{uuid.uuid4().hex[:8]}")


def on_listening(event: asyncio.Event, listening: bool) -> None:
    if listening:
        event.set()


def note(msg_id: str) -> Envelope:
    return Envelope(type="note", id=msg_id, requires_ack=True, payload={"id": msg_id})


async def test_the_presence_feed_hears_on_every_node(
        client: Redis, keys: RedisKeys, redis_cluster_servers: RedisClusterServers) -> None:
    listener, publisher = RedisPresenceFeed(client, keys), RedisPresenceFeed(client, keys)
    for n in range(len(redis_cluster_servers.nodes)):  # each attempt: the next node
        heard: list[list[UserId]] = []
        listening = asyncio.Event()
        task = asyncio.create_task(listener.listen(
            heard.append, partial(on_listening, listening)))
        await asyncio.wait_for(listening.wait(), 10)
        user = UserId(f"user {n}")
        async with asyncio.timeout(10):
            while [user] not in heard:  # a publish may beat the SUBSCRIBE reply
                publisher.changed(user)
                await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_scripts_flushed_on_every_node_are_loaded_again(
        client: Redis, keys: RedisKeys, redis_cluster_servers: RedisClusterServers) -> None:
    acks = RedisAcks(client, keys, AckPolicy(), replicas=1)
    users = [UserId(f"u{i}") for i in range(12)]  # spread over the three masters
    await asyncio.gather(*(acks.store(u, note("m1")) for u in users))
    for node in redis_cluster_servers.masters():
        command(node.port, "SCRIPT", "FLUSH")
    stored = await asyncio.gather(*(acks.store(u, note("m2")) for u in users))
    assert [s.seq for s in stored] == [2] * len(users)
    pending = await asyncio.gather(*(acks.pending(u) for u in users))
    assert all([m.id for m in p] == ["m1", "m2"] for p in pending)


async def test_a_moved_slot_is_followed(
        client: Redis, keys: RedisKeys, redis_cluster_servers: RedisClusterServers) -> None:
    servers = redis_cluster_servers
    acks = RedisAcks(client, keys, AckPolicy(), replicas=1)
    user = UserId("mover")
    await acks.store(user, note("before"))
    here = servers.master_of(keys.user_pending(user))
    there = next(m for m in servers.masters() if m is not here)
    await asyncio.to_thread(servers.move_slot, keys.user_pending(user), there)
    assert servers.master_of(keys.user_pending(user)) is there
    # The client's slot map still names the old node: MOVED, followed.
    assert [m.id for m in await acks.pending(user)] == ["before"]
    await acks.store(user, note("after"))
    assert await acks.settle(user, MsgId("before")) is not None
    assert [m.id for m in await acks.pending(user)] == ["after"]


async def test_a_store_no_replica_confirms_is_refused_until_it_does(
        client: Redis, keys: RedisKeys, redis_cluster_servers: RedisClusterServers) -> None:
    servers = redis_cluster_servers
    acks = RedisAcks(client, keys, AckPolicy(), replicas=1)
    user = UserId("careful")
    await acks.store(user, note("m1"))  # confirmed: the node has a replica in sync
    replica = servers.replica_of(servers.master_of(keys.user_msg(user, "m1")))
    assert replica.proc is not None
    os.kill(replica.proc.pid, signal.SIGSTOP)
    try:
        with pytest.raises(BackendUnavailable, match="NOREPLICAS 0 of 1"):
            await acks.store(user, note("m2"))
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)
    # The refused store may have reached the master: the producer's retry with
    # the same id finds it (idempotent), confirmed this time.
    again = await acks.store(user, note("m2"))
    assert again.seq == 2
    await asyncio.to_thread(servers.await_healthy, 30)
