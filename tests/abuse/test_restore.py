"""Item 3 of issue 12: ``restore`` replays the whole backlog, so it is bounded:
one replay at a time per connection, and RESTORE_RATE (2/10s) per connection;
the excess gets ``rate_limited`` with ``retryAfterMs``."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.abuse.conftest import AbusePods
from tests.support.client import Client
from tests.support.waits import api

PENDING = 300  # more than one page of a replay (200)


async def frames_until(client: Client, done: int, kind: str = "restore"
                       ) -> list[dict[str, Any]]:
    """Frames up to and including the ``done``-th frame of type ``kind``."""
    frames: list[dict[str, Any]] = []
    while sum(f["type"] == kind for f in frames) < done:
        frames.append(await client.recv(timeout=20))
    return frames


async def test_restores_run_one_at_a_time_and_are_rate_limited(abuse_pods: AbusePods) -> None:
    pod = abuse_pods(env={"WSNODE_ACK_RETRY_INTERVAL": "60s"},
                     args=["--app", "wsnode.examples.chat"])
    for i in range(PENDING):
        await api(pod, "POST", "/v1/send", {"user": "carol", "envelope": {
            "type": "notification", "id": f"n-{i}", "requiresAck": True, "payload": {"i": i}}})
    async with await Client.open(pod.ws_url, pod.token("carol")) as carol:
        assert len(carol.replay) == PENDING  # the replay at connect is not a restore
        for _ in range(3):
            await carol.send({"type": "restore"})
        frames = await frames_until(carol, 2)
        ends = [i for i, f in enumerate(frames) if f["type"] == "restore"]
        # Two full replays, the second after the end of the first: never interleaved.
        assert ends == [PENDING, 2 * PENDING + 1]
        assert [f["id"] for f in frames[:PENDING]] == [f"n-{i}" for i in range(PENDING)]
        assert [f["id"] for f in frames[PENDING + 1:-1]] == [f"n-{i}" for i in range(PENDING)]
        refused = await carol.expect("error")
        assert refused["payload"]["code"] == "rate_limited"
        wait_ms = refused["payload"]["retryAfterMs"]
        assert 0 < wait_ms <= 10_000
        # The connection lives on, and the hint is honest.
        await carol.send({"type": "ping", "payload": 1})
        assert (await carol.expect("pong"))["payload"] == 1
        await asyncio.sleep(wait_ms / 1000 + 0.2)
        await carol.send({"type": "restore", "payload": {"since": 0}})
        again = await frames_until(carol, 1)
        assert again[-1]["payload"] == {"replayed": PENDING}


async def test_restore_rate_can_be_turned_off(abuse_pods: AbusePods) -> None:
    pod = abuse_pods(env={"WSNODE_RESTORE_RATE": "0"}, args=["--app", "wsnode.examples.chat"])
    async with await Client.open(pod.ws_url, pod.token("dave")) as dave:
        for _ in range(5):
            await dave.send({"type": "restore"})
        frames = await frames_until(dave, 5)
        assert all(f["type"] == "restore" for f in frames)
