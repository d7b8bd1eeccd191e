"""Prometheus metrics of one node, in a registry of its own.

A registry per node (not the global one) lets tests run several nodes in one
process. Labels are bounded: message types are labelled only when a handler is
registered for them (client side) or when the server code chose them.
"""

from __future__ import annotations

import contextlib
from typing import overload

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from wsnode.acks import DeadLetters
from wsnode.errors import WsnodeError
from wsnode.hub import Hub
from wsnode.metrics_tally import HistogramTally, Tally

MAX_TYPES = 200
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Every metric a node exports (names under ``wsnode_``)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # The counts of every message, kept as numbers until a scrape (metrics_tally).
        self._tallies: list[Tally | HistogramTally] = []
        self.connections = Gauge("wsnode_connections", "Open WebSocket connections", registry=r)
        self.users = Gauge("wsnode_users", "Distinct users connected to this pod", registry=r)
        self.handshakes_refused = Counter(
            "wsnode_handshakes_refused_total", "Handshakes refused before the upgrade",
            ["status"], registry=r)
        self.handshakes_deferred = Counter(
            "wsnode_handshakes_deferred_total", "Handshakes that waited, unread, for a later "
            "event-loop iteration (HANDSHAKES_PER_ITERATION)", registry=r)
        self.messages_in = Counter(
            "wsnode_messages_in_total", "Client frames received, by type", ["type"], registry=r)
        self.messages_out = Counter(
            "wsnode_messages_out_total", "Frames queued to local connections, by type",
            ["type"], registry=r)
        self.errors_sent = Counter(
            "wsnode_error_frames_total", "error frames sent to clients, by code", ["code"],
            registry=r)
        self.rate_limited = Counter(
            "wsnode_rate_limited_total", "Client frames refused by the rate limiter", registry=r)
        self.dropped = Counter(
            "wsnode_messages_dropped_total", "Messages not delivered, by reason", ["reason"],
            registry=r)
        self.acks_pending = Gauge(
            "wsnode_acks_pending", "ACK-required messages pending (store-wide)", registry=r)
        self.acks_dead = Gauge(
            "wsnode_acks_dead", "Messages in the dead-letter store", registry=r)
        self.acks_stored = self._tally(Counter(
            "wsnode_acks_stored_total", "ACK-required messages stored", registry=r))
        self.acks_settled = self._tally(Counter(
            "wsnode_acks_settled_total", "ACK-required messages settled by a client ack",
            registry=r))
        self.acks_resent = Counter(
            "wsnode_acks_resent_total", "Resends of unacked messages", registry=r)
        self.acks_claims = Counter(
            "wsnode_acks_claims_total",
            "Resend claims this pod made (one per due user it holds, per scan)", registry=r)
        self.acks_dead_lettered = Counter(
            "wsnode_acks_dead_lettered_total", "Messages moved to the dead-letter store",
            ["reason"], registry=r)
        self.send_latency = self._tally(Histogram(
            "wsnode_send_latency_seconds",
            "Time for send_to_user to store and route a message (sends that touch the ACK "
            "store or the bus; purely local at-most-once sends are not timed)",
            buckets=LATENCY_BUCKETS, registry=r))
        self.slow_consumers = Counter(
            "wsnode_slow_consumers_total", "Connections closed 4408 (send queue overflow)",
            registry=r)
        self.backend_errors = Counter(
            "wsnode_backend_errors_total", "Failed calls to a backend", ["backend"], registry=r)
        self.limiter_fail_open = Counter(
            "wsnode_limiter_fail_open_total", "Hits allowed because the limiter store failed",
            registry=r)
        self.bus_delivered = self._tally(Counter(
            "wsnode_bus_delivered_total",
            "Frames queued to this pod's connections for messages that came from another "
            "pod (the rest of wsnode_messages_out_total was sent on this pod)", registry=r))
        self.presence_lookups = Counter(
            "wsnode_presence_lookups_total",
            "Users looked up for routing, by result: hit (the presence cache answered) "
            "or miss (read from the presence store, or from a read of the same user "
            "already in flight)", ["result"], registry=r)
        self.published = self._tally(Counter(
            "wsnode_published_total", "Deliveries published to other pods", registry=r))
        self.bus_batches_out = Counter(
            "wsnode_bus_batches_published_total",
            "Broker messages of deliveries this pod published (each carries one or more "
            "deliveries for one pod; canaries and control commands not counted)", registry=r)
        self.bus_batches_in = Counter(
            "wsnode_bus_batches_received_total",
            "Broker messages of deliveries this pod consumed from its own queue", registry=r)
        self.fanouts = Counter(
            "wsnode_fanouts_total", "Broadcasts and topic publishes sent from this pod, by kind",
            ["kind"], registry=r)
        self.topics = Gauge(
            "wsnode_topics", "Topics with a subscriber on this pod", registry=r)
        self.subscriptions = Gauge(
            "wsnode_subscriptions", "Subscriptions (connection, topic) on this pod", registry=r)
        self.bus_reconnects = Gauge(
            "wsnode_bus_reconnects", "Times the bus reconnected since the pod started",
            registry=r)
        self.canary_rtt = Gauge(
            "wsnode_bus_canary_rtt_seconds", "Round trip of the last canary through the bus",
            registry=r)
        self.ready = Gauge("wsnode_ready", "1 when /readyz answers 200", registry=r)
        self.draining = Gauge("wsnode_draining", "1 while the pod drains", registry=r)
        # Labelled children by type: labels() costs more than the increment itself.
        # Bounded: client types are registered handler types (or "other"), and
        # server types are chosen by the application's code.
        self._in: dict[str, Tally] = {}
        self._out: dict[str, Tally] = {}
        self._dropped: dict[str, Tally] = {}
        self._lookups = (self._tally(self.presence_lookups.labels("hit")),
                         self._tally(self.presence_lookups.labels("miss")))

    @overload
    def _tally(self, metric: Histogram) -> HistogramTally: ...

    @overload
    def _tally(self, metric: Counter) -> Tally: ...

    def _tally(self, metric: Counter | Histogram) -> Tally | HistogramTally:
        """``metric`` counted through a tally, flushed by :meth:`render`."""
        tally = HistogramTally(metric) if isinstance(metric, Histogram) else Tally(metric)
        self._tallies.append(tally)
        return tally

    def count_in(self, msg_type: str) -> None:
        """``messages_in{type}`` += 1, with the labelled child cached (hot path)."""
        child = self._in.get(msg_type)
        if child is None:
            child = self._in[msg_type] = self._tally(self.messages_in.labels(msg_type))
        child.inc()

    def count_out(self, msg_type: str, n: int) -> None:
        """``messages_out{type}`` += n, with the labelled child cached (hot path).
        Types are chosen by whoever sends (``POST /v1/send`` included), so past
        ``MAX_TYPES`` distinct ones the rest count as ``other``."""
        child = self._out.get(msg_type)
        if child is None:
            if len(self._out) < MAX_TYPES:
                child = self._out[msg_type] = self._tally(self.messages_out.labels(msg_type))
            else:
                child = self._out.get("other")
                if child is None:
                    child = self._out["other"] = self._tally(self.messages_out.labels("other"))
        child.inc(n)

    def count_dropped(self, reason: str, n: int = 1) -> None:
        """``messages_dropped{reason}`` += n, with the labelled child cached."""
        child = self._dropped.get(reason)
        if child is None:
            child = self._dropped[reason] = self._tally(self.dropped.labels(reason))
        child.inc(n)

    def count_lookups(self, hits: int, misses: int) -> None:
        """``presence_lookups{result}`` of one routing lookup (hot path)."""
        if hits:
            self._lookups[0].inc(hits)
        if misses:
            self._lookups[1].inc(misses)

    async def refresh(self, hub: Hub, bus: object, acks: DeadLetters) -> None:
        """Set the gauges read at scrape time: connections, users, the bus's own
        counts (the RabbitMQ bus has them; the in-process one none) and the store's."""
        self.connections.set(len(hub))
        self.users.set(hub.user_count)
        self.bus_reconnects.set(getattr(bus, "reconnects", 0))
        rtt = getattr(bus, "last_canary_rtt", None)
        if rtt is not None:
            self.canary_rtt.set(rtt)
        with contextlib.suppress(WsnodeError):
            stats = await acks.stats()
            self.acks_pending.set(stats.pending)
            self.acks_dead.set(stats.dead)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry (the tallies flushed first)."""
        for tally in self._tallies:
            tally.flush()
        return generate_latest(self.registry)
