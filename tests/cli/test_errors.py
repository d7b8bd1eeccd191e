"""How wsctl fails: one line on stderr, the right exit code, no secret, no traceback."""

from __future__ import annotations

import gc
import socket
import uuid
import warnings
from collections.abc import Iterator

import orjson
import pytest

from tests.cli.conftest import Wsctl
from tests.support.pods import API_KEY, PodProcess, free_port
from wsctl.target import NO_TARGET


def test_wrong_api_key_exits_1_without_showing_it(pod: PodProcess, wsctl: Wsctl) -> None:
    wrong = "wrong-key-do-not-print-me"
    result = wsctl.run("pods", "ls", pod=pod, env={"WSNODE_API_KEY": wrong})
    assert result.exit_code == 1
    assert result.stderr == ("wsctl: error: the pod refused the API key (401): "
                             "set WSNODE_API_KEY to the pod's key\n")
    assert wrong not in result.output
    assert API_KEY not in result.output

    result = wsctl.run("pods", "ls", "--api-key", wrong, pod=pod, env={"WSNODE_API_KEY": None})
    assert result.exit_code == 1
    assert wrong not in result.output


def test_missing_api_key_exits_1(pod: PodProcess, wsctl: Wsctl) -> None:
    result = wsctl.run("presence", "ls", pod=pod, env={"WSNODE_API_KEY": None})
    assert result.exit_code == 1
    assert result.stderr.startswith("wsctl: error: no API key given (401): set WSNODE_API_KEY")


@pytest.mark.parametrize("args", [["pods", "ls"], ["presence", "ls"], ["presence", "get", "a"],
                                  ["send", "a", "--type", "t"], ["drain", "p"], ["dlq", "ls"],
                                  ["dlq", "retry", "m"]])
def test_pod_down_is_one_line_exit_1(wsctl: Wsctl, args: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = wsctl.run(*args, env={"WSNODE_NODE": url})
    assert result.exit_code == 1
    assert result.stderr == (f"wsctl: error: cannot reach {url}: connection refused "
                             "(is the pod running? check --node)\n")
    assert result.stdout == ""
    assert "Traceback" not in result.output


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A port that accepts TCP connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_timeout_exits_1(wsctl: Wsctl, silent_server: str) -> None:
    result = wsctl.run("pods", "ls", "--timeout", "300ms", env={"WSNODE_NODE": silent_server})
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == \
        f"wsctl: error: no answer from {silent_server} within 0.3s"


def test_no_target_exits_1_with_a_hint(wsctl: Wsctl) -> None:
    result = wsctl.run("pods", "ls")
    assert result.exit_code == 1
    assert result.stderr == f"wsctl: error: {NO_TARGET}\n"
    assert NO_TARGET == ("no target: pass --node http://HOST:9765 to talk to one pod, or set "
                         "WSNODE_REDIS_URL and WSNODE_AMQP_URL to reach a cluster")


def test_cluster_mode_reads_redis_without_a_pod(wsctl: Wsctl) -> None:
    prefix = f"wsctl{uuid.uuid4().hex[:8]}"
    result = wsctl.run("pods", "ls", "--json", env={
        "WSNODE_REDIS_URL": "redis://127.0.0.1:6379/0", "WSNODE_KEY_PREFIX": prefix})
    assert result.exit_code == 0, result.stderr
    assert orjson.loads(result.stdout) == {"pods": []}


def test_cluster_mode_with_redis_down_is_one_line(wsctl: Wsctl) -> None:
    result = wsctl.run("presence", "ls", env={"WSNODE_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("wsctl: error: cannot reach the cluster")
    assert "Traceback" not in result.stderr


def test_cluster_send_needs_the_bus(wsctl: Wsctl) -> None:
    result = wsctl.run("send", "alice", "--type", "n",
                       env={"WSNODE_REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert result.exit_code == 1
    assert "WSNODE_AMQP_URL is not set" in result.stderr


def test_node_must_be_an_http_url(wsctl: Wsctl) -> None:
    result = wsctl.run("pods", "ls", "--node", "127.0.0.1:9765")
    assert result.exit_code == 2
    assert result.stderr.startswith("wsctl: error: --node '127.0.0.1:9765' is not an admin URL")


def test_public_port_is_not_the_admin_port(pod: PodProcess, wsctl: Wsctl) -> None:
    result = wsctl.run("pods", "ls", "--node", f"http://127.0.0.1:{pod.port}")
    assert result.exit_code == 1
    assert "is --node the pod's admin port" in result.stderr


def test_unknown_option_is_a_usage_error(wsctl: Wsctl) -> None:
    assert wsctl.run("pods", "ls", "--bogus").exit_code == 2
    assert wsctl.run("send", "alice").exit_code == 2  # --type is required


def test_commands_leave_no_session_or_loop_open(pod: PodProcess, wsctl: Wsctl) -> None:
    # Garbage of earlier tests in this process (a test's Redis client collected
    # late) is not wsctl's: collect it before counting.
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for args in (["pods", "ls"], ["presence", "get", "nobody"]):
            wsctl.run(*args, pod=pod)
        wsctl.run("pods", "ls", env={"WSNODE_NODE": f"http://127.0.0.1:{free_port()}"})
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


@pytest.mark.parametrize("command", [["send"], ["presence", "ls"], ["presence", "get"],
                                     ["pods", "ls"], ["drain"], ["dlq", "ls"],
                                     ["dlq", "retry"], ["token"], ["version"]])
def test_every_help_has_an_example(wsctl: Wsctl, command: list[str]) -> None:
    result = wsctl.run(*command, "--help")
    assert result.exit_code == 0
    assert "Example: wsctl " in result.stdout or "Example: TOKEN=$(wsctl" in result.stdout
    assert "--json" in result.stdout


def test_version(wsctl: Wsctl) -> None:
    assert wsctl.run("version").stdout.startswith("wsctl ")
    assert wsctl.run("version", "--json").stdout.startswith('{"wsctl":')
