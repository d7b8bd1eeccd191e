"""``make run`` on other ports (WSNODE_PORT, WSNODE_ADMIN_PORT), and what a port
already in use says (issue 16, item 4). Runs the script ``make run`` runs, with
the venv of this test run and a throw-away secrets file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pods import base_env, free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = str(Path(sys.executable).parent)


def dev_env(tmp_path: Path, **ports: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSNODE_")}
    env.update(BIN=BIN, WSNODE_DEV_ENV=str(tmp_path / "dev.env"), **ports)
    return env


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_make_run_honours_wsnode_port_and_admin_port(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    proc = subprocess.Popen(["bash", str(ROOT / "scripts/dev-run.sh")], cwd=ROOT,
                            env=dev_env(tmp_path, WSNODE_PORT=str(port),
                                        WSNODE_ADMIN_PORT=str(admin)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        printed: list[str] = []
        for line in proc.stdout:
            printed.append(line)
            if "serving ws://" in line:
                break
        text = "".join(printed)
        assert f"serving ws://127.0.0.1:{port}/ws (admin :{admin}" in text, text
        assert f"ws://127.0.0.1:{port}/ws" in text.split("serving")[0]  # the banner
        assert f"--url ws://127.0.0.1:{port}/ws" in text
        assert f"--node http://127.0.0.1:{admin}" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=10) as resp:
            assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


def test_make_run_on_a_port_in_use_says_what_to_do(tmp_path: Path, listening: int) -> None:
    done = subprocess.run(["bash", str(ROOT / "scripts/dev-run.sh")], cwd=ROOT,
                          env=dev_env(tmp_path, WSNODE_PORT=str(listening),
                                      WSNODE_ADMIN_PORT=str(free_port())),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert f"port {listening} on 127.0.0.1 is in use" in done.stderr
    assert "hint:" in done.stderr and "WSNODE_PORT=" in done.stderr


def test_serve_on_a_port_in_use_exits_1_with_a_hint(listening: int) -> None:
    done = subprocess.run([sys.executable, "-m", "wsnode", "serve", "--pod-id", "taken",
                           "--port", str(listening), "--admin-port", "0"],
                          env=base_env(), capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-2].startswith("wsnode: error: cannot start:")
    assert "address already in use" in lines[-2]
    assert lines[-1].startswith("hint: ") and "WSNODE_PORT" in lines[-1]
