"""Issue 15 must-shows: broadcasts, sends to many users and topics on three real
pods over the real Redis and RabbitMQ, with real WebSocket clients.

The three pods are shared by the module (starting them is the slow part); each
test uses users and topics of its own and closes its clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support.client import Client
from tests.support.cluster import ClusterSlice
from tests.support.pods import PodProcess
from tests.support.waits import api, eventually
from wsnode.auth import mint_token

SECRET = "s" * 32  # WSNODE_CLUSTER_SECRET: the new kinds of bus traffic are signed too
HEARTBEAT_S = 0.5
LEASE_S = 3 * HEARTBEAT_S
LIVE_CACHE_S = 1.0  # readers cache the set of live pods this long (wsnode.presence_redis)


class Trio:
    def __init__(self, tmp: Path) -> None:
        self.slice = ClusterSlice()
        self.tmp = tmp
        self.pods = [self.start(name) for name in ("pod-a", "pod-b", "pod-c")]

    def start(self, name: str) -> PodProcess:
        env = self.slice.env(WSNODE_CLUSTER_SECRET=SECRET,
                             WSNODE_HEARTBEAT_INTERVAL=f"{int(HEARTBEAT_S * 1000)}ms")
        pod = PodProcess(name, self.tmp, env, ["--app", "tests.e2e.topics_app"])
        return self.slice.adopt(pod.start())


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trio]:
    trio = Trio(tmp_path_factory.mktemp("topics"))
    try:
        yield trio
    finally:
        asyncio.run(trio.slice.cleanup())  # kills every pod first


@pytest.fixture
async def pods(trio: Trio) -> list[PodProcess]:
    for pod in trio.pods:  # a bus that is not consuming yet would make publishes fail
        await eventually(lambda pod=pod: ready(pod), 30, f"{pod.pod_id} ready")
    return trio.pods


async def ready(pod: PodProcess) -> bool:
    status, _ = await asyncio.to_thread(pod.api, "GET", "/readyz")
    return bool(status == 200)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


@contextlib.asynccontextmanager
async def clients(*specs: tuple[PodProcess, str, tuple[str, ...]]) -> AsyncIterator[list[Client]]:
    """One client per (pod, user, topics of its token's claim), opened at once."""
    opened = await asyncio.gather(*(
        Client.open(pod.ws_url, mint_token(pod.env["WSNODE_JWT_SECRET"], user, 600,
                                           topics=topics)) for pod, user, topics in specs))
    try:
        yield list(opened)
    finally:
        await asyncio.gather(*(c.close() for c in opened))


async def counter(pod: PodProcess, name: str) -> float:
    status, text = await asyncio.to_thread(pod.api, "GET", "/metrics")
    assert status == 200
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


RECEIVED = "wsnode_bus_batches_received_total"
PUBLISHED = "wsnode_bus_batches_published_total"


async def batches(pods: list[PodProcess]) -> dict[str, tuple[float, float]]:
    """Per pod: (broker messages of deliveries published, received)."""
    return {p.pod_id: (await counter(p, PUBLISHED), await counter(p, RECEIVED)) for p in pods}


def delta(before: dict[str, tuple[float, float]],
          after: dict[str, tuple[float, float]]) -> dict[str, tuple[int, int]]:
    return {pod: (int(after[pod][0] - out), int(after[pod][1] - got))
            for pod, (out, got) in before.items()}


async def each_gets_once(group: list[Client], typ: str, payload: object) -> None:
    """Every client gets one frame of ``typ`` with ``payload``, and no second."""
    frames = await asyncio.gather(*(c.expect(typ, timeout=30) for c in group))
    assert all(f["payload"] == payload for f in frames), frames
    await asyncio.gather(*(c.nothing_within(0.5) for c in group))


# -- broadcast ---------------------------------------------------------------------------

async def test_a_broadcast_reaches_every_connection_on_every_pod_once(
        pods: list[PodProcess]) -> None:
    a = pods[0]
    specs = [(pod, unique(f"bc{i}"), ()) for pod in pods for i in range(4)]
    async with clients(*specs) as everyone:
        before = await batches(pods)
        report = await api(a, "POST", "/v1/broadcast",
                           {"envelope": {"type": "announcement", "payload": {"n": 1}}})
        assert report == {"local": 4, "pods": ["pod-b", "pod-c"], "failedPods": []}
        await each_gets_once(everyone, "announcement", {"n": 1})
        # one broker message to each other pod, none back to the sender
        assert delta(before, await batches(pods)) == {
            "pod-a": (2, 0), "pod-b": (0, 1), "pod-c": (0, 1)}

        status, refused = await asyncio.to_thread(a.api, "POST", "/v1/broadcast", {
            "envelope": {"type": "n", "id": "m", "requiresAck": True}})
        assert status == 400 and "send it to the users" in refused["error"]["message"]


# -- many users -------------------------------------------------------------------------

async def test_a_send_to_500_users_is_one_broker_message_per_pod(
        pods: list[PodProcess]) -> None:
    a = pods[0]
    users = [unique(f"u{i}") for i in range(500)]
    specs = [(pods[i % 3], user, ()) for i, user in enumerate(users)]
    async with clients(*specs) as conns:
        before = await batches(pods)
        offline = unique("away")
        report = await api(a, "POST", "/v1/send", {
            "users": [*users, offline], "envelope": {"type": "bulk", "payload": "hi"}})
        assert (report["users"], report["local"]) == (501, 167)
        assert sorted(report["pods"]) == ["pod-b", "pod-c"]
        assert (report["reached"], report["offline"]) == (users, [offline])
        await each_gets_once(conns, "bulk", "hi")
        assert delta(before, await batches(pods)) == {
            "pod-a": (2, 0), "pod-b": (0, 1), "pod-c": (0, 1)}

        # ACK-required: stored for each user, then routed the same way
        before = await batches(pods)
        report = await api(a, "POST", "/v1/send", {"users": users, "envelope": {
            "type": "bulk", "id": unique("m"), "requiresAck": True, "payload": "kept"}})
        assert (len(report["stored"]), report["reached"]) == (500, users)
        frames = await asyncio.gather(*(conn.expect("bulk", timeout=30) for conn in conns))
        assert {(f["payload"], f["seq"]) for f in frames} == {("kept", 1)}
        await asyncio.gather(*(conn.ack(f["id"]) for conn, f in zip(conns, frames,
                                                                        strict=True)))
        assert delta(before, await batches(pods)) == {
            "pod-a": (2, 0), "pod-b": (0, 1), "pod-c": (0, 1)}


# -- topics -------------------------------------------------------------------------------

async def test_a_publish_reaches_only_subscribers_until_they_leave_or_close(
        pods: list[PodProcess]) -> None:
    a, b, c = pods
    topic = unique("room")
    async with clients((a, unique("sa"), (topic,)), (a, unique("na"), ()),
                       (b, unique("sb1"), (topic,)), (b, unique("sb2"), (topic,)),
                       (c, unique("sc"), (topic, unique("other"))),
                       (c, unique("nc"), ())) as (sa, na, sb1, sb2, sc, nc):
        detail = await api(a, "GET", f"/v1/topics/{topic}")
        assert detail == {"topic": topic, "connections": 4, "pods": [
            {"pod": "pod-a", "connections": 1}, {"pod": "pod-b", "connections": 2},
            {"pod": "pod-c", "connections": 1}]}
        report = await api(b, "POST", "/v1/publish",
                           {"topic": topic, "envelope": {"type": "room_message", "payload": 1}})
        assert (report["subscribers"], report["local"], report["pods"]) == (
            4, 2, ["pod-a", "pod-c"])
        await each_gets_once([sa, sb1, sb2, sc], "room_message", 1)
        await asyncio.gather(na.nothing_within(0.3), nc.nothing_within(0.3))

        # sb1 leaves (the app's handler unsubscribes it); sc, pod-c's only one, closes
        await sb1.send({"type": "leave", "id": "l1", "requiresAck": True,
                        "payload": {"topic": topic}})
        assert (await sb1.expect("ack"))["payload"] == {"id": "l1"}
        await sc.close()
        await eventually(lambda: subscribed(a, topic, {"pod-a": 1, "pod-b": 1}), 15,
                         "the left and the closed connection out of the topic")
        before = await batches(pods)
        report = await api(a, "POST", "/v1/publish",
                           {"topic": topic, "envelope": {"type": "room_message", "payload": 2}})
        assert (report["subscribers"], report["pods"]) == (2, ["pod-b"])
        await each_gets_once([sa, sb2], "room_message", 2)
        await asyncio.gather(sb1.nothing_within(0.3), nc.nothing_within(0.3))
        assert delta(before, await batches(pods))["pod-c"] == (0, 0)  # none to the others

        nobody = await api(a, "POST", "/v1/publish", {
            "topic": unique("empty"), "envelope": {"type": "room_message"}})
        assert (nobody["subscribers"], nobody["local"], nobody["pods"]) == (0, 0, [])


async def subscribed(pod: PodProcess, topic: str, want: dict[str, int]) -> bool:
    detail = await api(pod, "GET", f"/v1/topics/{topic}")
    return {p["pod"]: p["connections"] for p in detail["pods"]} == want


async def test_a_sigkilled_pods_membership_is_gone_within_its_lease(
        trio: Trio, pods: list[PodProcess]) -> None:
    a = pods[0]
    doomed = trio.start(unique("pod-d"))
    await eventually(lambda: ready(doomed), 30, "pod-d ready")
    topic = unique("doomed")
    async with clients((doomed, unique("d"), (topic,)), (a, unique("s"), (topic,))):
        await eventually(lambda: subscribed(a, topic, {"pod-a": 1, doomed.pod_id: 1}), 15,
                         "both pods listed")
        doomed.kill()  # SIGKILL: no goodbye, its lease simply stops being renewed
        killed = time.monotonic()
        await eventually(lambda: subscribed(a, topic, {"pod-a": 1}), 15,
                         "the dead pod's membership gone")
        # within its lease, plus how long readers may cache the set of live pods
        assert time.monotonic() - killed < LEASE_S + LIVE_CACHE_S + 1.0
        report = await api(a, "POST", "/v1/publish",
                           {"topic": topic, "envelope": {"type": "m"}})
        assert (report["subscribers"], report["pods"], report["failedPods"]) == (1, [], [])
        topics = await api(a, "GET", "/v1/topics")
        assert {"topic": topic, "connections": 1, "pods": ["pod-a"]} in topics["topics"]


async def test_a_subscribe_frame_without_an_authorizer_is_refused(
        pods: list[PodProcess]) -> None:
    b = pods[1]
    topic = unique("closed")
    async with clients((b, unique("curious"), ())) as (curious,):
        for typ in ("subscribe", "unsubscribe"):
            await curious.send({"type": typ, "id": "s1", "payload": {"topic": topic}})
            error = await curious.expect("error")
            assert (error["id"], error["payload"]["code"]) == ("s1", "forbidden")
        assert await api(b, "GET", f"/v1/topics/{topic}") == {
            "topic": topic, "connections": 0, "pods": []}


async def test_the_tokens_topics_claim_subscribes_at_connect(pods: list[PodProcess]) -> None:
    a, c = pods[0], pods[2]
    news, sport = unique("news"), unique("sport")
    async with clients((c, unique("fan"), (news, sport))) as (fan,):
        listed = {t["topic"]: t for t in (await api(a, "GET", "/v1/topics"))["topics"]}
        assert listed[news] == {"topic": news, "connections": 1, "pods": ["pod-c"]}
        assert listed[sport]["pods"] == ["pod-c"]
        report = await api(a, "POST", "/v1/publish",
                           {"topic": sport, "envelope": {"type": "goal", "payload": 1}})
        assert (report["subscribers"], report["pods"]) == (1, ["pod-c"])
        assert (await fan.expect("goal"))["payload"] == 1
    # a claim that is not a list of topic names is a bad token
    token = mint_token(a.env["WSNODE_JWT_SECRET"], "x", 600, topics=["not a topic"])
    with pytest.raises(InvalidStatus) as refused:
        await connect(a.ws_url, additional_headers={"Authorization": f"Bearer {token}"})
    assert refused.value.response.status_code == 401
