"""The Locust swarm (loadtests/) and ``wsctl swarm`` against a real pod."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
import redis

from tests.conftest import PodFactory
from tests.support.cluster import REDIS_URL, ClusterSlice
from tests.support.pods import PodProcess, free_port
from wsnode.keys import BUCKETS, RedisKeys

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def chat_pod(pod_factory: PodFactory) -> PodProcess:
    return pod_factory("swarm-pod", env={"WSNODE_RATE_LIMIT": "0"},
                       args=["--app", "wsnode.examples.chat"])


def run(pod: PodProcess, *cmd: str, timeout: float = 90,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**pod.env, "WSNODE_LOAD_ADMIN": pod.admin_url, "WSNODE_LOAD_CHAT_WAIT": "0.2,0.5",
            "WSNODE_LOAD_NOTIFY_WAIT": "0.2,0.5", **(env or {})}
    return subprocess.run(cmd, cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=timeout, check=False)


def host_of(pod: PodProcess) -> str:
    return pod.ws_url.removesuffix("/ws")


FULL_ID = re.compile(r"lt-[0-9a-f]{6}-[0-9a-f]{16}")


def test_locust_runs_the_swarm_headless(chat_pod: PodProcess) -> None:
    done = run(chat_pod, str(BIN / "locust"), "-f", "loadtests/", "--headless", "-u", "20",
               "-r", "20", "-t", "4s", "--host", chat_pod.ws_url.removesuffix("/ws"),
               "--only-summary", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    stats = {s["name"]: s for s in orjson.loads(done.stdout)}
    for name in ("connect", "chat_message delivery", "notification delivery",
                 "POST /v1/send"):
        assert stats[name]["num_requests"] > 0, name
        assert stats[name]["num_failures"] == 0, name


def test_locust_room_users_chat_in_rooms(chat_pod: PodProcess) -> None:
    """RoomUser: 12 users in 2 rooms of 6, each posting; every member gets every post."""
    done = run(chat_pod, str(BIN / "locust"), "-f", "loadtests/", "--headless", "-u", "12",
               "-r", "12", "-t", "4s", "--host", host_of(chat_pod), "--only-summary",
               "--json", "RoomUser", env={"WSNODE_LOAD_ROOM_SIZE": "6",
                                          "WSNODE_LOAD_ROOM_WAIT": "0.2,0.5"})
    assert done.returncode == 0, done.stderr[-2000:]
    stats = {s["name"]: s for s in orjson.loads(done.stdout)}
    assert stats["join"]["num_requests"] >= 12 and stats["join"]["num_failures"] == 0
    delivered = stats["room_message delivery"]
    # 6 members a room on average: a post is several deliveries.
    assert delivered["num_requests"] > 12 and delivered["num_failures"] == 0
    assert set(stats) == {"connect", "join", "room_message delivery"}, sorted(stats)


def test_wsctl_swarm_summarizes_a_clean_run(chat_pod: PodProcess) -> None:
    began = time.monotonic()
    done = run(chat_pod, str(BIN / "wsctl"), "swarm", "--host",
               chat_pod.ws_url.removesuffix("/ws"), "--users", "20", "--spawn-rate", "20",
               "--run-time", "4s", "--json")
    wall = time.monotonic() - began
    assert done.returncode == 0, done.stderr[-2000:]
    summary = orjson.loads(done.stdout)
    assert summary["users"] == 20
    assert summary["connections"] >= 20
    assert summary["delivered"] > 0 and summary["delivered_per_s"] > 0
    assert summary["lost"] == 0 and summary["errors"] == 0
    assert summary["p50_ms"] is not None and summary["p99_ms"] >= summary["p50_ms"]
    assert summary["failures"] == [] and summary["hints"] == []
    # Locust's own run time, from the ramp-up to the stop: at most the 4 s of
    # --run-time (Locust's clock starts a moment before the ramp-up, more than a
    # moment on a busy machine), never the life of the process around it, which
    # adds seconds of imports and ramp-down.
    seconds, ramp = summary["seconds"], summary["ramp_up_seconds"]
    assert ramp is not None and 0 <= ramp < seconds <= 6.5, (ramp, seconds)
    assert seconds < wall, (seconds, wall)


def test_wsctl_swarm_reports_failures(chat_pod: PodProcess) -> None:
    env_less = dict(chat_pod.env)
    del env_less["WSNODE_JWT_SECRET"]
    done = subprocess.run(
        [str(BIN / "wsctl"), "swarm", "--host", chat_pod.ws_url.removesuffix("/ws"),
         "--users", "5", "--spawn-rate", "5", "--run-time", "2s"],
        cwd=ROOT, env=env_less, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "failed request" in done.stderr


def test_wsctl_swarm_without_loadtests_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(BIN / "wsctl"), "swarm", "--host", "ws://127.0.0.1:1", "--locustfile",
         str(tmp_path / "nothing-here")], capture_output=True, text=True, timeout=30,
        check=False)
    assert done.returncode == 2
    assert "no loadtests/ found" in done.stderr


def test_wsctl_swarm_names_a_missing_handler(pod_factory: PodFactory) -> None:
    bare = pod_factory("no-app", env={"WSNODE_RATE_LIMIT": "0"})  # no --app: no chat handler
    done = run(bare, str(BIN / "wsctl"), "swarm", "--host", host_of(bare), "--users", "6",
               "--spawn-rate", "6", "--run-time", "3s", "--scenario", "ChatUser", "--json")
    assert done.returncode == 1, done.stderr[-2000:]
    summary = orjson.loads(done.stdout)
    top = summary["failures"][0]
    assert (top["request"], top["reason"]) == ("WS error unknown_type",
                                                "type 'chat_message' has no handler")
    assert top["count"] == summary["errors"] > 0
    # The pod refused each message: that error is the failure, not a loss on top.
    assert summary["lost"] == 0
    assert "--app wsnode.examples.chat" in summary["hints"][0]
    assert "most often: type 'chat_message' has no handler" in done.stderr
    assert "hint: the pods have no handler for 'chat_message'" in done.stderr


def test_wsctl_swarm_lists_failure_reasons_for_humans(pod_factory: PodFactory) -> None:
    lossy = pod_factory("lossy", env={"WSNODE_RATE_LIMIT": "0"},
                        args=["--app", "tests.cli.swarm_app"])
    done = run(lossy, str(BIN / "wsctl"), "swarm", "--host", host_of(lossy), "--users", "6",
               "--spawn-rate", "6", "--run-time", "6s", "--scenario", "ChatUser",
               env={"WSNODE_LOAD_LOSS_TIMEOUT": "0.5"})
    assert done.returncode == 1, done.stderr[-2000:]
    assert "top failure reasons" in done.stdout
    # 6 s, not 4: on a busy machine the users connected late and lost only one
    # message in a 4 s run, which cannot show that losses are counted in one row.
    rows = [line for line in done.stdout.splitlines() if "not delivered within 0.5s" in line]
    assert len(rows) == 1, done.stdout  # one row, counted, not one per message
    assert int(re.findall(r"\d+", rows[0])[0]) > 1
    assert "message(s) lost" in done.stderr and not FULL_ID.search(done.stdout + done.stderr)


def test_raw_locust_counts_each_failure_reason_once(pod_factory: PodFactory) -> None:
    lossy = pod_factory("lossy", env={"WSNODE_RATE_LIMIT": "0"},
                        args=["--app", "tests.cli.swarm_app"])
    done = run(lossy, str(BIN / "locust"), "-f", "loadtests/", "--headless", "-u", "6",
               "-r", "6", "-t", "6s", "--host", host_of(lossy), "--only-summary", "ChatUser",
               env={"WSNODE_LOAD_LOSS_TIMEOUT": "0.5"})
    assert done.returncode == 1
    report = done.stderr[done.stderr.index("Error report"):]
    lines = [line for line in report.splitlines() if "not delivered within 0.5s" in line]
    assert len(lines) == 1, report
    assert int(lines[0].split()[0]) > 1
    assert not FULL_ID.search(done.stderr), "no line names a message or user id"


def test_raw_locust_reports_refused_connects_without_tracebacks(tmp_path: Path) -> None:
    closed = f"ws://127.0.0.1:{free_port()}"
    env = {"WSNODE_JWT_SECRET": "s" * 64, "PATH": str(BIN)}
    done = subprocess.run([str(BIN / "locust"), "-f", "loadtests/", "--headless", "-u", "4",
                           "-r", "4", "-t", "2s", "--host", closed, "--only-summary",
                           "ChurnUser"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    report = done.stderr[done.stderr.index("Error report"):]
    refused = [line for line in report.splitlines() if "WS connect" in line]
    assert len(refused) == 1 and "Connection refused" in refused[0], report
    assert int(refused[0].split()[0]) > 1


def test_locust_progress_file_shows_the_ramp_up(chat_pod: PodProcess, tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    seen: list[dict] = []
    proc = subprocess.Popen(
        [str(BIN / "locust"), "-f", "loadtests/", "--headless", "-u", "8", "-r", "2", "-t",
         "7s", "--host", host_of(chat_pod), "--only-summary", "ChatUser"],
        cwd=ROOT, env={**chat_pod.env, "WSNODE_SWARM_STATUS": str(status)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError, orjson.JSONDecodeError):  # not written yet
                seen.append(orjson.loads(status.read_bytes()))
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    # The last write (stopping) can land after the loop's last read.
    seen.append(orjson.loads(status.read_bytes()))
    ramping = [s for s in seen if s["state"] == "spawning"]
    assert any(0 < s["users"] < 8 and s["target"] == 8 for s in ramping), seen[-5:]
    assert any(s["state"] == "running" and s["users"] == 8 for s in seen)
    last = seen[-1]
    assert last["startedAt"] <= last["spawnedAt"] <= last["stoppingAt"]
    assert 2.0 <= last["spawnedAt"] - last["startedAt"] <= 8.0  # 8 users at 2 per second
    # The 7 s of -t, counted by Locust from a moment before the ramp-up (more
    # than a moment on a busy machine): the stop comes after the ramp, within them.
    assert last["spawnedAt"] < last["stoppingAt"] <= last["startedAt"] + 12.0


def test_wsctl_swarm_leaves_nothing_in_redis(pod_factory: PodFactory,
                                             cluster: ClusterSlice) -> None:
    pod = cluster.adopt(pod_factory("swarm-c", env=cluster.env(WSNODE_RATE_LIMIT="0"),
                                    args=["--app", "wsnode.examples.chat"]))
    client = redis.Redis.from_url(REDIS_URL)
    lasting = [f"{cluster.prefix}:{{tr:*}}:trace:lt-*", f"{cluster.prefix}:{{u:lt-*}}:m:*"]
    most = dict.fromkeys(lasting, 0)
    stop = threading.Event()

    def watch() -> None:  # what the run leaves while it runs: ACK records and trails
        while not stop.wait(0.3):
            for pattern in lasting:
                most[pattern] = max(most[pattern],
                                    sum(1 for _ in client.scan_iter(match=pattern, count=1000)))
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        done = run(pod, str(BIN / "wsctl"), "swarm", "--host", host_of(pod), "--users", "6",
                   "--spawn-rate", "6", "--run-time", "4s", "--scenario", "NotificationUser",
                   "--json", env=cluster.env())
    finally:
        stop.set()
        watcher.join(5)
    assert done.returncode == 0, done.stderr[-2000:]
    assert orjson.loads(done.stdout)["delivered"] > 0
    assert all(most.values()), most  # there was something to clean up
    keys = RedisKeys(cluster.prefix)
    left = [k for pattern in [*lasting, f"{cluster.prefix}:{{u:lt-*",
                              f"{cluster.prefix}:{{tr:*}}:traceusers:lt-*"]
            for k in client.scan_iter(match=pattern, count=1000)]
    indexed = [m for b in range(BUCKETS)
               for index in (keys.ack_expiry(b), keys.dlq(b), keys.ack_due(b))
               for m, _ in client.zscan_iter(index, match="lt-*")]
    client.close()
    assert left == [] and indexed == []
