"""Deliveries that the bus could not hand to the user's pod in time: a publish
that failed, a copy stranded in a paused pod's queue, a copy that expired while
its pod was paused."""

from __future__ import annotations

import asyncio
import signal
import time

import orjson

from tests.faults.conftest import FaultCluster
from tests.faults.observe import envelope, frames_until, metric, send
from tests.support.client import Client
from tests.support.proxy import TcpProxy
from tests.support.waits import eventually


async def test_wsctl_send_ack_with_a_failed_publish(faults: FaultCluster) -> None:
    slow = {"WSNODE_ACK_RETRY_INTERVAL": "30s"}  # no timer resend can explain a delivery
    (a,) = await faults.pods(a=slow)
    client = await Client.open(a.ws_url, a.token("u1"))
    proxy = await TcpProxy().start()
    try:
        await proxy.cut()  # wsctl's bus is down: its publish fails
        started = time.monotonic()
        done = await faults.wsctl("send", "u1", "--type", "note", "--id", "w1", "--ack",
                                  "--json", WSNODE_AMQP_URL=proxy.url(), **slow)
    finally:
        await proxy.close()
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    assert report["stored"] is True and report["failedPods"] == ["pod-a"], report
    assert report["pods"] == [] and report["local"] == 0, report
    # The failed delivery is due again in the store 250 ms later (not 30 s), and
    # pod A, which holds the user, resends it.
    frame = await client.expect("note", timeout=15)
    assert (frame["id"], frame["seq"]) == ("w1", 1), frame
    assert time.monotonic() - started < 20
    await client.ack("w1")


async def test_copies_stranded_from_a_paused_live_pod(faults: FaultCluster) -> None:
    # A's queue strands what waits in it for 1 s; A's lease (3 heartbeats of
    # 5 s) outlives the pause, so A stays the user's pod meanwhile.
    a, b = await faults.pods(a={"WSNODE_BUS_MESSAGE_TTL": "1s",
                                "WSNODE_HEARTBEAT_INTERVAL": "5s"}, b={})
    client = await Client.open(a.ws_url, a.token("u1"))
    sender = await Client.open(b.ws_url, b.token("tx"))
    total = 400  # more than the consumer prefetch (256): the rest waits in the queue
    a.signal(signal.SIGSTOP)
    try:
        # One at a time from B (each publish confirmed before the next), so each
        # is a broker message of its own.
        await sender.send({"type": "burst", "payload": {"to": "u1", "n": total, "prefix": "s",
                                                        "ack": False}})

        async def published() -> bool:
            return await metric(b, "wsnode_published_total") >= total
        await eventually(published, 30, f"B published {total} messages to A")
        await asyncio.sleep(3.0)  # a fault window: the tail of A's queue expires unread
    finally:
        a.signal(signal.SIGCONT)
    # A stranded copy is back in A's queue within about one TTL: once nothing
    # came for several, nothing more is on its way.
    got = await frames_until(client, {f"s{i}" for i in range(total)}, timeout=60, typ="burst",
                             quiet=8)
    assert len({f["id"] for f in got}) == total


async def test_bus_delivery_expired_while_its_pod_was_paused(faults: FaultCluster) -> None:
    # A's lease (3 heartbeats of 3 s) outlives the pause: B still routes to A.
    a, b = await faults.pods(a={"WSNODE_HEARTBEAT_INTERVAL": "3s"}, b={})
    client = await Client.open(a.ws_url, a.token("u1"))
    a.signal(signal.SIGSTOP)
    try:
        expires = int(time.time() * 1000) + 1500
        report = await send(b, "u1", envelope("x1", ack=False, expiresAt=expires))
        assert report["pods"] == ["pod-a"] and report["stored"] is False, str(report)
        # A fault window: A sleeps past the message's expiresAt.
        await asyncio.sleep(max(0.0, expires / 1000 - time.time()) + 0.5)
    finally:
        a.signal(signal.SIGCONT)

    # The same publisher, the same pod queue: a later message arrives after it,
    # so had the expired one been delivered, it would come first.
    await send(b, "u1", envelope("after", ack=False))
    frame = await client.expect("note", timeout=10)
    assert frame["id"] == "after", frame

    async def counted() -> bool:
        return await metric(a, "wsnode_messages_dropped_total", reason="expired") == 1
    await eventually(counted, 15, "A counted the expired delivery")
