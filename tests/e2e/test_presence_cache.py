"""Issue 13: senders cache where users are, and a user who moves misses nothing.

A sender on pod C streams at-most-once messages at a user while the user opens
a second device on pod B and then closes the first, on pod A. C reads presence
from its cache (the test checks it did), which the pods' presence feed keeps
true: a connection gets every message sent after its ``restore`` frame, give
or take the moment the other pods take to hear of it (``GRACE``, generous for
a busy machine), until it starts closing.
"""

from __future__ import annotations

import asyncio
import time

from tests.conftest import PodFactory
from tests.support.client import Client
from tests.support.cluster import ClusterSlice
from tests.support.pods import PodProcess

GRACE = 1.0
RATE = 150  # messages per second


async def metric(pod: PodProcess, name: str) -> float:
    _, text = await asyncio.to_thread(pod.api, "GET", "/metrics", None, None)
    for line in str(text).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def test_a_user_moving_pods_while_a_sender_streams_misses_nothing(
        pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    a, b, c = [cluster.adopt(pod_factory(n, env=cluster.env(WSNODE_RATE_LIMIT="0"),
                                         args=["--app", "wsnode.examples.chat"]))
               for n in ("pod-a", "pod-b", "pod-c")]
    sender = await Client.open(c.ws_url, c.token("tx"))
    first = await Client.open(a.ws_url, a.token("mover"))
    windows: dict[str, list[float]] = {"first": [time.monotonic(), float("inf")]}
    got: dict[str, set[int]] = {"first": set(), "second": set()}
    sent: list[tuple[int, float]] = []
    stop = asyncio.Event()

    async def stream() -> None:
        n = 0
        while not stop.is_set():
            sent.append((n, time.monotonic()))
            await sender.send({"type": "chat_message", "payload": {"to": "mover", "n": n}})
            n += 1
            await asyncio.sleep(1 / RATE)

    async def read(name: str, client: Client) -> None:
        while True:
            try:
                frame = await client.recv(timeout=30)
            except Exception:
                return
            if frame["type"] == "chat_message":
                got[name].add(frame["payload"]["n"])

    streaming = asyncio.create_task(stream())
    readers = [asyncio.create_task(read("first", first))]
    await asyncio.sleep(1.5)
    second = await Client.open(b.ws_url, b.token("mover"))  # returns after its restore
    windows["second"] = [time.monotonic(), float("inf")]
    readers.append(asyncio.create_task(read("second", second)))
    await asyncio.sleep(1.5)
    windows["first"][1] = time.monotonic()
    await first.close()
    await asyncio.sleep(1.5)
    stop.set()
    await streaming
    windows["second"][1] = time.monotonic()
    await asyncio.sleep(GRACE)  # the last ones land
    await second.close()
    await asyncio.gather(*readers)

    for name, (opened, closed) in windows.items():
        owed = {n for n, at in sent if opened + GRACE <= at <= closed - GRACE}
        assert owed, f"{name}: the test sent nothing in its window"
        assert owed <= got[name], (name, sorted(owed - got[name])[:20])
    assert await metric(c, 'wsnode_presence_lookups_total{result="hit"}') > len(sent) / 2, \
        "pod-c routed without its presence cache"
