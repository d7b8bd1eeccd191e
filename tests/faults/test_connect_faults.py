"""A user connects while the store fails or holds corrupt data of theirs: they
still get welcome, their pending messages and the restore frame, without
asking, and new ACK-required messages after it."""

from __future__ import annotations

from tests.faults.conftest import FaultCluster
from tests.faults.observe import envelope, metric, send
from tests.support.client import Client
from tests.support.waits import api, eventually


async def test_replay_at_connect_fails_with_a_backend_error(faults: FaultCluster) -> None:
    (a,) = await faults.pods(a={"WSNODE_FAILPOINTS": "replay.connect=2*unavailable",
                                "WSNODE_ACK_RETRY_INTERVAL": "30s"})
    ids = ["r1", "r2", "r3"]
    for msg_id in ids:
        report = await send(a, "u1", envelope(msg_id))  # u1 is offline: stored only
        assert report["stored"] is True and report["local"] == 0 and report["pods"] == []
    # The client only connects: it never sends "restore".
    client = await Client.open(a.ws_url, a.token("u1"), read_welcome=False)
    await client.expect("welcome")
    for seq, msg_id in enumerate(ids, 1):
        frame = await client.expect("note", timeout=15)
        assert (frame["id"], frame["seq"]) == (msg_id, seq), frame
    restore = await client.expect("restore")
    assert restore["payload"] == {"replayed": 3}, restore
    # The replay did fail twice first: retried by the server, not the client.
    assert await metric(a, "wsnode_backend_errors_total", backend="replay") == 2
    assert "replay at connect failed" in a.log()
    for msg_id in ids:
        await client.ack(msg_id)


async def test_corrupt_user_records_are_quarantined(faults: FaultCluster) -> None:
    a, b = await faults.pods(a={}, b={})
    k, r = faults.keys, faults.redis
    await r.set(k.user_seq("u1"), "not-a-number")
    await r.set(k.user_pending("u1"), "not a zset")
    await r.rpush(k.user_conns("u1"), "not a hash")

    client = await Client.open(a.ws_url, a.token("u1"), read_welcome=False)
    await client.expect("welcome")
    restore = await client.expect("restore")  # no error frame, no 1011
    assert restore["payload"] == {"replayed": 0}, restore
    # The user is reachable from another pod (their presence record is sound
    # again) and gets a new ACK-required message (the counter is sound again).
    async def listed() -> bool:
        found = await api(b, "GET", "/v1/presence/u1")
        return [c["pod"] for c in found["connections"]] == ["pod-a"]
    await eventually(listed, 10, "u1 listed on pod-a")
    report = await send(b, "u1", envelope("c1"))
    assert report["stored"] is True and report["pods"] == ["pod-a"], report
    frame = await client.expect("note", timeout=10)
    assert (frame["id"], frame["seq"]) == ("c1", report["seq"]), frame
    await client.ack("c1")

    async def acked() -> bool:
        state = await api(a, "GET", "/v1/messages/u1/c1")
        return bool(state["state"] == "acked")
    await eventually(acked, 10, "c1 acked")
    await client.send({"type": "ping"})
    assert (await client.expect("pong"))["type"] == "pong"  # still connected
    # Each corrupt record was moved aside as it was, not lost.
    assert await r.get(k.quarantined(k.user_seq("u1"))) == b"not-a-number"
    assert await r.get(k.quarantined(k.user_pending("u1"))) == b"not a zset"
    assert await r.lrange(k.quarantined(k.user_conns("u1")), 0, -1) == [b"not a hash"]
    logs = a.log() + b.log()
    for key in (k.user_seq("u1"), k.user_pending("u1"), k.user_conns("u1")):
        assert f"quarantined a corrupt record: {key} " in logs, key
