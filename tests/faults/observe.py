"""What a fault test looks at: a pod's API, metrics, readiness, trails and
dead letters, and the frames a client got."""

from __future__ import annotations

import asyncio
import http.client
import urllib.error
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.faults.conftest import FaultCluster
from tests.support.client import Client
from tests.support.pods import PodProcess
from tests.support.waits import api, eventually


def envelope(msg_id: str, *, ack: bool = True, typ: str = "note", **extra: Any) -> dict[str, Any]:
    env: dict[str, Any] = {"type": typ, "id": msg_id, "payload": {"id": msg_id}, **extra}
    if ack:
        env["requiresAck"] = True
    return env


async def send(pod: PodProcess, user: str, env: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/send``, which must succeed; the report."""
    report: dict[str, Any] = await api(pod, "POST", "/v1/send", {"user": user, "envelope": env})
    return report


def send_blocking(pod: PodProcess, user: str, env: dict[str, Any],
                  timeout: float = 60) -> tuple[int, Any] | BaseException:
    """``POST /v1/send`` to a pod that may die or hang meanwhile: the answer, or
    the error the connection ended with."""
    try:
        return pod.api("POST", "/v1/send", {"user": user, "envelope": env}, timeout=timeout)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        return exc


async def metrics(pod: PodProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, by (name, sorted labels)."""
    status, text = await asyncio.to_thread(pod.api, "GET", "/metrics", None, None)
    assert status == 200, (status, text)
    out = {}
    for family in text_string_to_metric_families(str(text)):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def metric(pod: PodProcess, name: str, **labels: str) -> float:
    """One sample of ``/metrics`` (0 when absent)."""
    return (await metrics(pod)).get((name, tuple(sorted(labels.items()))), 0.0)


async def readyz(pod: PodProcess) -> tuple[int, dict[str, Any]]:
    status, doc = await asyncio.to_thread(pod.api, "GET", "/readyz", None, None)
    assert isinstance(doc, dict), doc
    return status, doc


async def trail(pod: PodProcess, msg_id: str) -> list[dict[str, Any]]:
    status, doc = await asyncio.to_thread(pod.api, "GET", f"/v1/trace/{msg_id}")
    if status == 404:
        return []
    assert status == 200, (status, doc)
    events: list[dict[str, Any]] = doc["events"]
    return events


async def frames_until(client: Client, want: set[str], timeout: float,
                       typ: str = "note", quiet: float | None = None) -> list[dict[str, Any]]:
    """Frames of type ``typ`` until every id of ``want`` came (other types are
    skipped); fails after ``timeout`` seconds, or once no frame came for
    ``quiet`` seconds (a stream that has ended)."""
    got: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not want <= {f["id"] for f in got}:
        left = deadline - loop.time()
        if left <= 0:
            missing = sorted(want - {f["id"] for f in got})
            raise AssertionError(f"not within {timeout}s: {len(missing)} missing: {missing}")
        try:
            frame = await client.recv(timeout=min(left, quiet or left))
        except TimeoutError:
            if quiet is not None and loop.time() < deadline:
                missing = sorted(want - {f["id"] for f in got})
                raise AssertionError(f"nothing for {quiet}s and {len(missing)} missing: "
                                     f"{missing}") from None
            continue
        if frame["type"] == typ:
            got.append(frame)
    return got


async def dead_letter_visible(faults: FaultCluster, pod: PodProcess, user: str, msg_id: str,
                              reason: str) -> None:
    """The dead letter ``msg_id`` of ``user`` is visible with ``reason`` in the
    pod's metrics, the message's trail, ``GET /v1/dlq`` and ``wsctl dlq ls``
    (the send report is the caller's to check)."""
    assert await metric(pod, "wsnode_acks_dead_lettered_total", reason=reason) >= 1

    async def traced() -> bool:
        return any(e["event"] == "dead" and e.get("reason") == reason
                   for e in await trail(pod, msg_id))
    await eventually(traced, 15, f"a 'dead' event with reason {reason} in the trail of {msg_id}")
    listed = await api(pod, "GET", f"/v1/dlq?user={user}")
    assert [(m["id"], m["reason"]) for m in listed["messages"] if m["id"] == msg_id] \
        == [(msg_id, reason)], listed
    done = await faults.wsctl("dlq", "ls", "--user", user, "--json")
    assert done.returncode == 0, done.stderr
    rows = orjson.loads(done.stdout)["messages"]
    assert [(m["id"], m["reason"]) for m in rows if m["id"] == msg_id] == [(msg_id, reason)], rows
