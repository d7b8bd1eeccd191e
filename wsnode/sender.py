"""Sending to a user, wherever they are connected.

:class:`Sender` needs only presence, the bus and the ACK store, so it works
without a running pod (``wsctl send`` uses it). Inside a pod it also has a
``local`` deliverer: this pod's own connections are served directly, never
through the broker.

Contract of :meth:`Sender.send_to_user`:

* ACK-required: stored first (idempotent on ``id``). A repeat of an id that
  is still pending is routed again (a producer retrying after a crash must not
  leave the message unrouted) and reported ``duplicate``; a repeat of an id
  that was acked or dead-lettered is neither stored nor delivered. Whatever
  happens to routing afterwards, the store keeps the message and resends it
  until it is acked or dead-lettered.
* Then delivered to local connections and published once per remote pod that
  holds the user (never to every pod).
* Never raises for routing trouble: what could not be routed is counted in
  ``wsnode_messages_dropped_total{reason}`` and visible in the report.
  An ACK-required delivery that reached no connection because a publish
  failed is due again soon in the store, without spending an attempt.

Confirms: a send returns once the broker confirmed its publishes, except a
client's at-most-once message (relayed from the frame being handled, not
traced). That one returns once the bus holds it, in order with the client's
other messages, so a client's next frame is not held behind a broker round
trip; the report names the pods it was handed to, and a publish that fails
afterwards is still counted in ``wsnode_messages_dropped_total{reason}``.
The bus holds a pod back while too many of its deliveries are unconfirmed.

Messages *relayed* from a client: a send made while an app handler handles a
client's frame (or given ``on_behalf_of=``) is sent on that client's behalf.
Its id is scoped to the client (:func:`relayed_id`: ``~<sender digest>.<id>``),
so a client can neither suppress nor impersonate a message of the server or of
another client by choosing its id, and an ACK-required one counts against the
relayed limits of the store (``AckPolicy``), raising QuotaExceeded past them.
Ids starting with ``~`` are refused from the server's own sends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, Protocol

from wsnode import failpoints
from wsnode.acks import AckBackend, DeadLetter, MsgState, StoredMessage
from wsnode.bus import Bus, Delivery, Unroutable
from wsnode.clock import Clock, SystemClock
from wsnode.errors import BackendUnavailable, NotFound, SendError
from wsnode.ids import MsgId, PodId, UserId
from wsnode.metrics import Metrics
from wsnode.outage import LogThrottle
from wsnode.presence import PresenceReader
from wsnode.protocol import MAX_ID_LENGTH, RESERVED_TYPES, Envelope, valid_type
from wsnode.trace import NoTracer, TracePolicy, Tracer
from wsnode.unconfirmed import Unconfirmed

log = logging.getLogger("wsnode.sender")

RELAYED_FROM: ContextVar[UserId | None] = ContextVar("wsnode_relayed_from", default=None)
"""The client whose frame the running app handler handles (set by ``wsnode.frames``)."""


class FromContext:
    """The default of ``on_behalf_of``: whoever :data:`RELAYED_FROM` names."""


FROM_CONTEXT: Final = FromContext()
RELAYED_PREFIX = "~"


def relayed_id(sender: UserId, msg_id: str) -> str:
    """The id a message relayed from ``sender`` carries: the client's id behind a
    digest of the sender (13 characters), at most 143 characters in all."""
    return f"{_sender_tag(sender)}.{msg_id}"


@lru_cache(maxsize=16384)
def _sender_tag(sender: UserId) -> str:
    # Cached: a client sends many messages (2.7 µs a message uncached).
    digest = hashlib.sha256(sender.encode()).digest()[:8]
    return f"{RELAYED_PREFIX}{base64.b32encode(digest).decode().rstrip('=').lower()}"


@dataclass(slots=True)
class SendReport:
    """What ``send_to_user`` did (the body of ``POST /v1/send``). ``evicted``
    names the user's oldest pending messages this store dead-lettered
    (reason ``overflow``) because the user was at the pending cap."""

    user: UserId
    local: int = 0
    pods: list[PodId] = field(default_factory=list)
    stored: bool = False
    seq: int | None = None
    duplicate: bool = False
    failed_pods: list[PodId] = field(default_factory=list)
    evicted: list[MsgId] = field(default_factory=list)

    @property
    def reached_nobody(self) -> bool:
        return not (self.local or self.pods)

    def to_json(self) -> dict[str, object]:
        return {"user": self.user, "local": self.local, "pods": self.pods,
                "stored": self.stored, "seq": self.seq, "duplicate": self.duplicate,
                "failedPods": self.failed_pods, "evicted": self.evicted}


class LocalDeliverer(Protocol):
    """A pod's own connections (implemented by the node)."""

    def deliver_local(self, delivery: Delivery) -> int: ...


