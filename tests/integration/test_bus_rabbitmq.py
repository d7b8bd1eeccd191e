"""RabbitBus against the real RabbitMQ: routing, batching, outages, dead pods,
poison messages and deaf pods. Outages are made with a TCP proxy; the shared
broker itself is never stopped."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import aio_pika
import orjson
import pytest
from yarl import URL

from tests.integration.conftest import AMQP_URL, Broker, Inbox, eventually
from tests.support.pods import free_port
from tests.support.proxy import TcpProxy
from wsnode.bus import Delivery, Unroutable
from wsnode.bus_rabbitmq_topology import ACK_EVERY
from wsnode.errors import BackendUnavailable
from wsnode.ids import MsgId, PodId, UserId

A, B, C = PodId("A"), PodId("B"), PodId("C")


def delivery(n: int, user: str = "alice", ack: bool = False) -> Delivery:
    frame = orjson.dumps({"type": "chat_message", "payload": {"n": n}})
    return Delivery(UserId(user), frame, "chat_message",
                    ack_id=MsgId(f"m{n}") if ack else None)


def numbers(deliveries: list[Delivery]) -> list[int]:
    return [orjson.loads(d.frame)["payload"]["n"] for d in deliveries]


async def test_deliveries_are_batched_in_order_and_control_reaches_the_pod(
        broker: Broker) -> None:
    inbox = Inbox()
    await broker.bus("A", inbox=inbox)
    b = await broker.bus("B")
    assert b.ready

    # 1,000 publish() calls in one tick: a handful of broker messages.
    await asyncio.gather(*(b.publish(A, [delivery(i)]) for i in range(1000)))
    await inbox.wait_for(lambda: len(inbox.deliveries) >= 1000)
    assert numbers(inbox.deliveries) == list(range(1000))
    assert b.published_deliveries == 1000
    assert b.published_messages <= 4  # 1024 per message at most
    assert inbox.batches == b.published_messages

    # Sequential publishes keep their order too, and multi-delivery calls stay whole.
    for i in range(1000, 1100, 10):
        await b.publish(A, [delivery(n) for n in range(i, i + 10)])
    await inbox.wait_for(lambda: len(inbox.deliveries) >= 1100)
    assert numbers(inbox.deliveries) == list(range(1100))

    await b.control(A, {"cmd": "drain", "over": 1.5})
    await inbox.wait_for(lambda: bool(inbox.controls))
    assert inbox.controls == [{"cmd": "drain", "over": 1.5}]


async def test_publish_to_a_pod_without_a_queue_is_unroutable(broker: Broker) -> None:
    b = await broker.bus("B")
    with pytest.raises(Unroutable):
        await b.publish(PodId("nobody"), [delivery(1)])
    with pytest.raises(Unroutable):
        await b.control(PodId("nobody"), {"cmd": "drain"})
    # One unroutable pod in a tick does not fail deliveries to a live one.
    inbox = Inbox()
    await broker.bus("A", inbox=inbox)
    results = await asyncio.gather(b.publish(PodId("nobody"), [delivery(2)]),
                                   b.publish(A, [delivery(3)]), return_exceptions=True)
    assert isinstance(results[0], Unroutable)
    assert results[1] is None


async def test_publish_only_bus_connects_on_first_use(broker: Broker) -> None:
    inbox = Inbox()
    await broker.bus("A", inbox=inbox)
    client = await broker.bus(None)  # like wsctl: never started
    await client.publish(A, [delivery(7)])
    await inbox.wait_for(lambda: bool(inbox.deliveries))
    assert numbers(inbox.deliveries) == [7]
    assert client.ready


async def test_first_connect_fails_fast_without_leaking_the_password(
        broker: Broker) -> None:
    bus = await broker.bus(None, url=f"amqp://guest:s3cr3t-pw@127.0.0.1:{free_port()}/")
    inbox = Inbox()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        await bus.start(A, inbox.on_deliveries, inbox.on_control, inbox.on_stranded)
    assert time.monotonic() - started < 3
    assert "s3cr3t-pw" not in str(caught.value)
    assert "s3cr3t-pw" not in repr(caught.value.__cause__)
    assert not bus.ready
    with pytest.raises(BackendUnavailable):
        await bus.publish(B, [delivery(1)])

    wrong = await broker.bus(None, url=str(URL(AMQP_URL).with_password("wr0ng-pw-42")))
    with pytest.raises(BackendUnavailable, match="refused the login") as caught:
        await wrong.start(A, inbox.on_deliveries, inbox.on_control, inbox.on_stranded)
    assert "wr0ng-pw-42" not in str(caught.value)


async def test_messages_are_persistent_only_when_an_ack_is_required(broker: Broker) -> None:
    c = await broker.bus("C")
    await c.stop()
    await c.stop()  # idempotent
    # The queue outlives its pod (x-expires removes it later) ...
    assert await broker.queue_exists(broker.names.pod_queue(C))
    b = await broker.bus("B")
    await b.publish(C, [delivery(1)])
    await b.publish(C, [delivery(2, ack=True)])
    channel = await broker.channel()
    queue = await channel.get_queue(broker.names.pod_queue(C), ensure=False)
    modes: list[int | None] = []
    while len(modes) < 2:
        message = await queue.get(timeout=5)
        assert message is not None
        await message.ack()
        if message.type != "canary":  # C may have left one behind
            assert message.type == "deliver"
            modes.append(message.delivery_mode)
    assert modes == [aio_pika.DeliveryMode.NOT_PERSISTENT, aio_pika.DeliveryMode.PERSISTENT]
    await channel.close()


async def test_outage_reconnects_with_one_consumer_and_loses_nothing(
        broker: Broker, amqp_target: tuple[str, int]) -> None:
    async with TcpProxy(*amqp_target) as proxy:
        url = proxy.url()
        inbox = Inbox()
        a = await broker.bus("A", url=url, inbox=inbox)
        b = await broker.bus("B", url=url)
        publishers, each = 20, 50
        retries = 0

        async def publisher(k: int) -> None:
            nonlocal retries
            for i in range(each):
                d = delivery(k * 1000 + i, user=f"u{k}")
                async with asyncio.timeout(30):
                    while True:
                        try:
                            await b.publish(A, [d])
                            break
                        except BackendUnavailable:
                            retries += 1
                            await asyncio.sleep(0.05)  # the pacing of a retrying client
                await asyncio.sleep(0.002)

        sending = asyncio.gather(*(publisher(k) for k in range(publishers)))
        await inbox.wait_for(lambda: len(inbox.deliveries) >= 200)
        await proxy.cut()  # mid-stream
        await eventually(lambda: not a.ready and not b.ready, timeout=5)
        await asyncio.sleep(0.3)  # let retries hit the refused port
        await proxy.restore()
        await eventually(lambda: a.ready and b.ready, timeout=10)
        for _ in range(2):  # more outages: still one consumer per queue each time
            await proxy.cut()
            await eventually(lambda: not a.ready, timeout=5)
            await proxy.restore()
            await eventually(lambda: a.ready and b.ready, timeout=10)
        await asyncio.wait_for(sending, timeout=30)

        expected = {k * 1000 + i for k in range(publishers) for i in range(each)}
        await inbox.wait_for(lambda: set(numbers(inbox.deliveries)) >= expected, timeout=15)
        got = numbers(inbox.deliveries)
        assert set(got) == expected  # duplicates possible, losses not
        assert retries > 0  # the cuts really hit publishes in flight
        for k in range(publishers):  # per-publisher order of first arrival
            first_seen = list(dict.fromkeys(n for n in got if n // 1000 == k))
            assert first_seen == sorted(first_seen)
        assert a.reconnects >= 3
        assert b.reconnects >= 3
        assert (await broker.queue_info(broker.names.pod_queue(A)))[1] == 1
        assert (await broker.queue_info(broker.names.pod_queue(B)))[1] == 1
        assert (await broker.queue_info(broker.names.stranded_queue))[1] == 2  # A and B


async def test_publish_fails_promptly_while_the_connection_is_down(
        broker: Broker, amqp_target: tuple[str, int]) -> None:
    await broker.bus("A")
    async with TcpProxy(*amqp_target) as proxy:
        b = await broker.bus("B", url=proxy.url(), publish_timeout=2.0)
        await proxy.cut()
        await eventually(lambda: not b.ready, timeout=5)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await b.publish(A, [delivery(1)])
        assert time.monotonic() - started < 0.5


async def test_messages_stranded_on_a_dead_pod_reach_a_live_pod(broker: Broker) -> None:
    inbox = Inbox()
    await broker.bus("A", inbox=inbox)
    c = await broker.bus("C", message_ttl_ms=300, queue_expires_ms=1500)
    await c.stop()  # C died; its queue remains for a while
    b = await broker.bus("B", inbox=inbox)
    await b.publish(C, [delivery(i, user=f"user{i}") for i in range(5)])
    await b.control(C, {"cmd": "drain"})  # a command for a dead pod is dropped
    await inbox.wait_for(lambda: len(inbox.stranded) >= 5, timeout=10)
    assert numbers(inbox.stranded) == list(range(5))
    assert [d.user for d in inbox.stranded] == [f"user{i}" for i in range(5)]
    # Each copy says whose queue it expired in: that pod never got it.
    assert {d.stranded_from for d in inbox.stranded} == {C}
    assert inbox.controls == []
    assert inbox.deliveries == []

    # Then x-expires removes the dead pod's queue: publishing to it is unroutable.
    async def unroutable() -> bool:
        try:
            await b.control(C, {"cmd": "ping"})
        except Unroutable:
            return True
        return False

    async with asyncio.timeout(10):
        while not await unroutable():
            await asyncio.sleep(0.2)


async def test_poison_messages_are_parked_once_and_the_consumer_keeps_working(
        broker: Broker) -> None:
    inbox = Inbox()
    a = await broker.bus("A", inbox=inbox)
    b = await broker.bus("B")
    channel = await broker.channel()
    exchange = await channel.get_exchange(broker.names.exchange)
    bad = [
        ("deliver", b"not json at all"),
        ("deliver", orjson.dumps({"v": 1, "d": [{"f": "{}", "t": "x"}]})),  # no user
        ("deliver", orjson.dumps({"v": 1, "d": [{"u": "", "f": "{}", "t": "x"}]})),
        ("control", b"[1, 2]"),
        ("mystery", b"{}"),
    ]
    for kind, body in bad:
        await exchange.publish(aio_pika.Message(body, type=kind), routing_key=A)
    await b.publish(A, [delivery(42)])
    await inbox.wait_for(lambda: bool(inbox.deliveries))
    assert numbers(inbox.deliveries) == [42]
    assert inbox.controls == []

    poison = broker.names.poison_queue
    await eventually(lambda: a.parked == len(bad), timeout=5)
    queue = await channel.get_queue(poison, ensure=False)
    parked = []
    for _ in bad:
        message = await queue.get(timeout=5)
        assert message is not None
        parked.append((message.type, message.body))
        assert message.headers.get("x-wsnode-reason")
        await message.ack()
    assert parked == bad
    assert (await broker.queue_info(broker.names.pod_queue(A)))[0] == 0  # not redelivered
    await b.publish(A, [delivery(43)])
    await inbox.wait_for(lambda: len(inbox.deliveries) == 2)
    assert a.parked == len(bad)
    await channel.close()


async def consumers_of(broker: Broker, queue: str, expected: int, timeout: float = 10) -> None:
    """Wait until ``queue`` has ``expected`` consumers (the broker drops a closed
    connection's consumers on its own time)."""
    async with asyncio.timeout(timeout):
        while (await broker.queue_info(queue))[1] != expected:
            await asyncio.sleep(0.05)


async def test_a_deaf_pod_turns_not_ready_and_recovers(
        broker: Broker, amqp_target: tuple[str, int], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wsnode.bus")
    interval = 1.0
    async with TcpProxy(*amqp_target) as proxy:
        inbox = Inbox()
        a = await broker.bus("A", url=proxy.url(), inbox=inbox, canary_interval=interval)
        b = await broker.bus("B")
        await eventually(lambda: a.last_canary_rtt is not None, timeout=5)
        assert a.ready and a.problem is None

        # A half-broken network: A's writes (canaries, acks) still reach the
        # broker, but nothing the broker sends comes back, and nobody is told.
        assert proxy.stall(toward="client") == 1
        await eventually(lambda: not a.ready, timeout=4 * interval)
        # The canary said so, before any reconnect: the session looks fine.
        problem = a.problem
        assert problem is not None and problem.startswith("deaf: no canary back for"), problem
        assert a.reconnects == 0

        # Nothing arrives at all, so the bus starts a new session and hears again.
        await eventually(lambda: a.ready, timeout=20)
        assert a.reconnects == 1
        assert a.problem is None
        assert any(r.levelno == logging.WARNING and "bus session lost: deaf for" in r.getMessage()
                   for r in caplog.records)
        await consumers_of(broker, broker.names.pod_queue(A), 1)
        await b.publish(A, [delivery(1)])
        await inbox.wait_for(lambda: bool(inbox.deliveries))
        assert numbers(inbox.deliveries) == [1]


async def test_the_supervisor_survives_a_refused_declaration_and_names_it(
        broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="wsnode.bus")
    inbox = Inbox()
    a = await broker.bus("A", inbox=inbox, backoff_max=0.3)
    b = await broker.bus("B")
    names = broker.names
    channel = await broker.channel()
    # Someone re-creates the stranded exchange with another type (A does not
    # notice: it declares only when a session opens) ...
    await channel.exchange_delete(names.stranded_exchange)
    await channel.declare_exchange(names.stranded_exchange, aio_pika.ExchangeType.DIRECT,
                                   durable=True)
    # ... then A loses its session: every new one is refused by the broker.
    await channel.queue_delete(names.pod_queue(A))

    def attempt() -> int:
        found = re.search(r"attempt (\d+) failed", a.problem or "")
        return int(found.group(1)) if found else 0

    await eventually(lambda: attempt() >= 3, timeout=15)
    problem = a.problem
    assert problem is not None
    assert problem.startswith("session lost (consumer "), problem
    assert "RabbitMQ refused a declaration" in problem
    assert not a.ready
    # Logged once for the outage, with its traceback; the later attempts at DEBUG.
    warnings = [r for r in caplog.records
                if r.levelno == logging.WARNING and "bus reconnect failing" in r.getMessage()]
    assert len(warnings) == 1
    assert "refused a declaration" in warnings[0].getMessage()
    assert warnings[0].exc_info is not None
    assert "PRECONDITION_FAILED" in caplog.text  # the broker's own words, in the traceback
    assert sum(r.levelno == logging.DEBUG and "bus reconnect failing" in r.getMessage()
               for r in caplog.records) >= 2

    # The conflict goes away: the supervisor, still running, gets through.
    await channel.exchange_delete(names.stranded_exchange)
    await eventually(lambda: a.ready, timeout=10)
    assert a.problem is None
    assert a.reconnects == 1
    assert any("bus reconnect working again" in r.getMessage() for r in caplog.records)
    await consumers_of(broker, names.pod_queue(A), 1)
    await b.publish(A, [delivery(9)])
    await inbox.wait_for(lambda: bool(inbox.deliveries))
    assert numbers(inbox.deliveries) == [9]
    await channel.close()


async def test_problem_names_each_state(broker: Broker, amqp_target: tuple[str, int]) -> None:
    async with TcpProxy(*amqp_target) as proxy:
        client = await broker.bus(None, url=proxy.url())
        assert not client.ready and client.problem == "not connected"
        await proxy.cut()
        with pytest.raises(BackendUnavailable):
            await client.publish(A, [delivery(1)])
        assert client.problem is not None
        assert client.problem.startswith("not connected: RabbitMQ at amqp://guest:***@")

        await proxy.restore()
        inbox = Inbox()
        a = await broker.bus("A", url=proxy.url(), inbox=inbox)
        assert a.ready and a.problem is None
        await proxy.cut()
        await eventually(lambda: not a.ready, timeout=5)
        await eventually(lambda: "failed: RabbitMQ at" in (a.problem or ""), timeout=10)
        problem = a.problem
        assert problem is not None and problem.startswith("session lost (closed"), problem
        assert "reconnecting, attempt" in problem
        await proxy.restore()
        await eventually(lambda: a.ready, timeout=15)
        assert a.problem is None
        await a.stop()
        assert not a.ready and a.problem == "stopped"


async def test_a_pod_queue_deleted_under_the_bus_is_declared_again(broker: Broker) -> None:
    inbox = Inbox()
    a = await broker.bus("A", inbox=inbox)
    b = await broker.bus("B")
    channel = await broker.channel()
    await channel.queue_delete(broker.names.pod_queue(A))
    await eventually(lambda: a.reconnects == 1 and a.ready, timeout=10)
    assert (await broker.queue_info(broker.names.pod_queue(A)))[1] == 1
    await b.publish(A, [delivery(5)])
    await inbox.wait_for(lambda: bool(inbox.deliveries))
    await channel.close()


async def test_stop_is_bounded_and_keeps_the_queue(broker: Broker) -> None:
    a = await broker.bus("A")
    b = await broker.bus("B")
    pending = asyncio.gather(*(b.publish(A, [delivery(i)]) for i in range(100)))
    await asyncio.sleep(0)  # the publishes are accepted (buffered), not yet sent
    async with asyncio.timeout(5):
        await b.stop()
    # Publishes accepted before stop() were settled, not abandoned.
    await asyncio.wait_for(pending, timeout=1)
    with pytest.raises(BackendUnavailable):
        await b.publish(A, [delivery(1)])
    await a.stop()
    assert not a.ready
    assert await broker.queue_exists(broker.names.pod_queue(A))


async def test_byte_cap_splits_batches_without_reordering(broker: Broker) -> None:
    inbox = Inbox()
    await broker.bus("A", inbox=inbox)
    b = await broker.bus("B", max_batch_bytes=10_000)
    padded = [Delivery(UserId("bob"), orjson.dumps({"payload": {"n": i, "pad": "x" * 1000}}),
                       "chat_message") for i in range(100)]
    await asyncio.gather(*(b.publish(A, [d]) for d in padded))
    await inbox.wait_for(lambda: len(inbox.deliveries) >= 100)
    assert numbers(inbox.deliveries) == list(range(100))
    assert 10 <= b.published_messages <= 15


async def test_a_failing_handler_does_not_stop_the_consumer(broker: Broker) -> None:
    inbox = Inbox()
    calls = 0

    async def flaky(batch: list[Delivery]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("handler bug")
        await inbox.on_deliveries(batch)

    a = await broker.bus(None)
    broker.pods.add("A")
    await a.start(A, flaky, inbox.on_control, inbox.on_stranded)
    b = await broker.bus("B")
    await b.publish(A, [delivery(1)])  # its handler raises: acked, not retried
    await b.publish(A, [delivery(2)])
    await inbox.wait_for(lambda: bool(inbox.deliveries))
    assert numbers(inbox.deliveries) == [2]
    assert (await broker.queue_info(broker.names.pod_queue(A)))[0] == 0
    assert calls == 2


async def test_handled_messages_are_acked_before_the_consumer_waits(broker: Broker) -> None:
    """Acks are shared by up to ACK_EVERY handled messages while more wait, but an
    inbox that runs empty acks what it handled before waiting: with a prefetch
    below ACK_EVERY the broker, which sends no more than the prefetch unacked,
    would otherwise stop for good. Bursts held behind a slow handler, then
    single messages: every one arrives, in order, once."""
    gate = asyncio.Event()

    class Gated(Inbox):
        async def on_deliveries(self, batch: list[Delivery]) -> None:
            await gate.wait()  # the rest of a burst piles up behind the first
            await super().on_deliveries(batch)

    assert ACK_EVERY > 5
    inbox = Gated()
    await broker.bus("A", inbox=inbox, prefetch=5)
    b = await broker.bus("B")
    sent = 0
    for burst in (40, 1, 1, 23):
        gate.clear()
        for _ in range(burst):  # one broker message each: each publish awaits its confirm
            await b.publish(A, [delivery(sent)])
            sent += 1
        gate.set()
        await inbox.wait_for(lambda n=sent: len(inbox.deliveries) >= n)
    assert numbers(inbox.deliveries) == list(range(sent))
    assert not any(d.redelivered for d in inbox.deliveries)
