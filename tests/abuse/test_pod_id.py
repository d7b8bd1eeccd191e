"""Item 6 of issue 12: a pod id that could not name an AMQP queue, a Redis key
part or a URL segment as it is fails at start, exit 2, naming WSNODE_POD_ID."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.pods import base_env
from wsnode.settings import load_settings

# Valid in AMQP names and routing keys, Redis keys, URL segments and logs as it is.
POD_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "wsnode", "serve", "--host", "127.0.0.1", "--port", "0",
           "--admin-port", "0", *args]
    proc = subprocess.Popen(cmd, env=base_env(**(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()  # it started: the test fails below with what it printed
        out, _ = proc.communicate(timeout=10)
    return subprocess.CompletedProcess(cmd, proc.returncode, out)


@pytest.mark.parametrize("pod_id", ["*", "{p:x}", "pod a", "pod/1", "ü" * 40, "p" * 65, "#"])
def test_a_bad_pod_id_exits_2_naming_the_setting(pod_id: str) -> None:
    done = serve("--pod-id", pod_id)
    assert done.returncode == 2, done.stdout
    assert "WSNODE_POD_ID" in done.stdout
    assert "serving" not in done.stdout


def test_a_bad_pod_id_from_the_environment_too() -> None:
    done = serve(env={"WSNODE_POD_ID": "a.b*c"})
    assert done.returncode == 2 and "WSNODE_POD_ID" in done.stdout


def test_the_default_from_the_hostname_passes(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.delenv("WSNODE_POD_ID", raising=False)
    assert POD_ID.fullmatch(socket.gethostname())
    assert load_settings().pod_id == socket.gethostname()
