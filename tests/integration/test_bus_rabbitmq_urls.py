"""RabbitBus with a list of broker URLs, and the queues it declares, against the
shared RabbitMQ.

Two TCP proxies in front of the one shared broker stand for two nodes of a
cluster: cutting one is, to the bus, the loss of the node it is connected to
(the private 3-node cluster of tests/cluster does it for real).
"""

from __future__ import annotations

import asyncio
import logging

import aio_pika
import orjson
import pytest

from tests.integration.conftest import AMQP_URL, Broker, Inbox, eventually
from tests.support.pods import free_port
from tests.support.proxy import TcpProxy
from wsnode.bus import Delivery
from wsnode.errors import BackendUnavailable
from wsnode.ids import MsgId, PodId, UserId

A, B = PodId("A"), PodId("B")


def delivery(n: int) -> Delivery:
    return Delivery(UserId("alice"), orjson.dumps({"type": "t", "payload": {"n": n}}), "t",
                    ack_id=MsgId(f"m{n}"))


def numbers(deliveries: list[Delivery]) -> list[int]:
    return [orjson.loads(d.frame)["payload"]["n"] for d in deliveries]


async def refusal(broker: Broker, name: str, *, durable: bool,
                  arguments: dict[str, str] | None = None) -> str:
    """The broker's answer to declaring queue ``name`` so (``""`` when it
    accepts): how a test tells a queue's type and durability without the
    management plugin."""
    channel = await broker.channel()
    try:
        await channel.declare_queue(name, durable=durable, arguments=arguments)
    except aio_pika.exceptions.ChannelPreconditionFailed as exc:
        return str(exc)
    await channel.close()
    return ""


async def test_the_bus_connects_to_the_first_url_that_answers(
        broker: Broker, amqp_target: tuple[str, int]) -> None:
    dead = f"amqp://guest:n0de-pw@127.0.0.1:{free_port()}/"
    async with TcpProxy(*amqp_target) as proxy:
        inbox = Inbox()
        a = await broker.bus("A", url=f"{dead}, {proxy.url()}", inbox=inbox)
        assert a.ready
        assert a.connected_to == proxy.url(userinfo="guest:***")
        b = await broker.bus("B", url=[AMQP_URL])  # a sequence works too
        await b.publish(A, [delivery(1)])
        await inbox.wait_for(lambda: bool(inbox.deliveries))


async def test_when_no_url_answers_the_error_names_each_without_passwords(
        broker: Broker) -> None:
    ports = [free_port(), free_port()]
    urls = ",".join(f"amqp://guest:pw-{p}-s3cret@127.0.0.1:{p}/" for p in ports)
    bus = await broker.bus(None, url=urls)
    inbox = Inbox()
    with pytest.raises(BackendUnavailable) as caught:
        await bus.start(A, inbox.on_deliveries, inbox.on_control, inbox.on_stranded)
    text = str(caught.value)
    assert text.startswith("no RabbitMQ node answered (2 tried): ")
    for port in ports:
        assert f"amqp://guest:***@127.0.0.1:{port}/" in text
    assert "s3cret" not in text and "s3cret" not in (bus.problem or "")


