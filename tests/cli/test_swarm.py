"""The Locust swarm (loadtests/) and ``wsctl swarm`` against a real pod."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.conftest import PodFactory
from tests.support.pods import PodProcess

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def chat_pod(pod_factory: PodFactory) -> PodProcess:
    return pod_factory("swarm-pod", env={"WSNODE_RATE_LIMIT": "0"},
                       args=["--app", "wsnode.examples.chat"])


def run(pod: PodProcess, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**pod.env, "WSNODE_LOAD_ADMIN": pod.admin_url, "WSNODE_LOAD_CHAT_WAIT": "0.2,0.5",
           "WSNODE_LOAD_NOTIFY_WAIT": "0.2,0.5"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


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


def test_wsctl_swarm_summarizes_a_clean_run(chat_pod: PodProcess) -> None:
    done = run(chat_pod, str(BIN / "wsctl"), "swarm", "--host",
               chat_pod.ws_url.removesuffix("/ws"), "--users", "20", "--spawn-rate", "20",
               "--run-time", "4s", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = orjson.loads(done.stdout)
    assert summary["users"] == 20
    assert summary["connections"] >= 20
    assert summary["delivered"] > 0 and summary["delivered_per_s"] > 0
    assert summary["lost"] == 0 and summary["errors"] == 0
    assert summary["p50_ms"] is not None and summary["p99_ms"] >= summary["p50_ms"]


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
