"""wsctl presence and pods against a real pod."""

from __future__ import annotations

import re

import orjson

from tests.cli.conftest import Wsctl
from tests.support.client import Client
from tests.support.pods import PodProcess


async def test_presence_ls_lists_online_users(pod: PodProcess, wsctl: Wsctl) -> None:
    async with await Client.open(pod.ws_url, pod.token("alice")), \
            await Client.open(pod.ws_url, pod.token("alice")), \
            await Client.open(pod.ws_url, pod.token("bob")):
        result = await wsctl.arun("presence", "ls", "--json", pod=pod)
        assert result.exit_code == 0, result.output
        users = {u["user"]: u for u in orjson.loads(result.stdout)["users"]}
        assert users == {"alice": {"user": "alice", "connections": 2, "pods": ["pod-a"]},
                         "bob": {"user": "bob", "connections": 1, "pods": ["pod-a"]}}

        result = await wsctl.arun("presence", "ls", pod=pod)
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines[0].split() == ["user", "connections", "pods"]
        assert sorted(line.split() for line in lines[1:]) == [["alice", "2", "pod-a"],
                                                              ["bob", "1", "pod-a"]]

        result = await wsctl.arun("presence", "ls", "--pod", "pod-b", "--json", pod=pod)
        assert orjson.loads(result.stdout) == {"users": []}
        result = await wsctl.arun("presence", "ls", "--pod", "pod-b", pod=pod)
        assert result.stdout == "no user online\n"


async def test_presence_get_shows_each_connection(pod: PodProcess, wsctl: Wsctl) -> None:
    async with await Client.open(pod.ws_url, pod.token("alice")) as one, \
            await Client.open(pod.ws_url, pod.token("alice")) as two:
        result = await wsctl.arun("presence", "get", "alice", "--json", pod=pod)
        assert result.exit_code == 0, result.output
        document = orjson.loads(result.stdout)
        assert document["user"] == "alice"
        assert {c["connId"] for c in document["connections"]} == {one.conn_id, two.conn_id}
        assert {c["pod"] for c in document["connections"]} == {"pod-a"}

        result = await wsctl.arun("presence", "get", "alice", pod=pod)
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[0].split() == ["conn", "id", "pod", "connected",
                                                         "since"]
        for client in (one, two):
            assert re.search(re.escape(client.conn_id) +
                             r"\s+pod-a\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(\d+s ago\)",
                             result.stdout), result.stdout


async def test_presence_get_quotes_odd_user_ids(pod: PodProcess, wsctl: Wsctl) -> None:
    user = "team/ops lead?x=1#ü"
    async with await Client.open(pod.ws_url, pod.token(user)) as client:
        result = await wsctl.arun("presence", "get", user, "--json", pod=pod)
        assert result.exit_code == 0, result.output
        document = orjson.loads(result.stdout)
        assert document["user"] == user
        assert [c["connId"] for c in document["connections"]] == [client.conn_id]


async def test_presence_get_of_an_offline_user_exits_3(pod: PodProcess, wsctl: Wsctl) -> None:
    result = await wsctl.arun("presence", "get", "carol", pod=pod)
    assert result.exit_code == 3
    assert result.stdout == ""
    assert result.stderr == "wsctl: error: user carol is offline\n"

    result = await wsctl.arun("presence", "get", "carol", "--json", pod=pod)
    assert result.exit_code == 3
    assert orjson.loads(result.stdout) == {"user": "carol", "connections": []}


async def test_pods_ls(pod: PodProcess, wsctl: Wsctl) -> None:
    async with await Client.open(pod.ws_url, pod.token("alice")), \
            await Client.open(pod.ws_url, pod.token("bob")):
        result = await wsctl.arun("pods", "ls", "--json", pod=pod)
        assert result.exit_code == 0, result.output
        [info] = orjson.loads(result.stdout)["pods"]
        assert (info["pod"], info["state"], info["connections"], info["users"]) == \
            ("pod-a", "active", 2, 2)
        assert isinstance(info["lastHeartbeat"], int)

        result = await wsctl.arun("pods", "ls", pod=pod)
        assert result.exit_code == 0, result.output
        header, row = result.stdout.splitlines()
        assert header.split() == ["pod", "state", "connections", "users", "last", "heartbeat"]
        assert re.fullmatch(r"pod-a\s+active\s+2\s+2\s+\d+s ago\s*", row), row
