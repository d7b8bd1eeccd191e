"""Must-show 8 (second half): ``make run`` starts a pod a client can use with the
printed token. Runs the same script ``make run`` runs, with the venv of this test
run and a throw-away secrets file."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.client import Client

ROOT = Path(__file__).resolve().parents[2]


def busy(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_make_run_prints_a_token_command_that_works(tmp_path: Path) -> None:
    if busy(8765) or busy(9765):
        pytest.skip("ports 8765/9765 are taken by another pod on this machine")
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSNODE_")}
    env.update(BIN=bin_dir, WSNODE_DEV_ENV=str(tmp_path / "dev.env"))
    proc = subprocess.Popen(["bash", str(ROOT / "scripts/dev-run.sh")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        printed: list[str] = []
        for line in proc.stdout:
            printed.append(line)
            if "serving ws://" in line:
                break
        else:
            raise AssertionError("pod did not start:\n" + "".join(printed))
        text = "".join(printed)
        exports = dict(re.findall(r"export (WSNODE_\w+)=(\S+)", text))
        assert set(exports) == {"WSNODE_JWT_SECRET", "WSNODE_API_KEY"}
        token_cmd = re.search(r"token:\s+(.+)", text)
        assert token_cmd is not None
        made = subprocess.run(shlex.split(token_cmd.group(1)), env={**env, **exports},
                              capture_output=True, text=True, timeout=30, check=True)
        token = made.stdout.strip()
        async with await Client.open("ws://127.0.0.1:8765/ws", token) as client:
            assert client.welcome["payload"]["userId"] == "alice"
            send_cmd = re.search(r"send:\s+(.+)", text)
            assert send_cmd is not None
            sent = subprocess.run(shlex.split(send_cmd.group(1)), env={**env, **exports},
                                  capture_output=True, text=True, timeout=30, check=False)
            assert sent.returncode == 0, sent.stderr
            assert (await client.expect("notification"))["payload"] == {"text": "hi"}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
