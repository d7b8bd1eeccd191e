"""The ACK store behind one endpoint that refuses scripts over several hash
slots, as a cluster proxy does (Redis Enterprise, Envoy): wsnode sees a plain
``redis://`` server, so its store and settle scripts first write the global
index entries themselves (wsnode/acks_redis.py, "folded"); refused with
CROSSSLOT, the store switches to writing them beside the scripts, as on a
Redis Cluster, and nothing is lost or refused on the way.

The endpoint here is a one-node Redis Cluster that owns every slot, reached
with a plain client: it answers every single-slot command and refuses a
multi-slot one with CROSSSLOT, as such a proxy does."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.redis_cluster import RedisNode, Unavailable, command, skip_or_fail
from wsnode import redis_conn
from wsnode.acks import AckPolicy, MsgState
from wsnode.acks_redis import RedisAcks
from wsnode.ids import MsgId, UserId
from wsnode.keys import RedisKeys
from wsnode.protocol import Envelope

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[RedisNode]:
    node = RedisNode(tmp_path, "sharded")
    try:
        node.spawn("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                   "--cluster-port", str(node.bus_port))
        node.await_ping()
        command(node.port, "CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        deadline = time.monotonic() + 20
        while "cluster_state:ok" not in command(node.port, "CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                raise Unavailable("the one-node cluster did not reach cluster_state:ok")
            time.sleep(0.05)
    except Unavailable as exc:
        node.kill()
        skip_or_fail(f"a one-node Redis Cluster cannot start here: {exc}")
    yield node
    node.kill()


@pytest.fixture
async def acks(endpoint: RedisNode) -> AsyncIterator[RedisAcks]:
    client = redis_conn.connect(f"redis://{endpoint.address}", max_connections=8)
    yield RedisAcks(client, RedisKeys("wsproxy"), AckPolicy())
    await client.aclose()


def note(msg_id: str) -> Envelope:
    return Envelope(type="note", id=msg_id, requires_ack=True, payload={"id": msg_id})


async def test_stores_and_settles_switch_to_single_slot_scripts(
        acks: RedisAcks, caplog: pytest.LogCaptureFixture) -> None:
    users = [UserId(f"user {n}") for n in range(8)]
    with caplog.at_level(logging.WARNING, logger="wsnode.acks"):
        # Concurrent: calls made before the switch are made again after it.
        first = await asyncio.gather(*(acks.store(u, note("m1")) for u in users))
        relayed = await acks.store(users[0], note("m2"), relayed_from=UserId("sender"))
    assert [r.seq for r in first] == [1] * len(users) and relayed.seq == 2
    assert sum("refuses scripts over several hash slots" in r.getMessage()
               for r in caplog.records) == 1
    assert [m.id for m in await acks.pending(users[0])] == ["m1", "m2"]
    assert await acks.settle(users[0], MsgId("m1")) is MsgState.PENDING
    assert await acks.settle(users[0], MsgId("m2")) is MsgState.PENDING
    assert await acks.pending(users[0]) == []
    stored_again = await acks.store(users[1], note("m1"))
    assert stored_again.duplicate and stored_again.seq == 1
    # The resend schedule found them: every user still holding m1 is due later.
    scan = await acks.due()
    assert scan.next_in_ms is not None
