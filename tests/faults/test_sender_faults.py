"""A sending pod that dies, hangs or stops between storing a message and routing it.

The message is in the store, so the store's resend schedule must bring it to
the user, who stays connected on another pod the whole time: nobody's memory
is involved. A producer that retries with the same id gets ``duplicate: true``
and the message is routed again (same id, same seq).
"""

from __future__ import annotations

import asyncio
import signal

from tests.faults.conftest import FaultCluster
from tests.faults.observe import envelope, frames_until, send, send_blocking
from tests.support.client import Client
from tests.support.pods import PodProcess
from tests.support.proxy import TcpProxy


async def _retry_routes_again(b: PodProcess, client: Client, msg_id: str, seq: int) -> None:
    """The producer's retry through B: a duplicate, routed to the client again."""
    report = await send(b, "u1", envelope(msg_id))
    assert report["duplicate"] is True and report["stored"] is True, report
    assert report["seq"] == seq and report["local"] == 1, report
    again = await client.expect("note", timeout=10)
    assert (again["id"], again["seq"]) == (msg_id, seq), again
    await client.ack(msg_id)


async def test_sender_sigkilled_between_store_and_route(faults: FaultCluster) -> None:
    a, b = await faults.pods(a={"WSNODE_FAILPOINTS": "sender.after_store=kill",
                                "WSNODE_ACK_RETRY_INTERVAL": "1s"},
                             b={"WSNODE_ACK_RETRY_INTERVAL": "1s"})
    client = await Client.open(b.ws_url, b.token("u1"))
    answer = await asyncio.to_thread(send_blocking, a, "u1", envelope("m1"))
    assert isinstance(answer, BaseException), f"pod A answered instead of dying: {answer}"
    assert await asyncio.to_thread(a.wait, 10) == -signal.SIGKILL
    # Stored, never routed: the store's schedule brings it (due 1 s after storing).
    first = await client.expect("note", timeout=15)
    assert (first["id"], first["seq"]) == ("m1", 1), first
    await _retry_routes_again(b, client, "m1", 1)


async def test_send_hanging_between_store_and_route(faults: FaultCluster) -> None:
    a, b = await faults.pods(a={"WSNODE_FAILPOINTS": "sender.after_store=hang",
                                "WSNODE_ACK_RETRY_INTERVAL": "1s"},
                             b={"WSNODE_ACK_RETRY_INTERVAL": "1s"})
    client = await Client.open(b.ws_url, b.token("u1"))
    stuck = asyncio.create_task(asyncio.to_thread(send_blocking, a, "u1", envelope("m1"), 120))
    first = await client.expect("note", timeout=15)
    assert (first["id"], first["seq"]) == ("m1", 1), first
    assert not stuck.done(), f"the send on A was not stuck: {stuck.result()}"
    await _retry_routes_again(b, client, "m1", 1)
    a.kill()  # ends the stuck request
    assert isinstance(await stuck, BaseException)


async def test_pod_stopped_while_its_publishes_fail(faults: FaultCluster) -> None:
    proxy = await TcpProxy().start()
    try:
        slow = {"WSNODE_ACK_RETRY_INTERVAL": "30s"}  # no timer resend can explain a delivery
        a, b = await faults.pods(a={"WSNODE_AMQP_URL": proxy.url(), **slow}, b=slow)
        client = await Client.open(b.ws_url, b.token("u1"))
        await proxy.cut()
        ids = {f"m{i}" for i in range(5)}
        for msg_id in sorted(ids):
            report = await send(a, "u1", envelope(msg_id))
            assert report["stored"] is True and report["failedPods"] == ["pod-b"], report
            assert report["pods"] == [] and report["local"] == 0, report
        a.signal(signal.SIGTERM)
        assert await asyncio.to_thread(a.wait, 30) == 0, a.log()
        got = await frames_until(client, ids, timeout=20)
        assert {f["id"] for f in got} == ids
        for frame in got:
            await client.ack(frame["id"])
    finally:
        await proxy.close()
