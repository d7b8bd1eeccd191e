"""Presence upkeep of one pod: its lease, its connections' entries, the reaper.

The heartbeat is a supervised loop (``wsnode.supervisor``): each step renews
the pod's lease and reaps pods whose lease lapsed. Connection hooks write each
open and close. When the store loses a write (it was unreachable: an add, or
a remove that would leave a phantom connection) or the lease lapsed (the pod
stalled), the pod is *dirty*: the next step starts a new life and announces
exactly the connections held now, and the reaper purges the old life. After
an announce, ``on_announced`` runs (the node reconciles the resend schedule of
its users, who may have looked offline meanwhile).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from wsnode.errors import BackendUnavailable
from wsnode.hub import Conn, Hub
from wsnode.ids import PodId
from wsnode.metrics import Metrics
from wsnode.presence import PodState, Presence
from wsnode.presence_cache import PresenceFeed

log = logging.getLogger("wsnode.presence")


class PresenceUpkeep:
    """Keeps one pod's presence true (see the module)."""

    def __init__(self, presence: Presence, pod: PodId, hub: Hub, metrics: Metrics, *,
                 state: Callable[[], PodState], on_announced: Callable[[], None],
                 feed: PresenceFeed | None = None) -> None:
        self._feed = feed
        self._presence = presence
        self._pod = pod
        self._hub = hub
        self._metrics = metrics
        self._state = state
        self._on_announced = on_announced
        self.dirty = False
        self._joined = False

    async def join(self, admin_url: str) -> None:
        """The first life at start; when the store is unreachable the heartbeat
        loop joins later (the pod starts anyway)."""
        try:
            await self._presence.join(self._pod, self._state(), admin=admin_url)
            self._joined = True
        except BackendUnavailable:
            self.dirty = True
            log.warning("presence store unreachable at start; joining in the background",
                        extra={"pod": self._pod})

    async def step(self) -> None:
        """Renew the lease (re-joining and announcing when dirty), then reap."""
        try:
            if self.dirty or not self._joined:
                # A new life, then exactly the connections held now.
                await self._presence.join(self._pod, self._state())
                self._joined = True
                await self._announce()
            elif not await self._presence.heartbeat(self._pod, self._state()):
                await self._announce()
            await self._presence.reap()
        except BackendUnavailable:
            self.dirty = True
            self._metrics.backend_errors.labels("presence").inc()
            raise

    async def opened(self, conn: Conn) -> None:
        self._metrics.connections.set(len(self._hub))
        try:
            await self._presence.add(self._pod, conn.user, conn.id, conn.since)
        except BackendUnavailable:
            self.dirty = True  # the heartbeat loop re-announces
        self._announce_user(conn)

    async def closed(self, conn: Conn) -> None:
        self._metrics.connections.set(len(self._hub))
        try:
            await self._presence.remove(self._pod, conn.user, conn.id)
        except BackendUnavailable:
            self.dirty = True
        self._announce_user(conn)

    def _announce_user(self, conn: Conn) -> None:
        """Tell the other pods' caches when this pod starts or stops holding the
        user (its first connection here, or its last), after presence says so."""
        if self._feed is not None and len(self._hub.conns_of(conn.user)) == (
                1 if self._hub.get(conn.id) is not None else 0):
            self._feed.changed(conn.user)

    async def leave(self) -> None:
        await self._presence.leave(self._pod)

    async def _announce(self) -> None:
        self.dirty = False
        snapshot = [(c.user, c.id, c.since) for c in self._hub]
        try:
            await self._presence.add_many(self._pod, snapshot)
            for user, conn_id, _ in snapshot:
                if self._hub.get(conn_id) is None:  # closed while being written back
                    await self._presence.remove(self._pod, user, conn_id)
        except BackendUnavailable:
            self.dirty = True
            raise
        log.info("presence re-announced (%d connections, %d users)", len(snapshot),
                 self._hub.user_count, extra={"pod": self._pod})
        if self._feed is not None:
            for user in self._hub.users():
                self._feed.changed(user)
        self._on_announced()
