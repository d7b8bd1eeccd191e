"""Background loops under faults: an exception in a resend claim, Redis refusing
writes for a few seconds, a corrupt member of the global lives set. Every loop
keeps running, /readyz names the failing ones while they fail, and no message
is lost."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from tests.faults.conftest import FaultCluster
from tests.faults.observe import envelope, frames_until, metric, readyz, send
from tests.support.client import Client
from tests.support.pods import PodProcess, free_port
from tests.support.waits import api, eventually
from wsnode.keys import BUCKETS


async def test_exception_in_a_resend_claim(faults: FaultCluster) -> None:
    fast = {"WSNODE_ACK_RETRY_INTERVAL": "500ms"}
    a, b = await faults.pods(a={"WSNODE_FAILPOINTS": "resend.claim=3*raise", **fast},
                             b={"WSNODE_FAILPOINTS": "resend.claim=raise", **fast})
    # A: the first three claims raise; the resend still comes.
    on_a = await Client.open(a.ws_url, a.token("u1"))
    await send(a, "u1", envelope("m1"))
    first = await on_a.expect("note")
    again = await on_a.expect("note", timeout=15)
    assert (first["id"], first["seq"]) == (again["id"], again["seq"]) == ("m1", 1)
    await on_a.ack("m1")
    assert "resend claim for user 'u1' failed" in a.log()
    assert await metric(a, "wsnode_acks_resent_total") >= 1

    # B: every claim raises; /readyz names the resend loop while it fails.
    on_b = await Client.open(b.ws_url, b.token("u2"))
    await send(b, "u2", envelope("m2"))
    assert (await on_b.expect("note"))["id"] == "m2"

    async def resend_named() -> dict[str, Any] | None:
        status, doc = await readyz(b)
        return doc if status == 503 and doc["checks"].get("resend") is False else None
    doc = await eventually(resend_named, 15, "B's /readyz names the resend loop")
    assert "resend" in doc["problems"], doc
    assert doc["checks"]["presence"] is True and doc["checks"]["bus"] is True, doc
    # Once B holds nobody with a resend due, nothing fails any more.
    await on_b.close()

    async def ready_again() -> bool:
        return (await readyz(b))[0] == 200
    await eventually(ready_again, 20, "B ready once it holds no due user")


async def _window(name: str, start: Callable[[], Awaitable[Any]],
                  end: Callable[[], Awaitable[Any]], pods: list[PodProcess],
                  loops: set[str]) -> None:
    """Redis refuses writes (``name`` in its errors) for a few seconds: every pod
    answers /readyz 503 naming ``loops`` meanwhile, 200 after, and logged it."""
    clock = asyncio.get_running_loop()
    began = clock.time()
    await start()
    try:
        for pod in pods:
            async def named(pod: PodProcess = pod) -> bool:
                status, doc = await readyz(pod)
                problems = doc.get("problems", {})
                failing = {loop for loop, why in problems.items() if name in why}
                return status == 503 and loops <= failing
            await eventually(named, 15, f"{pod.pod_id}: /readyz 503 naming {sorted(loops)} "
                                        f"with {name}")
        await asyncio.sleep(max(0.0, began + 3.0 - clock.time()))  # a window of 3 s or more
    finally:
        await end()
    for pod in pods:
        async def ready(pod: PodProcess = pod) -> bool:
            return (await readyz(pod))[0] == 200
        await eventually(ready, 20, f"{pod.pod_id} ready after the {name} window")
        assert name in pod.log(), f"{pod.pod_id} logged nothing about {name}"


async def test_redis_refuses_writes_for_a_few_seconds(faults: FaultCluster) -> None:
    a, b = await faults.pods(a={}, b={})
    on_a = await Client.open(a.ws_url, a.token("u1"))
    on_b = await Client.open(b.ws_url, b.token("u2"))
    r = faults.redis
    await r.config_set("maxmemory-policy", "noeviction")
    # What fails in each window: the heartbeat renews with a write (under OOM
    # Redis lets that script's writes through, its first write being a PEXPIRE,
    # which OOM does not refuse); resend claims of a due message write.
    windows: list[tuple[str, Callable[[], Awaitable[Any]], Callable[[], Awaitable[Any]],
                        set[str]]] = [
        ("READONLY",  # a failover demoted this server for a moment
         lambda: r.execute_command("REPLICAOF", "127.0.0.1", str(free_port())),
         lambda: r.execute_command("REPLICAOF", "NO", "ONE"), {"heartbeat", "resend"}),
        ("NOREPLICAS",
         lambda: r.config_set("min-replicas-to-write", 1),
         lambda: r.config_set("min-replicas-to-write", 0), {"heartbeat", "resend"}),
        ("OOM",
         lambda: r.config_set("maxmemory", 1),
         lambda: r.config_set("maxmemory", 0), {"resend"}),
    ]
    for n, (name, start, end, loops) in enumerate(windows):
        # Each user has an unacked message, due for resends during the window.
        for pod, client, user in ((a, on_a, "u1"), (b, on_b, "u2")):
            probe = f"probe-{n}-{user}"
            await send(pod, user, envelope(probe))
            for frame in await frames_until(client, {probe}, timeout=10):
                if frame["id"] != probe:  # a late copy of an earlier one
                    await client.ack(frame["id"])
        await _window(name, start, end, [a, b], loops)

        # Presence is whole again, and a message crosses from B to the user on A.
        async def whole() -> bool:
            users = (await api(a, "GET", "/v1/presence"))["users"]
            return {u["user"]: u["pods"] for u in users} == {"u1": ["pod-a"], "u2": ["pod-b"]}
        await eventually(whole, 15, f"presence whole after the {name} window")
        msg_id = f"after-{n}"
        report = await send(b, "u1", envelope(msg_id))
        assert report["pods"] == ["pod-a"], report
        # Resends of the probes come too. An ack that lands in the next window
        # fails (an error frame says so) and the message comes again, acked then.
        for client, want in ((on_a, {msg_id, f"probe-{n}-u1"}), (on_b, {f"probe-{n}-u2"})):
            for frame in await frames_until(client, want, timeout=20):
                await client.ack(frame["id"])


async def test_corrupt_member_of_the_lives_set(faults: FaultCluster) -> None:
    a, b = await faults.pods(a={}, b={})
    on_a = await Client.open(a.ws_url, a.token("u1"))
    await Client.open(b.ws_url, b.token("u2"))
    r = faults.redis
    # A bucket of the set of lives, and the unbucketed set older versions write.
    sets = [faults.keys.lives(3), faults.keys.lives_unbucketed]
    for key in sets:
        await r.sadd(key, "garbage")

    async def removed() -> bool:
        return not any([await r.sismember(key, "garbage") for key in sets])
    await eventually(removed, 15, "the corrupt member removed")
    # Heartbeats go on: A's lease is renewed.
    first = await _heartbeat_of(a, "pod-a")

    async def renewed() -> bool:
        return await _heartbeat_of(a, "pod-a") > first
    await eventually(renewed, 15, "pod-a's heartbeat renewed")
    # Reaping goes on: B dies, and its life and its user's entry are purged.
    b.signal(signal.SIGKILL)

    async def reaped() -> bool:
        members = [m for b in range(BUCKETS) for m in await r.smembers(faults.keys.lives(b))]
        conns = await r.hlen(faults.keys.user_conns("u2"))
        return conns == 0 and not any(m.startswith(b"pod-b ") for m in members)
    await eventually(reaped, 20, "pod-b's life reaped")
    async def a_ready() -> bool:
        return (await readyz(a))[0] == 200
    await eventually(a_ready, 15, "pod-a ready")
    await send(a, "u1", envelope("m1"))
    assert (await on_a.expect("note"))["id"] == "m1"
    await on_a.ack("m1")


async def _heartbeat_of(via: PodProcess, pod: str) -> int:
    pods = (await api(via, "GET", "/v1/pods"))["pods"]
    return next(int(p["lastHeartbeat"]) for p in pods if p["pod"] == pod)
