"""A client's at-most-once messages when its pod loses the broker mid-stream.

Those messages are handed to the bus without waiting for the broker's confirm
(``wsnode.sender``), so what the confirm would have said is only known later.
The promise is unchanged: each is delivered at most once, in the sender's
order, or counted as dropped on the sending pod; never lost silently. Both
clients stay connected throughout (a reconnecting client would hide a loss).
"""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.protocol import State

from tests.faults.conftest import FaultCluster
from tests.faults.observe import metrics, readyz
from tests.support.client import Client
from tests.support.pods import PodProcess
from tests.support.proxy import TcpProxy
from tests.support.waits import eventually

DROP_REASONS = ("bus_unavailable", "bus_error", "pod_gone")


async def dropped(pod: PodProcess) -> float:
    samples = await metrics(pod)
    return sum(samples.get(("wsnode_messages_dropped_total", (("reason", r),)), 0.0)
               for r in DROP_REASONS)


async def chats_in(pod: PodProcess) -> float:
    return (await metrics(pod)).get(
        ("wsnode_messages_in_total", (("type", "chat_message"),)), 0.0)


async def test_a_streams_messages_are_delivered_in_order_or_counted_when_its_bus_is_cut(
        faults: FaultCluster) -> None:
    proxy = await TcpProxy().start()
    try:
        a, b = await faults.pods(a={"WSNODE_AMQP_URL": proxy.url()}, b={})
        rx = await Client.open(b.ws_url, b.token("rx"))
        tx = await Client.open(a.ws_url, a.token("tx"))
        got: list[int] = []
        arrived = asyncio.Event()

        async def read() -> None:
            while True:
                frame: dict[str, Any] = await rx.recv(timeout=60)
                if frame["type"] == "chat_message":
                    got.append(frame["payload"]["n"])
                    arrived.set()

        async def send(numbers: range) -> None:
            for n in numbers:
                await tx.send({"type": "chat_message", "payload": {"to": "rx", "n": n}})

        async def received(numbers: range) -> None:
            async with asyncio.timeout(30):
                while not set(numbers) <= set(got):
                    arrived.clear()
                    await arrived.wait()

        reader = asyncio.create_task(read())
        try:
            await send(range(20))
            await received(range(20))
            # Every earlier confirm back, so nothing below is an outcome unknown.
            await eventually(lambda: _published(a, 20), 20, "20 confirmed")
            proxy.stall("server")  # pod A's publishes stop reaching RabbitMQ
            await send(range(20, 50))
            await eventually(lambda: _equals(chats_in(a), 50), 20, "pod A read them")
            await proxy.cut()  # the held publishes are lost with the connection
            await eventually(lambda: _status(a, 503), 20, "pod A not ready")
            await proxy.restore()
            await eventually(lambda: _status(a, 200), 60, "pod A ready again")
            await send(range(50, 70))
            await received(range(50, 70))
            # Every message sent is delivered or counted, once the broker answered.
            await eventually(lambda: _equals(dropped(a), 70 - len(got)), 20,
                             f"dropped == 70 - {len(got)} delivered")
        finally:
            reader.cancel()
        assert got == sorted(set(got)), "delivered twice or out of the sender's order"
        assert await dropped(a) > 0, "the cut dropped nothing: the fault was not injected"
        # The same two connections throughout: neither was closed by the fault.
        assert tx.ws.state is State.OPEN and rx.ws.state is State.OPEN
    finally:
        await proxy.close()


async def _published(pod: PodProcess, n: int) -> bool:
    return (await metrics(pod)).get(("wsnode_published_total", ()), 0.0) >= n


async def _equals(value: Any, want: float) -> bool:
    return bool(await value == want)


async def _status(pod: PodProcess, status: int) -> bool:
    return (await readyz(pod))[0] == status
