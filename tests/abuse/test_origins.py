"""Item 11 of issue 12 (origins and the admin port): a page is same-origin only
when its scheme, host and port are one of PUBLIC_ORIGINS; the Host header is
not trusted, so DNS rebinding fails. Binding every interface without
--admin-host warns that the admin port's key-less endpoints are exposed."""

from __future__ import annotations

import pytest

from tests.abuse.conftest import AbusePods, raw_handshake

PUBLIC = "https://chat.example.com"


async def status_for(port: int, token: str, origin: str, host: str) -> int:
    status, _, _ = await raw_handshake(port, [("Authorization", f"Bearer {token}"),
                                              ("Origin", origin), ("Host", host)])
    return status


async def test_dns_rebinding_is_refused(abuse_pods: AbusePods) -> None:
    """The attacker's page on http://rebind.evil:PORT, its name now resolving to
    the pod: Origin and Host agree, and that proves nothing."""
    pod = abuse_pods()
    token = pod.token("victim")
    for origin, host in ((f"http://rebind.evil:{pod.port}", f"rebind.evil:{pod.port}"),
                         (f"http://127.0.0.1:{pod.port}", f"127.0.0.1:{pod.port}")):
        assert await status_for(pod.port, token, origin, host) == 403, origin


async def test_public_origins_compare_scheme_host_and_port(abuse_pods: AbusePods) -> None:
    pod = abuse_pods(env={"WSNODE_PUBLIC_ORIGINS": PUBLIC})
    token = pod.token("alice")
    host = "chat.example.com"
    assert await status_for(pod.port, token, PUBLIC, host) == 101
    assert await status_for(pod.port, token, PUBLIC + ":443", host) == 101
    for origin in ("http://chat.example.com", "https://chat.example.com:8443",
                   "https://chat.example.com.evil", "null"):
        assert await status_for(pod.port, token, origin, host) == 403, origin


def test_a_bad_public_origin_fails_at_start(abuse_pods: AbusePods) -> None:
    with pytest.raises(RuntimeError) as failed:
        abuse_pods(env={"WSNODE_PUBLIC_ORIGINS": "chat.example.com/ws"})
    assert "exited 2" in str(failed.value) and "WSNODE_PUBLIC_ORIGINS" in str(failed.value)


def test_every_interface_warns_about_the_admin_port(abuse_pods: AbusePods) -> None:
    pod = abuse_pods(args=["--host", "0.0.0.0"])
    warning = [line for line in pod.log().splitlines() if "WARNING" in line]
    assert any("admin port" in line and "--admin-host" in line and "/metrics" in line
               for line in warning), warning
    quiet = abuse_pods("pod-b", args=["--host", "0.0.0.0", "--admin-host", "127.0.0.1"])
    assert "--admin-host" not in quiet.log()
