"""Producers of the soak and the ledger of what they sent.

ACK-required messages get unique ids and go through ``POST /v1/send`` of a
random pod. A call that fails or times out is retried with the **same id** on
the next pod (sends are idempotent on id) until one answers 200 or the
message's retry window ends. A message is *accepted* once any call for it
answered 200; only accepted messages are owed to their user.

A share of the ACK-required messages (``expiring``) carries an ``expiresAt``
2-10 s ahead: if it cannot be delivered in time it must be dead-lettered
(reason ``expired``), and it must never be delivered after that instant. A
retry past its ``expiresAt`` is not made (the pod would refuse it).

At-most-once messages get unique ids too (so receipts can be matched) and are
sent once, to one random pod, never retried.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.chaos.world import World

Clock = Callable[[], float]
# Statuses no retry can fix: a bug of the harness, not a fault.
_FINAL = {"400", "401", "403", "404", "413"}


@dataclass(slots=True)
class Call:
    pod: str
    start: float
    end: float
    outcome: str  # "200", another status, "timeout" or "error: <kind>"

    def to_json(self) -> dict[str, Any]:
        return {"pod": self.pod, "start": round(self.start, 3), "end": round(self.end, 3),
                "outcome": self.outcome}


@dataclass(slots=True)
class AckMessage:
    id: str
    user: str
    created: float
    calls: list[Call] = field(default_factory=list)
    accepted_at: float | None = None
    report: dict[str, Any] | None = None  # the first 200's answer
    expires_at: int | None = None  # epoch ms

    @property
    def accepted(self) -> bool:
        return self.accepted_at is not None


@dataclass(slots=True)
class AmoMessage:
    id: str
    user: str
    created: float
    call: Call | None = None

    @property
    def accepted(self) -> bool:
        return self.call is not None and self.call.outcome == "200"


@dataclass(slots=True)
class Ledger:
    acks: dict[str, AckMessage] = field(default_factory=dict)
    amos: dict[str, AmoMessage] = field(default_factory=dict)
    harness_errors: list[str] = field(default_factory=list)


class Traffic:
    """Poisson producers at ``ack_rate`` and ``amo_rate`` messages per second."""

    def __init__(self, world: World, ledger: Ledger, users: list[str], rng: random.Random,
                 clock: Clock, *, ack_rate: float, amo_rate: float, expiring: float = 0.0,
                 call_timeout: float = 5.0, retry_for: float = 30.0,
                 max_in_flight: int = 200) -> None:
        self.world = world
        self.ledger = ledger
        self.users = users
        self.rng = rng
        self.clock = clock
        self.ack_rate = ack_rate
        self.amo_rate = amo_rate
        self.expiring = expiring
        self.call_timeout = call_timeout
        self.retry_for = retry_for
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._n = 0

    async def run(self, until: float) -> None:
        """Send until ``until`` (clock time), then wait for sends in flight
        (each bounded by its retry window)."""
        try:
            async with asyncio.TaskGroup() as group:
                if self.ack_rate > 0:
                    group.create_task(self._produce(until, self.ack_rate, ack=True))
                if self.amo_rate > 0:
                    group.create_task(self._produce(until, self.amo_rate, ack=False))
            if self._tasks:
                await asyncio.gather(*self._tasks)
        finally:
            for task in self._tasks:
                task.cancel()

    async def _produce(self, until: float, rate: float, *, ack: bool) -> None:
        send = self._send_ack if ack else self._send_amo
        while self.clock() < until:
            await asyncio.sleep(self.rng.expovariate(rate))
            await self._slots.acquire()
            self._n += 1
            msg_id = f"{self.world.prefix}-{'a' if ack else 'o'}{self._n}"
            task = asyncio.create_task(send(msg_id, self.rng.choice(self.users)))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            self.ledger.harness_errors.append(f"producer task failed: {task.exception()!r}")

    def _body(self, msg_id: str, user: str, ack: bool,
              expires_at: int | None = None) -> dict[str, Any]:
        env: dict[str, Any] = {"type": "chaos", "id": msg_id, "requiresAck": ack,
                               "payload": {"sentAt": time.time(), "ack": ack}}
        if expires_at is not None:
            env["expiresAt"] = expires_at
        return {"user": user, "envelope": env}

    async def _send_ack(self, msg_id: str, user: str) -> None:
        msg = AckMessage(msg_id, user, self.clock())
        if self.rng.random() < self.expiring:
            msg.expires_at = int((time.time() + self.rng.uniform(2.0, 10.0)) * 1000)
        self.ledger.acks[msg_id] = msg
        body = self._body(msg_id, user, True, msg.expires_at)
        order = self.rng.sample(self.world.pod_ids, len(self.world.pod_ids))
        deadline = msg.created + self.retry_for
        attempt = 0
        while self.clock() < deadline:
            if msg.expires_at is not None and time.time() * 1000 > msg.expires_at - 500:
                return  # too late to send: never accepted
            pod = order[attempt % len(order)]
            attempt += 1
            start = self.clock()
            outcome, answer = await self.world.call(pod, "POST", "/v1/send", body,
                                                    timeout=self.call_timeout)
            msg.calls.append(Call(pod, start, self.clock(), outcome))
            if outcome == "200":
                msg.accepted_at = self.clock()
                msg.report = answer if isinstance(answer, dict) else None
                return
            if outcome in _FINAL:
                if not (outcome == "400" and msg.expires_at is not None
                        and time.time() * 1000 > msg.expires_at - 5000):
                    self.ledger.harness_errors.append(
                        f"send {msg_id}: {outcome} {answer!r:.200}")
                return  # (a retry that came too close to its expiresAt: refused)
            await asyncio.sleep(self.rng.uniform(0.1, 0.5))

    async def _send_amo(self, msg_id: str, user: str) -> None:
        msg = AmoMessage(msg_id, user, self.clock())
        self.ledger.amos[msg_id] = msg
        pod = self.rng.choice(self.world.pod_ids)
        start = self.clock()
        outcome, answer = await self.world.call(pod, "POST", "/v1/send",
                                                self._body(msg_id, user, False),
                                                timeout=self.call_timeout)
        msg.call = Call(pod, start, self.clock(), outcome)
        if outcome in _FINAL:
            self.ledger.harness_errors.append(f"send {msg_id}: {outcome} {answer!r:.200}")
