"""Log lines never carry a token; JSON lines are valid JSON with context fields."""

from __future__ import annotations

import logging
import sys

import orjson
import pytest

from wsnode.logs import JsonFormatter, TextFormatter, configure, redact

JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSJ9."
       "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
OPAQUE = "s3cr3t-0paque-t0ken-value"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("GET /ws?token=" + OPAQUE + " HTTP/1.1", OPAQUE),
        ("GET /ws?user=a&token=" + OPAQUE + "&x=1", OPAQUE),
        ("GET /ws?access_token=" + OPAQUE, OPAQUE),
        ("GET /ws?ACCESS_TOKEN=" + OPAQUE, OPAQUE),
        ("Authorization: Bearer " + OPAQUE, OPAQUE),
        ("authorization: bearer " + OPAQUE, OPAQUE),
        ("Sec-WebSocket-Protocol: bearer, " + OPAQUE, OPAQUE),
        ("Sec-WebSocket-Protocol: bearer," + JWT, JWT),
        ("headers={'Authorization': 'Bearer " + JWT + "'}", JWT),
        ("verifying " + JWT + " for alice", JWT),
        ("path='/ws?token=" + JWT + "'", JWT),
    ],
)
def test_redact_removes_secrets(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert "<redacted>" in out or "<jwt>" in out


def test_redact_removes_every_jwt_fragment() -> None:
    out = redact(f"a {JWT} b {JWT}")
    assert "eyJ" not in out
    assert out == "a <jwt> b <jwt>"


def test_redact_keeps_the_rest_of_the_line() -> None:
    out = redact("GET /ws?user=alice&token=" + OPAQUE + "&v=2 HTTP/1.1")
    assert out == "GET /ws?user=alice&token=<redacted>&v=2 HTTP/1.1"
    assert redact("a plain line, nothing to hide") == "a plain line, nothing to hide"


def record(msg: str, *args: object, exc_info: object = None, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("wsnode.test", logging.INFO, __file__, 1, msg, args, exc_info)  # type: ignore[arg-type]
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_line_has_fields_and_context() -> None:
    line = JsonFormatter().format(record("hello %s", "world", pod="p1", conn="c1", user="ユ"))
    assert "\n" not in line
    doc = orjson.loads(line)
    assert doc["msg"] == "hello world"
    assert doc["level"] == "info"
    assert doc["logger"] == "wsnode.test"
    assert (doc["pod"], doc["conn"], doc["user"]) == ("p1", "c1", "ユ")
    assert doc["ts"].endswith("Z")


def test_json_line_without_context_has_no_context_keys() -> None:
    doc = orjson.loads(JsonFormatter().format(record("plain")))
    assert not {"pod", "conn", "user"} & set(doc)


@pytest.mark.parametrize(
    "msg",
    [
        "handshake /ws?token=" + OPAQUE,
        'handshake path="/ws?token=' + OPAQUE + '"',
        'quoted "token=' + OPAQUE + '\\" and more',
        "header Authorization: Bearer " + OPAQUE,
        'protocol "bearer, ' + JWT + '"',
        "jwt " + JWT + " line\nsecond line\ttab",
    ],
)
def test_json_line_is_valid_and_redacted(msg: str) -> None:
    line = JsonFormatter().format(record(msg, user="alice"))
    doc = orjson.loads(line)
    assert OPAQUE not in line
    assert JWT not in line
    assert "eyJ" not in line
    assert doc["user"] == "alice"


def test_json_redacts_arguments_extras_and_tracebacks() -> None:
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError:
        exc_info = sys.exc_info()
    line = JsonFormatter().format(
        record("open %s", f"/ws?access_token={OPAQUE}", exc_info=exc_info, peer=f"x {JWT}"))
    doc = orjson.loads(line)
    assert OPAQUE not in line
    assert JWT not in line
    assert "ValueError" in doc["exc"]


def test_text_line_is_redacted_and_has_context() -> None:
    line = TextFormatter().format(record("open /ws?token=%s", OPAQUE, pod="p1", user="bob"))
    assert OPAQUE not in line
    assert "pod=p1" in line
    assert "user=bob" in line


def test_configure_installs_one_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    configure("DEBUG", "json")
    assert len(root.handlers) == 1
    assert isinstance(root.handlers[0].formatter, JsonFormatter)
    assert root.level == logging.DEBUG
    assert logging.getLogger("aiohttp.access").level == logging.WARNING
    configure("INFO", "text")
    assert isinstance(root.handlers[0].formatter, TextFormatter)


def test_a_password_in_a_url_is_redacted() -> None:
    from wsnode.logs import redact

    line = "connect amqp://guest:s3cret@127.0.0.1:5672/ failed; redis://:pw@h:1/0; http://h/x"
    assert redact(line) == ("connect amqp://guest:***@127.0.0.1:5672/ failed; "
                            "redis://:***@h:1/0; http://h/x")
