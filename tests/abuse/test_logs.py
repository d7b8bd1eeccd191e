"""Item 9 of issue 12: nothing a client sends can forge a log line. In text
format control characters are escaped in the message and every context
field; JSON lines stay one valid object each."""

from __future__ import annotations

import re

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.abuse.conftest import AbusePods
from tests.support.client import Client
from tests.support.waits import eventually

FORGED = "2030-01-01 00:00:00,000 WARNING wsnode.admin: FORGED"
EVIL_USER = f"mallory\n{FORGED}\r\x1b[2K\u2028 conn=fake"
EVIL_REASON = f"bye\n{FORGED}"
LINE_START = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ |  )")


async def open_and_close(url: str, token: str) -> None:
    async with await Client.open(url, token) as client:
        await client.send({"type": "ping", "payload": "\n" + FORGED})
        await client.expect("pong")
        await client.ws.close(1000, EVIL_REASON)


async def test_text_lines_cannot_be_forged(abuse_pods: AbusePods) -> None:
    pod = abuse_pods()
    await open_and_close(pod.ws_url, pod.token(EVIL_USER))
    await eventually(lambda: _has(pod.log(), "connection closed"), 10, "the close logged")
    lines = pod.log().splitlines()
    assert not [line for line in lines if "FORGED" in line and line.startswith("2030")]
    assert all(LINE_START.match(line) for line in lines), lines
    opened = next(line for line in lines if "connection open" in line)
    # The user field, escaped and quoted: one field, not a forged "conn=".
    assert 'user="mallory\\\\n2030-01-01' in opened
    assert "\\\\x1b[2K\\\\u2028 conn=fake\"" in opened
    closed = next(line for line in lines if "connection closed" in line)
    assert 'reason="bye\\\\n2030' in closed


async def test_json_lines_stay_one_object_each(abuse_pods: AbusePods) -> None:
    pod = abuse_pods(env={"WSNODE_LOG_FORMAT": "json"})
    await open_and_close(pod.ws_url, pod.token(EVIL_USER))
    await eventually(lambda: _has(pod.log(), "connection closed"), 10, "the close logged")
    docs = [orjson.loads(line) for line in pod.log().splitlines()]
    assert EVIL_USER in {d.get("user") for d in docs}
    assert EVIL_REASON in {d.get("reason") for d in docs}


async def test_a_user_id_utf8_cannot_carry_is_refused(abuse_pods: AbusePods) -> None:
    """A JSON escape in a token decodes to a lone surrogate: no key, log or frame
    can carry it, so the login is refused (401) and the log stays clean."""
    pod = abuse_pods()
    with pytest.raises(InvalidStatus) as refused:
        await connect(pod.ws_url, additional_headers={
            "Authorization": f"Bearer {pod.token(chr(0xD800) + 'x')}"})
    assert refused.value.response.status_code == 401
    assert "Logging error" not in pod.log() and "Traceback" not in pod.log()


async def _has(text: str, needle: str) -> bool:
    return needle in text
