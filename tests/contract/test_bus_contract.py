"""Contract of :class:`wsnode.bus.Bus`, run against the in-process bus and RabbitMQ.

A RabbitMQ bus hands deliveries over asynchronously and the in-process one
before ``publish`` returns, so every test waits for what it expects with a
bounded ``Inbox.wait_for``; a test that expects nothing somewhere sends a
marker behind it and waits for the marker.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.contract.factories import BusFactory
from tests.integration.conftest import Inbox
from wsnode.bus import Bus, Delivery, Unroutable
from wsnode.errors import BackendUnavailable
from wsnode.ids import MsgId, PodId, UserId

A, B, NOBODY = PodId("A"), PodId("B"), PodId("nobody")


def delivery(n: int, user: str = "alice") -> Delivery:
    return Delivery(UserId(user), orjson.dumps({"type": "t", "payload": {"n": n}}), "t")


def numbers(deliveries: list[Delivery], user: str | None = None) -> list[int]:
    return [orjson.loads(d.frame)["payload"]["n"] for d in deliveries
            if user is None or d.user == user]


async def test_deliveries_arrive_whole(make_bus: BusFactory) -> None:
    _, inbox = await make_bus("A")
    sender, _ = await make_bus("B")
    sent = [
        delivery(1),
        Delivery(UserId("ユーザー b:c{d}"), b'{"type":"x","payload":"\\u00e9\xc3\xa9"}', "x",
                 ack_id=MsgId("m-1"), expires_at=1_700_000_000_123, hops=1,
                 published_to=(PodId("A"), PodId("z")), trace_id=MsgId("m-1")),
    ]
    await sender.publish(A, sent)
    await inbox.wait_for(lambda: len(inbox.deliveries) >= 2)
    assert inbox.deliveries == sent  # every field, the frame byte for byte
    assert inbox.stranded == []


async def test_fanouts_arrive_whole_among_deliveries(make_bus: BusFactory) -> None:
    _, inbox = await make_bus("A")
    sender, _ = await make_bus("B")
    sent = [Delivery(UserId(""), b'{"type":"t","payload":1}', "t", topic="*"),
            delivery(2),
            Delivery(UserId(""), b'{"type":"t","payload":3}', "t", expires_at=9, topic="a:b")]
    await sender.publish(A, sent)
    await inbox.wait_for(lambda: len(inbox.deliveries) >= 3)
    assert inbox.deliveries == sent


async def test_one_publishers_deliveries_arrive_in_publish_order(
        make_bus: BusFactory) -> None:
    _, inbox = await make_bus("A")
    started, _ = await make_bus("B")
    client, _ = await make_bus(None)

    async def run(bus: Bus, user: str) -> None:
        for i in range(20):  # one at a time ...
            await bus.publish(A, [delivery(i, user)])
        # ... many in one tick, and several in one call
        await asyncio.gather(*(bus.publish(A, [delivery(i, user)]) for i in range(20, 70)))
        await bus.publish(A, [delivery(i, user) for i in range(70, 80)])

    await asyncio.gather(run(started, "u1"), run(client, "u2"))
    await inbox.wait_for(lambda: len(inbox.deliveries) >= 160)
    assert numbers(inbox.deliveries, "u1") == list(range(80))
    assert numbers(inbox.deliveries, "u2") == list(range(80))


async def test_handed_over_deliveries_keep_publish_order_and_confirm_later(
        make_bus: BusFactory) -> None:
    _, inbox = await make_bus("A")
    bus, _ = await make_bus("B")
    futures: list[asyncio.Future[None]] = []
    for i in range(30):  # handed over, published and handed over again, never waited for
        if i % 10 == 5:
            await bus.publish(A, [delivery(i)])
        else:
            futures += await bus.hand_over(A, [delivery(i)])
    futures += await bus.hand_over(A, [delivery(i) for i in range(30, 40)])
    assert await bus.hand_over(A, []) == []
    # Settled as publish returns: None once the broker confirmed (the futures
    # may be shared with other publishers: awaited shielded).
    results = await asyncio.wait_for(
        asyncio.gather(*(asyncio.shield(f) for f in futures)), 10)
    assert results == [None] * len(futures)
    await inbox.wait_for(lambda: len(inbox.deliveries) >= 40)
    assert numbers(inbox.deliveries) == list(range(40))


async def test_a_hand_over_to_an_unknown_pod_fails_as_publish_does(
        make_bus: BusFactory) -> None:
    bus, _ = await make_bus("B")
    # Known before queueing (raised) or when the broker returns it (the future).
    with pytest.raises(Unroutable):
        futures = await bus.hand_over(NOBODY, [delivery(1)])
        await asyncio.wait_for(asyncio.gather(*(asyncio.shield(f) for f in futures)), 10)
    await bus.stop()
    with pytest.raises(BackendUnavailable):
        await bus.hand_over(A, [delivery(2)])


async def test_an_unknown_pod_is_unroutable(make_bus: BusFactory) -> None:
    bus, _ = await make_bus("B")
    with pytest.raises(Unroutable):
        await bus.publish(NOBODY, [delivery(1)])
    with pytest.raises(Unroutable):
        await bus.control(NOBODY, {"cmd": "drain"})
    # The bus still works after it.
    _, inbox = await make_bus("A")
    await bus.publish(A, [delivery(2)])
    await inbox.wait_for(lambda: bool(inbox.deliveries))
    assert numbers(inbox.deliveries) == [2]


async def test_control_reaches_its_pod_only(make_bus: BusFactory) -> None:
    _, inbox_a = await make_bus("A")
    _, inbox_b = await make_bus("B")
    client, _ = await make_bus(None)
    await client.control(A, {"cmd": "drain", "over": 1.5})
    await client.control(B, {"cmd": "marker"})
    await inbox_b.wait_for(lambda: bool(inbox_b.controls))
    await inbox_a.wait_for(lambda: bool(inbox_a.controls))
    assert inbox_a.controls == [{"cmd": "drain", "over": 1.5}]
    assert inbox_b.controls == [{"cmd": "marker"}]
    assert inbox_a.deliveries == inbox_b.deliveries == []


async def test_publish_and_control_work_without_start(make_bus: BusFactory) -> None:
    _, inbox = await make_bus("A")
    client, _ = await make_bus(None)  # like wsctl: never started
    await client.publish(A, [delivery(7)])
    await client.control(A, {"cmd": "ping"})
    await inbox.wait_for(lambda: bool(inbox.deliveries) and bool(inbox.controls))
    assert numbers(inbox.deliveries) == [7]
    assert inbox.controls == [{"cmd": "ping"}]
    assert client.ready and client.problem is None


async def test_an_empty_publish_delivers_nothing(make_bus: BusFactory) -> None:
    _, inbox = await make_bus("A")
    bus, _ = await make_bus("B")
    await bus.publish(A, [])
    await bus.publish(NOBODY, [])  # nothing to route: not even Unroutable
    await bus.publish(A, [delivery(1)])
    await inbox.wait_for(lambda: bool(inbox.deliveries))
    assert inbox.batches == 1


class FlakyInbox(Inbox):
    """An Inbox whose deliveries handler raises on its first call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def on_deliveries(self, batch: list[Delivery]) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("handler bug")
        await super().on_deliveries(batch)


