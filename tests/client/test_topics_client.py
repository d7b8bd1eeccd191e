"""``Client.subscribe``/``unsubscribe`` against real pods running the chat example,
whose authorizer lets a connection subscribe to ``room:<name>`` topics: a
subscription is confirmed, refused with ``forbidden``, and comes back after a
reconnect (a drain closing the connection, then its pod killed)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import jwt
import pytest

from tests.client.conftest import start_cluster
from tests.conftest import PodFactory
from tests.support.cluster import ClusterSlice
from tests.support.pods import SECRET, PodProcess
from tests.support.waits import api, eventually
from wsnode.client import Client, ServerError, State

TOPIC = "room:lobby"


async def publish(pod: PodProcess, topic: str, payload: Any) -> None:
    await api(pod, "POST", "/v1/publish", {"topic": topic, "envelope": {
        "type": "news", "payload": payload}})


async def subscribed_on(pod: PodProcess, topic: str, where: str) -> None:
    """Wait until the cluster counts a connection of pod ``where`` in ``topic``."""
    async def probe() -> bool:
        info = await api(pod, "GET", f"/v1/topics/{topic}")
        return any(p["pod"] == where and p["connections"] >= 1 for p in info["pods"])
    await eventually(probe, 20, f"{where} subscribed to {topic}")


async def next_payload(client: Client, timeout: float = 10) -> Any:
    async with asyncio.timeout(timeout):
        msg = await client.recv()
    return msg.payload


async def test_subscribes_again_after_a_drain_and_a_dead_pod(
        pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    a, b, c = start_cluster(pod_factory, cluster, 3)
    errors: list[ServerError] = []
    async with Client([a.ws_url, b.ws_url, c.ws_url], token=a.token("tia")) as client:
        client.on_error(errors.append)
        await client.subscribe(TOPIC)
        await client.subscribe(TOPIC)  # confirmed already: returns at once
        with pytest.raises(ServerError) as refused:
            await client.subscribe("secret.plans")  # not a room: the example says no
        assert refused.value.code == "forbidden"
        with pytest.raises(ServerError) as bad:
            await client.subscribe("room:no spaces")  # not a topic name
        assert bad.value.code == "bad_envelope"
        assert client.topics == (TOPIC,)
        await publish(c, TOPIC, "p1")  # from another pod
        assert await next_payload(client) == "p1"

        # A server-side close: pod A drains (close 1012); the client moves to B
        # and subscribes again there.
        await api(a, "POST", "/v1/drain", {"pod": "pod-a", "overSeconds": 0})
        await eventually(lambda: asyncio.sleep(0, result=client.pod == "pod-b"
                                               and client.state is State.CONNECTED),
                         20, "reconnected to pod-b")
        await subscribed_on(c, TOPIC, "pod-b")
        await publish(c, TOPIC, "p2")
        assert await next_payload(client) == "p2"

        # Its pod dies: the client lands on C and subscribes again there.
        b.kill()
        await eventually(lambda: asyncio.sleep(0, result=client.pod == "pod-c"
                                               and client.state is State.CONNECTED),
                         30, "reconnected to pod-c")
        await subscribed_on(c, TOPIC, "pod-c")
        await publish(c, TOPIC, "p3")
        assert await next_payload(client) == "p3"

        await client.unsubscribe(TOPIC)
        assert client.topics == ()
        await publish(c, TOPIC, "after leaving")
        await api(c, "POST", "/v1/send", {"user": "tia", "envelope": {
            "type": "marker", "payload": "m"}})
        assert await next_payload(client) == "m"  # the publish did not come before it
    assert errors == []  # every re-subscription was accepted


def room_token(user: str, ttl: int, rooms: list[str]) -> str:
    """A token whose ``rooms`` claim limits the chat example's rooms to ``rooms``."""
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + ttl, "rooms": rooms}, SECRET,
                      algorithm="HS256")


async def reaches(pod: PodProcess, client: Client, topic: str) -> bool:
    """Publish a fresh payload to ``topic``; True when it reaches ``client`` within 1 s."""
    mark = uuid.uuid4().hex
    await publish(pod, topic, mark)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1):
            while (await client.recv()).payload != mark:
                pass
            return True
    return False


async def test_a_resubscription_the_new_token_does_not_allow_is_dropped(
        pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    """The token expires (the pod closes with 4401); the next token allows fewer
    rooms: the refused re-subscription goes to error listeners and out of
    ``topics``, the allowed one is back."""
    (a,) = start_cluster(pod_factory, cluster, 1)
    tokens = [room_token("una", 4, ["r1", "r2"]), room_token("una", 3600, ["r2"])]
    errors: list[ServerError] = []
    async with Client(a.ws_url, token_provider=lambda: tokens.pop(0) if len(tokens) > 1
                      else tokens[0]) as client:
        client.on_error(errors.append)
        await client.subscribe("room:r1")
        await client.subscribe("room:r2")
        with pytest.raises(ServerError) as refused:
            await client.subscribe("room:r3")  # not in the token's rooms
        assert refused.value.code == "forbidden" and client.topics == ("room:r1", "room:r2")
        await eventually(lambda: asyncio.sleep(0, result=bool(errors)), 20,
                         "the re-subscription to room:r1 refused")
        assert [e.code for e in errors] == ["forbidden"] and client.connections == 2
        assert client.topics == ("room:r2",)
        await eventually(lambda: reaches(a, client, "room:r2"), 20, "room:r2 reaches it")
        assert not await reaches(a, client, "room:r1")


async def test_a_rate_limited_subscription_is_sent_again(
        pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    """Subscribing counts against the user's rate limit (here 3 per 2 s): the
    client writes a ``rate_limited`` subscription again after ``retryAfterMs``."""
    (a,) = start_cluster(pod_factory, cluster, 1, WSNODE_RATE_LIMIT="3/2s")
    rooms = [f"room:r{i}" for i in range(6)]
    async with Client(a.ws_url, token=a.token("val"), ack_timeout=20) as client:
        await asyncio.gather(*(client.subscribe(room) for room in rooms))
        assert client.topics == tuple(rooms)
        for room in rooms:
            info = await api(a, "GET", f"/v1/topics/{room}")
            assert info["connections"] == 1, info
