"""Issue 2 must-shows 1-5 on one real embedded pod with real WebSocket clients."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import orjson

from tests.support.client import Client
from tests.support.pods import API_KEY, PodProcess


def wsctl(pod: PodProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsctl", *args, "--node", pod.admin_url],
        env={**pod.env, "WSNODE_API_KEY": API_KEY}, capture_output=True, text=True,
        timeout=30, check=False,
    )


async def test_two_connections_get_wsctl_send_and_api_send(app_pod: PodProcess) -> None:
    token = app_pod.token("alice")
    async with await Client.open(app_pod.ws_url, token) as c1, \
            await Client.open(app_pod.ws_url, token) as c2:
        assert c1.conn_id != c2.conn_id
        done = await asyncio.to_thread(
            wsctl, app_pod, "send", "alice", "--type", "notification",
            "--payload", '{"text": "from wsctl"}', "--json")
        assert done.returncode == 0, done.stderr
        assert orjson.loads(done.stdout)["local"] == 2
        for client in (c1, c2):
            frame = await client.expect("notification")
            assert frame["payload"] == {"text": "from wsctl"}

        status, report = await asyncio.to_thread(
            app_pod.api, "POST", "/v1/send",
            {"user": "alice", "envelope": {"type": "notification", "payload": {"n": 2}}})
        assert status == 200
        assert report["local"] == 2 and report["stored"] is False and report["seq"] is None
        for client in (c1, c2):
            assert (await client.expect("notification"))["payload"] == {"n": 2}


async def test_offline_user_gets_acked_messages_on_connect_in_order(app_pod: PodProcess) -> None:
    for i in range(1, 6):
        status, report = await asyncio.to_thread(
            app_pod.api, "POST", "/v1/send",
            {"user": "bob", "envelope": {"type": "notification", "payload": {"i": i},
                                         "id": f"m{i}", "requiresAck": True}})
        assert status == 200 and report["stored"] is True and report["local"] == 0
        assert report["seq"] == i
    async with await Client.open(app_pod.ws_url, app_pod.token("bob")) as bob:
        assert [f["id"] for f in bob.replay] == ["m1", "m2", "m3", "m4", "m5"]
        assert [f["seq"] for f in bob.replay] == [1, 2, 3, 4, 5]
        assert all(f["requiresAck"] is True for f in bob.replay)
        for frame in bob.replay:
            await bob.ack(frame["id"])
        # After the acks, a restore replays nothing and no resend comes.
        await bob.send({"type": "restore"})
        assert (await bob.expect("restore"))["payload"] == {"replayed": 0}
        await bob.nothing_within(0.8)
    async with await Client.open(app_pod.ws_url, app_pod.token("bob")) as again:
        assert again.replay == []
    status, body = await asyncio.to_thread(app_pod.api, "GET", "/v1/messages/bob/m3")
    assert status == 200 and body["state"] == "acked"


async def test_unacked_message_is_resent_then_dead_lettered(app_pod: PodProcess) -> None:
    async with await Client.open(app_pod.ws_url, app_pod.token("carol")) as carol:
        status, _ = await asyncio.to_thread(
            app_pod.api, "POST", "/v1/send",
            {"user": "carol", "envelope": {"type": "alert", "id": "r1", "requiresAck": True,
                                           "payload": "wake up"}})
        assert status == 200
        first = await carol.expect("alert")
        resent = [await carol.expect("alert", timeout=5) for _ in range(2)]  # max attempts 3
        assert {f["id"] for f in [first, *resent]} == {"r1"}
        assert {f["seq"] for f in [first, *resent]} == {first["seq"]}
        await carol.nothing_within(1.5)  # attempts exhausted: no fourth delivery
    async def dead() -> dict[str, object]:
        while True:
            _, dlq = await asyncio.to_thread(app_pod.api, "GET", "/v1/dlq?user=carol")
            if dlq["messages"]:
                return dict(dlq["messages"][0])
            await asyncio.sleep(0.1)
    letter = await asyncio.wait_for(dead(), 5)
    assert letter["id"] == "r1" and letter["reason"] == "max_attempts"
    assert letter["attempts"] == 3


async def test_resend_stops_once_acked_from_another_connection(app_pod: PodProcess) -> None:
    token = app_pod.token("dan")
    async with await Client.open(app_pod.ws_url, token) as phone, \
            await Client.open(app_pod.ws_url, token) as laptop:
        await asyncio.to_thread(
            app_pod.api, "POST", "/v1/send",
            {"user": "dan", "envelope": {"type": "alert", "id": "x1", "requiresAck": True}})
        await phone.expect("alert")
        await laptop.expect("alert")
        await laptop.ack("x1")
        await phone.nothing_within(1.0)
        await laptop.nothing_within(0.1)


async def test_client_message_with_requires_ack_gets_ack_after_handler(
        app_pod: PodProcess) -> None:
    async with await Client.open(app_pod.ws_url, app_pod.token("erin")) as erin:
        await erin.send({"type": "slow", "id": "c-1", "requiresAck": True,
                         "payload": {"seconds": 0.3}})
        assert (await erin.expect("slow_done"))["type"] == "slow_done"  # handler ran first
        assert (await erin.expect("ack"))["payload"] == {"id": "c-1"}
        await erin.send({"type": "echo", "payload": 1})  # no requiresAck: no ack frame
        await erin.expect("echo")
        await erin.nothing_within(0.3)


async def test_chat_example_delivers_between_users(app_pod: PodProcess) -> None:
    async with await Client.open(app_pod.ws_url, app_pod.token("alice")) as alice, \
            await Client.open(app_pod.ws_url, app_pod.token("bob")) as bob:
        payload = {"to": "bob", "text": "hi bob", "sentAt": 1234, "nested": {"k": [1, 2]}}
        await alice.send({"type": "chat_message", "payload": payload})
        got = await bob.expect("chat_message")
        assert got["payload"] == {**payload, "from": "alice"}
        await alice.nothing_within(0.2)


async def test_slow_handler_does_not_stall_other_connections(app_pod: PodProcess) -> None:
    async with await Client.open(app_pod.ws_url, app_pod.token("slowpoke")) as slow, \
            await Client.open(app_pod.ws_url, app_pod.token("quick")) as quick:
        await slow.send({"type": "slow", "payload": {"seconds": 3}})
        await quick.send({"type": "echo", "payload": "still here"})
        assert (await quick.expect("echo", timeout=1))["payload"] == "still here"
        await slow.expect("slow_done", timeout=5)


async def test_duplicate_id_is_stored_once_and_routed_again_while_pending(
        app_pod: PodProcess) -> None:
    """A producer that retries (its first call may have died between the store
    and the routing) gets its message routed again while it is pending: same id,
    same seq, so the client dedups. Once acked, the id is neither stored nor
    delivered again."""
    async with await Client.open(app_pod.ws_url, app_pod.token("fay")) as fay:
        env = {"type": "note", "id": "same", "requiresAck": True, "payload": 1}
        _, first = await asyncio.to_thread(app_pod.api, "POST", "/v1/send",
                                           {"user": "fay", "envelope": env})
        _, second = await asyncio.to_thread(app_pod.api, "POST", "/v1/send",
                                            {"user": "fay", "envelope": env})
        assert first["duplicate"] is False and second["duplicate"] is True
        assert first["seq"] == second["seq"] and second["local"] == 1
        copies = [await fay.expect("note"), await fay.expect("note")]
        assert {(c["id"], c["seq"]) for c in copies} == {("same", first["seq"])}
        await fay.ack("same")
        _, third = await asyncio.to_thread(app_pod.api, "POST", "/v1/send",
                                           {"user": "fay", "envelope": env})
        assert third["duplicate"] is True and third["local"] == 0
        await fay.nothing_within(0.8)


