"""Sending to a user, wherever they are connected.

:class:`Sender` needs only presence, the bus and the ACK store, so it works
without a running pod (``wsctl send`` uses it). Inside a pod it also has a
``local`` deliverer: this pod's own connections are served directly, never
through the broker.

Contract of :meth:`Sender.send_to_user`:

* ACK-required: stored first (idempotent on ``id``); a duplicate is neither
  stored nor delivered again. Whatever happens to routing afterwards, the
  store keeps it until acked or dead-lettered.
* Then delivered to local connections and published once per remote pod that
  holds the user (never to every pod).
* Never raises for routing trouble: what could not be routed is counted in
  ``wsnode_messages_dropped_total{reason}`` and visible in the report.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from wsnode.acks import AckStore, StoredMessage
from wsnode.bus import Bus, Delivery, Unroutable
from wsnode.clock import Clock, SystemClock
from wsnode.errors import BackendUnavailable, NotFound, SendError
from wsnode.ids import MsgId, PodId, UserId
from wsnode.metrics import Metrics
from wsnode.presence import Presence
from wsnode.protocol import MAX_ID_LENGTH, RESERVED_TYPES, TYPE_PATTERN, Envelope
from wsnode.trace import NoTracer, TracePolicy, Tracer

log = logging.getLogger("wsnode.sender")


@dataclass(slots=True)
class SendReport:
    """What ``send_to_user`` did (the body of ``POST /v1/send``)."""

    user: UserId
    local: int = 0
    pods: list[PodId] = field(default_factory=list)
    stored: bool = False
    seq: int | None = None
    duplicate: bool = False
    failed_pods: list[PodId] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"user": self.user, "local": self.local, "pods": self.pods,
                "stored": self.stored, "seq": self.seq, "duplicate": self.duplicate,
                "failedPods": self.failed_pods}


class LocalDeliverer(Protocol):
    """A pod's own connections (implemented by the node)."""

    def deliver_local(self, delivery: Delivery) -> int: ...


def check_outgoing(env: Envelope, clock: Clock) -> None:
    """Refuse what no client should receive: a bad or reserved type, an ACK
    without an id, a message already expired. Raises SendError."""
    if not TYPE_PATTERN.fullmatch(env.type):
        raise SendError(f"type {env.type!r} is not 1-64 characters of [A-Za-z0-9_.:-]")
    if env.type in RESERVED_TYPES:
        raise SendError(f"type {env.type!r} is reserved by the protocol")
    if env.id is not None and not 0 < len(env.id) <= MAX_ID_LENGTH:
        raise SendError(f"id must be 1-{MAX_ID_LENGTH} characters")
    if env.requires_ack and env.id is None:
        raise SendError("an ACK-required message needs an id")
    if env.expires_at is not None and env.expires_at <= clock.now_ms():
        raise SendError("expiresAt has already passed")


