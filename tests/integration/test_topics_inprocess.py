"""Broadcasts, sends to many users and topics on in-process nodes with real
WebSocket clients: one embedded pod (every backend in memory, as ``wsnode
serve`` runs with nothing configured), three pods sharing in-memory backends,
and one pod on Redis for the topic registry's life cycle."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect

from wsnode import Envelope, Node, load_settings
from wsnode.acks_memory import MemoryAcks
from wsnode.auth import mint_token
from wsnode.backends import Backends, ack_policy
from wsnode.bus import MemoryBus
from wsnode.errors import SendError, SubscribeError
from wsnode.ids import PodId, UserId
from wsnode.limiter import NoLimiter
from wsnode.presence import MemoryPresence
from wsnode.topics import MemoryTopics

SECRET = "x" * 32
REDIS_URL = "redis://127.0.0.1:6379/0"


def settings(pod: str, **extra: Any) -> Any:
    return load_settings(pod_id=pod, port=0, admin_port=0, jwt_secret=SECRET, rate_limit="0",
                         **extra)


async def client(node: Node, user: str, topics: tuple[str, ...] = ()) -> ClientConnection:
    token = mint_token(SECRET, user, 600, topics=topics)
    ws = await connect(f"ws://127.0.0.1:{node.port}/ws?token={token}")
    for _ in range(2):  # welcome, restore
        await asyncio.wait_for(ws.recv(), 5)
    return ws


async def frame(ws: ClientConnection) -> dict[str, Any]:
    got = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
    assert isinstance(got, dict)
    return got


async def silent(ws: ClientConnection, seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), seconds)


async def until(probe: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``probe`` (every 20 ms, for 5 s at most) until it is true."""
    for _ in range(250):
        if await probe():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within 5s: {what}")


async def ask(ws: ClientConnection, typ: str, topic: object, msg_id: str = "r") -> dict[str, Any]:
    await ws.send(orjson.dumps({"type": typ, "id": msg_id, "payload": {"topic": topic}}).decode())
    return await frame(ws)


@contextlib.asynccontextmanager
async def pods(*names: str) -> AsyncIterator[list[Node]]:
    """Several nodes sharing in-memory presence, topics, ACK store and bus."""
    presence, bus = MemoryPresence(), MemoryBus()
    topics, acks = MemoryTopics(presence), MemoryAcks(ack_policy(settings(names[0])))
    nodes = [Node(settings(n), backends=Backends(presence, NoLimiter(), acks, bus.attach(),
                                                shared_bus=True, topics=topics))
             for n in names]
    async with contextlib.AsyncExitStack() as stack:
        for node in nodes:
            await stack.enter_async_context(node)
        yield nodes


async def subscribed(node: Node, topic: str, n: int) -> bool:
    return node.subscriptions.count(topic) == n


async def registered(node: Node, topic: str, pods: dict[PodId, int]) -> bool:
    assert node.topics is not None
    return await node.topics.pods_of(topic) == pods


async def no_subscribers(node: Node, topic: str) -> bool:
    return await subscribed(node, topic, 0)


def batches_in(node: Node) -> float:
    return node.metrics.bus_batches_in._value.get()  # type: ignore[attr-defined,no-any-return]


# -- one embedded pod -----------------------------------------------------------------

async def test_an_embedded_pod_does_all_three() -> None:
    async with Node(settings("solo")) as node:
        ann, bob = await client(node, "ann", ("news",)), await client(node, "bob")
        report = await node.publish("news", Envelope(type="headline", payload=1))
        assert report.to_json() == {"local": 1, "pods": [], "failedPods": [], "topic": "news",
                                    "subscribers": 1}
        assert (await frame(ann))["payload"] == 1
        await silent(bob)
        assert (await node.broadcast(Envelope(type="hello"))).local == 2
        assert [(await frame(ws))["type"] for ws in (ann, bob)] == ["hello", "hello"]
        many = await node.send_to_users(["bob", "cid", "bob"],
                                        Envelope(type="n", id="m1", requires_ack=True))
        assert (many.users, many.reached, many.offline, many.stored) == (
            ["bob", "cid"], ["bob"], ["cid"], ["bob", "cid"])
        assert (await frame(bob))["id"] == "m1"
        assert [(t.topic, t.pods) for t in await node.topics.topics()] == [  # type: ignore[union-attr]
            ("news", {"solo": 1})]
        await ann.close()
        await until(lambda: no_subscribers(node, "news"), "the closed connection's topics gone")
        assert (await node.publish("news", Envelope(type="headline"))).subscribers == 0
        assert await node.topics.topics() == []  # type: ignore[union-attr]
        await bob.close()


