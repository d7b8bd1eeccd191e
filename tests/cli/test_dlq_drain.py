"""wsctl dlq and wsctl drain against a real pod."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.cli.conftest import Wsctl
from tests.conftest import PodFactory
from tests.support.client import Client
from tests.support.pods import PodProcess


async def _frames(client: Client, quiet: float = 0.3) -> list[dict[str, Any]]:
    """Every frame that arrives until none does for ``quiet`` seconds."""
    frames = []
    while True:
        try:
            frames.append(await client.recv(timeout=quiet))
        except TimeoutError:
            return frames


async def _dead_letters(pod: PodProcess, within: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status, body = pod.api("GET", "/v1/dlq")
        assert status == 200, body
        if body["messages"]:
            return list(body["messages"])
        await asyncio.sleep(0.1)
    raise AssertionError(f"no dead letter within {within}s")


async def test_dlq_ls_and_retry_a_dead_lettered_message(pod_factory: PodFactory,
                                                        wsctl: Wsctl) -> None:
    pod = pod_factory("pod-a", env={"WSNODE_ACK_RETRY_INTERVAL": "200ms",
                                    "WSNODE_ACK_MAX_ATTEMPTS": "2"})
    async with await Client.open(pod.ws_url, pod.token("alice")) as alice:
        result = await wsctl.arun("send", "alice", "--type", "invoice", "--ack", "--id", "d-1",
                                  pod=pod)
        assert result.exit_code == 0, result.output
        await _dead_letters(pod)  # alice never acks: 2 attempts, then the DLQ
        assert [f["id"] for f in await _frames(alice)] == ["d-1", "d-1"]

        result = await wsctl.arun("dlq", "ls", "--json", pod=pod)
        assert result.exit_code == 0, result.output
        [dead] = orjson.loads(result.stdout)["messages"]
        assert (dead["id"], dead["user"], dead["type"], dead["reason"], dead["attempts"]) == \
            ("d-1", "alice", "invoice", "max_attempts", 2)

        result = await wsctl.arun("dlq", "ls", "--user", "alice", pod=pod)
        assert result.exit_code == 0, result.output
        header, row = result.stdout.splitlines()
        assert header.split() == ["id", "user", "type", "seq", "attempts", "reason", "dead"]
        assert row.split()[:6] == ["d-1", "alice", "invoice", "1", "2", "max_attempts"]
        result = await wsctl.arun("dlq", "ls", "--user", "bob", pod=pod)
        assert result.stdout == "no dead letter\n"

        result = await wsctl.arun("dlq", "retry", "d-1", pod=pod)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(
            "retried for alice: delivered to 1 connection(s) directly, published to 0 pod(s); "
            "stored for ACK as seq")
        frame = await alice.expect("invoice")
        assert frame["id"] == "d-1"
        await alice.ack("d-1")

        result = await wsctl.arun("dlq", "retry", "d-1", pod=pod)
        assert result.exit_code == 3
        assert result.stderr.splitlines()[0] == "wsctl: error: no dead letter with id d-1"


async def test_drain_moves_clients_away_and_refuses_new_ones(pod: PodProcess,
                                                             wsctl: Wsctl) -> None:
    async with await Client.open(pod.ws_url, pod.token("alice")) as alice:
        result = await wsctl.arun("drain", "pod-a", "--wait", "--json", pod=pod)
        assert result.exit_code == 0, result.output
        document = orjson.loads(result.stdout)
        assert (document["pod"], document["state"], document["drained"]) == \
            ("pod-a", "draining", True)
        assert (await alice.expect("reconnect"))["payload"]["reason"] == "drain"
        with pytest.raises(ConnectionClosed) as closed:
            await alice.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1012

    with pytest.raises(InvalidStatus) as refused:
        await Client.open(pod.ws_url, pod.token("bob"))
    assert refused.value.response.status_code == 503

    # Still up, so still listed: draining, with no connection left.
    result = await wsctl.arun("pods", "ls", "--json", pod=pod)
    assert [(p["pod"], p["state"], p["connections"])
            for p in orjson.loads(result.stdout)["pods"]] == [("pod-a", "draining", 0)]


async def test_drain_human_output(pod: PodProcess, wsctl: Wsctl) -> None:
    result = await wsctl.arun("drain", "pod-a", "--over", "1", pod=pod)
    assert result.exit_code == 0, result.output
    assert result.stdout == "pod pod-a is draining over 1s\n"


async def test_drain_with_exit_ends_the_pod_process(pod: PodProcess, wsctl: Wsctl) -> None:
    result = await wsctl.arun("drain", "pod-a", "--exit", pod=pod)
    assert result.exit_code == 0, result.output
    assert result.stdout == "pod pod-a is draining over 0s; its process exits once drained\n"
    assert await asyncio.to_thread(pod.wait, 30) == 0


async def test_drain_of_an_unknown_pod_exits_3(pod: PodProcess, wsctl: Wsctl) -> None:
    result = await wsctl.arun("drain", "pod-zz", pod=pod)
    assert result.exit_code == 3
    assert result.stderr.splitlines()[0] == "wsctl: error: pod pod-zz not found"