def check_outgoing(env: Envelope, clock: Clock, relayed: bool = False) -> None:
    """Refuse what no client should receive: a bad or reserved type, an ACK
    without an id, a message already expired, a server id in the relayed
    namespace. Raises SendError."""
    if not relayed and env.id is not None and env.id.startswith(RELAYED_PREFIX):
        raise SendError(f"ids starting with {RELAYED_PREFIX!r} are those of messages relayed "
                        "from clients: choose another id")
    if not valid_type(env.type):
        raise SendError(f"type {env.type!r} is not 1-64 characters of [A-Za-z0-9_.:-]")
    if env.type in RESERVED_TYPES:
        raise SendError(f"type {env.type!r} is reserved by the protocol")
    if env.id is not None and not 0 < len(env.id) <= MAX_ID_LENGTH:
        raise SendError(f"id must be 1-{MAX_ID_LENGTH} characters")
    if env.requires_ack and env.id is None:
        raise SendError("an ACK-required message needs an id")
    if env.expires_at is not None and env.expires_at <= clock.now_ms():
        raise SendError("expiresAt has already passed")


def outgoing(env: Envelope, clock: Clock, on_behalf_of: UserId | FromContext | None,
             ) -> tuple[Envelope, UserId | None]:
    """``env`` as it goes out, and the client it is relayed from (None: the
    server's own): checked (:func:`check_outgoing`), its id scoped to that client."""
    relayed = RELAYED_FROM.get() if isinstance(on_behalf_of, FromContext) else on_behalf_of
    check_outgoing(env, clock, relayed is not None)
    if relayed is not None and env.id is not None:
        env = env.copy(id=relayed_id(relayed, env.id), requires_ack=env.requires_ack,
                       seq=env.seq)
    return env, relayed


