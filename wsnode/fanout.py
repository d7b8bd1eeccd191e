"""Broadcasts and topic publishes: one message for many connections, one broker
message per pod (DESIGN §10).

:class:`Fanout` needs what a :class:`~wsnode.sender.Sender` has (presence,
the bus) and the topic registry, so it works without a running pod (``wsctl``
uses it); inside a pod it also serves the pod's own connections directly.

Contracts:

* ``broadcast(env)`` reaches every connection of every pod: this pod's
  directly, then one delivery to each other pod with a live lease
  (``Presence.live_pods``), which queues it on all its connections.
* ``publish(topic, env)`` reaches every connection subscribed to ``topic``:
  this pod's directly, then one delivery to each other pod that the registry
  says has subscribers (``TopicRegistry.pods_of``), none to the others. Its
  report's ``subscribers`` counts the connections subscribed when it was sent
  (0: nobody was, and nobody got it).
* Both are **at most once**: an ACK-required envelope is refused (SendError),
  nothing is stored, a pod that dies with the message in its queue drops it
  (each pod would have to remember who got what; for messages that must
  arrive, send to the users: ``send_to_users``). Every copy that could not be
  published is counted in ``wsnode_messages_dropped_total{reason}`` and its
  pod is named in ``failedPods``; nothing raises for routing trouble.
* Ids are those of the envelope, scoped to the client when sent on its behalf
  (as ``send_to_user`` does, see :func:`~wsnode.sender.outgoing`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from wsnode.bus import Bus, Delivery, Unroutable
from wsnode.errors import BackendUnavailable, SendError
from wsnode.ids import PodId, UserId
from wsnode.metrics import Metrics
from wsnode.protocol import Envelope
from wsnode.sender import FROM_CONTEXT, FromContext, Sender, outgoing
from wsnode.topics import BROADCAST, TopicRegistry, topic_problem

log = logging.getLogger("wsnode.fanout")

AT_MOST_ONCE = ("{what} is at most once, so it cannot require an ACK: to store a message "
                "for each user until they ack it, send it to the users (send_to_users, or "
                "POST /v1/send with \"users\")")


@dataclass(slots=True)
class FanoutReport:
    """What a broadcast or a publish did: connections reached on this pod, pods
    published to, pods the publish failed for; for a publish, its topic and the
    connections subscribed when it was sent."""

    local: int = 0
    pods: list[PodId] = field(default_factory=list)
    failed_pods: list[PodId] = field(default_factory=list)
    topic: str | None = None
    subscribers: int = 0

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"local": self.local, "pods": self.pods,
                                  "failedPods": self.failed_pods}
        if self.topic is not None:
            out.update(topic=self.topic, subscribers=self.subscribers)
        return out


class LocalFanout(Protocol):
    """A pod's own connections (``wsnode.inbound.Inbound``)."""

    def deliver_fanout(self, delivery: Delivery) -> int: ...


class Fanout:
    """Broadcasts and publishes (see the module contract)."""

    def __init__(self, sender: Sender, topics: TopicRegistry | None,
                 local: LocalFanout | None = None) -> None:
        self._sender = sender
        self._topics = topics
        self._local = local

    async def broadcast(self, env: Envelope, *,
                        on_behalf_of: UserId | FromContext | None = FROM_CONTEXT,
                        ) -> FanoutReport:
        """Every connection of every pod, once (see the module contract)."""
        delivery = self._prepare(env, BROADCAST, on_behalf_of, "a broadcast")
        s = self._sender
        report = FanoutReport(local=self._deliver_here(delivery))
        s.metrics.fanouts.labels("broadcast").inc()
        if not s.shared_bus:
            return report
        try:
            pods = await s.presence.live_pods()
        except BackendUnavailable:
            self._unknown(report, "presence", 1)
            return report
        await self._publish(delivery, [p for p in pods if p != s.pod], report)
        return report

    async def publish(self, topic: str, env: Envelope, *,
                      on_behalf_of: UserId | FromContext | None = FROM_CONTEXT,
                      ) -> FanoutReport:
        """Every connection subscribed to ``topic``, on every pod, once."""
        if (problem := topic_problem(topic)) is not None:
            raise SendError(f"{problem}: got {topic!r:.140}")
        delivery = self._prepare(env, topic, on_behalf_of, "a topic publish")
        s = self._sender
        report = FanoutReport(local=self._deliver_here(delivery), topic=topic)
        report.subscribers = report.local
        s.metrics.fanouts.labels("publish").inc()
        if not s.shared_bus or self._topics is None:
            return report
        try:
            where = await self._topics.pods_of(topic)
        except BackendUnavailable:
            self._unknown(report, "topics", 1)
            return report
        remote = {pod: n for pod, n in where.items() if pod != s.pod}
        report.subscribers += sum(remote.values())
        await self._publish(delivery, sorted(remote), report)
        return report

    def _prepare(self, env: Envelope, target: str,
                 on_behalf_of: UserId | FromContext | None, what: str) -> Delivery:
        if env.requires_ack:
            raise SendError(AT_MOST_ONCE.format(what=what[0].upper() + what[1:]))
        env, _ = outgoing(env, self._sender.clock, on_behalf_of)
        return Delivery(UserId(""), env.encode(), env.type, expires_at=env.expires_at,
                        topic=target)

    def _deliver_here(self, delivery: Delivery) -> int:
        return self._local.deliver_fanout(delivery) if self._local is not None else 0

    def _unknown(self, report: FanoutReport, backend: str, copies: int) -> None:
        """Where to publish could not be read: nothing published, and said so."""
        self._sender.metrics.backend_errors.labels(backend).inc()
        self._sender.metrics.count_dropped(f"{backend}_unavailable", copies)
        report.failed_pods.append(PodId("?"))

    async def _publish(self, delivery: Delivery, pods: list[PodId],
                       report: FanoutReport) -> None:
        metrics = self._sender.metrics
        outcomes = await publish_each(self._sender.bus, {pod: [delivery] for pod in pods})
        for pod, outcome in outcomes.items():
            if outcome is None:
                report.pods.append(pod)
                metrics.published.inc()
            else:
                report.failed_pods.append(pod)
                metrics.count_dropped(failure_reason(outcome, pod, metrics))


async def publish_each(bus: Bus, by_pod: Mapping[PodId, Sequence[Delivery]],
                       ) -> dict[PodId, BaseException | None]:
    """Publish each pod's deliveries (one ``publish`` per pod, all at once);
    each pod's outcome: None, or the exception its publish raised."""
    async def one(pod: PodId) -> BaseException | None:
        try:
            await bus.publish(pod, by_pod[pod])
        except Exception as exc:  # reported per pod
            return exc
        return None

    pods = sorted(by_pod)
    outcomes = await asyncio.gather(*(one(pod) for pod in pods))
    return dict(zip(pods, outcomes, strict=True))


def failure_reason(exc: BaseException, pod: PodId, metrics: Metrics) -> str:
    """The ``dropped{reason}`` of a publish to ``pod`` that raised ``exc``."""
    if isinstance(exc, Unroutable):
        return "pod_gone"
    if isinstance(exc, BackendUnavailable):
        metrics.backend_errors.labels("bus").inc()
        return "bus_unavailable"
    log.error("publish to %s failed", pod, exc_info=exc)
    return "bus_error"
