"""RabbitMQ implementation of the :class:`~wsnode.bus.Bus` (DESIGN §8).

Topology (names from :class:`~wsnode.keys.AmqpNames`)::

    publish(pod) ─> [exchange: direct, durable] ──key=pod──> [pod_queue(pod)] ──> this pod
                                                                │ x-message-ttl passed
                                                                v (dead-letter)
                    [stranded_exchange: fanout] ──> [stranded_queue] ──> every live pod
                                                                        (on_stranded)
    undecodable bodies ──> [poison_queue]  (parked for an operator, never requeued)

A pod queue is durable with ``x-expires`` (it disappears some time after its
pod stops consuming) and ``x-message-ttl`` < ``x-expires`` (so a dead pod's
messages are dead-lettered to the stranded queue, and re-routed by a live pod,
before the broker deletes the queue). Message ``type`` says what a body is:
``deliver`` (an ``encode_batch`` body), ``control`` (a JSON command) or ``canary``.

Contracts beyond the Protocol's:

* Publishing uses publisher confirms and ``mandatory``: ``publish`` returns when
  the broker has the message, raises :class:`~wsnode.bus.Unroutable` when it
  was returned (no queue for that pod), and
  :class:`~wsnode.errors.BackendUnavailable` when the connection is down (at
  once) or no confirm came within ``publish_timeout`` (outcome unknown: a retry
  may duplicate). Deliveries are batched per pod, see
  :mod:`wsnode.bus_rabbitmq_batch`; bodies carrying an ACK-required delivery
  are persistent, the others transient.
* Every consumed message is acked after its handler ran, even when the handler
  raised: a failing handler is never retried (ACK-required deliveries are safe
  in the ACK store). A connection lost before the ack makes the broker
  redeliver, so a handler may see a batch twice.
* Messages are handled strictly in queue order, one at a time per queue.
* One session = one connection, a publishing channel and a consuming channel.
  Any loss (connection, channel, a consumer cancelled by the broker, a deaf
  pod) discards the whole session; a supervisor task reconnects forever with
  exponential backoff and full jitter, re-declares the topology and consumes
  again. Consumers belong to a session's connection, so after any number of
  reconnects there is exactly one consumer per queue.
* Deaf-pod check: a ``canary`` message to the pod's own queue every
  ``canary_interval``; ``ready`` is False while none has come back for two
  intervals (also when the pod is that far behind its own queue), and after
  four silent intervals with nothing else arriving either, the session is
  restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from aio_pika.exceptions import (
    AMQPError,
    ChannelPreconditionFailed,
    DeliveryError,
    ProbableAuthenticationError,
    PublishError,
)
from yarl import URL

from wsnode.bus import (
    ControlHandler,
    Delivery,
    DeliveryHandler,
    Unroutable,
    decode_batch,
    encode_batch,
)
from wsnode.bus_rabbitmq_batch import PublishBatcher
from wsnode.errors import BackendUnavailable
from wsnode.ids import PodId
from wsnode.keys import AmqpNames

log = logging.getLogger("wsnode.bus")

DELIVER, CONTROL, CANARY = "deliver", "control", "canary"
_CONTENT_TYPES = {"deliver": "application/x-wsnode-batch", "control": "application/json",
                  "canary": "text/plain"}
_CLOSE_TIMEOUT = 2.0


def redact_url(url: str) -> str:
    """``url`` with its password replaced, fit for messages and logs."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return "<unparseable AMQP URL>"
    return str(parsed.with_password("***")) if parsed.password else str(parsed)


def _password_of(url: str) -> str | None:
    try:
        return URL(url).password or None
    except (ValueError, TypeError):
        return None


class _LogLimiter:
    """At most one WARNING per kind per ``period``: a flood of bad messages or
    failing handlers must not become a flood of log lines."""

    def __init__(self, period: float = 60.0) -> None:
        self.period = period
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, kind: str, msg: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.period) < self.period:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            log.debug(msg, *args)
            return
        self._last[kind] = now
        skipped = self._suppressed.pop(kind, 0)
        suffix = f" ({skipped} similar suppressed)" if skipped else ""
        log.warning(msg + suffix, *args, exc_info=exc_info)


