"""``wsnode.client.Client`` against real pods: acks, dedup, drains, kills, tokens."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

import pytest

from tests.client.conftest import start_cluster
from tests.conftest import PodFactory
from tests.support.cluster import ClusterSlice
from tests.support.pods import SECRET, PodProcess, free_port
from tests.support.waits import api, eventually
from wsnode.auth import mint_token
from wsnode.client import (
    AckTimeout,
    Client,
    ClientClosed,
    ConnectError,
    HandshakeRefused,
    Message,
    RateLimited,
    ServerError,
    State,
    StateChange,
)


async def send_acked(pod: PodProcess, user: str, msg_id: str, payload: Any = None,
                     typ: str = "m") -> None:
    await api(pod, "POST", "/v1/send", {"user": user, "envelope": {
        "type": typ, "id": msg_id, "requiresAck": True, "payload": payload}})


async def states_of(pod: PodProcess, user: str, ids: list[str]) -> dict[str, str]:
    return {i: (await api(pod, "GET", f"/v1/messages/{user}/{i}"))["state"] for i in ids}


async def all_acked(pod: PodProcess, user: str, ids: list[str], timeout: float = 10) -> None:
    async def probe() -> bool:
        return set((await states_of(pod, user, ids)).values()) == {"acked"}
    await eventually(probe, timeout, f"{len(ids)} messages of {user} acked")


async def collect(client: Client, want: set[str], timeout: float,
                  seen: Counter[str] | None = None) -> Counter[str]:
    """Read messages until every id of ``want`` was given to the app."""
    seen = Counter() if seen is None else seen
    async with asyncio.timeout(timeout):
        while not want <= set(seen):
            msg = await client.recv()
            if msg.id is not None:
                seen[msg.id] += 1
    return seen


async def test_receives_acks_sends_and_reports_errors(app_pod: PodProcess) -> None:
    tokens: list[str] = []

    async def token() -> str:
        tokens.append(app_pod.token("ann"))
        return tokens[-1]

    changes: list[StateChange] = []
    await send_acked(app_pod, "ann", "early-1", {"n": 1})  # pending before the connect
    async with Client([app_pod.ws_url], token_provider=token) as client:
        client.on_state(changes.append)
        assert client.state.value == "connected"
        assert (client.pod, client.user, client.replayed) == ("pod-a", "ann", 1)
        first = await client.recv()
        assert (first.type, first.id, first.seq, first.payload) == ("m", "early-1", 1, {"n": 1})
        assert first.requires_ack
        # The app has not finished with it yet: not acked.
        assert (await states_of(app_pod, "ann", ["early-1"])) == {"early-1": "pending"}

        await api(app_pod, "POST", "/v1/send", {"user": "ann", "envelope": {
            "type": "note", "payload": "plain"}})
        note = await client.recv()  # asking for the next message acks the previous one
        assert note == Message("note", "plain")
        await all_acked(app_pod, "ann", ["early-1"])

        sent_id = await client.send("echo", {"x": 1})  # waits for the handler's ack
        echo = await client.recv()
        assert (echo.type, echo.payload) == ("echo", {"x": 1}) and len(sent_id) == 32
        await client.send("echo", "no ack", require_ack=False)
        assert (await client.recv()).payload == "no ack"

        with pytest.raises(ServerError) as unknown:
            await client.send("nope", id="bad-1")
        assert (unknown.value.code, unknown.value.id) == ("unknown_type", "bad-1")
        with pytest.raises(ServerError) as failed:
            await client.send("boom", {})
        assert failed.value.code == "handler_error"

        with pytest.raises(AckTimeout) as late:
            await client.send("slow", {"seconds": 1}, id="late-1", timeout=0.3)
        assert late.value.id == "late-1"
        assert 0 <= await client.ping() < 1
        assert await client.restore() == 0
        with pytest.raises(RateLimited) as limited:  # 20/10s per user, all calls above count
            for i in range(25):
                await client.send("echo", i)
        assert limited.value.retry_after > 0
    assert client.state is State.CLOSED and changes[-1].state is State.CLOSED
    assert len(tokens) == 1
    with pytest.raises(ClientClosed):
        await client.send("echo", 1)
    assert [m async for m in client] == []


async def test_an_at_most_once_message_with_an_id_reaches_the_app_once(
        app_pod: PodProcess) -> None:
    """A device that moved pods while a message was in flight to both can be handed
    it on both connections: the client gives it to the app once."""
    async with Client(app_pod.ws_url, token=app_pod.token("amo")) as client:
        for n in (1, 2):
            await asyncio.to_thread(app_pod.api, "POST", "/v1/send", {
                "user": "amo", "envelope": {"type": "note", "id": "once-1", "payload": n}})
        await asyncio.to_thread(app_pod.api, "POST", "/v1/send", {
            "user": "amo", "envelope": {"type": "note", "id": "once-2"}})
        assert [(await client.recv()).id, (await client.recv()).id] == ["once-1", "once-2"]
        assert client.duplicates == 1


async def test_resends_reach_the_app_once(app_pod: PodProcess) -> None:
    """The pod resends every 300 ms while the app holds the message: it sees it once."""
    async with Client(app_pod.ws_url, token=app_pod.token("bo")) as client:
        await send_acked(app_pod, "bo", "slow-1", "payload")
        msg = await client.recv()
        assert msg.id == "slow-1"
        await eventually(lambda: asyncio.sleep(0, result=client.duplicates >= 2), 5,
                         "two resends while the app works")
        await send_acked(app_pod, "bo", "next-1")
        nxt = await client.recv()  # the app finished slow-1: acked now
        assert nxt.id == "next-1"
        await all_acked(app_pod, "bo", ["slow-1"])
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.8):
                await client.recv()  # no resend of slow-1 was given to the app
        # Leaving ``async with`` normally acks the message in hand.
    await all_acked(app_pod, "bo", ["next-1"])


async def test_follows_a_drain_to_the_next_pod_without_loss_or_duplicates(
        pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    a, b, c = start_cluster(pod_factory, cluster, 3)
    changes: list[StateChange] = []
    ids = [f"d-{i}" for i in range(60)]
    async with Client([a.ws_url, b.ws_url, c.ws_url], token=a.token("cy")) as client:
        client.on_state(changes.append)
        assert client.pod == "pod-a"

        async def send_all() -> None:
            for i, msg_id in enumerate(ids):
                await send_acked(c, "cy", msg_id, i)
                if i == 20:
                    await api(a, "POST", "/v1/drain", {"pod": "pod-a", "overSeconds": 0})
                await asyncio.sleep(0.02)

        sending = asyncio.create_task(send_all())
        seen = await collect(client, set(ids), 30)
        await sending
        assert client.pod == "pod-b" and client.connections == 2
    assert set(seen) == set(ids) and max(seen.values()) == 1, seen
    drained = [ch for ch in changes if ch.state is State.RECONNECTING]
    assert [(ch.reason, ch.code) for ch in drained] == [("drain", 1012)]
    assert drained[0].delay is not None and drained[0].delay <= 0.25
    assert [(ch.pod, ch.url) for ch in changes if ch.state is State.CONNECTED] == [
        ("pod-b", b.ws_url)]
    await all_acked(b, "cy", ids)


async def test_restores_pending_messages_after_its_pod_is_killed(
        pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    a, b = start_cluster(pod_factory, cluster, 2)
    changes: list[StateChange] = []
    before = [f"k-{i}" for i in range(10)]
    after = [f"k-{i}" for i in range(10, 20)]
    async with Client([a.ws_url, b.ws_url], token=a.token("dee"), auto_ack=False) as client:
        client.on_state(changes.append)
        for msg_id in before:
            await send_acked(b, "dee", msg_id)
        seen = await collect(client, set(before), 10)
        for msg_id in before[:5]:
            client.ack(msg_id)
        await all_acked(b, "dee", before[:5])
        a.kill()  # five given to the app but not acked: pending in the store
        # The pod is known at the welcome, the replay count at its end.
        await eventually(lambda: asyncio.sleep(
            0, result=client.pod == "pod-b" and client.replayed >= 5), 30,
            "reconnected to pod-b, and the five unacked replayed")
        for msg_id in after:
            await send_acked(b, "dee", msg_id)
        await collect(client, set(after), 10, seen)
        for msg_id in before[5:] + after:
            client.ack(msg_id)
        await all_acked(b, "dee", before + after)
        assert max(seen.values()) == 1, seen  # the replayed copies were not given again
        assert client.duplicates >= 5
        assert await client.restore() == 0
    lost = [ch for ch in changes if ch.state is State.RECONNECTING]
    assert lost and lost[0].reason == "connection lost"


async def test_token_provider_refreshes_and_a_static_token_expires(app_pod: PodProcess) -> None:
    calls = 0

    def fresh() -> str:
        nonlocal calls
        calls += 1
        return mint_token(SECRET, "eve", 2)

    reasons: list[str] = []
    refreshed = Client(app_pod.ws_url, token_provider=fresh, token_via="subprotocol")
    refreshed.on_state(lambda ch: reasons.append(ch.reason) if ch.reason else None)
    stuck = Client(app_pod.ws_url, token=mint_token(SECRET, "fay", 2), token_via="query")
    async with refreshed, stuck:
        started = time.monotonic()
        with pytest.raises(HandshakeRefused) as refused:
            await stuck.recv()  # 4401 after 2 s, then the same token is refused: final
        assert refused.value.status == 401 and stuck.state is State.CLOSED
        assert time.monotonic() - started < 5
        await eventually(lambda: asyncio.sleep(0, result=calls >= 2), 5, "a fresh token")
        await eventually(lambda: asyncio.sleep(0, result=refreshed.state is State.CONNECTED),
                         5, "connected again")
        assert "token expired" in reasons
        await send_acked(app_pod, "eve", "after-refresh")
        assert (await refreshed.recv()).id == "after-refresh"


async def test_first_connect_fails_fast() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(ConnectError, match="cannot connect"):
        async with Client([f"ws://127.0.0.1:{port}/ws", f"ws://127.0.0.1:{port}/other"],
                          token="x"):
            pass
    assert time.monotonic() - started < 2

    def broken() -> str:
        raise RuntimeError("token service down")
    with pytest.raises(ConnectError, match="token provider failed"):
        await Client(f"ws://127.0.0.1:{port}/ws", token_provider=broken).connect()


async def test_bad_token_is_refused_at_once(app_pod: PodProcess) -> None:
    client = Client(app_pod.ws_url, token="not-a-jwt")
    with pytest.raises(HandshakeRefused) as refused:
        await client.connect()
    assert refused.value.status == 401 and "invalid token" in str(refused.value)
    assert client.state is State.CLOSED


async def test_close_during_connect_leaves_nothing_behind(app_pod: PodProcess) -> None:
    for cut in (0.0, 0.002, 0.01, 0.03, 0.1):
        client = Client(app_pod.ws_url, token=app_pod.token("gus"))
        connecting = asyncio.create_task(client.connect())
        await asyncio.sleep(cut)
        await client.close()
        with contextlib.suppress(ClientClosed):
            await connecting
        assert client.state is State.CLOSED

    async def gone() -> bool:
        return (await api(app_pod, "GET", "/v1/presence/gus"))["connections"] == []
    await eventually(gone, 5, "no connection of gus left on the pod")
