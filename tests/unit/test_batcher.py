"""PublishBatcher's group commit, with an injected ``send`` the test releases."""

from __future__ import annotations

import asyncio

from wsnode.bus import Delivery
from wsnode.bus_rabbitmq_batch import PublishBatcher
from wsnode.ids import PodId, UserId

A = PodId("a")


def delivery(n: int) -> Delivery:
    return Delivery(UserId("u"), b'{"type":"n","payload":%d}' % n, "n")


class Broker:
    """Records each send; a send returns when the test releases it."""

    def __init__(self) -> None:
        self.sent: list[list[int]] = []
        self.gates: list[asyncio.Event] = []

    async def send(self, pod: PodId, deliveries: list[Delivery]) -> None:
        gate = asyncio.Event()
        self.sent.append([int(d.frame[22:-1]) for d in deliveries])
        self.gates.append(gate)
        await gate.wait()


async def ticks(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_lone_publish_goes_out_on_the_next_tick() -> None:
    broker = Broker()
    batcher = PublishBatcher(broker.send, max_in_flight=1)
    [future] = batcher.add(A, [delivery(0)])
    await ticks()
    assert broker.sent == [[0]]
    broker.gates[0].set()
    await future


async def test_the_next_batch_fills_while_a_confirm_is_awaited() -> None:
    broker = Broker()
    batcher = PublishBatcher(broker.send, max_in_flight=1)
    first = batcher.add(A, [delivery(0)])
    await ticks()
    later = []
    for n in range(1, 6):  # five more publishes, over several ticks
        later += batcher.add(A, [delivery(n)])
        await ticks()
    assert broker.sent == [[0]]  # nothing else leaves while the first is unconfirmed
    broker.gates[0].set()
    await ticks()
    assert broker.sent == [[0], [1, 2, 3, 4, 5]]  # one message for all of them, in order
    broker.gates[1].set()
    await asyncio.gather(*first, *later)
    assert (batcher.messages, batcher.deliveries) == (2, 6)


async def test_a_full_buffer_goes_out_whatever_is_in_flight() -> None:
    broker = Broker()
    batcher = PublishBatcher(broker.send, max_in_flight=1, max_deliveries=3)
    batcher.add(A, [delivery(0)])
    await ticks()
    batcher.add(A, [delivery(n) for n in range(1, 5)])
    await ticks()
    assert broker.sent == [[0], [1, 2, 3]]  # the full one went; [4] waits its turn
    for gate in broker.gates:
        gate.set()
    await ticks()
    assert broker.sent[-1] == [4]


async def test_settle_fails_what_was_left_behind() -> None:
    broker = Broker()
    batcher = PublishBatcher(broker.send, max_in_flight=1)
    batcher.add(A, [delivery(0)])
    await ticks()
    [waiting] = batcher.add(A, [delivery(1)])
    await batcher.settle(0.05)  # the first never returns: cancelled
    assert waiting.done() and isinstance(waiting.exception(), Exception)


async def test_room_holds_a_publisher_back_while_a_pod_has_too_many_unconfirmed() -> None:
    broker = Broker()
    batcher = PublishBatcher(broker.send, max_deliveries=2, max_in_flight=1)
    assert batcher.max_unconfirmed == 4  # every message in flight full, and a full buffer
    futures = batcher.add(A, [delivery(n) for n in range(4)])
    await ticks()
    assert broker.sent == [[0, 1], [2, 3]]  # full buffers go out whatever is in flight
    assert batcher.full(A) and not batcher.full(PodId("b"))
    waiting = asyncio.ensure_future(batcher.room(A))
    await ticks()
    assert not waiting.done()  # 4 unconfirmed: the publisher waits
    broker.gates[0].set()
    await asyncio.wait_for(waiting, 5)  # two confirmed: room again
    assert not batcher.full(A)
    broker.gates[1].set()
    await asyncio.gather(*futures)
    await ticks()
    await asyncio.wait_for(batcher.room(A), 5)  # nothing unconfirmed: at once


async def test_a_cancelled_room_waiter_does_not_cancel_the_others() -> None:
    broker = Broker()
    batcher = PublishBatcher(broker.send, max_deliveries=1, max_in_flight=1)
    futures = batcher.add(A, [delivery(0), delivery(1)])
    await ticks()
    first = asyncio.ensure_future(batcher.room(A))
    second = asyncio.ensure_future(batcher.room(A))
    await ticks()
    first.cancel()
    await ticks()
    assert first.cancelled() and not second.done()
    broker.gates[0].set()
    await asyncio.wait_for(second, 5)
    broker.gates[1].set()
    await asyncio.gather(*futures)


async def test_settle_frees_the_room_of_what_it_fails() -> None:
    broker = Broker()
    batcher = PublishBatcher(broker.send, max_deliveries=1, max_in_flight=1, deadline=5)
    futures = batcher.add(A, [delivery(0), delivery(1)])
    await ticks()
    assert batcher.full(A)
    await batcher.settle(0.01)  # nothing confirms: both messages cancelled
    assert not batcher.full(A)
    for future in futures:
        assert future.done() and future.exception() is not None
