"""ACK-required traffic for failover tests: devices that count what they get,
and a loop of sends through a pod's admin API that records what was accepted.

A message counts as accepted when ``POST /v1/send`` answered that it is stored:
from then on the cluster owns it, and the test asserts its id reaches its user.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter

import orjson
from websockets.exceptions import ConnectionClosed

from tests.support.client import Client
from tests.support.pods import PodProcess


class Device:
    """A connected user that acks every ACK-required frame and counts them by id
    (the replay it got on connecting included)."""

    def __init__(self, user: str, client: Client) -> None:
        self.user = user
        self.client = client
        self.counts: Counter[str] = Counter()
        self.closed: BaseException | None = None
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            for frame in self.client.replay:
                if frame.get("requiresAck") and frame.get("id"):
                    self.counts[frame["id"]] += 1
                    await self.client.ack(frame["id"])
            while True:
                frame = orjson.loads(await self.client.ws.recv())
                if frame.get("requiresAck") and frame.get("id"):
                    self.counts[frame["id"]] += 1
                    await self.client.ack(frame["id"])
        except ConnectionClosed as exc:
            self.closed = exc

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
        with contextlib.suppress(Exception):
            await self.client.close()


class Traffic:
    """ACK-required sends through ``via``'s admin API to ``users``, in a loop,
    until :meth:`stop`. ``accepted_at``: when each accepted send was answered
    (``time.monotonic``), to measure a stall."""

    def __init__(self, via: PodProcess, users: list[str], tag: str) -> None:
        self.via, self.users, self.tag = via, users, tag
        self.accepted: dict[str, str] = {}  # id -> user
        self.accepted_at: list[float] = []
        self.unroutable: list[str] = []  # accepted, but publishing to the user's pod failed
        self.refused: list[tuple[int, object]] = []
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            user, msg_id = self.users[i % len(self.users)], f"{self.tag}-{i}"
            i += 1
            status, report = await asyncio.to_thread(
                self.via.api, "POST", "/v1/send",
                {"user": user, "envelope": {"type": "note", "id": msg_id, "requiresAck": True,
                                            "payload": {"i": i}}}, timeout=20)
            if status == 200 and isinstance(report, dict) and report["stored"]:
                self.accepted[msg_id] = user
                self.accepted_at.append(time.monotonic())
                if report["failedPods"]:
                    self.unroutable.append(msg_id)
            else:
                self.refused.append((status, report))
            await asyncio.sleep(0.02)

    def stall_after(self, moment: float) -> float:
        """The longest time without an accepted send, from ``moment`` (a fault)
        on: how long the fault stopped this flow."""
        times = [moment, *(t for t in self.accepted_at if t > moment)]
        if len(times) == 1:
            return float("inf")
        return max(b - a for a, b in itertools.pairwise(times))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(self._task, 30)


def all_delivered(devices: dict[str, Device], flow: Traffic) -> bool:
    """Every accepted message of ``flow`` reached its user at least once."""
    return all(devices[user].counts[msg_id] >= 1 for msg_id, user in list(flow.accepted.items()))
