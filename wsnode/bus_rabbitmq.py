"""RabbitMQ implementation of the :class:`~wsnode.bus.Bus` (DESIGN §8).

Topology (names from :class:`~wsnode.keys.AmqpNames`)::

    publish(pod) ─> [exchange: direct, durable] ──key=pod──> [pod_queue(pod)] ──> this pod
                                                      (classic, transient)
                                                                │ x-message-ttl passed
                                                                v (dead-letter)
                    [stranded_exchange: fanout] ──> [stranded_queue] ──> every live pod
                                                       (quorum)          (on_stranded)
    undecodable bodies ──> [poison_queue]  (quorum; parked for an operator, never requeued)

A pod queue is a classic queue with ``x-expires`` (it disappears some time
after its pod stops consuming) and ``x-message-ttl`` < ``x-expires`` (so a dead
pod's messages are dead-lettered to the stranded queue, and re-routed by a live
pod, before the broker deletes the queue). It is transient: it lives on the
node its pod declared it from and goes with that node, so that the pod can
declare it again on whichever node it reconnects to (RabbitMQ refuses to
re-declare a durable classic queue whose node is down). Meanwhile publishes to
the pod are unroutable, and the sender keeps ACK-required deliveries stored.
The stranded and poison queues are quorum queues, replicated over the cluster's
nodes: they outlive the loss of any one node. Queues declared by an older
wsnode (classic shared queues, durable pod queues) are used as they are, with
a warning (:func:`~wsnode.bus_rabbitmq_topology.ensure_queue`). Message
``type`` says what a body is: ``deliver`` (an ``encode_batch`` body),
``control`` (a JSON command) or ``canary``.

Brokers: ``url`` is one URL or several (a comma-separated string or a
sequence), the nodes of one RabbitMQ cluster. A session is opened on the
first that answers; a lost session is replaced on the next one (the lost node
is tried last), see :class:`~wsnode.bus_rabbitmq_session.Endpoint`.

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
  in the ACK store). While more messages wait, up to 16 handled ones share one
  ack; when none waits, what was handled is acked before waiting. A connection
  lost before the ack makes the broker redeliver, so a handler may see a batch
  twice (marked redelivered: at-most-once deliveries in it are not sent again).
* Messages are handled strictly in queue order, one at a time per queue.
* One session = one connection, a publishing channel and a consuming channel
  per queue consumed (the pod's, the stranded one: acks are per channel).
  Any loss (connection, channel, a consumer cancelled by the broker, a deaf
  pod) discards the whole session; a supervisor task reconnects forever with
  exponential backoff and full jitter, re-declares the topology and consumes
  again. Consumers belong to a session's connection, so after any number of
  reconnects there is exactly one consumer per queue. The supervisor never
  dies: any exception on its path is logged once per outage with its
  traceback, and it goes on (:mod:`wsnode.bus_rabbitmq_session`).
* ``problem`` is None exactly while ``ready``; otherwise a short reason for
  ``/readyz``: ``connecting``, ``session lost (...); reconnecting, attempt 3
  failed: ...``, ``deaf: no canary back for 12.0s``, ``stopped``.
* Deaf-pod check: a ``canary`` message to the pod's own queue every
  ``canary_interval``; ``ready`` is False while none has come back for two
  intervals (also when the pod is that far behind its own queue), and after
  four silent intervals with nothing else arriving either, the session is
  restarted (:mod:`wsnode.bus_rabbitmq_canary`).

Modules: this facade; ``_session`` (sessions, supervisor, error translation);
``_topology`` (declarations, publishing, consuming, poison parking);
``_canary`` (the deaf-pod check); ``_batch`` (per-pod publish batching).
"""


from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from wsnode.bus import ControlHandler, Delivery, DeliveryHandler, Unroutable, encode_batch
from wsnode.bus_rabbitmq_batch import PublishBatcher
from wsnode.bus_rabbitmq_canary import Canary
from wsnode.bus_rabbitmq_session import CLOSE_TIMEOUT, Endpoint, Session, Supervisor
from wsnode.bus_rabbitmq_topology import (
    CANARY,
    CONTROL,
    DELIVER,
    Consumer,
    Handlers,
    declare,
    publish,
)
from wsnode.bus_sign import Signer
from wsnode.errors import BackendUnavailable
from wsnode.ids import PodId
from wsnode.keys import AmqpNames

log = logging.getLogger("wsnode.bus")


