"""wsctl broadcast, publish, topics and send to several users, against a real pod."""

from __future__ import annotations

import jwt
import orjson

from tests.cli.conftest import Wsctl
from tests.support.client import Client
from tests.support.pods import SECRET, PodProcess
from tests.support.waits import eventually
from wsnode.auth import mint_token


async def open_client(pod: PodProcess, user: str, *topics: str) -> Client:
    return await Client.open(pod.ws_url, mint_token(SECRET, user, 600, topics=topics))


async def test_broadcast_and_send_to_several_users(pod: PodProcess, wsctl: Wsctl) -> None:
    async with await open_client(pod, "ann") as ann, await open_client(pod, "bob") as bob:
        done = await wsctl.arun("broadcast", "--type", "maintenance", "--payload", '{"in": 5}',
                                pod=pod)
        assert (done.exit_code, done.stdout) == (
            0, "delivered to 2 connection(s) directly, published to 0 pod(s)\n")
        for client in (ann, bob):
            assert (await client.expect("maintenance"))["payload"] == {"in": 5}

        done = await wsctl.arun("send", "ann", "bob", "--type", "note", pod=pod)
        assert done.exit_code == 0, done.output
        assert done.stdout.startswith("2 of 2 users reached: 2 connection(s) directly")
        for client in (ann, bob):
            await client.expect("note")

        done = await wsctl.arun("send", "ann", "zed", "--type", "note", "--json", pod=pod)
        assert done.exit_code == 3
        assert orjson.loads(done.stdout)["offline"] == ["zed"]
        assert done.stderr == "wsctl: error: 1 of 2 users did not get it: zed\n"
        await ann.expect("note")

        done = await wsctl.arun("send", "ann", "zed", "--type", "note", "--ack", "--id", "k1",
                                "--json", pod=pod)
        assert done.exit_code == 0, done.output  # zed gets it on connect
        assert orjson.loads(done.stdout)["stored"] == ["ann", "zed"]

        refused = await wsctl.arun("broadcast", "--type", "welcome", pod=pod)
        assert refused.exit_code == 1 and "reserved" in refused.stderr
    wait = wsctl.run("send", "a", "b", "--type", "t", "--ack", "--wait", "5", pod=pod)
    assert wait.exit_code == 2 and "--wait takes one USER" in wait.stderr


async def test_publish_and_topics(pod: PodProcess, wsctl: Wsctl) -> None:
    async with await open_client(pod, "ann", "room:1", "news") as ann, \
            await open_client(pod, "bob", "room:1") as bob:
        done = await wsctl.arun("publish", "room:1", "--type", "room_message", "-p", '"hi"',
                                pod=pod)
        assert done.exit_code == 0, done.output
        assert done.stdout == ("2 subscriber(s) of room:1: delivered to 2 connection(s) "
                               "directly, published to 0 pod(s)\n")
        for client in (ann, bob):
            assert (await client.expect("room_message"))["payload"] == "hi"

        listed = await wsctl.arun("topics", "ls", pod=pod)
        assert listed.exit_code == 0
        rows = [line.split() for line in listed.stdout.splitlines()]
        assert rows == [["topic", "connections", "pods"], ["news", "1", "pod-a"],
                        ["room:1", "2", "pod-a"]]
        got = await wsctl.arun("topics", "get", "room:1", "--json", pod=pod)
        assert orjson.loads(got.stdout) == {"topic": "room:1", "connections": 2,
                                            "pods": [{"pod": "pod-a", "connections": 2}]}

    async def none_left() -> bool:
        listed = await wsctl.arun("topics", "ls", pod=pod)
        return bool(listed.stdout == "no topic has a subscriber\n")

    await eventually(none_left, 10, "closed connections out of their topics")
    nobody = await wsctl.arun("publish", "room:1", "--type", "room_message", pod=pod)
    assert nobody.exit_code == 3
    assert nobody.stderr == "wsctl: error: nobody is subscribed to room:1: nobody got it\n"
    empty = await wsctl.arun("topics", "get", "room:1", pod=pod)
    assert (empty.exit_code, empty.stderr) == (3, "wsctl: error: nobody is subscribed to "
                                                  "room:1\n")
    bad = wsctl.run("publish", "not a topic", "--type", "t", pod=pod)
    assert bad.exit_code == 2 and "a topic name is 1-128 characters" in bad.output


def test_token_topics_claim(wsctl: Wsctl) -> None:
    done = wsctl.run("token", "ann", "--topic", "news", "--topic", "room:1")
    assert done.exit_code == 0
    claims = jwt.decode(done.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["topics"] == ["news", "room:1"]
    assert wsctl.run("token", "ann", "--topic", "a b").exit_code == 2
