"""wsctl send against a real pod, with real WebSocket clients."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson

from tests.cli.conftest import Wsctl
from tests.conftest import PodFactory
from tests.support.client import Client
from tests.support.pods import PodProcess


async def test_send_reaches_every_connection_of_an_online_user(pod: PodProcess,
                                                               wsctl: Wsctl) -> None:
    async with await Client.open(pod.ws_url, pod.token("alice")) as phone, \
            await Client.open(pod.ws_url, pod.token("alice")) as laptop:
        result = await wsctl.arun("send", "alice", "--type", "notification",
                                  "--payload", '{"text": "hi"}', "--json", pod=pod)
        assert result.exit_code == 0, result.output
        report = orjson.loads(result.stdout)
        assert report["local"] == 2
        assert report["pods"] == []
        assert report["stored"] is False
        for client in (phone, laptop):
            frame = await client.expect("notification")
            assert frame["payload"] == {"text": "hi"}

        result = await wsctl.arun("send", "alice", "--type", "notification", pod=pod)
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == \
            "delivered to 2 connection(s) directly, published to 0 pod(s)"
        for client in (phone, laptop):
            assert (await client.expect("notification"))["payload"] is None


async def test_send_to_an_offline_user_exits_3(pod: PodProcess, wsctl: Wsctl) -> None:
    result = await wsctl.arun("send", "nobody", "--type", "notification", pod=pod)
    assert result.exit_code == 3
    assert result.stderr == "wsctl: error: user nobody is offline: nothing delivered\n"
    assert result.stdout == ""


async def test_send_payload_from_a_file(pod: PodProcess, wsctl: Wsctl, tmp_path: Path) -> None:
    path = tmp_path / "payload.json"
    path.write_text('{"from": "file", "n": [1, 2]}')
    async with await Client.open(pod.ws_url, pod.token("alice")) as alice:
        result = await wsctl.arun("send", "alice", "-t", "note", "-p", f"@{path}", pod=pod)
        assert result.exit_code == 0, result.output
        assert (await alice.expect("note"))["payload"] == {"from": "file", "n": [1, 2]}


async def test_send_ack_wait_returns_when_a_client_acks(pod: PodProcess, wsctl: Wsctl) -> None:
    async with await Client.open(pod.ws_url, pod.token("alice")) as alice:
        waiting = asyncio.create_task(wsctl.arun(
            "send", "alice", "--type", "invoice", "--ack", "--id", "m-1", "--wait", "5",
            "--json", pod=pod))
        frame = await alice.expect("invoice")
        assert frame["id"] == "m-1"
        assert frame["requiresAck"] is True
        await alice.ack("m-1")
        result = await waiting
        assert result.exit_code == 0, result.output
        report = orjson.loads(result.stdout)
        assert report["stored"] is True
        assert report["id"] == "m-1"
        assert report["state"] == "acked"
        assert report["seq"] == frame["seq"]

        waiting = asyncio.create_task(wsctl.arun(
            "send", "alice", "--type", "invoice", "--ack", "--id", "m-2", "--wait", "5", pod=pod))
        await alice.ack((await alice.expect("invoice"))["id"])
        result = await waiting
        assert result.exit_code == 0, result.output
        assert result.stdout.strip().endswith("(id m-2); acked")


async def test_send_ack_wait_exits_3_when_nobody_acks(pod_factory: PodFactory,
                                                      wsctl: Wsctl) -> None:
    pod = pod_factory("pod-a")  # default 5 s resend interval: stays pending during the wait
    async with await Client.open(pod.ws_url, pod.token("alice")) as alice:
        started = time.monotonic()
        result = await wsctl.arun("send", "alice", "--type", "invoice", "--ack",
                                  "--wait", "0.8", pod=pod)
        elapsed = time.monotonic() - started
        frame = await alice.expect("invoice")
    assert result.exit_code == 3
    assert 0.8 <= elapsed < 5
    assert result.stderr.splitlines()[0] == "wsctl: error: not acked within 0.8s"
    # The generated id is shown, and it is the one the client got.
    assert result.stdout.strip() == (
        "delivered to 1 connection(s) directly, published to 0 pod(s); "
        f"stored for ACK as seq 1 (id {frame['id']}); pending")
    assert len(frame["id"]) == 32


async def test_send_ack_to_an_offline_user_is_stored_and_delivered_on_connect(
        pod: PodProcess, wsctl: Wsctl) -> None:
    result = await wsctl.arun("send", "carol", "--type", "note", "--ack", "--id", "c-1",
                              "--json", pod=pod)
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["stored"] is True
    async with await Client.open(pod.ws_url, pod.token("carol")) as carol:
        replayed = carol.replay or [await carol.expect("note")]
        assert [f["id"] for f in replayed] == ["c-1"]


def test_bad_payload_is_a_usage_error(wsctl: Wsctl) -> None:
    result = wsctl.run("send", "alice", "--type", "t", "--payload", "{nope",
                       env={"WSNODE_NODE": "http://127.0.0.1:9"})
    assert result.exit_code == 2
    assert result.stderr.startswith("wsctl: error: --payload is not valid JSON: ")
    assert "Traceback" not in result.output


def test_unreadable_payload_file_is_a_usage_error(wsctl: Wsctl, tmp_path: Path) -> None:
    result = wsctl.run("send", "alice", "--type", "t", "--payload", f"@{tmp_path}/missing.json",
                       env={"WSNODE_NODE": "http://127.0.0.1:9"})
    assert result.exit_code == 2
    assert "cannot read it" in result.stderr


def test_wait_without_ack_is_a_usage_error(wsctl: Wsctl) -> None:
    result = wsctl.run("send", "alice", "--type", "t", "--wait", "5",
                       env={"WSNODE_NODE": "http://127.0.0.1:9"})
    assert result.exit_code == 2
    assert result.stderr.startswith("wsctl: error: --wait needs --ack")


async def test_a_reserved_type_is_refused_by_the_pod(pod: PodProcess, wsctl: Wsctl) -> None:
    result = await wsctl.arun("send", "alice", "--type", "welcome", pod=pod)
    assert result.exit_code == 1
    assert result.stderr == "wsctl: error: type 'welcome' is reserved by the protocol\n"