class _Session:
    """One AMQP connection and everything on it; discarded whole on any loss."""

    pub: AbstractChannel
    exchange: AbstractExchange

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection
        self.lost = asyncio.Event()
        self.reason = ""
        self.consumers: list[tuple[AbstractQueue, str]] = []
        self.tasks: list[asyncio.Task[None]] = []
        connection.close_callbacks.add(self.on_closed)

    def fail(self, reason: str) -> None:
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()

    def on_closed(self, _sender: Any, exc: BaseException | None = None) -> None:
        self.fail(f"closed ({exc!r})" if exc is not None else "closed")

    def on_consumer_cancelled(self, frame: Any) -> None:
        self.fail(f"consumer {getattr(frame, 'consumer_tag', '?')} cancelled by the broker")

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro))


class RabbitBus:
    """The bus over RabbitMQ (see the module contract)."""

    def __init__(
        self,
        url: str,
        names: AmqpNames,
        *,
        queue_expires_ms: int = 60_000,
        message_ttl_ms: int = 30_000,
        prefetch: int = 256,
        canary_interval: float = 5.0,
        publish_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        max_batch_deliveries: int = 512,
        max_batch_bytes: int = 512 * 1024,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        if not 0 < message_ttl_ms < queue_expires_ms:
            # Otherwise the broker deletes a dead pod's queue, messages and all,
            # before they are dead-lettered for re-routing.
            raise ValueError("message_ttl_ms must be positive and below queue_expires_ms")
        if prefetch < 1 or canary_interval <= 0 or publish_timeout <= 0:
            raise ValueError("prefetch, canary_interval and publish_timeout must be positive")
        self._url = url
        self._names = names
        self._safe_url = redact_url(url)
        self._password = _password_of(url)
        self._queue_args: dict[str, Any] = {
            "x-expires": queue_expires_ms,
            "x-message-ttl": message_ttl_ms,
            "x-dead-letter-exchange": names.stranded_exchange,
        }
        self._prefetch = prefetch
        self._canary_interval = canary_interval
        self._publish_timeout = publish_timeout
        self._connect_timeout = connect_timeout
        self._backoff = (backoff_initial, backoff_max)
        self._batcher = PublishBatcher(self._send_batch, max_deliveries=max_batch_deliveries,
                                       max_bytes=max_batch_bytes, deadline=publish_timeout + 1.0)
        self._pod: PodId | None = None
        self._on_deliveries: DeliveryHandler | None = None
        self._on_control: ControlHandler | None = None
        self._on_stranded: DeliveryHandler | None = None
        self._session: _Session | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._instance = uuid.uuid4().hex[:12]
        self._canaries: dict[str, float] = {}
        self._canary_seq = 0
        self._heard_at = 0.0  # last canary back (monotonic)
        self._pod_heard_at = 0.0  # last message of any type on the pod queue
        self._deaf = False
        self._log = _LogLimiter()
        self.last_canary_rtt: float | None = None
        """Seconds from publishing the last returned canary to consuming it."""
        self.reconnects = 0
        self.parked = 0
        """Messages moved to the poison queue."""

    # -- state ---------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Connected, consuming, and hearing its own canaries."""
        session = self._session
        if session is None or session.lost.is_set():
            return False
        if self._pod is None:
            return True  # publish-only use: nothing to hear
        return time.monotonic() - self._heard_at <= 2 * self._canary_interval

    @property
    def published_messages(self) -> int:
        """Broker messages (batches) of deliveries sent so far, failed ones included."""
        return self._batcher.messages

    @property
    def published_deliveries(self) -> int:
        return self._batcher.deliveries

    # -- Bus -----------------------------------------------------------------

    async def start(
        self,
        pod: PodId,
        on_deliveries: DeliveryHandler,
        on_control: ControlHandler,
        on_stranded: DeliveryHandler,
    ) -> None:
        """Declare the topology and this pod's queue, consume it and the
        stranded queue. Fails fast with BackendUnavailable; later losses are
        retried in the background."""
        async with self._lock:
            if self._stopping:
                raise BackendUnavailable("the bus was stopped")
            if self._pod is not None:
                raise RuntimeError("RabbitBus.start() called twice")
            if self._supervisor is not None:
                # A publish-only connection made by an earlier publish(): replace
                # it with a consuming one.
                await self._end_supervision(graceful=True)
            self._pod = pod
            self._on_deliveries, self._on_control = on_deliveries, on_control
            self._on_stranded = on_stranded
            try:
                self._supervise_from(await self._open_session())
            except BaseException:
                self._pod = None
                raise
            log.info("bus connected to %s, consuming %s", self._safe_url,
                     self._names.pod_queue(pod), extra={"pod": pod})

    async def publish(self, pod: PodId, deliveries: Sequence[Delivery]) -> None:
        """Publish ``deliveries`` to ``pod``, batched with other publishes of
        this tick; returns once the broker confirmed the message(s) carrying
        them. Without a prior ``start`` the first call connects (publish-only,
        as ``wsctl`` uses it) and fails fast like ``start``."""
        if not deliveries:
            return
        await self._live_session()
        futures = self._batcher.add(pod, deliveries)
        try:
            # Bounded: the batcher settles every future within its deadline.
            for future in futures:
                await asyncio.shield(future)
        except (Unroutable, BackendUnavailable) as exc:
            # The exception is shared by every caller of the batch: raise a copy
            # so that tracebacks do not pile up on one object.
            raise type(exc)(*exc.args) from exc

    async def control(self, pod: PodId, command: dict[str, Any]) -> None:
        """Send a control command to ``pod``'s queue (not batched). A command
        for a pod that died before reading it is dropped, never re-routed."""
        session = await self._live_session()
        await self._publish(session, pod, orjson.dumps(command), CONTROL)

    async def stop(self) -> None:
        """Cancel consumers, settle in-flight publishes (bounded), close the
        channels and the connection. Idempotent; the pod queue is left to
        ``x-expires`` so that a restarted pod with the same id reuses it."""
        if self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._publish_timeout + 2 * _CLOSE_TIMEOUT):
                    await self._stopped.wait()
            return
        self._stopping = True
        try:
            await self._end_supervision(graceful=True)
        finally:
            self._stopped.set()

    # -- sessions ------------------------------------------------------------

    async def _live_session(self) -> _Session:
        if self._stopping:
            raise BackendUnavailable("the bus was stopped")
        session = self._session
        if session is not None and not session.lost.is_set():
            return session
        if self._supervisor is None:
            async with self._lock:
                if self._supervisor is None and not self._stopping:
                    self._supervise_from(await self._open_session())
            session = self._session
            if session is not None and not session.lost.is_set():
                return session
        raise BackendUnavailable("RabbitMQ connection is down (reconnecting)")

    def _supervise_from(self, session: _Session) -> None:
        self._use(session)
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise(session))

    def _use(self, session: _Session) -> None:
        now = time.monotonic()
        self._heard_at = self._pod_heard_at = now  # a fresh session gets a grace period
        self._deaf = False
        self._session = session

    async def _supervise(self, session: _Session) -> None:
        """Reconnect forever (until stop) whenever the session is lost."""
        while True:
            await session.lost.wait()
            # The lost session stays current until replaced (it is not ready), so
            # that a stop() arriving meanwhile still closes it.
            log.warning("bus session lost: %s; reconnecting", session.reason,
                        extra={"pod": self._pod})
            await self._close_session(session, graceful=False)
            session = await self._reconnect()
            self._use(session)

    async def _reconnect(self) -> _Session:
        first, cap = self._backoff
        backoff, attempt, began = first, 0, time.monotonic()
        while True:
            # Full jitter: pods that lost the same broker do not return in step.
            await asyncio.sleep(random.uniform(0, backoff))
            attempt += 1
            try:
                session = await self._open_session()
            except BackendUnavailable as exc:
                self._log.warn("reconnect", "bus reconnect attempt %d failed: %s", attempt, exc)
                backoff = min(cap, backoff * 2)
                continue
            self.reconnects += 1
            log.info("bus reconnected after %d attempt(s), %.1fs", attempt,
                     time.monotonic() - began, extra={"pod": self._pod})
            return session

    async def _end_supervision(self, *, graceful: bool) -> None:
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.wait({supervisor}, timeout=_CLOSE_TIMEOUT * 2)
        session = self._session
        if session is not None:
            # Still the current session while closing: in-flight batches use it.
            await self._close_session(session, graceful=graceful)
        self._session = None

    async def _open_session(self) -> _Session:
        """Connect, declare, consume (if started); BackendUnavailable on failure."""
        connection: AbstractConnection | None = None
        session: _Session | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                connection = await aio_pika.connect(
                    self._url, client_properties={
                        "connection_name": f"wsnode {self._pod or 'client'} {self._instance}"})
                session = _Session(connection)
                await self._declare(session)
                if self._pod is not None:
                    await self._consume(session, self._pod)
                return session
        except BaseException as exc:
            for task in session.tasks if session is not None else ():
                task.cancel()
            if connection is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(_CLOSE_TIMEOUT):
                        await connection.close()
            if isinstance(exc, Exception):
                raise self._unavailable(exc) from exc
            raise

    def _unavailable(self, exc: Exception) -> BackendUnavailable:
        detail = str(exc)
        if self._password:  # no library message we know has it; be sure anyway
            detail = detail.replace(self._password, "***")
        if isinstance(exc, ChannelPreconditionFailed):
            text = (f"RabbitMQ refused a declaration ({detail}); a queue or exchange exists "
                    "with other arguments: delete it or let it expire")
        elif isinstance(exc, ProbableAuthenticationError):
            text = f"RabbitMQ at {self._safe_url} refused the login"
        elif isinstance(exc, TimeoutError):
            text = f"RabbitMQ at {self._safe_url} did not answer in {self._connect_timeout}s"
        else:
            text = f"RabbitMQ at {self._safe_url} unreachable: {detail}"
        return BackendUnavailable(text)

    async def _declare(self, session: _Session) -> None:
        names = self._names
        pub = session.connection.channel(publisher_confirms=True, on_return_raises=True)
        await pub.initialize()
        pub.close_callbacks.add(session.on_closed)
        session.pub = pub
        session.exchange = await pub.declare_exchange(
            names.exchange, aio_pika.ExchangeType.DIRECT, durable=True)
        stranded_x = await pub.declare_exchange(
            names.stranded_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
        stranded_q = await pub.declare_queue(names.stranded_queue, durable=True)
        await stranded_q.bind(stranded_x)
        await pub.declare_queue(names.poison_queue, durable=True)
        if self._pod is not None:
            queue = await pub.declare_queue(names.pod_queue(self._pod), durable=True,
                                            arguments=self._queue_args)
            await queue.bind(session.exchange, routing_key=self._pod)

    async def _consume(self, session: _Session, pod: PodId) -> None:
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
        for name, stranded in ((self._names.pod_queue(pod), False),
                               (self._names.stranded_queue, True)):
            inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
            session.spawn(self._work(session, inbox, stranded))

            # aio-pika runs each callback in its own task, created in delivery
            # order; the callback only enqueues, so one worker per queue
            # handles messages strictly in order.
            async def enqueue(message: AbstractIncomingMessage,
                              inbox: asyncio.Queue[AbstractIncomingMessage] = inbox) -> None:
                inbox.put_nowait(message)

            queue = await sub.get_queue(name, ensure=False)
            role = "stranded" if stranded else "pod"
            tag = await queue.consume(enqueue, consumer_tag=f"wsnode.{pod}.{role}")
            session.consumers.append((queue, tag))
        session.spawn(self._canary_loop(session, pod))

    async def _close_session(self, session: _Session, *, graceful: bool) -> None:
        if graceful:
            # Cancel consumers first: nothing new arrives while we settle publishes.
            for queue, tag in session.consumers:
                with contextlib.suppress(Exception):
                    await queue.cancel(tag, timeout=_CLOSE_TIMEOUT)
        for task in session.tasks:
            task.cancel()
        if graceful:
            await self._batcher.settle(self._publish_timeout)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await session.connection.close()
        if session.tasks:
            await asyncio.wait(session.tasks, timeout=_CLOSE_TIMEOUT)

    # -- publishing ----------------------------------------------------------

    async def _send_batch(self, pod: PodId, deliveries: list[Delivery]) -> None:
        session = self._session
        if session is None or session.lost.is_set():
            raise BackendUnavailable("RabbitMQ connection is down (reconnecting)")
        persistent = any(d.ack_id is not None for d in deliveries)
        await self._publish(session, pod, encode_batch(deliveries), DELIVER, persistent)

    async def _publish(self, session: _Session, pod: PodId, body: bytes, kind: str,
                       persistent: bool = False, confirm_within: float | None = None) -> None:
        mode = aio_pika.DeliveryMode.PERSISTENT if persistent else \
            aio_pika.DeliveryMode.NOT_PERSISTENT
        message = aio_pika.Message(body, type=kind, content_type=_CONTENT_TYPES[kind],
                                   delivery_mode=mode)
        timeout = confirm_within or self._publish_timeout
        try:
            await session.exchange.publish(message, routing_key=pod, mandatory=True,
                                           timeout=timeout)
        except PublishError as exc:
            raise Unroutable(f"pod {pod!r} has no queue") from exc
        except DeliveryError as exc:
            raise BackendUnavailable(f"RabbitMQ refused a message for pod {pod!r}") from exc
        except TimeoutError as exc:
            raise BackendUnavailable(
                f"publish to pod {pod!r} not confirmed in {timeout}s (outcome unknown)") from exc
        except (AMQPError, OSError, RuntimeError) as exc:
            # RuntimeError: aio-pika's ChannelInvalidStateError (channel closed).
            raise BackendUnavailable(f"publish to pod {pod!r} failed: {exc!r}") from exc

    # -- consuming -----------------------------------------------------------

    async def _work(self, session: _Session, inbox: asyncio.Queue[AbstractIncomingMessage],
                    stranded: bool) -> None:
        while True:
            message = await inbox.get()
            if not stranded:
                self._pod_heard_at = time.monotonic()
            try:
                await self._handle(session, message, stranded)
            except Exception:
                self._log.warn(f"handler:{message.type}", "bus %s handler failed",
                               message.type, exc_info=True)
            try:
                await message.ack()
            except Exception as exc:
                # The channel is gone; the broker requeues the message.
                log.debug("ack failed: %r", exc)

    async def _handle(self, session: _Session, message: AbstractIncomingMessage,
                      stranded: bool) -> None:
        kind = message.type
        if kind == CANARY:
            if not stranded:
                self._canary_back(message.body)
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
            assert self._on_control is not None
            await self._on_control(command)
            return
        if kind != DELIVER:
            await self._park(session, message, "unknown", f"unknown message type {kind!r}")
            return
        try:
            batch = decode_batch(message.body)
            if not all(d.user for d in batch):
                raise ValueError("a delivery has an empty user id")
        except ValueError as exc:
            await self._park(session, message, DELIVER, str(exc))
            return
        handler = self._on_stranded if stranded else self._on_deliveries
        assert handler is not None
        await handler(batch)

    async def _park(self, session: _Session, message: AbstractIncomingMessage, kind: str,
                    reason: str) -> None:
        """Move an undecodable message to the poison queue (the caller acks it).
        ``kind`` is one of a few fixed strings: it keys the log rate limit."""
        poison = self._names.poison_queue
        self._log.warn(f"poison:{kind}", "parking an undecodable %r bus message in %s: %s",
                       message.type, poison, reason)
        parked = aio_pika.Message(
            message.body, type=message.type, content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={"x-wsnode-reason": reason[:200],
                     "x-wsnode-queue": message.routing_key or ""})
        try:
            await session.pub.default_exchange.publish(
                parked, routing_key=poison, mandatory=False, timeout=self._publish_timeout)
            self.parked += 1
        except Exception as exc:
            # Acked anyway: a message that cannot be parked must not loop.
            self._log.warn("poison-publish", "could not park a bad message (dropped): %r", exc)

    # -- deaf-pod check ------------------------------------------------------

    async def _canary_loop(self, session: _Session, pod: PodId) -> None:
        interval = self._canary_interval
        loop = asyncio.get_running_loop()
        while True:
            tick = loop.time()
            now = time.monotonic()
            silent = now - self._heard_at
            if silent > 2 * interval and not self._deaf:
                self._deaf = True
                log.warning("bus is deaf: no canary back for %.1fs", silent, extra={"pod": pod})
            if silent > 4 * interval and now - self._pod_heard_at > 4 * interval:
                # Nothing at all arrives (a slow pod still receives its backlog):
                # the consumer is gone without us being told. Start over.
                session.fail(f"deaf for {silent:.1f}s")
                return
            self._canary_seq += 1
            token = f"{self._instance}.{self._canary_seq}"
            self._canaries[token] = now
            while len(self._canaries) > 16:
                del self._canaries[next(iter(self._canaries))]
            try:
                await self._publish(session, pod, token.encode(), CANARY,
                                    confirm_within=min(self._publish_timeout, max(interval, 1.0)))
            except Unroutable:
                session.fail("this pod's own queue is gone")
                return
            except BackendUnavailable as exc:
                log.debug("canary publish failed: %s", exc)
            await asyncio.sleep(max(0.0, tick + interval - loop.time()))

    def _canary_back(self, body: bytes) -> None:
        sent = self._canaries.pop(body.decode(errors="replace"), None)
        if sent is None:
            return  # an earlier process with this pod id, or pruned
        now = time.monotonic()
        self.last_canary_rtt = now - sent
        self._heard_at = now
        if self._deaf:
            self._deaf = False
            log.info("bus hears its own queue again", extra={"pod": self._pod})

    # -- test hooks ----------------------------------------------------------

    async def _drop_consumer_silently(self) -> None:
        """Tests only: cancel the pod-queue consumer without the bus knowing,
        as a library or broker bug would (the deaf-pod check must catch it)."""
        session = self._session
        assert session is not None
        queue, tag = session.consumers[0]
        await queue.cancel(tag)
