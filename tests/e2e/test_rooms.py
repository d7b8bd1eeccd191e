"""The chat example's rooms (``wsnode.examples.rooms``) on real pods: ``join``,
``leave`` and ``room_message`` across two pods over Redis and RabbitMQ, and the
example's rule (room names, the token's ``rooms`` claim, rooms per connection)."""

from __future__ import annotations

import time
from typing import Any

import jwt

from tests.conftest import PodFactory
from tests.support.client import Client
from tests.support.cluster import ClusterSlice
from tests.support.pods import SECRET, PodProcess
from tests.support.waits import api, eventually
from wsnode.examples.rooms import MAX_ROOMS

CHAT = ["--app", "wsnode.examples.chat"]


def token(user: str, **claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 3600, **claims}, SECRET,
                      algorithm="HS256")


async def done(client: Client, typ: str, payload: dict[str, Any],
               frame_id: str) -> list[dict[str, Any]]:
    """Send a frame with ``requiresAck``, wait for the pod's ``ack``; the frames
    that came before it (a sender's own copy of its post comes first)."""
    await client.send({"type": typ, "id": frame_id, "requiresAck": True, "payload": payload})
    before = []
    while (frame := await client.recv()) != {"type": "ack", "payload": {"id": frame_id}}:
        before.append(frame)
    return before


async def refused(client: Client, frame: dict[str, Any]) -> dict[str, Any]:
    """Send ``frame``; the ``error`` frame's payload (it must come next)."""
    await client.send(frame)
    error = await client.expect("error")
    assert error["id"] == frame["id"]
    return dict(error["payload"])


async def test_rooms_across_two_pods(pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    a, b = (cluster.adopt(pod_factory(name, env=cluster.env(WSNODE_RATE_LIMIT="0"), args=CHAT))
            for name in ("pod-a", "pod-b"))
    ann = await Client.open(a.ws_url, token("ann"))
    dan = await Client.open(a.ws_url, token("dan"))
    bob = await Client.open(b.ws_url, token("bob"))
    cy = await Client.open(b.ws_url, token("cy"))
    await done(ann, "join", {"room": "lobby"}, "j1")
    await done(bob, "join", {"room": "lobby"}, "j2")
    await done(cy, "join", {"room": "other"}, "j3")

    async def members(pod: PodProcess, room: str) -> dict[str, int]:
        info = await api(pod, "GET", f"/v1/topics/room:{room}")
        return {p["pod"]: p["connections"] for p in info["pods"]}
    assert await members(b, "lobby") == {"pod-a": 1, "pod-b": 1}

    # A post reaches every member on both pods, the sender too, with its sender.
    own = await done(ann, "room_message", {"room": "lobby", "text": "hi"}, "m1")
    post = {"type": "room_message", "payload": {"room": "lobby", "text": "hi", "from": "ann"}}
    assert own == [post]  # at most once: no id, no requiresAck
    assert await bob.expect("room_message") == post
    await bob.send({"type": "room_message", "payload": {"room": "lobby", "n": 2}})
    assert (await ann.expect("room_message"))["payload"] == {"room": "lobby", "n": 2,
                                                              "from": "bob"}
    assert (await bob.expect("room_message"))["payload"]["from"] == "bob"

    # A subscribe frame to the room's topic is the same as a join (the same rule).
    await dan.send({"type": "subscribe", "id": "s1", "payload": {"topic": "room:lobby"}})
    assert await dan.expect("subscribe") == {"type": "subscribe", "id": "s1",
                                             "payload": {"topic": "room:lobby"}}
    # Posting to a room one is not in is refused; the room hears nothing.
    error = await refused(cy, {"type": "room_message", "id": "m3",
                               "payload": {"room": "lobby", "text": "let me in"}})
    assert error["code"] == "forbidden"

    # Leaving stops the posts; closing a connection takes it out of its rooms.
    await done(bob, "leave", {"room": "lobby"}, "l1")
    own = await done(dan, "room_message", {"room": "lobby", "text": "bye bob"}, "m4")
    assert [f["payload"]["text"] for f in own] == ["bye bob"]
    assert (await ann.expect("room_message"))["payload"]["text"] == "bye bob"
    await ann.close()

    async def only_dan() -> bool:
        return await members(b, "lobby") == {"pod-a": 1}
    await eventually(only_dan, 10, "only dan in the lobby")
    own = await done(dan, "room_message", {"room": "lobby", "text": "alone"}, "m5")
    assert [f["payload"]["text"] for f in own] == ["alone"]
    for other in (bob, cy):
        await other.nothing_within(0.5)
    for client in (dan, bob, cy):
        await client.close()


async def test_the_examples_rule(pod_factory: PodFactory) -> None:
    pod = pod_factory("pod-a", env={"WSNODE_RATE_LIMIT": "0"}, args=CHAT)
    free = await Client.open(pod.ws_url, token("eve"))
    assert (await refused(free, {"type": "join", "id": "j1",
                                 "payload": {"room": "Big Room"}}))["code"] == "bad_envelope"
    assert (await refused(free, {"type": "join", "id": "j2",
                                 "payload": {}}))["code"] == "bad_envelope"
    # Only room topics: any other subscribe is forbidden.
    assert (await refused(free, {"type": "subscribe", "id": "s1",
                                 "payload": {"topic": "news"}}))["code"] == "forbidden"
    for i in range(MAX_ROOMS):
        await done(free, "join", {"room": f"r{i}"}, f"ok{i}")
    over = await refused(free, {"type": "join", "id": "j3", "payload": {"room": "one-more"}})
    assert (over["code"], over["limit"]) == ("quota_exceeded", "rooms")
    assert (await refused(free, {"type": "subscribe", "id": "s2",
                                 "payload": {"topic": "room:one-more"}}))["code"] == "forbidden"
    await done(free, "join", {"room": "r0"}, "again")  # in it already: not one more
    await done(free, "leave", {"room": "r0"}, "l1")
    await done(free, "join", {"room": "one-more"}, "j4")

    # A token with a rooms claim: those rooms only.
    held = await Client.open(pod.ws_url, token("fay", rooms=["staff"]))
    await done(held, "join", {"room": "staff"}, "j5")
    assert (await refused(held, {"type": "join", "id": "j6",
                                 "payload": {"room": "lobby"}}))["code"] == "forbidden"
    assert (await refused(held, {"type": "subscribe", "id": "s3",
                                 "payload": {"topic": "room:lobby"}}))["code"] == "forbidden"
    for client in (free, held):
        await client.close()