async def test_losing_the_node_fails_over_to_the_next_url_and_loses_nothing(
        broker: Broker, amqp_target: tuple[str, int]) -> None:
    async with TcpProxy(*amqp_target) as one, TcpProxy(*amqp_target) as two:
        inbox = Inbox()
        a = await broker.bus("A", url=f"{one.url()},{two.url()}", inbox=inbox)
        b = await broker.bus("B", url=f"{two.url()},{one.url()}")
        assert a.connected_to == one.url(userinfo="guest:***")
        sent: list[int] = []

        async def publisher() -> None:
            # As the sender does with ACK-required deliveries: a failed publish
            # is sent again (here at once; the sender defers it in the store).
            for n in range(400):
                async with asyncio.timeout(30):
                    while True:
                        try:
                            await b.publish(A, [delivery(n)])
                            break
                        except BackendUnavailable:
                            await asyncio.sleep(0.05)
                sent.append(n)
                await asyncio.sleep(0.005)

        sending = asyncio.create_task(publisher())
        await inbox.wait_for(lambda: len(inbox.deliveries) >= 100)
        await one.cut()  # A's node is gone; it stays gone
        await eventually(lambda: a.ready and a.connected_to == two.url(userinfo="guest:***"),
                         timeout=15)
        assert a.reconnects == 1
        await asyncio.wait_for(sending, timeout=60)
        await inbox.wait_for(lambda: set(numbers(inbox.deliveries)) >= set(sent), timeout=20)
        assert set(numbers(inbox.deliveries)) == set(range(400))
        assert (await broker.queue_info(broker.names.pod_queue(A)))[1] == 1


async def test_shared_queues_are_quorum_queues_and_pod_queues_transient(
        broker: Broker) -> None:
    await broker.bus("A")
    names = broker.names
    for queue in (names.stranded_queue, names.poison_queue):
        # Declared as a classic queue, it is refused for its type: it is a quorum queue.
        assert "received none but current is the value 'quorum'" in await refusal(
            broker, queue, durable=True)
    assert "inequivalent arg 'durable'" in await refusal(broker, names.pod_queue(A),
                                                         durable=True)


async def test_queues_of_an_older_deployment_are_used_as_they_are(
        broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    """An older wsnode declared classic shared queues and durable pod queues.
    RabbitMQ cannot change either: the bus uses them and says what to do."""
    caplog.set_level(logging.WARNING, logger="wsnode.bus")
    names = broker.names
    args = {"x-expires": 60_000, "x-message-ttl": 30_000,
            "x-dead-letter-exchange": names.stranded_exchange}
    channel = await broker.channel()
    for queue in (names.stranded_queue, names.poison_queue):
        await channel.declare_queue(queue, durable=True)
    broker.pods.add("A")
    await channel.declare_queue(names.pod_queue(A), durable=True, arguments=args)
    inbox = Inbox()
    a = await broker.bus("A", inbox=inbox)
    b = await broker.bus("B")
    assert a.ready
    await b.publish(A, [delivery(1)])
    await inbox.wait_for(lambda: bool(inbox.deliveries))
    warned = [r.getMessage() for r in caplog.records if "older wsnode" in r.getMessage()]
    assert sorted(w.split()[1] for w in warned[:3]) == sorted(
        [names.stranded_queue, names.poison_queue, names.pod_queue(A)])
    assert all("see README" in w for w in warned)
    # Still the old ones: classic, and durable.
    assert await refusal(broker, names.stranded_queue, durable=True) == ""
    assert await refusal(broker, names.pod_queue(A), durable=True, arguments=args) == ""

    # Deleted by an operator (README): the pods' consumers are cancelled, their
    # next sessions declare quorum queues.
    await channel.queue_delete(names.stranded_queue)
    await eventually(lambda: a.reconnects >= 1 and a.ready, timeout=15)
    assert "current is the value 'quorum'" in await refusal(broker, names.stranded_queue,
                                                            durable=True)
    await channel.close()


async def test_an_older_queue_with_other_arguments_is_still_refused(broker: Broker) -> None:
    names = broker.names
    channel = await broker.channel()
    broker.pods.add("A")
    # Durable as an older wsnode made it, but with another message TTL: not just
    # older, configured differently. Using it would silently change the TTL.
    await channel.declare_queue(names.pod_queue(A), durable=True, arguments={
        "x-expires": 60_000, "x-message-ttl": 1_000,
        "x-dead-letter-exchange": names.stranded_exchange})
    await channel.close()
    bus = await broker.bus(None)
    inbox = Inbox()
    with pytest.raises(BackendUnavailable, match=r"refused a declaration.*x-message-ttl"):
        await bus.start(A, inbox.on_deliveries, inbox.on_control, inbox.on_stranded)
