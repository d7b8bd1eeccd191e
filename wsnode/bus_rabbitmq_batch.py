"""Per-pod publish batching for :class:`~wsnode.bus_rabbitmq.RabbitBus` (no I/O).

A node publishes one delivery at a time, often from many tasks in the same
event-loop tick (a chat room fan-out, a resend sweep). One broker message per
delivery would spend most of the broker's and the client's time on per-message
overhead, so :class:`PublishBatcher` collects deliveries per destination pod
and hands them to an injected ``send`` coroutine as one list. It is a *group
commit*: while ``max_in_flight`` messages to a pod await their confirms, that
pod's next batch keeps filling, and goes out as soon as one of them returns.
So batches grow with load (one message per confirm round trip at most, however
many deliveries) and, idle, a lone publish waits for nothing but the loop tick
it is already in. A buffer that reaches ``max_deliveries`` or ``max_bytes``
goes out at once whatever is in flight.

Each broker message is sent by its own task, so several are in flight at once
(publisher confirms are awaited concurrently, not one after another). Tasks are
created in flush order and the send path takes the channel's FIFO write lock
before its first suspension, so one pod's broker messages leave in the order
their deliveries were added: per-pod order from one publisher is preserved.

Every ``add`` returns the futures of the broker messages that carry its
deliveries; the caller awaits them (shielded: a cancelled caller must not
cancel a message that carries other callers' deliveries) or adds callbacks to
them. Each future is settled within ``deadline`` seconds of its flush,
whatever ``send`` does.

Callers that do not wait for the confirms (``RabbitBus.hand_over``) are held
back by :meth:`PublishBatcher.room`: a pod's *unconfirmed* deliveries (buffered
or in flight) stay under ``max_unconfirmed``, so memory stays bounded when a
pod publishes faster than the broker confirms.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from wsnode.bus import Delivery
from wsnode.errors import BackendUnavailable
from wsnode.ids import PodId

SendBatch = Callable[[PodId, list[Delivery]], Awaitable[None]]

# Lengths and JSON framing of one delivery in encode_batch, beyond its fields.
_ITEM_OVERHEAD = 48


def estimate_size(delivery: Delivery) -> int:
    """Approximate encoded size of ``delivery`` inside a batch body (a cap guide)."""
    return (len(delivery.frame) + len(delivery.user) + len(delivery.type)
            + len(delivery.ack_id or "") + len(delivery.topic or "")
            + 16 * len(delivery.published_to) + _ITEM_OVERHEAD)


@dataclass(slots=True)
class _Buffer:
    future: asyncio.Future[None]
    deliveries: list[Delivery] = field(default_factory=list)
    size: int = 0


def _consume_exception(future: asyncio.Future[None]) -> None:
    # Every waiter may have been cancelled; the outcome is still "retrieved" so
    # asyncio does not log "exception was never retrieved" for it.
    if not future.cancelled():
        future.exception()


class PublishBatcher:
    """Collects deliveries per pod and sends each pod's buffer as one message."""

    def __init__(self, send: SendBatch, *, max_deliveries: int = 512,
                 max_bytes: int = 512 * 1024, deadline: float = 6.0,
                 max_in_flight: int = 2, max_unconfirmed: int | None = None) -> None:
        if max_deliveries < 1 or max_bytes < 1 or deadline <= 0 or max_in_flight < 1:
            raise ValueError("batch limits, deadline and max_in_flight must be positive")
        self.max_in_flight = max_in_flight
        self.max_unconfirmed = max_unconfirmed or (max_in_flight + 1) * max_deliveries
        """Deliveries to one pod, buffered or in flight, past which :meth:`room`
        waits (by default: every message in flight full, and a full buffer)."""
        self._unconfirmed: dict[PodId, int] = {}
        self._room: dict[PodId, asyncio.Future[None]] = {}
        self._in_flight: dict[PodId, int] = {}
        self._settling = False
        self._send = send
        self.deadline = deadline
        """Seconds after which a send still unsettled fails with BackendUnavailable
        (a guard: ``send`` is expected to time out by itself before that)."""
        self.max_deliveries = max_deliveries
        self.max_bytes = max_bytes
        self._buffers: dict[PodId, _Buffer] = {}
        self._tick: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.messages = 0
        """Broker messages handed to ``send`` so far."""
        self.deliveries = 0
        """Deliveries handed to ``send`` so far."""

    def add(self, pod: PodId, deliveries: Sequence[Delivery]) -> list[asyncio.Future[None]]:
        """Queue ``deliveries`` for ``pod``, in order; return the futures of the
        broker messages that will carry them (one per message, in order)."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        # Counted once per call: nothing below can settle before add returns.
        self._unconfirmed[pod] = self._unconfirmed.get(pod, 0) + len(deliveries)
        for delivery in deliveries:
            size = estimate_size(delivery)
            buf = self._buffers.get(pod)
            if buf is not None and buf.size + size > self.max_bytes:
                self._flush(pod)  # keep every message under the byte cap
                buf = None
            if buf is None:
                buf = self._buffers[pod] = _Buffer(loop.create_future())
                buf.future.add_done_callback(_consume_exception)
            buf.deliveries.append(delivery)
            buf.size += size
            if not futures or futures[-1] is not buf.future:
                futures.append(buf.future)
            if len(buf.deliveries) >= self.max_deliveries or buf.size >= self.max_bytes:
                self._flush(pod)
        if self._buffers and self._tick is None:
            self._tick = loop.call_soon(self._tick_flush)
        return futures

    def full(self, pod: PodId) -> bool:
        """Whether ``pod`` has ``max_unconfirmed`` deliveries buffered or in flight."""
        return self._unconfirmed.get(pod, 0) >= self.max_unconfirmed

    async def room(self, pod: PodId) -> None:
        """Return once ``pod`` has fewer than ``max_unconfirmed`` deliveries
        buffered or in flight (at once if it has). Bounded: in-flight messages
        settle within ``deadline``, and each one settled makes room."""
        while self.full(pod):
            waiter = self._room.get(pod)
            if waiter is None:
                waiter = self._room[pod] = asyncio.get_running_loop().create_future()
            # Not awaited directly: a cancelled waiter must not cancel the others'.
            await asyncio.wait((waiter,))

    def flush(self) -> None:
        """Send every buffer now (used on stop)."""
        if self._tick is not None:
            self._tick.cancel()
        self._flush_all()

    async def settle(self, grace: float) -> None:
        """Flush, wait up to ``grace`` seconds for in-flight messages, cancel
        the rest (their callers get BackendUnavailable)."""
        self._settling = True
        self.flush()
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        # What filled behind a cancelled message goes nowhere: say so to its callers.
        for pod, buf in self._buffers.items():
            self._settled(pod, len(buf.deliveries))
            if not buf.future.done():
                buf.future.set_exception(BackendUnavailable("publish cancelled: bus stopping"))
        self._buffers.clear()

    def _flush_all(self) -> None:
        self._tick = None
        for pod in list(self._buffers):
            self._flush(pod)

    def _tick_flush(self) -> None:
        """Each tick: send the buffers of pods with room in flight; the others keep
        filling until a confirm returns (group commit)."""
        self._tick = None
        for pod in list(self._buffers):
            if self._in_flight.get(pod, 0) < self.max_in_flight:
                self._flush(pod)

    def _flush(self, pod: PodId) -> None:
        buf = self._buffers.pop(pod, None)
        if buf is None or not buf.deliveries:
            return
        self.messages += 1
        self.deliveries += len(buf.deliveries)
        self._in_flight[pod] = self._in_flight.get(pod, 0) + 1
        task = asyncio.get_running_loop().create_task(self._run(pod, buf))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _settled(self, pod: PodId, count: int) -> None:
        """``count`` deliveries to ``pod`` are no longer unconfirmed: wake :meth:`room`."""
        left = self._unconfirmed.get(pod, count) - count
        if left > 0:
            self._unconfirmed[pod] = left
        else:
            self._unconfirmed.pop(pod, None)
        waiter = self._room.pop(pod, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _returned(self, pod: PodId, buf: _Buffer) -> None:
        """A message to ``pod`` is settled: what filled meanwhile goes out now."""
        self._settled(pod, len(buf.deliveries))
        left = self._in_flight.get(pod, 1) - 1
        if left:
            self._in_flight[pod] = left
        else:
            self._in_flight.pop(pod, None)
        if pod in self._buffers and not self._settling:
            self._flush(pod)

    async def _run(self, pod: PodId, buf: _Buffer) -> None:
        try:
            await self._send_one(pod, buf)
        finally:
            self._returned(pod, buf)

    async def _send_one(self, pod: PodId, buf: _Buffer) -> None:
        try:
            # One timer per broker message rather than one per waiting caller.
            async with asyncio.timeout(self.deadline):
                await self._send(pod, buf.deliveries)
        except TimeoutError:
            if not buf.future.done():
                buf.future.set_exception(BackendUnavailable(
                    f"publish to pod {pod!r} not settled in {self.deadline}s (outcome unknown)"))
        except asyncio.CancelledError:
            if not buf.future.done():
                buf.future.set_exception(BackendUnavailable("publish cancelled: bus stopping"))
            task = asyncio.current_task()
            # Re-raise only a cancellation aimed at this task (stop); a library
            # that cancels an inner future on channel close is an outcome.
            if task is not None and task.cancelling():
                raise
        except Exception as exc:
            if not buf.future.done():
                buf.future.set_exception(exc)
        else:
            with contextlib.suppress(asyncio.InvalidStateError):
                buf.future.set_result(None)
