"""deploy/haproxy/haproxy.cfg: haproxy's own check (zero warnings) with the
environments it runs in, and the settings a WebSocket balancer in front of
draining pods needs."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.specs import (
    HAPROXY_CFG,
    duration_seconds,
    environment_of,
    load_compose,
    settings_for,
)
from wsnode.settings import NodeSettings


def check(haproxy: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``haproxy -c`` in zero-warning mode (-dW): a warning fails too."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    return subprocess.run([haproxy, "-dW", "-c", "-f", str(HAPROXY_CFG)], env={**base, **env},
                          capture_output=True, text=True, timeout=30, check=False)


def directives() -> list[list[str]]:
    """Each configuration line as words (comments and blank lines dropped)."""
    out = []
    for line in HAPROXY_CFG.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line.split())
    return out


def section(name: str) -> list[list[str]]:
    """The lines of one section, e.g. ``backend pods``."""
    lines, inside = [], False
    for words in directives():
        if words[0] in ("global", "defaults", "frontend", "backend", "resolvers", "listen"):
            inside = " ".join(words) == name
        elif inside:
            lines.append(words)
    return lines


@pytest.mark.parametrize("where", ["compose", "defaults", "loopback"])
def test_haproxy_accepts_the_config(haproxy: str, where: str) -> None:
    env = {
        "compose": environment_of(load_compose()["services"]["lb"]),
        "defaults": {},
        "loopback": {"LB_BIND": "127.0.0.1:18080", "LB_STATS_BIND": "127.0.0.1:18404",
                     "LB_NAMESERVER": "127.0.0.1:15353", "LB_PODS": "wsnode:18765",
                     "LB_POD_ADMIN_PORT": "19765", "LB_MAX_PODS": "4"},
    }[where]
    done = check(haproxy, env)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_broken_config_is_caught(haproxy: str, tmp_path: Path) -> None:
    """The check above is not a formality: a typo fails it."""
    broken = tmp_path / "broken.cfg"
    broken.write_text(HAPROXY_CFG.read_text().replace("timeout tunnel", "timeout tunel"))
    done = subprocess.run([haproxy, "-dW", "-c", "-f", str(broken)], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode != 0


def test_websocket_settings() -> None:
    defaults = {w[1]: w[2] for w in section("defaults") if w[0] == "timeout"}
    pod: NodeSettings = settings_for({"WSNODE_JWT_SECRET": "x" * 32})
    tunnel = duration_seconds(defaults["tunnel"])
    assert tunnel >= 10 * pod.ping_interval, "idle WebSockets live between pings"
    assert duration_seconds(defaults["client"]) > 0 and "http-request" in defaults
    assert ["mode", "http"] in section("defaults"), "HTTP mode: upgrade, retries, checks"


def test_draining_pods_leave_the_pool_without_cutting_their_clients() -> None:
    backend = section("backend pods")
    assert ["option", "httpchk", "GET", "/readyz"] in backend
    assert ["http-check", "expect", "status", "200"] in backend
    default_server = next(w for w in backend if w[0] == "default-server")
    assert "check" in default_server
    port = default_server[default_server.index("port") + 1]
    assert "LB_POD_ADMIN_PORT" in port, "checks go to the admin port, where /readyz is"
    fall = int(default_server[default_server.index("fall") + 1])
    assert fall == 1, "one 503 from /readyz is enough: the pod is draining"
    # The pod moves its clients itself (reconnect + 1012, spread out).
    assert not any("shutdown-sessions" in w for words in directives() for w in words)
    # A handshake that reached a draining (503) or dead pod is replayed on another.
    defaults = section("defaults")
    retry_on = next(w for w in defaults if w[0] == "retry-on")
    assert {"503", "conn-failure"} <= set(retry_on[1:])
    assert any(w[:2] == ["option", "redispatch"] for w in defaults)


def test_pods_are_found_by_dns_so_scaling_needs_no_edit() -> None:
    backend = section("backend pods")
    template = next(w for w in backend if w[0] == "server-template")
    assert "LB_PODS" in template[3]
    assert "resolvers" in template
    assert not any(w[0] == "server" for w in backend), "no hard-wired pod"


def test_logs_never_carry_the_query_string() -> None:
    """Tokens may come in ``?token=``: the log line has the path only."""
    (log_format,) = [" ".join(w[1:]) for w in section("defaults") if w[0] == "log-format"]
    assert "HPO" in log_format
    assert not re.search(r"%(\{[^}]*\})?(r|HU|HP)\b", log_format)
    assert ["option", "httplog"] not in section("defaults")
