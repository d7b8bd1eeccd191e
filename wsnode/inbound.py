"""Deliveries arriving at a pod: to its own connections, or passed on.

Three ways a delivery arrives, and what happens to it:

* from this pod's sender (``deliver_local``): queued on the user's
  connections here;
* from the bus (``on_deliveries``): the same, and if the user is no longer
  here (they moved after the sender read presence, or this pod is draining)
  passed on once to wherever the user is now. A batch the broker hands over
  again after a lost connection may have been delivered already: its
  at-most-once deliveries are dropped (counted ``redelivered``), its
  ACK-required ones delivered again (clients dedup by id);
* stranded (``on_stranded``): a copy that expired unread in some pod's queue
  (that pod died, or stopped consuming for longer than the queue's message
  TTL), handed to any live pod, which routes it again to the user's pods
  now, that pod included if it still holds the user.

A fanout (a broadcast, or a topic publish: ``Delivery.topic``) goes to every
connection here, or to the topic's subscribers here; it is at most once, so
it is never passed on, and a stranded one is dropped (counted ``pod_died``).

A delivery past its ``expiresAt`` is never delivered. At-most-once messages
that reach nobody are counted once, by reason, in
``wsnode_messages_dropped_total``; ACK-required ones stay in the store, which
resends them.
"""

from __future__ import annotations

from dataclasses import replace

from wsnode.bus import Delivery
from wsnode.clock import Clock
from wsnode.hub import Hub
from wsnode.ids import PodId
from wsnode.metrics import Metrics
from wsnode.protocol import deliverable
from wsnode.sender import Sender, SendReport
from wsnode.subscriptions import Subscriptions
from wsnode.topics import BROADCAST
from wsnode.trace import Tracer


class Inbound:
    """Inbound delivery for one pod (see the module)."""

    def __init__(self, pod: PodId, hub: Hub, sender: Sender, metrics: Metrics, tracer: Tracer,
                 clock: Clock, subscriptions: Subscriptions | None = None) -> None:
        self._subscriptions = subscriptions
        self._pod = pod
        self._hub = hub
        self._sender = sender
        self._metrics = metrics
        self._tracer = tracer
        self._clock = clock

    def deliver_local(self, delivery: Delivery) -> int:
        """Queue a delivery on this pod's connections of its user; how many took it.
        Connections that are closing (drained, or too slow) refuse it: counted
        here when others took it (the sender counts a message nobody took)."""
        taken, refused = self._hub.deliver(delivery.user, delivery.frame, delivery.ack_id,
                                           delivery.expires_at)
        if taken:
            self._metrics.count_out(delivery.type, taken)
            if refused and delivery.ack_id is None:
                self._metrics.count_dropped("conn_closing", refused)
        return taken

    def deliver_fanout(self, delivery: Delivery) -> int:
        """Queue a fanout on every connection here (a broadcast) or on the
        topic's subscribers here; how many took it."""
        if delivery.topic == BROADCAST:
            taken, refused = self._hub.deliver_all(delivery.frame, delivery.expires_at)
        elif delivery.topic is not None and self._subscriptions is not None:
            taken, refused = self._subscriptions.deliver(delivery.topic, delivery.frame,
                                                         delivery.expires_at)
        else:
            return 0
        if taken:
            self._metrics.count_out(delivery.type, taken)
        if refused:
            self._metrics.count_dropped("conn_closing", refused)
        return taken

    async def on_deliveries(self, batch: list[Delivery]) -> None:
        self._metrics.bus_batches_in.inc()
        now = self._clock.now_ms()
        for delivery in batch:
            if self._expired(delivery, now):
                continue
            if not deliverable(delivery.frame):
                # Not built by a pod (wsnode.bus_sign): never handed to a client.
                self._metrics.count_dropped("forged")
                continue
            if delivery.redelivered and delivery.ack_id is None:
                # It may have reached its connections before the broker connection
                # was lost: at most once means not again.
                self._metrics.count_dropped("redelivered")
                continue
            if delivery.topic is not None:
                if taken := self.deliver_fanout(delivery):
                    self._metrics.bus_delivered.inc(taken)
                continue
            taken = self.deliver_local(delivery)
            if taken:
                self._metrics.bus_delivered.inc(taken)
                if delivery.trace_id is not None:
                    # Local deliveries are in the sender's "routed" event (local=N).
                    self._tracer.record(delivery.trace_id, delivery.user, "delivered",
                                        self._pod, conns=taken, hops=delivery.hops)
            elif delivery.hops == 0:
                await self._pass_on(delivery, "left_pod")
            elif delivery.ack_id is None:
                self._metrics.count_dropped("left_pod")

    async def on_stranded(self, batch: list[Delivery]) -> None:
        """Route stranded copies again. The pod a copy was stranded from never got
        it, so it is not skipped; the other pods it was published to got copies
        of their own."""
        now = self._clock.now_ms()
        for delivery in batch:
            if self._expired(delivery, now) or not deliverable(delivery.frame):
                continue
            if delivery.topic is not None:
                # Its pod's connections are gone with the pod: at most once, no retry.
                self._metrics.count_dropped("pod_died")
                continue
            origin = delivery.stranded_from
            published = tuple(p for p in delivery.published_to if p != origin) \
                if origin is not None else delivery.published_to
            await self._pass_on(replace(delivery, published_to=published), "pod_died",
                                local=self._pod not in published)

    async def _pass_on(self, delivery: Delivery, reason: str, *, local: bool = False) -> None:
        moved = replace(delivery, hops=delivery.hops + 1)
        report = SendReport(delivery.user)
        await self._sender.route(moved, report, local=local)
        if report.reached_nobody and delivery.ack_id is None:
            self._metrics.count_dropped(reason)

    def _expired(self, delivery: Delivery, now: int) -> bool:
        if not delivery.expired(now):
            return False
        # An ACK-required one is dead-lettered by the store when its claim or
        # the sweeper sees the expiry; an at-most-once one is simply not delivered.
        if delivery.ack_id is None:
            self._metrics.count_dropped("expired")
        return True