class Sender:
    """Stores and routes messages to users (see the module contract)."""

    def __init__(
        self,
        *,
        presence: PresenceReader,
        bus: Bus,
        acks: AckBackend,
        metrics: Metrics,
        pod: PodId | None = None,
        local: LocalDeliverer | None = None,
        clock: Clock | None = None,
        shared_bus: bool = True,
        tracer: Tracer | None = None,
        trace_policy: TracePolicy | None = None,
        stale: Callable[[list[UserId]], None] | None = None,
    ) -> None:
        self.presence = presence
        self.bus = bus
        self.acks = acks
        self.metrics = metrics
        self.pod = pod
        self.local = local
        self.clock = clock or SystemClock()
        # False when no other pod can be reached: sends skip the presence lookup,
        # which could only name this pod.
        self.shared_bus = shared_bus
        self.tracer: Tracer = tracer or NoTracer()
        self.trace_policy = trace_policy or TracePolicy(ack=False)
        # Told of users whose cached presence proved wrong (a pod it named is gone).
        self.stale = stale
        self._throttle = LogThrottle(log)
        self.unconfirmed = Unconfirmed(self.metrics.published.inc, self._failed)

    async def send_to_user(self, user: UserId, env: Envelope, *, trace: bool = False,
                           on_behalf_of: UserId | FromContext | None = FROM_CONTEXT,
                           ) -> SendReport:
        """Store (ACK-required) and route ``env`` to ``user``. ``trace`` asks for a
        trail of an at-most-once message too (it needs an id). ``on_behalf_of``:
        the client this message is relayed from (see the module), by default the
        one whose frame is being handled; None sends as the server."""
        started = time.perf_counter()
        env, relayed = outgoing(env, self.clock, on_behalf_of)
        report = SendReport(user)
        trace_id = MsgId(env.id) if env.id is not None and self.trace_policy.wants(
            env.requires_ack, True, trace) else None
        if env.requires_ack:
            result = await self.acks.store(user, env, relayed_from=relayed)
            report.stored, report.seq, report.duplicate = True, result.seq, result.duplicate
            if trace_id:
                self.tracer.record(trace_id, user, "duplicate" if result.duplicate else "stored",
                                   self.pod, seq=result.seq)
            for dead in result.evicted:
                report.evicted.append(dead.message.id)
                self.dead_lettered(dead)
            if result.state is not MsgState.PENDING or result.message is None:
                return report  # a repeat of an id that is settled or dead: done with
            if not result.duplicate:
                self.metrics.acks_stored.inc()
            if failpoints.ACTIVE:
                await failpoints.hit("sender.after_store")
            at = self.clock.now_ms()  # when routing began: a client may ack before it ends
            await self.route(_ack_delivery(result.message, trace_id), report)
        else:
            at = self.clock.now_ms()
            # A client's message (sent on its behalf from its frame's handler) is
            # not held behind the broker's confirm: see the module.
            confirm = relayed is None or trace_id is not None or \
                not isinstance(on_behalf_of, FromContext)
            await self.route(Delivery(user, env.encode(), env.type, expires_at=env.expires_at,
                                      trace_id=trace_id), report, confirm=confirm)
            if report.reached_nobody and not report.failed_pods:
                self.metrics.count_dropped("offline")
        if trace_id:
            self._trace_route(trace_id, report, "routed", at=at)
        if env.requires_ack or self.shared_bus:
            # Sends that only touch local connections take microseconds; timing
            # them would cost more than the send (this is the in-process hot path).
            self.metrics.send_latency.observe(time.perf_counter() - started)
        return report

    async def redeliver(self, msg: StoredMessage) -> SendReport:
        """Deliver a stored message again (a resend): same id, same seq."""
        report = SendReport(msg.user, stored=True, seq=msg.seq)
        trace_id = msg.id if self.trace_policy.ack else None
        at = self.clock.now_ms()  # a client may ack before routing is done
        await self.route(_ack_delivery(msg, trace_id), report)
        if trace_id:
            self._trace_route(trace_id, report, "resent", at=at, attempt=msg.attempts)
        return report

    def dead_lettered(self, dead: DeadLetter) -> None:
        """Count, trace and log a message that just became a dead letter."""
        msg, reason = dead.message, dead.reason.value
        self.metrics.acks_dead_lettered.labels(reason).inc()
        if self.trace_policy.ack:
            self.tracer.record(msg.id, msg.user, "dead", self.pod, reason=reason)
        self._throttle.warn(f"dead:{reason}", "message %s of user %r dead-lettered (%s)",
                            msg.id, msg.user, reason)

    def _trace_route(self, msg_id: MsgId, report: SendReport, event: str, *,
                     at: int | None = None, **extra: Any) -> None:
        self.tracer.record(msg_id, report.user, event, self.pod, at=at, local=report.local,
                           pods=report.pods, failed=report.failed_pods, **extra)

    async def retry_dead(self, msg_id: MsgId, user: UserId | None = None) -> list[SendReport]:
        """Make the dead letters with this id (of ``user``, if given) pending again
        and route them: new seq, first attempt, no ``expiresAt`` (an operator's
        retry overrides the old deadline). Raises NotFound when there is none."""
        revived = await self.acks.revive(msg_id, user)
        if not revived:
            raise NotFound(f"no dead letter with id {msg_id!r}")
        reports = []
        for msg in revived:
            report = SendReport(msg.user, stored=True, seq=msg.seq)
            trace_id = msg.id if self.trace_policy.ack else None
            if trace_id:
                self.tracer.record(trace_id, msg.user, "revived", self.pod, seq=msg.seq)
            await self.route(_ack_delivery(msg, trace_id), report)
            if trace_id:
                self._trace_route(trace_id, report, "routed")
            reports.append(report)
        return reports

    async def route(self, delivery: Delivery, report: SendReport, *,
                    local: bool = True, confirm: bool = True) -> None:
        """Deliver locally (unless ``local`` is False) and publish once per other
        pod holding the user, skipping the pods ``delivery.published_to`` names.
        ``confirm=False`` (at most once only) returns once the bus holds the
        publishes; their outcomes are counted when the broker answers."""
        if local and self.local is not None:
            report.local = self.local.deliver_local(delivery)
        if self.shared_bus:
            await self._publish(delivery, report, confirm)
        if delivery.ack_id is not None and report.failed_pods and report.reached_nobody:
            # Stored, so not lost; but the user's devices would wait a whole
            # retry interval. Due again soon instead, without spending an attempt.
            # If the store fails here, its own schedule resends it.
            with contextlib.suppress(BackendUnavailable):
                await self.acks.defer(delivery.user, [delivery.ack_id])

    async def _publish(self, delivery: Delivery, report: SendReport, confirm: bool) -> None:
        try:
            where = await self.presence.pods_of([delivery.user])
        except BackendUnavailable:
            self.metrics.backend_errors.labels("presence").inc()
            report.failed_pods.append(PodId("?"))  # unknown: treat as a failed publish
            if delivery.ack_id is None:
                self.metrics.count_dropped("presence_unavailable")
            return
        pods = where.get(delivery.user)
        if not pods:
            return
        skip = {*delivery.published_to, *((self.pod,) if self.pod else ())}
        remote = sorted(pods - skip)
        if not remote:
            return
        out = delivery.published_also(tuple(sorted(skip.union(remote))))
        if not confirm and delivery.ack_id is None:
            for pod in remote:
                await self._hand_over(pod, out, report)
            return
        if len(remote) == 1:
            outcomes: list[BaseException | None] = [await self._publish_one(remote[0], out)]
        else:
            outcomes = list(await asyncio.gather(*(self._publish_one(p, out) for p in remote)))
        for pod, outcome in zip(remote, outcomes, strict=True):
            if outcome is None:
                report.pods.append(pod)
                self.metrics.published.inc()
            else:
                report.failed_pods.append(pod)
                self._failed(pod, [out], outcome)

    async def _hand_over(self, pod: PodId, delivery: Delivery, report: SendReport) -> None:
        """Hand ``delivery`` to the bus for ``pod``; its outcome is counted later."""
        try:
            futures = await self.bus.hand_over(pod, [delivery])
        except Exception as exc:  # known before queueing: reported now
            report.failed_pods.append(pod)
            self._failed(pod, [delivery], exc)
            return
        report.pods.append(pod)
        if futures:
            self.unconfirmed.track(pod, delivery, futures)
        else:
            self.metrics.published.inc()

    def _failed(self, pod: PodId, deliveries: list[Delivery], failure: BaseException) -> None:
        """Count (and log, if unexpected) ``deliveries`` that did not reach ``pod``."""
        if isinstance(failure, Unroutable):
            reason = "pod_gone"
            if self.stale is not None:
                self.stale([d.user for d in deliveries])
        elif isinstance(failure, BackendUnavailable):
            reason = "bus_unavailable"
            self.metrics.backend_errors.labels("bus").inc(len(deliveries))
        else:
            reason = "bus_error"
            log.error("publish to %s failed", pod, exc_info=failure)
        # An ACK-required message stays stored: it is resent or replayed later.
        dropped = sum(1 for d in deliveries if d.ack_id is None)
        if dropped:
            self.metrics.count_dropped(reason, dropped)

    async def _publish_one(self, pod: PodId, delivery: Delivery) -> BaseException | None:
        try:
            await self.bus.publish(pod, [delivery])
        except Exception as exc:  # reported per pod by the caller
            return exc
        return None


def _ack_delivery(msg: StoredMessage, trace_id: MsgId | None = None) -> Delivery:
    return Delivery(msg.user, msg.frame(), msg.type, ack_id=msg.id,
                    expires_at=msg.expires_at, trace_id=trace_id)
