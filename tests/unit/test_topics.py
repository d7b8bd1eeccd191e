"""Topic names, the token's ``topics`` claim, and the settings that bound them."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from wsnode.auth import Authenticator, mint_token
from wsnode.errors import AuthError, SettingsError
from wsnode.settings import NodeSettings, load_settings
from wsnode.topics import MAX_TOPIC_LENGTH, TopicInfo, claimed_topics, topic_problem

SECRET = "0123456789abcdef0123456789abcdef-test-secret"


@pytest.mark.parametrize("name", ["news", "room:42", "user@example.com", "a.b-c_d",
                                  "x" * MAX_TOPIC_LENGTH])
def test_good_names(name: str) -> None:
    assert topic_problem(name) is None


@pytest.mark.parametrize("name", ["", "x" * (MAX_TOPIC_LENGTH + 1), "a b", "a/b", "*",
                                  "{room}", "caf\u00e9", "a\nb", 7, None])
def test_bad_names_say_the_rule(name: object) -> None:
    assert topic_problem(name) == "a topic name is 1-128 characters of [A-Za-z0-9_.:@-]"


def test_the_claim_in_order_without_repeats() -> None:
    assert claimed_topics({}, 3) == ()
    assert claimed_topics({"topics": ["b", "a", "b"]}, 2) == ("b", "a")


@pytest.mark.parametrize("value", ["news", ["ok", "not ok"], [1], {"news": True}])
def test_a_claim_that_is_not_a_list_of_names(value: Any) -> None:
    with pytest.raises(ValueError, match="must be a list of topic names"):
        claimed_topics({"topics": value}, 10)


def test_a_claim_over_the_cap() -> None:
    with pytest.raises(ValueError, match="names 3 topics; a connection may have 2"):
        claimed_topics({"topics": ["a", "b", "c"]}, 2)


def token(**claims: Any) -> str:
    return jwt.encode({"sub": "alice", "exp": int(time.time()) + 60, **claims}, SECRET,
                      algorithm="HS256")


def test_the_handshake_refuses_a_bad_claim_with_401() -> None:
    auth = Authenticator(NodeSettings(jwt_secret=SECRET, max_subscriptions_per_connection=2))
    assert auth.verify(token(topics=["a", "b"])).claims["topics"] == ["a", "b"]
    for bad in (["a b"], "a", ["a", "b", "c"]):
        with pytest.raises(AuthError) as info:
            auth.verify(token(topics=bad))
        assert info.value.status == 401
        assert "token claim 'topics'" in info.value.reason


def test_mint_token_writes_the_claim() -> None:
    minted = mint_token(SECRET, "bob", 60, topics=["x", "y"])
    assert jwt.decode(minted, SECRET, algorithms=["HS256"])["topics"] == ["x", "y"]
    assert "topics" not in jwt.decode(mint_token(SECRET, "bob", 60), SECRET,
                                      algorithms=["HS256"])


@pytest.mark.parametrize(("name", "value"), [("MAX_USERS_PER_SEND", "0"),
                                             ("MAX_SUBSCRIPTIONS_PER_CONNECTION", "lots")])
def test_bad_caps_name_the_setting(name: str, value: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"WSNODE_{name}", value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value).startswith(f"invalid setting WSNODE_{name}={value!r}")


def test_topic_info_documents() -> None:
    info = TopicInfo("news", {"pod-b": 2, "pod-a": 1})  # type: ignore[dict-item]
    assert info.connections == 3
    assert info.summary() == {"topic": "news", "connections": 3, "pods": ["pod-a", "pod-b"]}
    assert info.to_json() == {"topic": "news", "connections": 3, "pods": [
        {"pod": "pod-a", "connections": 1}, {"pod": "pod-b", "connections": 2}]}
