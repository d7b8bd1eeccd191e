"""Sending one message to many users: one presence read, one broker message per
destination pod (DESIGN §10).

:class:`ManySender` works beside a :class:`~wsnode.sender.Sender` and keeps
its semantics for every user of the list, as if ``send_to_user`` had been
called for each, at the cost of a few round trips for all of them:

* ACK-required: stored first for every user, in one round trip per store
  shard (``AckStore.store_many``), idempotent on the id per user: a user for
  whom the id is still pending gets it routed again (``duplicate``), one for
  whom it was acked or dead-lettered gets nothing (``settled``); a relayed
  message past a relayed limit is refused for that user only (``refused``).
  Whatever routing does next, the store owns each stored message.
* Then delivered to this pod's connections, presence read once for every
  user (``pods_of``), and each other pod that holds any of them gets one
  ``publish`` carrying every delivery for it (one broker message, up to the
  bus's batch caps).
* Never raises for routing trouble: an at-most-once delivery that could not
  be routed is counted in ``wsnode_messages_dropped_total{reason}``; an
  ACK-required one that reached nobody because a publish failed is due again
  soon in the store.
* The list is at most ``max_users`` distinct users (``MAX_USERS_PER_SEND``);
  a longer one, an empty one or a bad user id is refused (SendError) before
  anything is sent. Repeats are sent once.

The report gives each user's outcome as lists of user ids per outcome, so a
send to a thousand users answers in a few kilobytes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from wsnode.acks import MsgState
from wsnode.auth import user_id_problem
from wsnode.bus import Delivery
from wsnode.errors import BackendUnavailable, QuotaExceeded, SendError
from wsnode.fanout import failure_reason, publish_each
from wsnode.ids import MsgId, PodId, UserId
from wsnode.protocol import Envelope
from wsnode.sender import FROM_CONTEXT, FromContext, Sender, outgoing


@dataclass(slots=True)
class ManyReport:
    """What ``send_to_users`` did. ``reached``: users a connection on this pod
    took it for, or a pod holding them was published to; ``offline``: the
    others (for ACK-required ones, ``stored`` or ``duplicate`` says they get
    it on connect). ACK-required only: ``stored`` (new), ``duplicate`` (the id
    was pending: routed again), ``settled`` (the id was acked or dead: not
    sent), ``refused`` (a relayed limit: user -> why), ``evicted`` (user -> ids
    dead-lettered to make room)."""

    users: list[UserId]
    requires_ack: bool = False
    local: int = 0
    pods: list[PodId] = field(default_factory=list)
    failed_pods: list[PodId] = field(default_factory=list)
    reached: list[UserId] = field(default_factory=list)
    offline: list[UserId] = field(default_factory=list)
    stored: list[UserId] = field(default_factory=list)
    duplicate: list[UserId] = field(default_factory=list)
    settled: list[UserId] = field(default_factory=list)
    refused: dict[UserId, str] = field(default_factory=dict)
    evicted: dict[UserId, list[MsgId]] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "users": len(self.users), "local": self.local, "pods": self.pods,
            "failedPods": self.failed_pods, "reached": self.reached,
            "offline": self.offline}
        if self.requires_ack:
            out.update(stored=self.stored, duplicate=self.duplicate, settled=self.settled,
                       refused=self.refused, evicted=self.evicted)
        return out


def distinct_users(users: Iterable[object], cap: int) -> list[UserId]:
    """The users of a list, in order, each once; SendError for an empty list,
    a bad id (named by position) or more than ``cap`` of them."""
    out: dict[UserId, None] = {}
    for n, user in enumerate(users):
        if (problem := user_id_problem(user)) is not None:
            raise SendError(f"users[{n}]: {problem}")
        out[UserId(str(user))] = None
        if len(out) > cap:
            raise SendError(f"at most {cap} users per send (MAX_USERS_PER_SEND): "
                            "split the list")
    if not out:
        raise SendError("no users to send to: give at least one")
    return list(out)


class ManySender:
    """Sends to many users (see the module contract)."""

    def __init__(self, sender: Sender, max_users: int) -> None:
        self._sender = sender
        self.max_users = max_users

    async def send_to_users(self, users: Iterable[object], env: Envelope, *,
                            on_behalf_of: UserId | FromContext | None = FROM_CONTEXT,
                            ) -> ManyReport:
        """Store (ACK-required) and route ``env`` to each of ``users``."""
        started = time.perf_counter()
        s = self._sender
        targets = distinct_users(users, self.max_users)
        env, relayed = outgoing(env, s.clock, on_behalf_of)
        report = ManyReport(targets, requires_ack=env.requires_ack)
        if env.requires_ack:
            deliveries = await self._store(targets, env, relayed, report)
        else:
            frame = env.encode()
            deliveries = {u: Delivery(u, frame, env.type, expires_at=env.expires_at)
                          for u in targets}
        reached: set[UserId] = set()
        failed: dict[UserId, str] = {}
        here: dict[UserId, int] = {}
        sent_to: dict[UserId, list[PodId]] = {}
        if s.local is not None:
            for user, delivery in deliveries.items():
                if taken := s.local.deliver_local(delivery):
                    here[user] = taken
            report.local = sum(here.values())
            reached.update(here)
        if s.shared_bus and deliveries:
            await self._publish(deliveries, report, sent_to, failed)
            reached.update(sent_to)
        at = s.clock.now_ms()
        for user in targets:
            (report.reached if user in reached else report.offline).append(user)
            unsent = deliveries.get(user)
            if unsent is None or user in reached:
                continue
            if unsent.ack_id is not None:
                if user in failed:
                    # Stored, so not lost; due again soon instead of a retry interval
                    # (if the store fails here, its own schedule resends it).
                    with contextlib.suppress(BackendUnavailable):
                        await s.acks.defer(user, [unsent.ack_id])
            else:
                s.metrics.count_dropped(failed.get(user, "offline"))
        if env.requires_ack and s.trace_policy.ack:
            for user, delivery in deliveries.items():
                assert delivery.ack_id is not None
                s.tracer.record(delivery.ack_id, user, "routed", s.pod, at=at,
                                local=here.get(user, 0), pods=sent_to.get(user, []),
                                failed=report.failed_pods)
        s.metrics.fanouts.labels("users").inc()
        s.metrics.send_latency.observe(time.perf_counter() - started)
        return report

    async def _store(self, targets: list[UserId], env: Envelope, relayed: UserId | None,
                     report: ManyReport) -> dict[UserId, Delivery]:
        s = self._sender
        results = await s.acks.store_many(targets, env, relayed_from=relayed)
        deliveries: dict[UserId, Delivery] = {}
        for user, result in zip(targets, results, strict=True):
            if isinstance(result, QuotaExceeded):
                report.refused[user] = str(result)
                continue
            for dead in result.evicted:
                report.evicted.setdefault(user, []).append(dead.message.id)
                s.dead_lettered(dead)
            if result.state is not MsgState.PENDING or result.message is None:
                report.settled.append(user)
                continue
            (report.duplicate if result.duplicate else report.stored).append(user)
            if not result.duplicate:
                s.metrics.acks_stored.inc()
            msg = result.message
            if s.trace_policy.ack:
                s.tracer.record(msg.id, user, "duplicate" if result.duplicate else "stored",
                                s.pod, seq=msg.seq)
            deliveries[user] = Delivery(user, msg.frame(), msg.type, ack_id=msg.id,
                                        expires_at=msg.expires_at)
        return deliveries

    async def _publish(self, deliveries: dict[UserId, Delivery], report: ManyReport,
                       sent_to: dict[UserId, list[PodId]], failed: dict[UserId, str]) -> None:
        """One presence read for every user, one publish per pod that holds any."""
        s = self._sender
        try:
            where = await s.presence.pods_of(list(deliveries))
        except BackendUnavailable:
            s.metrics.backend_errors.labels("presence").inc()
            report.failed_pods.append(PodId("?"))
            failed.update(dict.fromkeys(deliveries, "presence_unavailable"))
            return
        by_pod: dict[PodId, list[Delivery]] = {}
        users_of: dict[PodId, list[UserId]] = {}
        here = {s.pod} if s.pod else set()
        for user, pods in where.items():
            remote = pods - here
            if not remote:
                continue
            # Each copy is its pod's to deliver: a pass-on never gives a device a second.
            out = deliveries[user].published_also(tuple(sorted(pods | here)))
            for pod in remote:
                by_pod.setdefault(pod, []).append(out)
                users_of.setdefault(pod, []).append(user)
        outcomes = await publish_each(s.bus, by_pod)
        for pod, outcome in outcomes.items():
            if outcome is None:
                report.pods.append(pod)
                s.metrics.published.inc(len(by_pod[pod]))
                for user in users_of[pod]:
                    sent_to.setdefault(user, []).append(pod)
                continue
            report.failed_pods.append(pod)
            reason = failure_reason(outcome, pod, s.metrics)
            if reason == "pod_gone" and s.stale is not None:
                s.stale(users_of[pod])
            for user in users_of[pod]:
                failed.setdefault(user, reason)
