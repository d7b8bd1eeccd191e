"""Item 7 of issue 12: repeated headers get 400, not a 500 with a traceback;
any user or message id is reachable through the admin API and wsctl (both
targets); one user-id rule (1-256 characters) everywhere."""

from __future__ import annotations

from urllib.parse import quote

import orjson
import pytest

from tests.abuse.conftest import AbusePods, raw_handshake
from tests.cli.conftest import Wsctl
from tests.support.client import Client
from tests.support.cluster import ClusterSlice
from tests.support.pods import PodProcess
from tests.support.waits import api, eventually

ODD_USERS = ["{u:bob}", "a/b", "50%", "%7B", "sp ace", "ユーザー", "x?y#z", "..", "+&="]
ODD_ID = "{m}/1% ?ü"


def seg(value: str) -> str:
    return quote(value, safe="")


@pytest.mark.parametrize("header", ["Origin", "Authorization"])
async def test_a_repeated_header_gets_400(abuse_pods: AbusePods, header: str) -> None:
    pod = abuse_pods()
    value = "http://a.example" if header == "Origin" else f"Bearer {pod.token('alice')}"
    status, _, body = await raw_handshake(pod.port, [(header, value), (header, value)])
    assert status == 400
    assert body == f"more than one {header} header: send one\n"
    assert "Traceback" not in pod.log()


async def test_odd_ids_reach_every_admin_path(abuse_pods: AbusePods) -> None:
    pod = abuse_pods(env={"WSNODE_ACK_RETRY_INTERVAL": "60s"})
    for user in ODD_USERS:
        async with await Client.open(pod.ws_url, pod.token(user)) as client:
            answer = await api(pod, "GET", f"/v1/presence/{seg(user)}")
            assert answer["user"] == user and len(answer["connections"]) == 1
            assert answer["connections"][0]["connId"] == client.conn_id
            await api(pod, "POST", "/v1/send", {"user": user, "envelope": {
                "type": "note", "id": ODD_ID, "requiresAck": True}})
            assert (await client.recv())["id"] == ODD_ID
        state = await api(pod, "GET", f"/v1/messages/{seg(user)}/{seg(ODD_ID)}")
        assert state == {"user": user, "id": ODD_ID, "state": "pending"}
        trail = await api(pod, "GET", f"/v1/trace/{seg(ODD_ID)}?user={seg(user)}")
        assert {e["user"] for e in trail["events"]} == {user}
        dead = await api(pod, "GET", f"/v1/dlq?user={seg(user)}")
        assert dead == {"messages": []}


async def test_wsctl_reaches_odd_ids_through_a_pod(abuse_pods: AbusePods) -> None:
    pod = abuse_pods(env={"WSNODE_ACK_RETRY_INTERVAL": "60s"})
    await _wsctl_round_trip(pod, Wsctl(), {"WSNODE_NODE": pod.admin_url})


async def test_wsctl_reaches_odd_ids_through_the_cluster(
        abuse_pods: AbusePods, cluster: ClusterSlice) -> None:
    env = cluster.env(WSNODE_ACK_RETRY_INTERVAL="60s")
    pod = cluster.adopt(abuse_pods(env=env))
    await _wsctl_round_trip(pod, Wsctl(), {**env, "WSNODE_NODE": None})


async def _wsctl_round_trip(pod: PodProcess, wsctl: Wsctl, env: dict[str, str | None]) -> None:
    for user in ODD_USERS[:4]:
        async with await Client.open(pod.ws_url, pod.token(user)) as client:
            async def listed(user: str = user) -> dict[str, object] | None:
                result = await wsctl.arun("presence", "get", user, "--json", env=env)
                return orjson.loads(result.stdout) if result.exit_code == 0 else None
            shown = await eventually(listed, 10, f"wsctl presence get {user!r}")
            assert shown["user"] == user  # type: ignore[index]
            assert [c["connId"] for c in shown["connections"]] == [client.conn_id]  # type: ignore[index]
            sent = await wsctl.arun("send", user, "--type", "note", "--id", ODD_ID, "--ack",
                                    "--json", env=env)
            assert sent.exit_code == 0, sent.output
            assert (await client.recv())["id"] == ODD_ID
            await client.ack(ODD_ID)
            trail = await wsctl.arun("trace", ODD_ID, "--user", user, "--json", env=env)
            assert trail.exit_code == 0, trail.output
            assert orjson.loads(trail.stdout)["id"] == ODD_ID


async def test_one_user_id_limit_everywhere(abuse_pods: AbusePods, cluster: ClusterSlice,
                                            ) -> None:
    pod = abuse_pods()
    long = "u" * 257
    status, answer = pod.api("POST", "/v1/send", {"user": long, "envelope": {"type": "t"}})
    assert status == 400 and "256" in answer["error"]["message"]
    for path in (f"/v1/presence/{long}", f"/v1/messages/{long}/m1", f"/v1/dlq?user={long}",
                 f"/v1/trace/m1?user={long}"):
        status, answer = pod.api("GET", path)
        assert status == 400 and "256" in answer["error"]["message"], path
    status, _ = pod.api("POST", "/v1/dlq/retry", {"id": "m1", "user": long})
    assert status == 400
    ok, _ = pod.api("GET", f"/v1/presence/{'u' * 256}")
    assert ok == 200
    # An app handler cannot store under such an id either (the chat example).
    chat = abuse_pods("pod-chat", args=["--app", "wsnode.examples.chat"])
    async with await Client.open(chat.ws_url, chat.token("mallory")) as mallory:
        await mallory.send({"type": "chat_message", "id": "m1", "requiresAck": True,
                            "payload": {"to": long, "text": "x"}})
        refused = await mallory.expect("error")
        assert refused["id"] == "m1" and "256" in refused["payload"]["message"]
    wsctl = Wsctl()
    for env in ({"WSNODE_NODE": pod.admin_url}, {**cluster.env(), "WSNODE_NODE": None}):
        for args in (["send", long, "--type", "t"], ["presence", "get", long],
                     ["dlq", "ls", "--user", long], ["token", long]):
            result = await wsctl.arun(*args, env=env)
            assert result.exit_code == 2, (args, result.output)
            assert "256" in result.output