async def test_at_most_once_only_and_bounded_lists() -> None:
    async with Node(settings("solo", max_users_per_send=2)) as node:
        acked = Envelope(type="n", id="m", requires_ack=True)
        with pytest.raises(SendError, match="at most once, so it cannot require an ACK"):
            await node.broadcast(acked)
        with pytest.raises(SendError, match="send it to the users"):
            await node.publish("news", acked)
        with pytest.raises(SendError, match="topic name"):
            await node.publish("no spaces", Envelope(type="n"))
        with pytest.raises(SendError, match="at most 2 users per send"):
            await node.send_to_users(["a", "b", "c"], Envelope(type="n"))
        with pytest.raises(SendError, match="no users"):
            await node.send_to_users([], Envelope(type="n"))
        with pytest.raises(SendError, match=r"users\[1\]"):
            await node.send_to_users(["a", ""], Envelope(type="n"))
        with pytest.raises(SendError, match="reserved"):
            await node.broadcast(Envelope(type="welcome"))


async def test_client_frames_need_an_authorizer_and_its_yes() -> None:
    async with Node(settings("solo", max_subscriptions_per_connection=2)) as node:
        ws = await client(node, "ann")
        refused = await ask(ws, "subscribe", "news", "s1")
        assert (refused["type"], refused["id"], refused["payload"]["code"]) == (
            "error", "s1", "forbidden")
        assert (await ask(ws, "unsubscribe", "news"))["payload"]["code"] == "forbidden"
        assert await node.topics.topics() == []  # type: ignore[union-attr]

        @node.authorize_subscribe
        async def rooms_only(conn: Any, topic: str) -> bool:
            return topic.startswith("room:")

        assert await ask(ws, "subscribe", "room:1", "s2") == {
            "type": "subscribe", "payload": {"topic": "room:1"}, "id": "s2"}
        assert (await ask(ws, "subscribe", "news"))["payload"]["code"] == "forbidden"
        assert (await ask(ws, "subscribe", "room:2"))["type"] == "subscribe"
        full = await ask(ws, "subscribe", "room:3")
        assert (full["payload"]["code"], full["payload"]["limit"]) == (
            "quota_exceeded", "subscriptions")
        assert (await ask(ws, "subscribe", "room 4"))["payload"]["code"] == "bad_envelope"
        assert (await ask(ws, "subscribe", 4))["payload"]["code"] == "bad_envelope"
        assert (await node.publish("room:1", Envelope(type="m"))).subscribers == 1
        assert (await frame(ws))["type"] == "m"
        assert (await ask(ws, "unsubscribe", "room:1"))["type"] == "unsubscribe"
        assert (await node.publish("room:1", Envelope(type="m"))).subscribers == 0
        await silent(ws)
        await ws.close()


async def test_the_app_subscribes_its_connections() -> None:
    async with Node(settings("solo", max_subscriptions_per_connection=1)) as node:
        ws = await client(node, "ann")
        (conn,) = node.hub.conns_of(UserId("ann"))
        assert await node.subscribe(conn, "room:9") is True
        assert await node.subscribe(conn, "room:9") is False
        with pytest.raises(SubscribeError) as full:
            await node.subscribe(conn, "room:10")
        assert full.value.code == "quota_exceeded"
        with pytest.raises(SubscribeError):
            await node.subscribe(conn, "bad name")
        await node.publish("room:9", Envelope(type="m", payload=9))
        assert (await frame(ws))["payload"] == 9
        assert await node.unsubscribe(conn, "room:9") is True
        assert await node.unsubscribe(conn, "room:9") is False
        await ws.close()


# -- pods sharing in-memory backends ----------------------------------------------------

