"""Issue 12, item 11: the broker is not trusted blindly.

Whoever can publish to RabbitMQ (a leaked broker password, another app on the
vhost) must not reach users or drain pods: with WSNODE_CLUSTER_SECRET, a pod
parks every message not signed with it; with or without it, a pod never gives
a client a frame of a reserved type (a fake ``welcome`` or ``reconnect``) or
one that is not UTF-8, from the bus.
"""

from __future__ import annotations

import asyncio

import aio_pika
import orjson

from tests.conftest import PodFactory
from tests.support.client import Client
from tests.support.cluster import AMQP_URL, ClusterSlice
from tests.support.pods import PodProcess
from tests.support.waits import api, eventually
from wsnode.bus import Delivery, encode_batch
from wsnode.ids import UserId
from wsnode.keys import AmqpNames

SECRET = "cluster-secret-" + "0123456789abcdef" * 2


async def forge(cluster: ClusterSlice, pod: str, *messages: tuple[str, bytes]) -> None:
    """Publish straight to the pod's queue, as an intruder on the broker would: on
    one channel, so the queue holds them in this order."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(AmqpNames(cluster.prefix).exchange)
        for kind, body in messages:
            await exchange.publish(aio_pika.Message(body, type=kind), routing_key=pod)


async def all_ready(*pods: PodProcess) -> None:
    """Until every pod is ready: its queue exists (before, a forged message would
    go nowhere, and the test would show nothing)."""
    for pod in pods:
        async def up(pod: PodProcess = pod) -> bool:
            return (await asyncio.to_thread(pod.api, "GET", "/readyz", None, None))[0] == 200
        await eventually(up, 20, f"{pod.pod_id} ready")


def delivery(user: str, frame: bytes) -> bytes:
    return encode_batch([Delivery(UserId(user), frame, "x")])


def broadcast(frame: bytes) -> bytes:
    """A fanout to every connection of the pod (as ``node.broadcast`` publishes)."""
    return encode_batch([Delivery(UserId(""), frame, "x", topic="*")])


async def dropped(pod: PodProcess, reason: str) -> float:
    _, text = await asyncio.to_thread(pod.api, "GET", "/metrics", None, None)
    for line in str(text).splitlines():
        if line.startswith(f'wsnode_messages_dropped_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


async def test_reserved_or_broken_frames_from_the_bus_never_reach_a_client(
        pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    pod = cluster.adopt(pod_factory("pod-a", env=cluster.env()))
    await all_ready(pod)
    async with await Client.open(pod.ws_url, pod.token("carol")) as carol:
        fake_welcome = orjson.dumps({"type": "welcome", "payload": {"connId": "evil"}})
        fake_reconnect = orjson.dumps({"type": "reconnect", "payload": {"reason": "x"}})
        await forge(cluster, "pod-a",
                    ("deliver", delivery("carol", fake_welcome)),
                    ("deliver", delivery("carol", fake_reconnect)),
                    ("deliver", delivery("carol", b'{"type":"n","p":"\xff"}')),
                    ("deliver", broadcast(fake_reconnect)),  # to everyone at once
                    ("deliver", delivery("carol", b'{"type":"n","p":1}')))
        # Without a secret an ordinary frame passes (the pod warned at start);
        # the four forged ones did not, and were counted.
        assert (await carol.recv(timeout=10))["p"] == 1
        await carol.nothing_within(0.5)
    async def four() -> bool:
        return await dropped(pod, "forged") == 4
    await eventually(four, 10, "the four forged frames counted")
    assert "WSNODE_CLUSTER_SECRET is not set" in pod.log()


async def test_with_a_cluster_secret_unsigned_messages_are_parked(
        pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    env = cluster.env(WSNODE_CLUSTER_SECRET=SECRET)
    a = cluster.adopt(pod_factory("pod-a", env=env))
    b = cluster.adopt(pod_factory("pod-b", env=env))
    await all_ready(a, b)
    async with await Client.open(a.ws_url, a.token("carol")) as carol:
        await forge(cluster, "pod-a",
                    ("deliver", delivery("carol", b'{"type":"n","p":1}')),
                    ("deliver", broadcast(b'{"type":"n","p":"all"}')),
                    ("control", orjson.dumps({"cmd": "drain", "over": 0})))
        # Signed messages, from a pod that has the secret, still get through.
        await api(b, "POST", "/v1/send", {"user": "carol", "envelope": {"type": "n",
                                                                        "payload": 2}})
        assert (await carol.recv(timeout=10))["payload"] == 2
        await api(b, "POST", "/v1/broadcast", {"envelope": {"type": "n", "payload": 3}})
        assert (await carol.recv(timeout=10))["payload"] == 3
        await carol.nothing_within(0.5)
        status, ready = await asyncio.to_thread(a.api, "GET", "/readyz", None, None)
        assert status == 200 and ready["state"] == "active"  # the forged drain was not obeyed

    async def parked() -> bool:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(AmqpNames(cluster.prefix).poison_queue,
                                                passive=True)
            return queue.declaration_result.message_count >= 3
    await eventually(parked, 10, "the forged messages parked in the poison queue")
    assert "not signed with this cluster's secret" in a.log()
