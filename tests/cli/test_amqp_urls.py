"""A bad ``WSNODE_AMQP_URL`` stops ``wsnode serve`` and ``wsctl`` at once: exit 2,
one line naming the setting, no password, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.cli.conftest import Wsctl
from tests.support.pods import base_env

BAD = "amqp://guest:pw-s3cret@127.0.0.1:5672/,http://guest:pw-s3cret@127.0.0.1:5673/"


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "pw-s3cret" not in text and "Traceback" not in text
    return lines[0]


@pytest.mark.parametrize("args", [["send", "alice", "--type", "n"], ["doctor"],
                                  ["presence", "ls"]])
def test_wsctl_refuses_a_bad_url_list(wsctl: Wsctl, args: list[str]) -> None:
    result = wsctl.run(*args, env={"WSNODE_REDIS_URL": "redis://127.0.0.1:6379/0",
                                   "WSNODE_AMQP_URL": BAD})
    assert result.exit_code == 2, result.stderr
    line = _one_line(result.stderr)
    assert line.startswith("wsctl: error: invalid setting WSNODE_AMQP_URL=")
    assert "item 2 (http://guest:***@127.0.0.1:5673/) must start with amqp://" in line


def test_serve_refuses_a_bad_url_list() -> None:
    env = base_env(WSNODE_REDIS_URL="redis://127.0.0.1:6379/0", WSNODE_AMQP_URL=BAD)
    done = subprocess.run([sys.executable, "-m", "wsnode", "serve", "--port", "0",
                           "--admin-port", "0"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    line = _one_line(done.stderr)
    assert line.startswith("wsnode: error: invalid setting WSNODE_AMQP_URL=")