async def test_one_bus_message_per_pod_that_needs_one() -> None:
    async with pods("pod-a", "pod-b", "pod-c") as (a, b, c):
        on_b = [await client(b, f"b{i}", ("room:1",)) for i in range(3)]
        on_c = [await client(c, f"c{i}") for i in range(2)]
        before = {n.pod: batches_in(n) for n in (a, b, c)}

        report = await a.publish("room:1", Envelope(type="m", payload="room"))
        assert (report.local, report.pods, report.subscribers) == (0, ["pod-b"], 3)
        for ws in on_b:
            assert (await frame(ws))["payload"] == "room"
        await silent(on_c[0])

        report = await a.broadcast(Envelope(type="all"))
        assert report.pods == ["pod-b", "pod-c"]
        for ws in (*on_b, *on_c):
            assert (await frame(ws))["type"] == "all"

        users = [f"b{i}" for i in range(3)] + ["c0", "c1", "zed"]
        many = await a.send_to_users(users, Envelope(type="n"))
        assert sorted(many.pods) == ["pod-b", "pod-c"]
        assert (many.reached, many.offline) == (users[:5], ["zed"])
        for ws in (*on_b, *on_c):
            assert (await frame(ws))["type"] == "n"

        after = {n.pod: batches_in(n) - before[n.pod] for n in (a, b, c)}
        # publish: pod-b only; broadcast: both; the send to 6 users: one each
        assert after == {"pod-a": 0, "pod-b": 3, "pod-c": 2}
        for ws in (*on_b, *on_c):
            await ws.close()


async def test_closing_or_unsubscribing_stops_the_publishes() -> None:
    async with pods("pod-a", "pod-b") as (a, b):
        stays, leaves = await client(b, "s", ("t",)), await client(b, "l", ("t",))
        assert (await a.publish("t", Envelope(type="m"))).subscribers == 2
        await frame(stays)
        await frame(leaves)
        await leaves.close()
        await until(lambda: registered(a, "t", {PodId("pod-b"): 1}),
                    "the closed connection's topics gone")
        assert (await a.publish("t", Envelope(type="m"))).subscribers == 1
        await frame(stays)
        assert (await ask(stays, "unsubscribe", "t"))["payload"]["code"] == "forbidden"
        (conn,) = b.hub.conns_of(UserId("s"))
        await b.unsubscribe(conn, "t")
        report = await a.publish("t", Envelope(type="m"))
        assert (report.subscribers, report.pods) == (0, [])
        await silent(stays)
        await stays.close()


# -- the registry's life in Redis -------------------------------------------------------

@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"wstopics{uuid.uuid4().hex[:8]}"
    yield prefix
    client = aioredis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_a_new_life_announces_the_topics_again(redis_prefix: str) -> None:
    s = settings("solo", redis_url=REDIS_URL, key_prefix=redis_prefix,
                 heartbeat_interval="200ms")
    async with Node(s) as node:
        ws = await client(node, "ann", ("news", "room:1"))
        registry = node.topics
        assert registry is not None
        assert await registry.pods_of("news") == {PodId("solo"): 1}
        await node.presence.join(node.pod)  # a lapsed lease: a new life, as after a stall
        assert await registry.pods_of("news") == {}
        node.loops["topics"].wake()

        async def announced() -> bool:
            return await registry.pods_of("room:1") == {PodId("solo"): 1}

        await until(announced, "the topics announced again by the topics loop")
        assert [t.topic for t in await registry.topics()] == ["news", "room:1"]
        await ws.close()
    # a pod that stops takes its membership with it
    assert await registry.topics() == []


async def test_the_admin_api_refuses_bad_requests_with_400() -> None:
    key = "k" * 16
    async with Node(settings("solo", api_key=key, max_users_per_send=2)) as node, \
            aiohttp.ClientSession(f"http://127.0.0.1:{node.admin_port}",
                                  headers={"Authorization": f"Bearer {key}"}) as http:
        async def post(path: str, body: object) -> tuple[int, str]:
            async with http.post(path, json=body) as resp:
                answer = await resp.json()
                return resp.status, answer["error"]["message"] if "error" in answer else ""

        note = {"type": "n"}
        for body, why in [
            ({"user": "a", "users": ["b"], "envelope": note}, "not both"),
            ({"users": "a", "envelope": note}, "'users' is a list"),
            ({"users": ["a", "b", "c"], "envelope": note}, "at most 2 users"),
            ({"users": [], "envelope": note}, "no users"),
            ({"users": ["a", 7], "envelope": note}, "users[1]"),
        ]:
            status, message = await post("/v1/send", body)
            assert status == 400 and why in message, (body, status, message)
        assert (await post("/v1/publish", {"topic": "a b", "envelope": note}))[0] == 400
        assert (await post("/v1/publish", {"envelope": note}))[0] == 400
        assert (await post("/v1/broadcast", {"envelope": {"type": "n", "id": "x",
                                                          "requiresAck": True}}))[0] == 400
        async with http.get("/v1/topics/a%20b") as resp:
            assert resp.status == 400
        async with http.get("/v1/topics/room%3A1") as resp:
            assert await resp.json() == {"topic": "room:1", "connections": 0, "pods": []}