async def test_a_failing_handler_neither_fails_the_publisher_nor_stops_the_consumer(
        make_bus: BusFactory) -> None:
    _, inbox = await make_bus("A", FlakyInbox())
    sender, _ = await make_bus("B")
    await sender.publish(A, [delivery(1)])  # its handler raises
    await sender.publish(A, [delivery(2)])
    await inbox.wait_for(lambda: bool(inbox.deliveries))
    assert numbers(inbox.deliveries) == [2]
    assert isinstance(inbox, FlakyInbox) and inbox.calls == 2


async def test_start_twice_is_refused(make_bus: BusFactory) -> None:
    bus, inbox = await make_bus("A")
    with pytest.raises(RuntimeError):
        await bus.start(PodId("A2"), inbox.on_deliveries, inbox.on_control, inbox.on_stranded)


async def test_stop_is_idempotent_and_ends_the_bus(make_bus: BusFactory) -> None:
    bus, inbox = await make_bus("A")
    assert bus.ready and bus.problem is None
    await bus.stop()
    await bus.stop()
    assert not bus.ready
    assert bus.problem == "stopped"
    with pytest.raises(BackendUnavailable):
        await bus.publish(B, [delivery(1)])
    with pytest.raises(BackendUnavailable):
        await bus.control(B, {"cmd": "drain"})
    with pytest.raises(BackendUnavailable):
        await bus.start(A, inbox.on_deliveries, inbox.on_control, inbox.on_stranded)
    client, _ = await make_bus(None)
    await client.stop()  # never used: stop works too
    assert client.problem == "stopped"


async def test_ready_exactly_when_there_is_no_problem(make_bus: BusFactory) -> None:
    buses = [await make_bus("A"), await make_bus("B"), await make_bus(None)]
    await buses[2][0].publish(A, [delivery(1)])
    for bus, _ in buses:
        assert bus.ready
        assert bus.problem is None
    for bus, _ in buses:
        await bus.stop()
        assert not bus.ready
        assert isinstance(bus.problem, str) and bus.problem