class RabbitBus:
    """The bus over RabbitMQ (see the module contract)."""

    def __init__(
        self,
        url: str | Sequence[str],
        names: AmqpNames,
        *,
        queue_expires_ms: int = 60_000,
        message_ttl_ms: int = 30_000,
        prefetch: int = 256,
        canary_interval: float = 5.0,
        publish_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        max_batch_deliveries: int = 1024,
        max_batch_bytes: int = 512 * 1024,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        secret: bytes | None = None,
        on_batch: Callable[[], None] | None = None,
    ) -> None:
        if not 0 < message_ttl_ms < queue_expires_ms:
            # Otherwise the broker deletes a dead pod's queue, messages and all,
            # before they are dead-lettered for re-routing.
            raise ValueError("message_ttl_ms must be positive and below queue_expires_ms")
        if prefetch < 1 or canary_interval <= 0 or publish_timeout <= 0:
            raise ValueError("prefetch, canary_interval and publish_timeout must be positive")
        self._names = names
        self._endpoint = Endpoint(url, connect_timeout)
        self._queue_args: dict[str, Any] = {
            "x-expires": queue_expires_ms,
            "x-message-ttl": message_ttl_ms,
            "x-dead-letter-exchange": names.stranded_exchange,
        }
        self._prefetch = prefetch
        self._publish_timeout = publish_timeout
        self._signer = Signer(secret)  # wsnode.bus_sign: messages signed with the secret
        self._on_batch = on_batch  # told of each broker message of deliveries (metrics)
        self._batcher = PublishBatcher(self._send_batch, max_deliveries=max_batch_deliveries,
                                       max_bytes=max_batch_bytes, deadline=publish_timeout + 1.0)
        self._instance = uuid.uuid4().hex[:12]
        self._canary = Canary(canary_interval, self._instance, publish_timeout)
        self._sessions = Supervisor(self._open_session, lambda _s: self._canary.reset(),
                                    backoff=(backoff_initial, backoff_max),
                                    scrub=self._endpoint.scrub)
        self._pod: PodId | None = None
        self._consumer: Consumer | None = None
        self._lock = asyncio.Lock()
        self._opening = False
        self._open_error: str | None = None
        self._stopping = False
        self._stopped = asyncio.Event()

    # -- state ---------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Connected, consuming, and hearing its own canaries."""
        session = self._sessions.current
        if session is None or session.lost.is_set():
            return False
        if self._pod is None:
            return True  # publish-only use: nothing to hear
        return self._canary.hearing

    @property
    def problem(self) -> str | None:
        """None while :attr:`ready`; otherwise why not, in a few words (for
        ``/readyz``; never holds the URL's password)."""
        if self.ready:
            return None
        if self._stopping:
            return "stopped"
        session = self._sessions.current
        if session is None:
            if self._opening:
                return "connecting"
            return f"not connected: {self._open_error}" if self._open_error else "not connected"
        if session.lost.is_set():
            return self._sessions.problem or "session lost; reconnecting"
        return f"deaf: no canary back for {self._canary.silent_for:.1f}s"

    @property
    def connected_to(self) -> str | None:
        """The URL (password hidden) of the broker node of the live session, or None."""
        session = self._sessions.current
        return session.where if session is not None and not session.lost.is_set() else None

    @property
    def reconnects(self) -> int:
        """Sessions opened to replace a lost one."""
        return self._sessions.reconnects

    @property
    def parked(self) -> int:
        """Messages moved to the poison queue."""
        return self._consumer.parked if self._consumer is not None else 0

    @property
    def last_canary_rtt(self) -> float | None:
        """Seconds from publishing the last returned canary to consuming it."""
        return self._canary.last_rtt

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
            if self._sessions.running:
                # A publish-only connection made by an earlier publish(): replace
                # it with a consuming one.
                await self._end_supervision(graceful=True)
            self._pod = self._sessions.pod = pod
            self._consumer = Consumer(
                self._names, pod, Handlers(on_deliveries, on_control, on_stranded),
                self._canary, prefetch=self._prefetch, publish_timeout=self._publish_timeout,
                signer=self._signer)
            try:
                session = await self._open_session()
                self._sessions.begin(session)
            except BaseException:
                self._pod = self._sessions.pod = None
                self._consumer = None
                raise
            log.info("bus connected to %s, consuming %s", session.where,
                     self._names.pod_queue(pod), extra={"pod": pod})

    async def publish(self, pod: PodId, deliveries: Sequence[Delivery]) -> None:
        """Publish ``deliveries`` to ``pod``, batched with other publishes of
        this tick; returns once the broker confirmed the message(s) carrying
        them. Without a prior ``start`` the first call connects (publish-only,
        as ``wsctl`` uses it) and fails fast like ``start``."""
        futures = await self.hand_over(pod, deliveries)
        try:
            # Bounded: the batcher settles every future within its deadline.
            for future in futures:
                await asyncio.shield(future)
        except (Unroutable, BackendUnavailable) as exc:
            # The exception is shared by every caller of the batch: raise a copy
            # so that tracebacks do not pile up on one object.
            raise type(exc)(*exc.args) from exc

    async def hand_over(self, pod: PodId,
                        deliveries: Sequence[Delivery]) -> list[asyncio.Future[None]]:
        """Queue ``deliveries`` for ``pod`` in publish order and return the
        futures of the broker messages carrying them, without waiting for the
        broker (see ``Bus.hand_over``). Waits first while ``pod`` has the
        batcher's maximum of unconfirmed deliveries (backpressure)."""
        if not deliveries:
            return []
        await self._live_session()
        if self._batcher.full(pod):
            await self._batcher.room(pod)
            await self._live_session()  # it may have gone while this waited
        return self._batcher.add(pod, deliveries)

    async def control(self, pod: PodId, command: dict[str, Any]) -> None:
        """Send a control command to ``pod``'s queue (not batched). A command
        for a pod that died before reading it is dropped, never re-routed."""
        session = await self._live_session()
        body = orjson.dumps(command)
        await publish(session, pod, body, CONTROL, confirm_within=self._publish_timeout,
                      headers=self._signer.sign(CONTROL, body))

    async def stop(self) -> None:
        """Cancel consumers, settle in-flight publishes (bounded), close the
        channels and the connection. Idempotent; the pod queue is left to
        ``x-expires`` so that a restarted pod with the same id reuses it."""
        if self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._publish_timeout + 2 * CLOSE_TIMEOUT):
                    await self._stopped.wait()
            return
        self._stopping = True
        try:
            await self._end_supervision(graceful=True)
        finally:
            self._stopped.set()

    # -- sessions ------------------------------------------------------------

    async def _live_session(self) -> Session:
        if self._stopping:
            raise BackendUnavailable("the bus was stopped")
        session = self._sessions.current
        if session is not None and not session.lost.is_set():
            return session
        if not self._sessions.running:
            async with self._lock:
                if not self._sessions.running and not self._stopping:
                    self._sessions.begin(await self._open_session())
            session = self._sessions.current
            if session is not None and not session.lost.is_set():
                return session
        raise BackendUnavailable("RabbitMQ connection is down (reconnecting)")

    async def _open_session(self) -> Session:
        """Connect, declare, consume (if started); BackendUnavailable on failure."""
        self._opening = True
        try:
            session = await self._endpoint.open(
                f"wsnode {self._pod or 'client'} {self._instance}", self._setup)
        except BackendUnavailable as exc:
            self._open_error = str(exc)
            raise
        finally:
            self._opening = False
        self._open_error = None
        return session

    async def _setup(self, session: Session) -> None:
        await declare(session, self._names, self._pod, self._queue_args)
        consumer = self._consumer
        if consumer is not None:
            await consumer.consume(session)
            session.spawn(self._canary.run(session, consumer.pod, self._send_canary),
                          "deaf-pod check")

    async def _end_supervision(self, *, graceful: bool) -> None:
        session = await self._sessions.end()
        if session is not None:
            # Still the current session while closing: in-flight batches use it.
            await session.close(graceful=graceful, settle=self._settle)
        self._sessions.clear()

    async def _settle(self) -> None:
        await self._batcher.settle(self._publish_timeout)

    # -- publishing ----------------------------------------------------------

    async def _send_batch(self, pod: PodId, deliveries: list[Delivery]) -> None:
        session = self._sessions.current
        if session is None or session.lost.is_set():
            raise BackendUnavailable("RabbitMQ connection is down (reconnecting)")
        if self._on_batch is not None:
            self._on_batch()
        persistent = any(d.ack_id is not None for d in deliveries)
        body = encode_batch(deliveries)
        await publish(session, pod, body, DELIVER, confirm_within=self._publish_timeout,
                      persistent=persistent, headers=self._signer.sign(DELIVER, body))

    async def _send_canary(self, session: Session, body: bytes, within: float) -> None:
        assert self._pod is not None
        await publish(session, self._pod, body, CANARY, confirm_within=within,
                      headers=self._signer.sign(CANARY, body))
