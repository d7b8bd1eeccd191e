"""The client's pure parts, and its public names."""

from __future__ import annotations

import pytest

import wsnode.client
from wsnode.client import (
    Backoff,
    Client,
    DedupWindow,
    Message,
    RateLimited,
    ServerError,
    Verdict,
)


def test_public_names() -> None:
    assert sorted(wsnode.client.__all__) == sorted([
        "AckTimeout", "Backoff", "Client", "ClientClosed", "ClientError", "ConnectError",
        "DedupWindow", "HandshakeRefused", "Message", "NotConnected", "RateLimited",
        "ServerError", "State", "StateChange", "TokenProvider", "Verdict"])
    for name in wsnode.client.__all__:
        assert getattr(wsnode.client, name) is not None


def test_dedup_window_holds_then_reacks_and_forgets_the_oldest() -> None:
    window = DedupWindow(3)
    assert window.check("a") is Verdict.NEW
    assert window.check("a") is Verdict.HOLD  # still in the app's hands: drop the copy
    window.handled("a")
    assert window.check("a") is Verdict.REACK  # done: ack the copy again, do not deliver
    for msg_id in ("b", "c", "d"):
        assert window.check(msg_id) is Verdict.NEW
    assert len(window) == 3 and "a" not in window
    assert window.check("a") is Verdict.NEW  # out of the window: new again
    window.forget("a")
    assert "a" not in window
    with pytest.raises(ValueError, match="at least one"):
        DedupWindow(0)


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    top = Backoff(base=0.5, cap=4.0, rng=lambda: 0.999999)
    assert [round(top.delay(n), 3) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert Backoff(base=0.5, cap=4.0, rng=lambda: 0.0).delay(5) == 0.0
    assert Backoff().ceiling(10_000) == 10.0
    with pytest.raises(ValueError, match="base"):
        Backoff(base=0)


def test_message_from_frame() -> None:
    msg = Message.from_frame({"type": "n", "payload": {"x": 1}, "id": "m1", "requiresAck": True,
                              "seq": 7, "expiresAt": 123})
    assert msg == Message("n", {"x": 1}, "m1", 7, True, 123)
    # requiresAck without an id cannot be acked: treated as a plain message
    assert Message.from_frame({"type": "n", "requiresAck": True}).requires_ack is False
    assert Message.from_frame({"type": "n", "seq": True}).seq is None


def test_server_errors_are_typed() -> None:
    err = ServerError.from_frame({"type": "error", "id": "s1", "payload": {
        "code": "rate_limited", "message": "slow down", "retryAfterMs": 1500}})
    assert isinstance(err, RateLimited) and err.retry_after == 1.5
    assert (err.code, err.message, err.id) == ("rate_limited", "slow down", "s1")
    other = ServerError.from_frame({"type": "error", "payload": {"code": "unknown_type",
                                                                  "message": "no"}})
    assert type(other) is ServerError and other.id is None
    assert "unknown_type" in str(other)


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Client("ws://x/ws")
    with pytest.raises(ValueError, match="exactly one"):
        Client("ws://x/ws", token="t", token_provider=lambda: "t")
    with pytest.raises(ValueError, match="at least one URL"):
        Client([], token="t")
