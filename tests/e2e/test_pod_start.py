"""A pod's start and its bus, on real pods: clients are let in only once other
pods can reach the pod's queue (or, when the broker does not answer, the pod
serves anyway and ``/readyz`` says so until the bus starts).

The broker is reached through a :class:`TcpProxy` the test holds or cuts; the
shared RabbitMQ itself is never touched."""

from __future__ import annotations

import asyncio

from tests.conftest import PodFactory
from tests.faults.observe import readyz
from tests.support.client import Client
from tests.support.cluster import ClusterSlice
from tests.support.proxy import TcpProxy
from tests.support.waits import eventually

CHAT = ["--app", "wsnode.examples.chat"]
SERVING_WITHOUT_BUS_WITHIN = 1.0
"""How long a pod whose broker answers slowly is watched for serving too early."""


async def joined(client: Client, room: str) -> None:
    await client.send({"type": "join", "id": "j", "requiresAck": True,
                       "payload": {"room": room}})
    assert await client.expect("ack") == {"type": "ack", "payload": {"id": "j"}}


async def test_a_pod_lets_clients_in_only_once_other_pods_can_reach_it(
        pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    a = cluster.adopt(pod_factory("pod-a", env=cluster.env(WSNODE_RATE_LIMIT="0"), args=CHAT))
    async with TcpProxy() as proxy:
        proxy.hold()  # pod-b's broker is slow to answer
        env = cluster.env(amqp_url=proxy.url(), WSNODE_RATE_LIMIT="0")
        starting = asyncio.ensure_future(asyncio.to_thread(pod_factory, "pod-b", env, CHAT))
        await proxy.wait_held()
        # Serving now would let a client join a room that no post from pod-a
        # can reach (pod-b has no queue yet): pod-b waits for its bus.
        done, _ = await asyncio.wait({starting}, timeout=SERVING_WITHOUT_BUS_WITHIN)
        proxy.release()
        b = cluster.adopt(await starting)
        assert not done, "pod-b served before its bus was connected"
        assert "bus connected" in b.log()

        # The first client in is reachable from the other pod at once.
        bob = await Client.open(b.ws_url, b.token("bob"))
        await joined(bob, "lobby")
        ann = await Client.open(a.ws_url, a.token("ann"))
        await joined(ann, "lobby")
        await ann.send({"type": "room_message", "payload": {"room": "lobby", "text": "hi"}})
        post = {"type": "room_message", "payload": {"room": "lobby", "text": "hi", "from": "ann"}}
        assert await bob.expect("room_message") == post
        for client in (ann, bob):
            await client.close()


async def test_a_pod_whose_broker_is_down_at_start_serves_and_says_so(
        pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    a = cluster.adopt(pod_factory("pod-a", env=cluster.env(WSNODE_RATE_LIMIT="0"), args=CHAT))
    async with TcpProxy() as proxy:
        await proxy.cut()  # refused: the broker is down
        env = cluster.env(amqp_url=proxy.url(), WSNODE_RATE_LIMIT="0")
        b = cluster.adopt(await asyncio.to_thread(pod_factory, "pod-b", env, CHAT))
        assert "bus not started" in b.log()
        status, doc = await readyz(b)
        assert status == 503 and doc["checks"]["bus"] is False, doc
        assert "guest:guest" not in b.log()  # the URL's password is never logged

        # It serves what needs no bus, and once the broker answers, the rest.
        bob = await Client.open(b.ws_url, b.token("bob"))
        await joined(bob, "lobby")
        await proxy.restore()

        async def ready() -> bool:
            return (await readyz(b))[0] == 200
        await eventually(ready, 30, "pod-b ready once its broker answers")
        ann = await Client.open(a.ws_url, a.token("ann"))
        await joined(ann, "lobby")
        await ann.send({"type": "room_message", "payload": {"room": "lobby", "text": "hi"}})
        assert (await bob.expect("room_message"))["payload"]["from"] == "ann"
        for client in (ann, bob):
            await client.close()
