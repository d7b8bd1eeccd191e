"""``wsctl trace`` against one pod (embedded trails)."""

from __future__ import annotations

import orjson

from tests.cli.conftest import Wsctl
from tests.support.client import Client
from tests.support.pods import PodProcess


async def test_trace_of_an_acked_message(pod: PodProcess, wsctl: Wsctl) -> None:
    async with await Client.open(pod.ws_url, pod.token("ann")) as ann:
        sent = await wsctl.arun("send", "ann", "--type", "note", "--ack", "--id", "n-1",
                                pod=pod)
        assert sent.exit_code == 0, sent.stderr
        await ann.expect("note")
        await ann.ack("n-1")
        await ann.send({"type": "ping"})
        await ann.expect("pong")  # the ack was handled before this
    result = await wsctl.arun("trace", "n-1", "--json", pod=pod)
    assert result.exit_code == 0, result.stderr
    events = orjson.loads(result.stdout)["events"]
    assert [e["event"] for e in events] == ["stored", "routed", "acked"]
    assert events[1]["local"] == 1  # delivered to one connection of this pod
    assert {e["pod"] for e in events} == {"pod-a"}
    assert events[-1]["conn"] == ann.conn_id
    human = await wsctl.arun("trace", "n-1", pod=pod)
    assert "acked" in human.stdout and "message n-1" in human.stdout


async def test_send_trace_traces_an_at_most_once_message(pod: PodProcess, wsctl: Wsctl) -> None:
    async with await Client.open(pod.ws_url, pod.token("bea")) as bea:
        sent = await wsctl.arun("send", "bea", "--type", "note", "--trace", "--json", pod=pod)
        assert sent.exit_code == 0, sent.stderr
        msg_id = orjson.loads(sent.stdout)["id"]
        assert (await bea.expect("note"))["id"] == msg_id
    result = await wsctl.arun("trace", msg_id, "--json", pod=pod)
    assert [e["event"] for e in orjson.loads(result.stdout)["events"]] == ["routed"]
    untraced = await wsctl.arun("send", "bea", "--type", "note", "--id", "plain", pod=pod)
    assert untraced.exit_code == 3  # bea is offline now: nothing delivered
    assert (await wsctl.arun("trace", "plain", pod=pod)).exit_code == 3
