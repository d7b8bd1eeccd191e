"""``--watch`` redraws until Ctrl-C; completion is offered."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import subprocess
import sys
import time

from tests.cli.conftest import Wsctl
from tests.support.pods import API_KEY, PodProcess


def test_pods_ls_watch_redraws_until_ctrl_c(pod: PodProcess) -> None:
    # On a terminal (a pty), as a human runs it: the live view draws as it goes,
    # where a file would get it only at the end.
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsctl", "pods", "ls", "--watch", "0.3", "--node",
         pod.admin_url], env={**pod.env, "WSNODE_API_KEY": API_KEY, "COLUMNS": "120"},
        stdout=slave, stderr=subprocess.PIPE, text=True)
    os.close(slave)
    out = b""

    def read_until(needle: bytes, count: int) -> None:
        nonlocal out
        deadline = time.monotonic() + 30  # a busy machine takes seconds to start it
        while out.count(needle) < count and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                with contextlib.suppress(OSError):  # EIO: the child closed the pty
                    out += os.read(master, 65536)
    try:
        read_until(b"pod-a", 1)  # Ctrl-C only once it is watching
        read_until(b"pod-a", 3)  # ... and has redrawn: the passing of time is under test
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        read_until(b"Ctrl-C to stop", 1)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == 0, err
    assert out.count(b"pod-a") >= 3 and b"Ctrl-C to stop" in out


def test_watch_and_json_do_not_mix(pod: PodProcess, wsctl: Wsctl) -> None:
    result = wsctl.run("presence", "ls", "--watch", "1", "--json", pod=pod)
    assert result.exit_code == 2
    assert "--watch is for humans" in result.stderr


def test_completion_is_offered(wsctl: Wsctl) -> None:
    result = wsctl.run("--help")
    assert "--install-completion" in result.stdout