class Sender:
    """Stores and routes messages to users (see the module contract)."""

    def __init__(
        self,
        *,
        presence: Presence,
        bus: Bus,
        acks: AckStore,
        metrics: Metrics,
        pod: PodId | None = None,
        local: LocalDeliverer | None = None,
        clock: Clock | None = None,
        on_unrouted: Callable[[Delivery], None] | None = None,
        remote: bool = True,
        tracer: Tracer | None = None,
        trace_policy: TracePolicy | None = None,
    ) -> None:
        self.presence = presence
        self.bus = bus
        self.acks = acks
        self.metrics = metrics
        self.pod = pod
        self.local = local
        self._clock = clock or SystemClock()
        # Told about ACK-required deliveries a publish failed for (bus down, queue
        # gone), so they are routed again without waiting for a reconnect.
        self._on_unrouted = on_unrouted
        self._remote = remote
        self.tracer: Tracer = tracer or NoTracer()
        self.trace_policy = trace_policy or TracePolicy(ack=False)

    async def send_to_user(self, user: UserId, env: Envelope, *,
                           trace: bool = False) -> SendReport:
        """Store (ACK-required) and route ``env`` to ``user``. ``trace`` asks for a
        trail of an at-most-once message too (it needs an id)."""
        started = time.perf_counter()
        check_outgoing(env, self._clock)
        report = SendReport(user)
        trace_id = MsgId(env.id) if env.id is not None and self.trace_policy.wants(
            env.requires_ack, True, trace) else None
        if env.requires_ack:
            result = await self.acks.store(user, env)
            report.stored, report.seq, report.duplicate = True, result.seq, result.duplicate
            if trace_id:
                self.tracer.record(trace_id, user, "duplicate" if result.duplicate else "stored",
                                   self.pod, seq=result.seq)
            if result.duplicate or result.message is None:
                return report
            self.metrics.acks_stored.inc()
            await self.route(_ack_delivery(result.message, trace_id), report)
        else:
            await self.route(Delivery(user, env.encode(), env.type, trace_id=trace_id), report)
            if not (report.local or report.pods or report.failed_pods):
                self.metrics.count_dropped("offline")
        if trace_id:
            self._trace_route(trace_id, report, "routed")
        if env.requires_ack or self._remote:
            # Sends that only touch local connections take microseconds; timing
            # them would cost more than the send (this is the in-process hot path).
            self.metrics.send_latency.observe(time.perf_counter() - started)
        return report

    async def redeliver(self, msg: StoredMessage) -> SendReport:
        """Deliver a stored message again (a resend): same id, same seq."""
        report = SendReport(msg.user, stored=True, seq=msg.seq)
        trace_id = msg.id if self.trace_policy.ack else None
        await self.route(_ack_delivery(msg, trace_id), report)
        if trace_id:
            self._trace_route(trace_id, report, "resent", attempt=msg.attempts)
        return report

    def _trace_route(self, msg_id: MsgId, report: SendReport, event: str,
                     **extra: Any) -> None:
        self.tracer.record(msg_id, report.user, event, self.pod, local=report.local,
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
                    local: bool = True) -> None:
        """Deliver locally (unless ``local`` is False) and publish once per other
        pod holding the user, skipping the pods ``delivery.reached`` names."""
        if local and self.local is not None:
            report.local = self.local.deliver_local(delivery)
        if self._remote:
            await self._publish(delivery, report)
        if delivery.ack_id is not None and report.failed_pods and self._on_unrouted:
            # Routed again later to the pods it did not reach (never again to those
            # it did, this one included when its own connections got it). A
            # message that reached nobody needs no retry: it was stored before
            # presence was read, so a connection that presence did not show yet
            # reads it in its replay.
            here = (self.pod,) if report.local and self.pod else ()
            done = tuple(sorted({*delivery.reached, *report.pods, *here}))
            self._on_unrouted(replace(delivery, reached=done))

    async def _publish(self, delivery: Delivery, report: SendReport) -> None:
        try:
            where = await self.presence.pods_of([delivery.user])
        except BackendUnavailable:
            self.metrics.backend_errors.labels("presence").inc()
            report.failed_pods.append(PodId("?"))  # unknown: treat as a failed publish
            return
        pods = where.get(delivery.user)
        if not pods:
            return
        skip = {*delivery.reached, *((self.pod,) if self.pod else ())}
        remote = sorted(pods - skip)
        if not remote:
            return
        out = replace(delivery, reached=tuple(sorted(skip.union(remote))))
        if len(remote) == 1:
            outcomes: list[BaseException | None] = [await self._publish_one(remote[0], out)]
        else:
            outcomes = list(await asyncio.gather(*(self._publish_one(p, out) for p in remote)))
        for pod, outcome in zip(remote, outcomes, strict=True):
            if outcome is None:
                report.pods.append(pod)
                self.metrics.published.inc()
                continue
            report.failed_pods.append(pod)
            if isinstance(outcome, Unroutable):
                reason = "pod_gone"
            elif isinstance(outcome, BackendUnavailable):
                reason = "bus_unavailable"
                self.metrics.backend_errors.labels("bus").inc()
            else:
                reason = "bus_error"
                log.error("publish to %s failed", pod, exc_info=outcome)
            # An ACK-required message stays stored: it is routed again or replayed later.
            if delivery.ack_id is None:
                self.metrics.count_dropped(reason)

    async def _publish_one(self, pod: PodId, delivery: Delivery) -> BaseException | None:
        try:
            await self.bus.publish(pod, [delivery])
        except Exception as exc:  # reported per pod by the caller
            return exc
        return None


def _ack_delivery(msg: StoredMessage, trace_id: MsgId | None = None) -> Delivery:
    return Delivery(msg.user, msg.frame(), msg.type, ack_id=msg.id, due=msg.next_due,
                    trace_id=trace_id)

