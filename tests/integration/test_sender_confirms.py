"""When a send waits for the broker's confirm, over the real RabbitMQ.

A client's at-most-once message (relayed from the frame being handled) returns
once the bus holds it; every other send returns after the confirm. Either way,
a publish that fails is counted as dropped and its user's presence is reported
stale, never lost silently (DESIGN §3: "counted if it does not").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tests.integration.conftest import Broker, Inbox, eventually
from wsnode.acks_memory import MemoryAcks
from wsnode.ids import ConnId, PodId, UserId
from wsnode.metrics import Metrics
from wsnode.presence import MemoryPresence
from wsnode.protocol import Envelope
from wsnode.sender import RELAYED_FROM, Sender, SendReport

A, B, GONE = PodId("A"), PodId("B"), PodId("gone")
ALICE, BOB, CAROL = UserId("alice"), UserId("bob"), UserId("carol")


@contextlib.contextmanager
def handling_a_frame_of(user: UserId) -> Iterator[None]:
    """As ``wsnode.frames`` runs an app handler: sends relay from ``user``."""
    token = RELAYED_FROM.set(user)
    try:
        yield
    finally:
        RELAYED_FROM.reset(token)


def sample(metrics: Metrics, line: str) -> float:
    for row in metrics.render().decode().splitlines():
        if row.startswith(line + " "):
            return float(row.split()[-1])
    return 0.0


def dropped(metrics: Metrics, reason: str) -> float:
    return sample(metrics, f'wsnode_messages_dropped_total{{reason="{reason}"}}')


def published(metrics: Metrics) -> float:
    return sample(metrics, "wsnode_published_total")


class Setup:
    def __init__(self, presence: MemoryPresence, sender: Sender, metrics: Metrics,
                 inbox: Inbox, stale: list[UserId]) -> None:
        self.presence, self.sender, self.metrics = presence, sender, metrics
        self.inbox, self.stale = inbox, stale


async def setup(broker: Broker) -> Setup:
    inbox = Inbox()
    await broker.bus(str(B), inbox=inbox)
    bus = await broker.bus(str(A), inbox=Inbox())
    presence, metrics, stale = MemoryPresence(), Metrics(), []
    for pod in (A, B, GONE):
        await presence.join(pod)
    await presence.add(B, BOB, ConnId("b1"), 0)
    await presence.add(GONE, CAROL, ConnId("c1"), 0)  # its pod has no queue
    sender = Sender(presence=presence, bus=bus, acks=MemoryAcks(), metrics=metrics, pod=A,
                    stale=stale.extend)
    return Setup(presence, sender, metrics, inbox, stale)


def chat(n: int) -> Envelope:
    return Envelope(type="chat_message", payload={"n": n})


async def test_a_clients_message_returns_before_its_confirm_and_arrives_in_order(
        broker: Broker) -> None:
    s = await setup(broker)
    reports: list[SendReport] = []
    with handling_a_frame_of(ALICE):
        for n in range(50):
            reports.append(await s.sender.send_to_user(BOB, chat(n)))
            if n == 0:
                # Returned with its broker message still unconfirmed: the
                # client's next frame is not held behind a broker round trip.
                assert len(s.sender.unconfirmed) == 1 and published(s.metrics) == 0
    assert all(r.pods == [B] and not r.failed_pods for r in reports)
    await s.inbox.wait_for(lambda: len(s.inbox.deliveries) >= 50)
    assert [d.frame.count(b'"n":%d}' % n) for n, d in enumerate(s.inbox.deliveries)] == [1] * 50
    # Confirmed afterwards, and counted then.
    await eventually(lambda: published(s.metrics) == 50)
    assert len(s.sender.unconfirmed) == 0 and dropped(s.metrics, "pod_gone") == 0


async def test_a_servers_message_returns_after_its_confirm(broker: Broker) -> None:
    s = await setup(broker)
    report = await s.sender.send_to_user(BOB, chat(1), on_behalf_of=None)
    assert report.pods == [B] and len(s.sender.unconfirmed) == 0
    assert published(s.metrics) == 1  # confirmed before the send returned
    with handling_a_frame_of(ALICE):  # given explicitly, or traced: confirmed too
        await s.sender.send_to_user(BOB, chat(2), on_behalf_of=ALICE)
        await s.sender.send_to_user(BOB, Envelope(type="chat_message", payload={"n": 3},
                                                  id="m3"), trace=True)
    assert published(s.metrics) == 3 and len(s.sender.unconfirmed) == 0


async def test_a_clients_message_to_a_gone_pod_is_counted_when_the_broker_says_so(
        broker: Broker) -> None:
    s = await setup(broker)
    with handling_a_frame_of(ALICE):
        report = await s.sender.send_to_user(CAROL, chat(1))
    assert report.pods == [GONE]  # handed over: the broker has not answered yet
    await eventually(lambda: dropped(s.metrics, "pod_gone") == 1)
    assert s.stale == [CAROL]  # the cached presence that named the pod is refreshed
    assert published(s.metrics) == 0 and len(s.sender.unconfirmed) == 0
    # A server's send learns it before returning.
    report = await s.sender.send_to_user(CAROL, chat(2), on_behalf_of=None)
    assert report.failed_pods == [GONE] and report.pods == []
    assert dropped(s.metrics, "pod_gone") == 2 and s.stale == [CAROL, CAROL]
