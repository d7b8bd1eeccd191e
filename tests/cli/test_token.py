"""wsctl token: local minting, verified by a real pod."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from tests.cli.conftest import Wsctl
from tests.conftest import PodFactory
from tests.support.client import Client
from tests.support.pods import SECRET, PodProcess


@pytest.fixture(autouse=True)
def _no_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings also read ./.env: run where there is none."""
    monkeypatch.chdir(tmp_path)


async def test_token_is_accepted_by_the_pod(pod: PodProcess, wsctl: Wsctl) -> None:
    result = wsctl.run("token", "alice")
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert result.stdout == token + "\n"  # only the token: TOKEN=$(wsctl token alice)
    async with await Client.open(pod.ws_url, token) as client:
        assert client.welcome["payload"]["userId"] == "alice"


async def test_token_follows_audience_issuer_and_claim(pod_factory: PodFactory,
                                                      wsctl: Wsctl) -> None:
    settings = {"WSNODE_JWT_AUDIENCE": "chat", "WSNODE_JWT_ISSUER": "auth.example",
                "WSNODE_USER_CLAIM": "uid", "WSNODE_JWT_ALGORITHMS": "HS384"}
    pod = pod_factory("pod-a", env=settings)
    result = wsctl.run("token", "bob", "--ttl", "15m", "--json", env=settings)
    assert result.exit_code == 0, result.output
    minted = orjson.loads(result.stdout)
    assert minted["user"] == "bob"
    assert abs(minted["expiresAt"] - (time.time() + 900) * 1000) < 5000
    async with await Client.open(pod.ws_url, minted["token"]) as client:
        assert client.welcome["payload"]["userId"] == "bob"


def test_token_without_a_secret_exits_1(wsctl: Wsctl) -> None:
    result = wsctl.run("token", "alice", env={"WSNODE_JWT_SECRET": None})
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[0] == ("wsctl: error: WSNODE_JWT_SECRET is not set: "
                                             "wsctl token signs with the pod's HS256 secret")


def test_token_with_a_public_key_only_exits_1(wsctl: Wsctl, tmp_path: Path) -> None:
    key = tmp_path / "pub.pem"
    key.write_text("not used")
    result = wsctl.run("token", "alice", env={"WSNODE_JWT_SECRET": None,
                                              "WSNODE_JWT_PUBLIC_KEY_FILE": str(key)})
    assert result.exit_code == 1
    assert "WSNODE_JWT_SECRET is not set" in result.stderr
    assert "WSNODE_JWT_PUBLIC_KEY_FILE" in result.stderr


def test_token_with_a_bad_setting_exits_2(wsctl: Wsctl) -> None:
    result = wsctl.run("token", "alice", env={"WSNODE_JWT_ALGORITHMS": "none"})
    assert result.exit_code == 2
    assert result.stderr.startswith("wsctl: error: invalid setting WSNODE_JWT_ALGORITHMS")
    assert SECRET not in result.output


@pytest.mark.parametrize(("ttl", "seconds"), [("90", 90), ("30s", 30), ("15m", 900),
                                              ("1h", 3600), ("1d", 86400)])
def test_token_ttl_units(wsctl: Wsctl, ttl: str, seconds: int) -> None:
    result = wsctl.run("token", "alice", "--ttl", ttl, "--json")
    assert result.exit_code == 0, result.output
    expires = orjson.loads(result.stdout)["expiresAt"]
    assert abs(expires - (time.time() + seconds) * 1000) < 5000


def test_token_bad_ttl_exits_2(wsctl: Wsctl) -> None:
    result = wsctl.run("token", "alice", "--ttl", "soon")
    assert result.exit_code == 2
    assert result.stderr.startswith("wsctl: error: --ttl: ")
