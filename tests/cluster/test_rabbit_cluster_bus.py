"""RabbitBus on a real 3-node RabbitMQ cluster, in process: where queues live
when a node goes, and what publishers see meanwhile.

A pod queue is classic and transient, on the node its pod declared it from:
it goes with that node, publishes to it are unroutable (the sender keeps
ACK-required deliveries stored), and the pod declares it again on the node it
reconnects to. The shared queues are quorum queues: they keep working while
any one node is down.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.integration.conftest import Broker, Inbox
from tests.support.rabbit_cluster import RabbitCluster
from tests.support.waits import eventually
from wsnode.bus import Delivery, Unroutable
from wsnode.bus_rabbitmq import RabbitBus
from wsnode.errors import BackendUnavailable
from wsnode.ids import MsgId, PodId, UserId

pytestmark = pytest.mark.timeout(300)

A, B, C = PodId("A"), PodId("B"), PodId("C")


def delivery(n: int) -> Delivery:
    return Delivery(UserId(f"user{n}"), orjson.dumps({"type": "t", "payload": {"n": n}}), "t",
                    ack_id=MsgId(f"m{n}"))


def numbers(deliveries: list[Delivery]) -> list[int]:
    return [orjson.loads(d.frame)["payload"]["n"] for d in deliveries]


async def publish_outcome(bus: RabbitBus, pod: PodId, n: int) -> str:
    """``ok``, ``unroutable`` or ``unavailable``: what one publish met."""
    try:
        await bus.publish(pod, [delivery(n)])
    except Unroutable:
        return "unroutable"
    except BackendUnavailable:
        return "unavailable"
    return "ok"


async def test_a_pod_queue_goes_with_its_node_and_comes_back_where_the_pod_reconnects(
        rabbit: RabbitCluster, cluster_broker: Broker) -> None:
    one, two, three = rabbit.nodes
    stuck, moving = Inbox(), Inbox()
    # A knows node 1 only: its queue stays gone while node 1 is down. M knows
    # every node and fails over.
    a = await cluster_broker.bus("A", url=one.url, inbox=stuck, backoff_max=0.5)
    m = await cluster_broker.bus("M", url=rabbit.url_list(0), inbox=moving, backoff_max=0.5)
    b = await cluster_broker.bus("B", url=rabbit.url_list(1))
    assert m.connected_to == one.url.replace("guest:guest", "guest:***")
    assert await publish_outcome(b, A, 1) == "ok"
    await stuck.wait_for(lambda: bool(stuck.deliveries))

    await asyncio.to_thread(one.stop)
    outcomes: list[str] = []

    async def unroutable() -> bool:
        outcomes.append(await publish_outcome(b, A, 2))
        return outcomes[-1] == "unroutable"

    # Not lost in a queue that is gone: refused, so the sender keeps it stored.
    await eventually(unroutable, 30, "publishes to A unroutable while its node is down")
    assert set(outcomes) <= {"ok", "unroutable", "unavailable"}
    # M declared its queue again on a live node: publishes to it are routed.
    await eventually(lambda: _ok(b, PodId("M"), 3), 30, "M routable again")
    assert m.connected_to in {n.url.replace("guest:guest", "guest:***") for n in (two, three)}
    await moving.wait_for(lambda: 3 in numbers(moving.deliveries), timeout=15)
    assert not a.ready

    await asyncio.to_thread(rabbit.restart, one)
    await eventually(lambda: _ok(b, A, 4), 60, "A routable again once node 1 is back")
    await stuck.wait_for(lambda: 4 in numbers(stuck.deliveries), timeout=15)


async def _ok(bus: RabbitBus, pod: PodId, n: int) -> bool:
    return await publish_outcome(bus, pod, n) == "ok"


async def test_stranded_messages_are_rerouted_while_a_node_is_down(
        rabbit: RabbitCluster, cluster_broker: Broker) -> None:
    one, two, three = rabbit.nodes
    inbox = Inbox()
    # The shared queues are declared first through node 1 (their leader, likely).
    b = await cluster_broker.bus("B", url=one.url + "," + two.url, inbox=inbox)
    c = await cluster_broker.bus("C", url=three.url, message_ttl_ms=300,
                                 queue_expires_ms=1500)
    await asyncio.to_thread(one.stop)
    await eventually(lambda: _ready(b), 30, "B failed over")
    await c.stop()  # C died with deliveries on their way to it
    await b.publish(C, [delivery(i) for i in range(5)])
    # They expire in C's queue (on node 3), are dead-lettered to the stranded
    # quorum queue, which works on two of its three nodes, and reach B.
    await inbox.wait_for(lambda: len(inbox.stranded) >= 5, timeout=30)
    assert numbers(inbox.stranded) == list(range(5))
    assert {d.stranded_from for d in inbox.stranded} == {C}


async def _ready(bus: RabbitBus) -> bool:
    return bus.ready
