"""The ACK store under faults: replies lost on the way back from Redis, pod
clocks that disagree with Redis, a user at the pending cap."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from tests.faults.conftest import FaultCluster
from tests.faults.observe import dead_letter_visible, envelope, metric, send
from tests.support.client import Client
from tests.support.reply_drop import Drop, ReplyDropProxy
from tests.support.waits import api, eventually


async def _resent(drop: Drop) -> None:
    """The reply to ``drop``'s request was lost and the pod sent it again."""
    await asyncio.wait_for(drop.dropped.wait(), 15)
    await eventually(lambda: asyncio.sleep(0, result=drop.sightings >= 2), 15,
                     f"the {drop.op} request sent again")
    assert drop.sightings == 2, drop


async def test_lost_replies_to_store_settle_and_claim(faults: FaultCluster) -> None:
    proxy = await ReplyDropProxy(faults.redis_server.port).start()
    try:
        (a,) = await faults.pods(a={"WSNODE_REDIS_URL": proxy.url,
                                    "WSNODE_ACK_RETRY_INTERVAL": "1s",
                                    "WSNODE_ACK_MAX_ATTEMPTS": "2"})
        client = await Client.open(a.ws_url, a.token("u1"))

        # store: the repeat is the same request, not a duplicate of it.
        drop = proxy.drop_reply("store")
        report = await send(a, "u1", envelope("s1"))
        await _resent(drop)
        assert report["duplicate"] is False and report["stored"] is True, report
        assert report["seq"] == 1 and report["local"] == 1, report
        frame = await client.expect("note")
        assert (frame["id"], frame["seq"]) == ("s1", 1), frame

        # settle: the repeat still counts the ack.
        drop = proxy.drop_reply("settle")
        await client.ack("s1")
        await _resent(drop)

        async def settled(n: int) -> bool:
            return await metric(a, "wsnode_acks_settled_total") == n
        await eventually(lambda: settled(1), 10, "the ack of s1 counted")
        assert (await api(a, "GET", "/v1/messages/u1/s1"))["state"] == "acked"

        # claim: the repeat still resends (the last attempt allowed here: with
        # it lost, the message would go dead without a second delivery).
        drop = proxy.drop_reply("claim")
        await send(a, "u1", envelope("s2"))
        first = await client.expect("note")
        again = await client.expect("note", timeout=15)
        assert (first["id"], first["seq"]) == (again["id"], again["seq"]) == ("s2", 2)
        await _resent(drop)
        await client.ack("s2")
        await eventually(lambda: settled(2), 10, "the ack of s2 counted")
        assert await metric(a, "wsnode_acks_dead_lettered_total", reason="max_attempts") == 0
    finally:
        await proxy.close()


async def test_pod_clocks_skewed_from_redis(faults: FaultCluster) -> None:
    wire = await ReplyDropProxy(faults.redis_server.port).start()  # counts claim requests
    try:
        await _skewed_pods(faults, wire)
    finally:
        await wire.close()


async def _skewed_pods(faults: FaultCluster, wire: ReplyDropProxy) -> None:
    timing = {"WSNODE_ACK_RETRY_INTERVAL": "500ms", "WSNODE_ACK_MAX_ATTEMPTS": "3",
              "WSNODE_REDIS_URL": wire.url}
    a, b = await faults.pods(a={"WSNODE_FAILPOINTS": "clock.skew=300", **timing},
                             b={"WSNODE_FAILPOINTS": "clock.skew=-300", **timing})
    devices = [await Client.open(a.ws_url, a.token("u1")),
               await Client.open(b.ws_url, b.token("u1"))]
    sender = await Client.open(a.ws_url, a.token("tx"))
    ids = {f"k{i}" for i in range(10)}
    clock = asyncio.get_running_loop()
    began = clock.time()
    await sender.send({"type": "burst", "payload": {"to": "u1", "n": 10, "prefix": "k"}})

    async def follow(device: Client) -> dict[str, list[float]]:
        """Arrival times of every copy, until each id came 3 times (the first
        delivery and 2 resends: ACK_MAX_ATTEMPTS), never acked."""
        seen: dict[str, list[float]] = defaultdict(list)
        while len(seen) < len(ids) or min(map(len, seen.values())) < 3:
            frame = await device.recv(timeout=20)
            if frame["type"] == "burst":
                seen[frame["id"]].append(clock.time() - began)
        return seen

    arrivals = await asyncio.gather(*(follow(d) for d in devices))
    for seen in arrivals:
        assert set(seen) == ids
        for msg_id, times in seen.items():
            # On schedule, by the Redis clock: 500 ms after storing, then 1 s
            # later (doubling); never early, late only by a busy machine.
            assert times[1] >= 0.45 and times[2] >= 1.45, (msg_id, times)
            assert times[1] <= 0.5 + 5 and times[2] <= 1.5 + 8, (msg_id, times)

    async def all_dead() -> bool:
        rows = (await api(a, "GET", "/v1/dlq?user=u1"))["messages"]
        return {(m["id"], m["reason"]) for m in rows} == {(i, "max_attempts") for i in ids}
    await eventually(all_dead, 20, "every message dead after its last attempt")
    for device in devices:
        await device.nothing_within(1.0)  # no 4th copy
    # 3 claim rounds (2 resends, then the dead letters) on each of the 2 pods
    # holding the user: about 6 claims (10 seen), never hundreds; counted by
    # the pods and on the wire (a claim that finds nothing due sends nothing).
    claims = [await metric(p, "wsnode_acks_claims_total") for p in (a, b)]
    assert sum(claims) <= 24, claims
    assert wire.ops["claim"] <= 24, wire.ops


async def test_overflow_at_the_pending_cap(faults: FaultCluster) -> None:
    (a,) = await faults.pods(a={"WSNODE_ACK_MAX_PENDING": "3",
                                "WSNODE_ACK_RETRY_INTERVAL": "30s"})
    client = await Client.open(a.ws_url, a.token("u1"))
    for n in range(1, 4):
        report = await send(a, "u1", envelope(f"o{n}"))
        assert report["evicted"] == [], report
    report = await send(a, "u1", envelope("o4"))
    assert report["stored"] is True and report["seq"] == 4, report
    assert report["evicted"] == ["o1"], report
    assert await metric(a, "wsnode_acks_dead_lettered_total", reason="overflow") == 1
    await dead_letter_visible(faults, a, "u1", "o1", "overflow")
    assert "message o1 of user 'u1' dead-lettered (overflow)" in a.log()
    frames = [await client.expect("note") for _ in range(4)]
    assert [f["id"] for f in frames] == ["o1", "o2", "o3", "o4"]
    pending = await api(a, "GET", "/v1/messages/u1/o1")
    assert pending["state"] == "dead", pending
