"""Pod states (DESIGN §10): a pod whose lease lives but whose admin port does
not answer is ``unreachable`` in ``wsctl pods ls``, and ``wsctl doctor``'s
lines about it agree with each other (issue 16, item 7)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import aiohttp
import orjson

from tests.conftest import PodFactory
from tests.support.cluster import ClusterSlice
from tests.support.pods import PodProcess, base_env, free_port
from wsnode import podprobe
from wsnode.ids import PodId
from wsnode.presence import PodInfo, PodState

# Heartbeats every 10 s: a killed pod's lease (3 heartbeats) outlives every
# check below by far, even on a busy machine.
SLOW_LEASE = {"WSNODE_HEARTBEAT_INTERVAL": "10s"}


def wsctl(cluster: ClusterSlice, *args: str) -> subprocess.CompletedProcess[str]:
    env = base_env(**cluster.env(**SLOW_LEASE), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "wsctl", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def start(pod_factory: PodFactory, cluster: ClusterSlice, *names: str) -> list[PodProcess]:
    return [cluster.adopt(pod_factory(n, env=cluster.env(**SLOW_LEASE))) for n in names]


def checks_of(done: subprocess.CompletedProcess[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for check in orjson.loads(done.stdout)["checks"]:
        out.setdefault(check["name"], []).append(check)
    return out


async def test_a_killed_pod_is_unreachable_and_doctor_agrees(
        pod_factory: PodFactory, cluster: ClusterSlice) -> None:
    start(pod_factory, cluster, "pod-a", "pod-b")
    listed = await asyncio.to_thread(wsctl, cluster, "pods", "ls", "--json")
    assert {p["pod"]: p["state"] for p in orjson.loads(listed.stdout)["pods"]} \
        == {"pod-a": "active", "pod-b": "active"}

    cluster.processes[1].kill()  # SIGKILL: no drain, no leave; its lease lives on
    listed = await asyncio.to_thread(wsctl, cluster, "pods", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {p["pod"]: p["state"] for p in orjson.loads(listed.stdout)["pods"]} \
        == {"pod-a": "active", "pod-b": "unreachable"}
    human = await asyncio.to_thread(wsctl, cluster, "pods", "ls")
    row = next(line for line in human.stdout.splitlines() if "pod-b" in line)
    assert "unreachable" in row
    # The admin API of the live pod says the same (and wsctl --node with it).
    status, body = await asyncio.to_thread(cluster.processes[0].api, "GET", "/v1/pods")
    assert status == 200
    assert {p["pod"]: p["state"] for p in body["pods"]} \
        == {"pod-a": "active", "pod-b": "unreachable"}

    doctor = await asyncio.to_thread(wsctl, cluster, "doctor", "--json")
    assert doctor.returncode == 1
    checks = checks_of(doctor)
    pods = checks["pods"][0]
    assert pods["status"] == "FAIL"  # never "pods OK" beside a pod that FAILs
    assert "pod-b (unreachable)" in pods["detail"] and "pod-a (active)" in pods["detail"]
    assert [c["status"] for c in checks["pod pod-b"]] == ["FAIL"]
    assert checks["pod pod-b"][0]["detail"].startswith("unreachable")
    assert [c["status"] for c in checks["pod pod-a"]] == ["OK"]
    queue = checks["queue pod-b"][0]
    assert queue["status"] == "FAIL" and "does not answer" in queue["detail"]
    assert not any("deaf" in c["detail"] for c in doctor_checks(doctor)
                   if "pod-b" in c["name"]), "a dead pod is not deaf"
    assert checks["queue pod-a"][0]["status"] == "OK"
    failed = sorted(c["name"] for c in doctor_checks(doctor) if c["status"] == "FAIL")
    assert failed == ["pod pod-b", "pods", "queue pod-b"]
    assert "unhealthy: pods, pod pod-b, queue pod-b" in doctor.stderr


def doctor_checks(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return list(orjson.loads(done.stdout)["checks"])


async def test_probe_tells_reachable_from_unreachable(pod_factory: PodFactory) -> None:
    pod = pod_factory("probe-a")
    infos = [
        PodInfo(PodId("up"), PodState.ACTIVE, 1, 1, 0, pod.admin_url),
        PodInfo(PodId("closed"), PodState.ACTIVE, 1, 1, 0, f"http://127.0.0.1:{free_port()}"),
        # Something answers there, but not a wsnode admin port (the public port: 404).
        PodInfo(PodId("other"), PodState.DRAINING, 0, 0, 0, f"http://127.0.0.1:{pod.port}"),
        PodInfo(PodId("no-url"), PodState.DRAINING, 0, 0, 0, None),
    ]
    states = {p.pod: p.state for p in await podprobe.probe(infos)}
    assert states == {"up": PodState.ACTIVE, "closed": PodState.UNREACHABLE,
                      "other": PodState.UNREACHABLE, "no-url": PodState.DRAINING}
    answers = await podprobe.ask(infos)
    assert answers[PodId("up")].reachable and answers[PodId("up")].body is not None
    assert "connection failed" in (answers[PodId("closed")].error or "")
    assert "HTTP 404" in (answers[PodId("other")].error or "")
    # The caller itself is not asked (the admin API lists its own pod as it is).
    async with aiohttp.ClientSession() as session:
        kept = await podprobe.probe(infos[1:2], session=session, skip={PodId("closed")})
    assert kept[0].state is PodState.ACTIVE
