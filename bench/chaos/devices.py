"""Receivers of the soak: real WebSocket clients (the Python SDK) that stay
connected through every fault and record every message they are given.

Each :class:`Device` is one :class:`wsnode.client.Client` of a user, with the
pod URLs in its own order, so users with two devices usually hold connections
on two pods at once. The SDK reconnects (backoff, drains), acks and dedups by
id; the device records the first time it got each id, counts copies the app
was given again, and adds the SDK's own count of resent copies it suppressed.
A client the SDK stopped for good (a final handshake refusal) is replaced by a
new one and counted. A device away from its home pod (the first of its URLs)
goes home now and then (``churn_every`` seconds on average) with a new client:
without that, pod kills would herd every client onto the pod killed least, and
users would stop holding connections on two pods. Devices at home never churn,
and nobody churns once :meth:`Device.settle` is called, so that a reconnect's
replay cannot hide a message that a connected user was never resent.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Container
from dataclasses import dataclass, field

from tests.support.pods import SECRET
from wsnode.auth import mint_token
from wsnode.client import Backoff, Client, ClientError, State, StateChange

Clock = Callable[[], float]
LATE_TOLERANCE_MS = 2000


@dataclass(slots=True)
class Device:
    name: str
    user: str
    urls: list[str]
    clock: Clock
    rng: random.Random
    home: str = ""  # pod id of urls[0], filled in by make_devices
    churn_every: float | None = None
    first_seen: dict[str, float] = field(default_factory=dict)
    copies: Counter[str] = field(default_factory=Counter)  # copies the app was given
    sdk_duplicates: int = 0  # resent copies the SDK suppressed (of closed clients)
    connections: int = 0  # of closed clients
    client_restarts: int = 0
    churns: int = 0
    errors: list[str] = field(default_factory=list)
    late: dict[str, int] = field(default_factory=dict)  # id -> ms past its expiresAt
    server_errors: Counter[str] = field(default_factory=Counter)  # error frames by code
    last_change: str = ""  # the latest state change of its client, for the report
    _client: Client | None = None
    _stopping: bool = False
    _went_home: bool = False

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.state is State.CONNECTED

    @property
    def pod(self) -> str | None:
        return self._client.pod if self._client is not None else None

    @property
    def suppressed(self) -> int:
        """Resent copies of ACK-required messages the SDK did not give again."""
        live = self._client.duplicates if self._client is not None else 0
        return self.sdk_duplicates + live

    def repeats(self, ids: Container[str]) -> int:
        """Copies of these ids beyond the first that the app was given."""
        return sum(n - 1 for msg_id, n in self.copies.items() if msg_id in ids)

    @property
    def total_connections(self) -> int:
        live = self._client.connections if self._client is not None else 0
        return self.connections + live

    def _token(self) -> str:
        return mint_token(SECRET, self.user, 3600)

    async def run(self) -> None:
        """Stay connected until :meth:`stop`."""
        while not self._stopping:
            client = Client(self.urls, token_provider=self._token, open_timeout=5.0,
                            backoff=Backoff(0.2, 2.0), ping_interval=5.0,
                            dedup_window=1_000_000)
            self._client = client
            client.on_error(lambda e: self.server_errors.update([f"{e.code}: {e.message}"[:80]]))
            client.on_state(self._on_state)
            homeward = asyncio.create_task(self._go_home(client))
            try:
                await client.connect()
                async for msg in client:
                    if msg.id is not None:
                        self.copies[msg.id] += 1
                        self.first_seen.setdefault(msg.id, self.clock())
                        self._check_expiry(msg.id, msg.expires_at)
                    if msg.requires_ack:
                        client.ack(msg)
            except ClientError as exc:
                if not self._stopping:
                    self.errors.append(f"{self.clock():.1f}s {type(exc).__name__}: {exc}"[:300])
            finally:
                homeward.cancel()
                await client.close()
                self.sdk_duplicates += client.duplicates
                self.connections += client.connections
                self._client = None
            if self._went_home:
                self._went_home = False
            elif not self._stopping:
                self.client_restarts += 1
                await asyncio.sleep(1.0)

    async def _go_home(self, client: Client) -> None:
        """Close ``client`` (the run loop makes a new one) once it is found away
        from home after a random wait; repeat the wait while it is at home."""
        while self.churn_every:
            await asyncio.sleep(self.rng.expovariate(1 / self.churn_every))
            if self.churn_every and client.pod is not None and client.pod != self.home:
                self.churns += 1
                self._went_home = True
                await client.close()
                return
        await asyncio.Event().wait()  # churn is off: wait to be cancelled

    def settle(self) -> None:
        """No more churn (the check needs clients that stay where they are)."""
        self.churn_every = None

    def _on_state(self, change: StateChange) -> None:
        self.last_change = f"{self.clock():.1f}s {change.state.value} {change.url or ''} " \
                           f"{change.reason}".strip()

    def _check_expiry(self, msg_id: str, expires_at: int | None) -> None:
        """A message must not reach a client after its ``expiresAt`` (2 s are
        left for the way from the pod's check to this client on a busy machine)."""
        if expires_at is not None:
            past = int(time.time() * 1000) - expires_at
            if past > LATE_TOLERANCE_MS:
                self.late[msg_id] = past

    async def stop(self) -> None:
        self._stopping = True
        if self._client is not None:
            await self._client.close()


def make_devices(users: list[str], pods: list[str], urls: list[str], clock: Clock,
                 rng: random.Random, churn_every: float | None,
                 two_device_every: int = 3) -> list[Device]:
    """One device per user, a second one for every ``two_device_every``-th user,
    each with the pod URLs rotated so the two start on different pods."""
    devices = []
    for i, user in enumerate(users):
        count = 2 if i % two_device_every == 0 else 1
        for d in range(count):
            start = (i + d) % len(urls)
            devices.append(Device(f"{user}/d{d}", user, urls[start:] + urls[:start], clock,
                                  random.Random(rng.random()), pods[start], churn_every))
    return devices
