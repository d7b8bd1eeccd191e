"""Item 4 of issue 12: frames the rate limiter does not count (ping, ack,
restore, and refused frames) have a per-connection budget, CONTROL_FRAMES
(100/10s) and CONTROL_BYTES (256KiB/10s); past it the connection is closed
with 1008. A ping is echoed only up to 1 KiB."""

from __future__ import annotations

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from tests.abuse.conftest import AbusePods
from tests.support.client import Client
from tests.support.waits import api


async def closed_with(client: Client, timeout: float = 20) -> int | None:
    """Read until the connection ends; its close code."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await client.recv(timeout=timeout)
    return closed.value.rcvd.code if closed.value.rcvd else None


async def test_a_ping_flood_is_closed_with_1008(abuse_pods: AbusePods) -> None:
    pod = abuse_pods()
    async with await Client.open(pod.ws_url, pod.token("mallory")) as mallory:
        frame = orjson.dumps({"type": "ping", "payload": "x"}).decode()
        for _ in range(2000):
            try:
                await mallory.ws.send(frame)
            except ConnectionClosed:
                break
        assert await closed_with(mallory) == 1008
    async with await Client.open(pod.ws_url, pod.token("bob")) as bob:  # others unaffected
        await bob.send({"type": "ping", "payload": "still here"})
        assert (await bob.expect("pong"))["payload"] == "still here"


async def test_a_flood_of_refused_frames_is_closed_too(abuse_pods: AbusePods) -> None:
    pod = abuse_pods()
    async with await Client.open(pod.ws_url, pod.token("mallory")) as mallory:
        for _ in range(500):
            try:
                await mallory.ws.send("{not json")
            except ConnectionClosed:
                break
        assert await closed_with(mallory) == 1008


async def test_a_big_ping_is_not_echoed(abuse_pods: AbusePods) -> None:
    pod = abuse_pods()
    async with await Client.open(pod.ws_url, pod.token("alice")) as alice:
        await alice.send({"type": "ping", "payload": "y" * 2000})
        refused = await alice.expect("error")
        assert refused["payload"]["code"] == "too_large"
        small = {"n": 1, "text": "z" * 900}
        await alice.send({"type": "ping", "payload": small})
        assert (await alice.expect("pong"))["payload"] == small


async def test_the_byte_budget_closes_a_stream_of_large_frames(abuse_pods: AbusePods) -> None:
    pod = abuse_pods(env={"WSNODE_CONTROL_FRAMES": "0"})  # bytes alone
    async with await Client.open(pod.ws_url, pod.token("mallory")) as mallory:
        frame = orjson.dumps({"type": "ping", "payload": "p" * 60_000}).decode()
        for _ in range(20):
            try:
                await mallory.ws.send(frame)
            except ConnectionClosed:
                break
        assert await closed_with(mallory) == 1008


async def test_acking_a_large_replay_stays_within_budget(abuse_pods: AbusePods) -> None:
    """Acks that settle a pending message are paid for by the message: a client
    acking 400 messages in a burst keeps its connection."""
    pod = abuse_pods(env={"WSNODE_ACK_RETRY_INTERVAL": "60s"})
    for i in range(400):
        await api(pod, "POST", "/v1/send", {"user": "carol", "envelope": {
            "type": "notification", "id": f"n-{i}", "requiresAck": True}})
    async with await Client.open(pod.ws_url, pod.token("carol")) as carol:
        assert len(carol.replay) == 400
        for frame in carol.replay:
            await carol.ack(frame["id"])
        await carol.send({"type": "ping", "payload": "done"})
        assert (await carol.expect("pong", timeout=20))["payload"] == "done"
        status = await api(pod, "GET", "/v1/messages/carol/n-399")
        assert status["state"] == "acked"
