"""Nodes in one process with real WebSocket clients: races that need precise
timing (a producer running while a client connects; a user leaving a pod while
a message is on its way) are easier to provoke here than across processes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from wsnode import Envelope, Node, load_settings
from wsnode.acks_memory import MemoryAcks
from wsnode.backends import Backends, ack_policy
from wsnode.bus import Delivery, MemoryBus
from wsnode.ids import ConnId, MsgId, PodId, UserId
from wsnode.limiter import NoLimiter
from wsnode.presence import MemoryPresence

SECRET = "x" * 32
REDIS_URL = "redis://127.0.0.1:6379/0"


def settings(pod: str, **extra: object) -> object:
    return load_settings(pod_id=pod, port=0, admin_port=0, jwt_secret=SECRET, rate_limit="0",
                         **extra)


@contextlib.asynccontextmanager
async def pods(*names: str) -> AsyncIterator[list[Node]]:
    """Several nodes sharing in-memory presence, ACK store and bus."""
    presence, bus = MemoryPresence(), MemoryBus()
    first = settings(names[0])
    acks = MemoryAcks(ack_policy(first))  # type: ignore[arg-type]
    nodes = [Node(settings(n), insecure=True,  # type: ignore[arg-type]
                  backends=Backends(presence, NoLimiter(), acks, bus.attach(), shared_bus=True))
             for n in names]
    async with contextlib.AsyncExitStack() as stack:
        for node in nodes:
            await stack.enter_async_context(node)
        yield nodes


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"wsinproc{uuid.uuid4().hex[:8]}"
    yield prefix
    client = aioredis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_connect_while_messages_flow_keeps_order_and_sends_each_once(
        redis_prefix: str) -> None:
    # Redis backends: their awaits are where a connect and a send interleave.
    s = settings("solo", redis_url=REDIS_URL, key_prefix=redis_prefix)
    async with Node(s, insecure=True) as node:  # type: ignore[arg-type]
        for i in range(50):
            await node.send_to_user("amy", Envelope(type="n", payload=i, id=f"old{i}",
                                                    requires_ack=True))
        stop = asyncio.Event()

        async def produce() -> None:
            i = 0
            while not stop.is_set():
                await node.send_to_user("amy", Envelope(type="n", payload=i, id=f"new{i}",
                                                        requires_ack=True))
                i += 1
                if i % 20 == 0:
                    await asyncio.sleep(0)
        producer = asyncio.create_task(produce())
        await asyncio.sleep(0.02)
        frames = []
        async with connect(f"ws://127.0.0.1:{node.port}/ws?user=amy") as ws:
            while len(frames) < 400:
                frames.append(orjson.loads(await asyncio.wait_for(ws.recv(), 5)))
        stop.set()
        await producer
    assert frames[0]["type"] == "welcome"
    messages = [f for f in frames if f["type"] == "n"]
    seqs = [f["seq"] for f in messages]
    assert seqs == sorted(seqs), "a message overtook the replay or another message"
    ids = [f["id"] for f in messages]
    dups = [(i, x) for i, x in enumerate(ids) if ids.count(x) > 1]
    assert len(ids) == len(set(ids)), f"a message was sent twice: {dups}"
    assert ids[:50] == [f"old{i}" for i in range(50)]


async def test_backlog_larger_than_the_send_queue_is_replayed_at_the_clients_pace() -> None:
    s = settings("solo", send_queue_size="256KiB")
    n = 2000  # 16 MiB: more than the kernel's socket buffers and the send queue together
    async with Node(s, insecure=True) as node:  # type: ignore[arg-type]
        for i in range(n):
            await node.send_to_user("bob", Envelope(type="n", payload="x" * 8000, id=f"m{i}",
                                                    requires_ack=True))
        async with connect(f"ws://127.0.0.1:{node.port}/ws?user=bob", max_queue=4) as ws:
            frames = [orjson.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(n + 2)]
            assert ws.close_code is None
    assert [f["type"] for f in frames[:2]] == ["welcome", "n"]
    assert [f["id"] for f in frames[1:n + 1]] == [f"m{i}" for i in range(n)]
    assert frames[n + 1] == {"type": "restore", "payload": {"replayed": n}}


async def test_pass_on_never_gives_a_device_a_second_copy() -> None:
    async with pods("pod-a", "pod-b") as (a, b), \
            connect(f"ws://127.0.0.1:{a.port}/ws?user=ann") as phone:
        for _ in range(2):  # welcome, restore
            await phone.recv()
        # Presence still lists ann on pod-b, whose connection has just gone.
        await b.presence.add(PodId("pod-b"), UserId("ann"), ConnId("gone"), 1)
        report = await a.send_to_user("ann", Envelope(type="n", payload="once"))
        assert report.local == 1 and report.pods == ["pod-b"]
        assert orjson.loads(await phone.recv())["payload"] == "once"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(phone.recv(), 0.5)


async def test_stranded_delivery_is_not_delivered_twice_where_it_already_was() -> None:
    async with pods("pod-a") as (a,), \
            connect(f"ws://127.0.0.1:{a.port}/ws?user=sam") as phone:
        for _ in range(2):  # welcome, restore
            await phone.recv()
        frame = Envelope(type="n", payload="once").encode()
        # pod-a got its copy from the sender; the copy for a pod that died comes
        # back through the stranded queue naming pod-a among those published to.
        await a.send_to_user("sam", Envelope(type="n", payload="once"))
        await a.inbound.on_stranded([Delivery(
            UserId("sam"), frame, "n", published_to=(PodId("pod-a"), PodId("pod-dead")),
            stranded_from=PodId("pod-dead"))])
        assert orjson.loads(await phone.recv())["payload"] == "once"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(phone.recv(), 0.5)


async def test_a_copy_stranded_from_a_live_pod_reaches_that_pods_clients() -> None:
    """pod-a stopped consuming longer than its queue's message TTL (paused, not
    dead): the copy published to it expired into the stranded queue. Its
    clients stayed connected and must still get it."""
    async with pods("pod-a", "pod-b") as (a, b), \
            connect(f"ws://127.0.0.1:{a.port}/ws?user=sam") as phone:
        for _ in range(2):  # welcome, restore
            await phone.recv()
        frame = Envelope(type="n", payload="late").encode()
        await b.inbound.on_stranded([Delivery(
            UserId("sam"), frame, "n", published_to=(PodId("pod-a"), PodId("pod-b")),
            stranded_from=PodId("pod-a"))])
        assert orjson.loads(await asyncio.wait_for(phone.recv(), 5))["payload"] == "late"
        expired = Envelope(type="n", payload="too late", expires_at=1).encode()
        await b.inbound.on_stranded([Delivery(
            UserId("sam"), expired, "n", expires_at=1, published_to=(PodId("pod-a"),),
            stranded_from=PodId("pod-a"))])
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(phone.recv(), 0.5)


async def test_ack_sent_while_a_pod_rejoins_reaches_its_online_user(redis_prefix: str) -> None:
    """A pod whose presence writes were lost (a Redis blip) joins again with a new
    epoch; an ACK-required message sent meanwhile found its user nowhere. It must
    still arrive without the user reconnecting."""
    common = {"redis_url": REDIS_URL, "key_prefix": redis_prefix,
              "heartbeat_interval": "200ms", "ack_retry_interval": "300ms"}
    async with Node(settings("pod-a", **common), insecure=True) as a, \
            Node(settings("pod-b", **common), insecure=True) as b, \
            connect(f"ws://127.0.0.1:{a.port}/ws?user=ann") as ann:  # type: ignore[arg-type]
        for _ in range(2):
            await ann.recv()
        await a.presence.leave(a.pod)  # what a Redis outage costs the pod
        a.upkeep.dirty = True
        report = await b.send_to_user("ann", Envelope(type="n", id="m1", requires_ack=True))
        assert report.stored and report.local == 0 and report.pods == []
        got = orjson.loads(await asyncio.wait_for(ann.recv(), 5))
        assert (got["id"], got["seq"]) == ("m1", report.seq)


async def test_close_gives_up_on_a_client_that_does_not_read() -> None:
    s = settings("solo", send_queue_size="256MiB", drain_timeout="2s")
    async with Node(s, insecure=True) as node:  # type: ignore[arg-type]
        stuck = await connect(f"ws://127.0.0.1:{node.port}/ws?user=stuck", max_queue=1)
        blob = "x" * 60_000
        for _ in range(600):  # 36 MB: the socket buffers fill, the writer parks
            await node.send_to_user("stuck", Envelope(type="n", payload=blob))
        (conn,) = node.hub.conns_of(UserId("stuck"))
        assert conn.queued_bytes > 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        await conn.close(1012, "drain")
        assert loop.time() - started < 3.0  # close_timeout is 2 s here
        assert conn.ws.transport.is_closing()
        stuck.transport.abort()


async def test_a_redelivered_batch_gives_no_at_most_once_message_twice() -> None:
    """The broker hands a batch over again when the connection dropped before the
    pod's ack: its at-most-once deliveries may have gone out already."""
    async with pods("pod-a") as (a,), \
            connect(f"ws://127.0.0.1:{a.port}/ws?user=sam") as phone:
        for _ in range(2):  # welcome, restore
            await phone.recv()
        once = Envelope(type="n", payload="once").encode()
        ack = Envelope(type="n", payload="acked", id="k1", requires_ack=True, seq=1).encode()
        await a.inbound.on_deliveries([
            Delivery(UserId("sam"), once, "n", redelivered=True),
            Delivery(UserId("sam"), ack, "n", ack_id=MsgId("k1"), redelivered=True)])
        assert orjson.loads(await phone.recv())["payload"] == "acked"  # clients dedup it
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(phone.recv(), 0.5)
        assert 'reason="redelivered"} 1.0' in a.metrics.render().decode()
