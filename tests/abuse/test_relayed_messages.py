"""Issue 12, items 2 and 5: what a client can store through an app handler.

A message an app handler sends while it handles a client's frame is relayed on
that client's behalf: its id is scoped to the client (so no client can take an
id another sender will use, nor pass its text off under it), and ACK-required
ones are bounded per recipient and per client. Real pods with the chat example.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.conftest import PodFactory
from tests.support.client import Client
from tests.support.pods import PodProcess
from wsnode.ids import UserId
from wsnode.sender import relayed_id

ChatPod = Callable[..., PodProcess]


@pytest.fixture
def chat_pod(pod_factory: PodFactory) -> ChatPod:
    def start(**env: str) -> PodProcess:
        return pod_factory("pod-a", env={"WSNODE_RATE_LIMIT": "0", **env},
                           args=["--app", "wsnode.examples.chat"])
    return start


def chat(to: str, msg_id: str, text: str) -> dict[str, object]:
    return {"type": "chat_message", "id": msg_id, "requiresAck": True,
            "payload": {"to": to, "text": text}}


async def test_a_client_cannot_squat_an_id_the_server_will_use(chat_pod: ChatPod) -> None:
    pod = chat_pod()
    async with await Client.open(pod.ws_url, pod.token("mallory")) as mallory, \
            await Client.open(pod.ws_url, pod.token("carol")) as carol:
        await mallory.send(chat("carol", "invoice-42", "pay 1000 to account X"))
        assert (await mallory.expect("ack"))["payload"]["id"] == "invoice-42"
        forged = await carol.expect("chat_message")
        assert forged["id"] == relayed_id(UserId("mallory"), "invoice-42")
        assert forged["payload"]["from"] == "mallory"
        await carol.ack(forged["id"])

        # The real invoice, sent by the billing service through the admin API.
        status, report = await asyncio.to_thread(pod.api, "POST", "/v1/send", {
            "user": "carol", "envelope": {"type": "invoice", "id": "invoice-42",
                                          "requiresAck": True, "payload": {"amount": 10}}})
        assert status == 200 and report["duplicate"] is False and report["local"] == 1
        real = await carol.expect("invoice")
        assert (real["id"], real["payload"]) == ("invoice-42", {"amount": 10})

        # The relayed namespace is not the server's to use.
        status, refused = await asyncio.to_thread(pod.api, "POST", "/v1/send", {
            "user": "carol", "envelope": {"type": "invoice", "id": forged["id"]}})
        assert status == 400 and "relayed" in refused["error"]["message"]


async def test_a_client_cannot_fill_the_store_for_users_that_never_come(
        chat_pod: ChatPod) -> None:
    pod = chat_pod(WSNODE_RELAYED_BUDGET="3")
    async with await Client.open(pod.ws_url, pod.token("mallory")) as mallory:
        for n in range(3):
            await mallory.send(chat(f"ghost-{n}", f"m{n}", "x" * 1000))
            assert (await mallory.expect("ack"))["payload"]["id"] == f"m{n}"
        await mallory.send(chat("ghost-3", "m3", "x" * 1000))
        refused = await mallory.expect("error")
        assert refused["id"] == "m3"
        assert (refused["payload"]["code"], refused["payload"]["limit"]) == (
            "quota_exceeded", "sender")
        status, _ = await asyncio.to_thread(
            pod.api, "GET", f"/v1/messages/ghost-3/{relayed_id(UserId('mallory'), 'm3')}")
        assert status == 404  # nothing was stored


async def test_a_recipient_holds_a_bounded_number_of_messages_from_clients(
        chat_pod: ChatPod) -> None:
    pod = chat_pod(WSNODE_RELAYED_MAX_PENDING="2")
    senders = [await Client.open(pod.ws_url, pod.token(u)) for u in ("s1", "s2", "s3")]
    for n, sender in enumerate(senders[:2]):
        await sender.send(chat("dave", f"d{n}", "hi"))
        await sender.expect("ack")
    await senders[2].send(chat("dave", "d2", "hi"))
    refused = await senders[2].expect("error")
    assert (refused["payload"]["code"], refused["payload"]["limit"]) == (
        "quota_exceeded", "recipient")
    # The server's own messages to dave are not limited by it.
    status, report = await asyncio.to_thread(pod.api, "POST", "/v1/send", {
        "user": "dave", "envelope": {"type": "note", "id": "n1", "requiresAck": True}})
    assert status == 200 and report["stored"] is True
    for sender in senders:
        await sender.close()
