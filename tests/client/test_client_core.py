"""The client's pure parts, and its public names (the dedup window, the backoff and
the close codes are in the scenarios both clients run: test_scenarios.py)."""

from __future__ import annotations

import pytest

import wsnode.client
from wsnode.client import (
    Client,
    Message,
    RateLimited,
    ServerError,
)


def test_public_names() -> None:
    assert sorted(wsnode.client.__all__) == sorted([
        "AckTimeout", "Backoff", "Client", "ClientClosed", "ClientError", "ConnectError",
        "DedupWindow", "Disconnected", "HandshakeRefused", "Message", "NotConnected",
        "RateLimited", "ServerError", "State", "StateChange", "Subscriptions", "TokenProvider",
        "Verdict"])
    for name in wsnode.client.__all__:
        assert getattr(wsnode.client, name) is not None


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
