"""Bad input over the wire and at the handshake: a clear answer, nothing lost."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys

import jwt
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import PodFactory
from tests.support.client import Client
from tests.support.pods import SECRET, PodProcess, base_env


async def error_for(client: Client, frame: str | bytes | dict[str, object]) -> dict[str, object]:
    await client.send(frame)
    got = await client.expect("error")
    payload = got["payload"]
    assert isinstance(payload, dict)
    return {"code": payload["code"], "id": got.get("id"), "payload": payload}


@pytest.mark.parametrize(("frame", "code"), [
    ("{not json", "bad_json"),
    ("[1, 2, 3]", "bad_envelope"),
    ('"just a string"', "bad_envelope"),
    ('{"payload": 1}', "bad_envelope"),
    ('{"type": ""}', "bad_envelope"),
    ('{"type": "' + "t" * 65 + '"}', "bad_envelope"),
    ('{"type": "has space"}', "bad_envelope"),
    ('{"type": "echo", "requiresAck": true}', "bad_envelope"),
    ('{"type": "no_such_type"}', "unknown_type"),
    ('{"type": "welcome"}', "unknown_type"),
    (b'{"type": "echo"}', "bad_envelope"),  # a binary frame
])
async def test_bad_frame_gets_error_and_connection_lives(
        app_pod: PodProcess, frame: str | bytes, code: str) -> None:
    async with await Client.open(app_pod.ws_url, app_pod.token("alice")) as client:
        err = await error_for(client, frame)
        assert err["code"] == code
        # The connection is still usable.
        await client.send({"type": "echo", "payload": "alive"})
        assert (await client.expect("echo"))["payload"] == "alive"


async def test_error_frame_names_the_offending_id(app_pod: PodProcess) -> None:
    async with await Client.open(app_pod.ws_url, app_pod.token("alice")) as client:
        err = await error_for(client, {"type": "nope", "id": "m-7"})
        assert err == {"code": "unknown_type", "id": "m-7", "payload": err["payload"]}


async def test_ack_for_unknown_id_is_answered(app_pod: PodProcess) -> None:
    async with await Client.open(app_pod.ws_url, app_pod.token("alice")) as client:
        err = await error_for(client, {"type": "ack", "payload": {"id": "never-sent"}})
        assert err["code"] == "unknown_id" and err["id"] == "never-sent"
        err = await error_for(client, {"type": "ack", "payload": {}})
        assert err["code"] == "bad_envelope"


async def test_handler_exception_becomes_handler_error(app_pod: PodProcess) -> None:
    async with await Client.open(app_pod.ws_url, app_pod.token("alice")) as client:
        err = await error_for(client, {"type": "boom", "id": "b1", "requiresAck": True})
        assert err["code"] == "handler_error" and err["id"] == "b1"
        assert "kaboom" not in str(err["payload"])  # internals stay in the pod's log
        await client.nothing_within(0.2)  # and no ack for a failed handler
        await client.send({"type": "echo", "payload": 2})
        assert (await client.expect("echo"))["payload"] == 2


async def test_frame_over_max_message_bytes_closes_1009(pod_factory: PodFactory) -> None:
    pod = pod_factory("small", env={"WSNODE_MAX_MESSAGE_BYTES": "1024"},
                      args=["--app", "tests.e2e.app"])
    async with await Client.open(pod.ws_url, pod.token("alice")) as client:
        await client.send({"type": "echo", "payload": "x" * 2000})
        with pytest.raises(ConnectionClosed):
            await client.recv()
        assert client.ws.close_code == 1009


async def test_flood_past_rate_limit_leaves_other_users_alone(pod_factory: PodFactory) -> None:
    pod = pod_factory("limited", env={"WSNODE_RATE_LIMIT": "5/10s"},
                      args=["--app", "tests.e2e.app"])
    async with await Client.open(pod.ws_url, pod.token("flooder")) as flooder, \
            await Client.open(pod.ws_url, pod.token("calm")) as calm:
        for i in range(10):
            await flooder.send({"type": "echo", "id": f"f{i}", "payload": i})
        frames = [await flooder.recv() for _ in range(10)]
        echoes = [f for f in frames if f["type"] == "echo"]
        limited = [f for f in frames if f["type"] == "error"]
        assert [f["payload"] for f in echoes] == [0, 1, 2, 3, 4]
        assert len(limited) == 5
        assert all(f["payload"]["code"] == "rate_limited" for f in limited)
        assert all(f["payload"]["retryAfterMs"] > 0 for f in limited)
        assert [f["id"] for f in limited] == [f"f{i}" for i in range(5, 10)]
        # ping is never counted
        await flooder.send({"type": "ping", "payload": {"t": 1}})
        assert (await flooder.expect("pong"))["payload"] == {"t": 1}
        # another user is unaffected
        await calm.send({"type": "echo", "payload": "ok"})
        assert (await calm.expect("echo"))["payload"] == "ok"


def _none_alg_token(user: str) -> str:
    def b64(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'sub': user, 'exp': 9999999999})}."


@pytest.mark.parametrize("case", ["missing", "expired", "other_key", "alg_none", "garbage"])
async def test_bad_token_refused_with_401_before_upgrade(app_pod: PodProcess, case: str) -> None:
    tokens = {
        "missing": None,
        "expired": jwt.encode({"sub": "alice", "exp": 1}, SECRET, algorithm="HS256"),
        "other_key": jwt.encode({"sub": "alice", "exp": 9999999999}, "k" * 40,
                                algorithm="HS256"),
        "alg_none": _none_alg_token("alice"),
        "garbage": "not.a.token",
    }
    token = tokens[case]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with pytest.raises(InvalidStatus) as err:
        await connect(app_pod.ws_url, additional_headers=headers, open_timeout=5)
    assert err.value.response.status_code == 401
    if token:
        assert token not in app_pod.log()


async def test_token_in_query_and_subprotocol(app_pod: PodProcess) -> None:
    token = app_pod.token("alice")
    async with connect(f"{app_pod.ws_url}?access_token={token}") as ws:
        assert orjson.loads(await ws.recv())["type"] == "welcome"
    async with connect(app_pod.ws_url, subprotocols=["bearer", token]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "bearer"
        assert orjson.loads(await ws.recv())["payload"]["userId"] == "alice"
    assert token not in app_pod.log()


async def test_disallowed_origin_refused_with_403(pod_factory: PodFactory) -> None:
    pod = pod_factory("origins", env={"WSNODE_ALLOWED_ORIGINS": "https://app.example.com"})
    token = pod.token("alice")
    with pytest.raises(InvalidStatus) as err:
        await connect(pod.ws_url, additional_headers={"Authorization": f"Bearer {token}"},
                      origin="https://evil.example.net")  # type: ignore[arg-type]
    assert err.value.response.status_code == 403
    async with connect(pod.ws_url, additional_headers={"Authorization": f"Bearer {token}"},
                       origin="https://app.example.com") as ws:  # type: ignore[arg-type]
        assert orjson.loads(await ws.recv())["type"] == "welcome"


async def test_token_expiring_during_connection_closes_4401(app_pod: PodProcess) -> None:
    async with await Client.open(app_pod.ws_url, app_pod.token("brief", ttl=2)) as client:
        with pytest.raises(ConnectionClosed):
            await client.recv(timeout=6)
        assert client.ws.close_code == 4401


async def test_admin_api_needs_its_key(app_pod: PodProcess) -> None:
    for key in (None, "wrong-key"):
        status, body = await asyncio.to_thread(app_pod.api, "GET", "/v1/pods", None, key)
        assert status == 401
        assert "WSNODE_API_KEY" in body["error"]["message"]
    status, _ = await asyncio.to_thread(app_pod.api, "GET", "/healthz", None, None)
    assert status == 200


async def test_admin_send_rejects_bad_envelopes(app_pod: PodProcess) -> None:
    cases = [
        {"user": "alice", "envelope": {"type": "welcome"}},
        {"user": "alice", "envelope": {"type": "x", "requiresAck": True}},
        {"user": "", "envelope": {"type": "x"}},
        {"envelope": {"type": "x"}},
    ]
    for body in cases:
        status, answer = await asyncio.to_thread(app_pod.api, "POST", "/v1/send", body)
        assert status == 400, body
        assert answer["error"]["message"]


@pytest.mark.parametrize(("name", "value"), [
    ("WSNODE_PORT", "not-a-port"),
    ("WSNODE_RATE_LIMIT", "lots"),
    ("WSNODE_PING_INTERVAL", "soon"),
    ("WSNODE_LOG_FORMAT", "xml"),
    ("WSNODE_JWT_ALGORITHMS", "none"),
])
def test_bad_setting_fails_at_start_with_one_line(name: str, value: str) -> None:
    done = subprocess.run([sys.executable, "-m", "wsnode", "serve"], env=base_env(**{name: value}),
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert name in lines[0]


def test_no_secret_and_no_insecure_refuses_to_start() -> None:
    env = base_env()
    del env["WSNODE_JWT_SECRET"]
    done = subprocess.run([sys.executable, "-m", "wsnode", "serve"], env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "WSNODE_JWT_SECRET" in done.stderr and "--insecure" in done.stderr
