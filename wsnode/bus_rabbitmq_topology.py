"""What :class:`~wsnode.bus_rabbitmq.RabbitBus` puts on a session: declarations,
publishing, and consuming (with poison parking).

The topology itself is drawn in :mod:`wsnode.bus_rabbitmq`. Message ``type``
says what a body is: ``deliver`` (an ``encode_batch`` body), ``control`` (a
JSON command) or ``canary``.

Consuming contract: every consumed message is acked after its handler ran,
even when the handler raised (a failing handler is never retried: ACK-required
deliveries are safe in the ACK store), up to ``ACK_EVERY`` of them in one ack
while more wait, and at once when none waits; messages are handled strictly in
queue order, one at a time per queue (each queue on a channel of its own); a
body that cannot be decoded is parked in the poison queue, once, and never
requeued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import aio_pika
import aiormq
import orjson
from aio_pika.exceptions import (
    AMQPError,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
)
from aiormq.abc import DeliveredMessage

from wsnode.bus import ControlHandler, DeliveryHandler, Unroutable, decode_batch
from wsnode.bus_rabbitmq_canary import Canary
from wsnode.bus_rabbitmq_session import CLOSE_TIMEOUT, Session
from wsnode.bus_sign import Signer
from wsnode.errors import BackendUnavailable
from wsnode.ids import PodId
from wsnode.keys import AmqpNames
from wsnode.outage import LogThrottle

log = logging.getLogger("wsnode.bus")

DELIVER, CONTROL, CANARY = "deliver", "control", "canary"
ACK_EVERY = 16
"""Consumed messages acked with one ``basic_ack`` at most, when more are waiting:
an ack is a frame and a socket write for the pod and work for the broker."""

_CONTENT_TYPES = {DELIVER: "application/x-wsnode-batch", CONTROL: "application/json",
                  CANARY: "text/plain"}


QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}
"""Arguments of the shared queues: replicated, so they outlive any one node."""


async def declare(session: Session, names: AmqpNames, pod: PodId | None,
                  queue_args: dict[str, Any]) -> None:
    """Open the publishing channel (confirms, returns raise) and declare the
    exchanges, the stranded and poison queues (quorum queues), and ``pod``'s
    queue when given (classic and transient: see :mod:`wsnode.bus_rabbitmq`).
    Queues of an older wsnode are used as they are (see :func:`ensure_queue`)."""
    pub = session.connection.channel(publisher_confirms=True, on_return_raises=True)
    await pub.initialize()
    pub.close_callbacks.add(session.on_closed)
    session.pub = pub
    session.raw_pub = await pub.get_underlay_channel()
    session.exchange = await pub.declare_exchange(
        names.exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    stranded_x = await pub.declare_exchange(
        names.stranded_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
    await ensure_queue(session, names.stranded_queue, durable=True, arguments=QUORUM,
                       older=(True, {}), cost="it does not survive the loss of its node "
                       "(messages stranded on it wait for that node)")
    stranded_q = await pub.get_queue(names.stranded_queue, ensure=False)
    await stranded_q.bind(stranded_x)
    await ensure_queue(session, names.poison_queue, durable=True, arguments=QUORUM,
                       older=(True, {}), cost="it does not survive the loss of its node")
    if pod is not None:
        name = names.pod_queue(pod)
        await ensure_queue(session, name, durable=False, arguments=queue_args,
                           older=(True, queue_args), cost="it cannot be declared on another "
                           "node while its own is down (this pod stays disconnected until "
                           "that node is back); it expires a minute after the pod stops")
        queue = await pub.get_queue(name, ensure=False)
        await queue.bind(session.exchange, routing_key=pod)


_OLDER_DIFFERENCES = ("inequivalent arg 'durable'", "inequivalent arg 'x-queue-type'")


async def ensure_queue(session: Session, name: str, *, durable: bool,
                       arguments: dict[str, Any], older: tuple[bool, dict[str, Any]],
                       cost: str) -> None:
    """Declare queue ``name`` as this version wants it. If the broker refuses
    because the queue exists as an older wsnode declared it (``older``:
    durable, arguments; a classic queue where a quorum one is wanted, or a
    durable one where a transient one is), use it as it is and warn with
    ``cost``, what it means: RabbitMQ cannot change a queue's type or
    durability, and refusing would stop every pod of a rolling upgrade. Any
    other difference raises ChannelPreconditionFailed. Attempts use channels
    of their own (a refusal closes its channel)."""
    try:
        await _declare_on_own_channel(session, name, durable, arguments)
        return
    except ChannelPreconditionFailed as exc:
        if not any(text in str(exc) for text in _OLDER_DIFFERENCES):
            raise
    # Raises when the queue differs from the older form too (another setting).
    await _declare_on_own_channel(session, name, *older)
    log.warning("queue %s was declared by an older wsnode (classic or durable); it is used "
                "as it is, but %s. To replace it, delete it when it is empty: see README, "
                "RabbitMQ cluster", name, cost)


async def _declare_on_own_channel(session: Session, name: str, durable: bool,
                                  arguments: dict[str, Any]) -> None:
    channel = session.connection.channel(publisher_confirms=False)
    await channel.initialize()
    try:
        await channel.declare_queue(name, durable=durable, arguments=arguments)
    finally:
        with contextlib.suppress(Exception):  # already closed by a refusal
            await channel.close()


async def publish(session: Session, pod: PodId, body: bytes, kind: str, *,
                  confirm_within: float, persistent: bool = False,
                  headers: dict[str, str] | None = None) -> None:
    """Publish one message of ``kind`` to ``pod`` (mandatory, confirmed within
    ``confirm_within`` seconds). Unroutable when returned; BackendUnavailable
    otherwise (after a timeout the outcome is unknown: a retry may duplicate)."""
    properties = aiormq.spec.Basic.Properties(
        content_type=_CONTENT_TYPES[kind], message_type=kind,
        delivery_mode=2 if persistent else 1, headers=cast(Any, headers) or None)
    try:
        # On aio-pika's own aiormq channel, through aiormq's public API: aio-pika's
        # Message and Exchange.publish cost ~11 µs per broker message more (its
        # Message object alone 9.5 µs) and add nothing used here.
        await session.raw_pub.basic_publish(
            body, exchange=session.exchange.name, routing_key=pod, properties=properties,
            mandatory=True, timeout=confirm_within)
    except PublishError as exc:
        raise Unroutable(f"pod {pod!r} has no queue") from exc
    except DeliveryError as exc:
        raise BackendUnavailable(f"RabbitMQ refused a message for pod {pod!r}") from exc
    except TimeoutError as exc:
        raise BackendUnavailable(
            f"publish to pod {pod!r} not confirmed in {confirm_within}s (outcome unknown)") from exc
    except (AMQPError, OSError, RuntimeError) as exc:
        # RuntimeError: aio-pika's ChannelInvalidStateError (channel closed).
        raise BackendUnavailable(f"publish to pod {pod!r} failed: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class Handlers:
    """What a started bus calls (see :meth:`wsnode.bus.Bus.start`)."""

    on_deliveries: DeliveryHandler
    on_control: ControlHandler
    on_stranded: DeliveryHandler


class Consumer:
    """Consumes a pod's queue and the stranded queue on a session."""

    def __init__(self, names: AmqpNames, pod: PodId, handlers: Handlers, canary: Canary, *,
                 prefetch: int, publish_timeout: float, signer: Signer | None = None) -> None:
        self._names = names
        self._signer = signer or Signer(None)
        self.pod = pod
        self._handlers = handlers
        self._canary = canary
        self._prefetch = prefetch
        self._publish_timeout = publish_timeout
        self._log = LogThrottle(log)
        self.parked = 0
        """Messages moved to the poison queue."""

    async def consume(self, session: Session) -> None:
        """Open a consuming channel per queue and start one worker per queue."""
        pod = self.pod
        for name, stranded in ((self._names.pod_queue(pod), False),
                               (self._names.stranded_queue, True)):
            # A channel each: delivery tags, and so acks of several messages at
            # once, are per channel (see _work).
            sub = session.connection.channel(publisher_confirms=False)
            await sub.initialize()
            sub.close_callbacks.add(session.on_closed)
            await sub.set_qos(prefetch_count=self._prefetch)
            raw = await sub.get_underlay_channel()
            # A queue deleted under us cancels our consumer; start over (which
            # re-declares the queue) rather than sit deaf until the canary notices.
            cancel_callbacks = getattr(raw, "on_consumer_cancel_callbacks", None)
            if cancel_callbacks is not None:
                cancel_callbacks.add(session.on_consumer_cancelled)
            inbox: asyncio.Queue[DeliveredMessage] = asyncio.Queue()
            role = "stranded" if stranded else "pod"
            session.spawn(self._work(session, raw, inbox, stranded), f"{role} queue worker")

            # Consumed on aio-pika's aiormq channel through aiormq's public API:
            # aio-pika's consumer wraps each message in an IncomingMessage and a
            # task of its own (~40 µs per broker message) for nothing used here.
            # aiormq runs each callback in its own task, created in delivery
            # order; the callback only enqueues, so one worker per queue
            # handles messages strictly in order.
            async def enqueue(message: DeliveredMessage,
                              inbox: asyncio.Queue[DeliveredMessage] = inbox) -> None:
                inbox.put_nowait(message)

            ok = await raw.basic_consume(name, enqueue, consumer_tag=f"wsnode.{pod}.{role}")
            session.consumers.append(partial(raw.basic_cancel, ok.consumer_tag,
                                             timeout=CLOSE_TIMEOUT))

    async def _work(self, session: Session, raw: Any, inbox: asyncio.Queue[DeliveredMessage],
                    stranded: bool) -> None:
        """Handle the queue's messages in order, each acked after its handler ran:
        while more wait in the inbox, up to ``ACK_EVERY`` handled ones are acked
        at once (``multiple``: every tag up to the last, this channel's only
        consumer's); an empty inbox acks what was handled before waiting."""
        handled, last = 0, 0
        while True:
            if handled and (handled >= ACK_EVERY or inbox.empty()):
                try:
                    await raw.basic_ack(last, multiple=handled > 1)
                except Exception as exc:
                    # The channel is gone; the broker requeues what it had not
                    # seen acked (redelivered: handlers are told, see _handle).
                    log.debug("ack failed: %r", exc)
                handled = 0
            message = await inbox.get()
            if not stranded:
                self._canary.heard_pod()
            try:
                await self._handle(session, message, stranded)
            except Exception:
                self._log.warn(f"handler:{_type(message)}", "bus %s handler failed",
                               _type(message), exc_info=True)
            handled, last = handled + 1, _delivery(message).delivery_tag or 0

    async def _handle(self, session: Session, message: DeliveredMessage,
                      stranded: bool) -> None:
        kind, properties = _type(message), message.header.properties
        if not self._signer.valid(kind, message.body, properties.headers or {}):
            await self._park(session, message, "unsigned",
                             "not signed with this cluster's secret (WSNODE_CLUSTER_SECRET)")
            return
        if kind == CANARY:
            if not stranded:
                self._canary.back(message.body, self.pod)
            return  # a stranded canary is from a pod that went deaf or died
        if kind == CONTROL:
            if stranded:
                log.info("dropping a control command for a pod that is gone")
                return
            try:
                command = orjson.loads(message.body)
                if not isinstance(command, dict):
                    raise ValueError("control body is not a JSON object")
            except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
                await self._park(session, message, CONTROL, str(exc))
                return
            await self._handlers.on_control(command)
            return
        if kind != DELIVER:
            await self._park(session, message, "unknown", f"unknown message type {kind!r}")
            return
        try:
            batch = decode_batch(message.body)
            if not all(d.user or d.topic is not None for d in batch):
                raise ValueError("a delivery has an empty user id")
        except ValueError as exc:
            await self._park(session, message, DELIVER, str(exc))
            return
        handlers = self._handlers
        if stranded:
            # Dead-lettered messages keep their routing key: the pod whose queue
            # they expired in, which never got them.
            routing_key = _delivery(message).routing_key
            origin = PodId(routing_key) if routing_key else None
            for delivery in batch:
                delivery.stranded_from = origin
            await handlers.on_stranded(batch)
        else:
            if _delivery(message).redelivered:
                # The connection was lost before our ack: this batch may have been
                # handled already. Say so (at-most-once ones must not go twice).
                for delivery in batch:
                    delivery.redelivered = True
            await handlers.on_deliveries(batch)

    async def _park(self, session: Session, message: DeliveredMessage, kind: str,
                    reason: str) -> None:
        """Move an undecodable message to the poison queue (the caller acks it).
        ``kind`` is one of a few fixed strings: it keys the log rate limit."""
        poison = self._names.poison_queue
        self._log.warn(f"poison:{kind}", "parking an undecodable %r bus message in %s: %s",
                       _type(message), poison, reason)
        parked = aio_pika.Message(
            message.body, type=_type(message),
            content_type=message.header.properties.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={"x-wsnode-reason": reason[:200],
                     "x-wsnode-queue": _delivery(message).routing_key or ""})
        try:
            await session.pub.default_exchange.publish(
                parked, routing_key=poison, mandatory=False, timeout=self._publish_timeout)
            self.parked += 1
        except Exception as exc:
            # Acked anyway: a message that cannot be parked must not loop.
            self._log.warn("poison-publish", "could not park a bad message (dropped): %r", exc)


def _type(message: DeliveredMessage) -> str | None:
    """A consumed message's ``type`` property (what its body is)."""
    return message.header.properties.message_type


def _delivery(message: DeliveredMessage) -> aiormq.spec.Basic.Deliver:
    """How a consumed message came (a consumer's messages come by Basic.Deliver)."""
    return cast(aiormq.spec.Basic.Deliver, message.delivery)
