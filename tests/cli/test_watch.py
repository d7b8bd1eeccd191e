"""``--watch`` redraws until Ctrl-C; completion is offered."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.cli.conftest import Wsctl
from tests.support.pods import API_KEY, PodProcess


def test_pods_ls_watch_redraws_until_ctrl_c(pod: PodProcess, tmp_path: Path) -> None:
    out_path = tmp_path / "out"
    with out_path.open("w") as out_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wsctl", "pods", "ls", "--watch", "0.3", "--node",
             pod.admin_url], env={**pod.env, "WSNODE_API_KEY": API_KEY, "COLUMNS": "120"},
            stdout=out_file, stderr=subprocess.PIPE, text=True)
    # Ctrl-C only once it is watching (a busy machine takes seconds to start it).
    deadline = time.monotonic() + 30
    while "pod-a" not in out_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # a few refreshes: the thing under test is the passing of time
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    out = out_path.read_text()
    assert proc.returncode == 0, err
    assert "pod-a" in out and "Ctrl-C to stop" in out


def test_watch_and_json_do_not_mix(pod: PodProcess, wsctl: Wsctl) -> None:
    result = wsctl.run("presence", "ls", "--watch", "1", "--json", pod=pod)
    assert result.exit_code == 2
    assert "--watch is for humans" in result.stderr


def test_completion_is_offered(wsctl: Wsctl) -> None:
    result = wsctl.run("--help")
    assert "--install-completion" in result.stdout
