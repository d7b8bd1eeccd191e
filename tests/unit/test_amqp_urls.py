"""``WSNODE_AMQP_URL``: one broker URL or a comma-separated list of them, checked
at start (one line naming the setting, passwords hidden)."""

from __future__ import annotations

import re

import pytest

from wsnode.errors import SettingsError
from wsnode.settings import load_settings
from wsnode.urls import redact, split_amqp_urls


def test_a_list_is_split_and_trimmed() -> None:
    assert split_amqp_urls("amqp://a:1@h1:5672/ , amqps://b@h2/vh,amqp://h3") == [
        "amqp://a:1@h1:5672/", "amqps://b@h2/vh", "amqp://h3"]
    assert split_amqp_urls("AMQP://h/") == ["AMQP://h/"]


@pytest.mark.parametrize(("value", "message"), [
    ("redis://u:pw-9@h/", "the URL must start with amqp:// or amqps://"),
    ("rabbitmq:5672", "the URL must start with amqp:// or amqps://"),
    ("amqp:///", "the URL names no host"),
    ("amqp://u:pw-9@h:99999/", "the URL cannot be parsed: Port out of range"),
    ("amqp://u:pw-9@h:x/", "the URL cannot be parsed"),
    ("amqp://h1/,,amqp://h3/", "item 2 is empty"),
    ("amqp://h1/,", "item 2 is empty"),
    ("amqp://u:pw-9@h1/, http://v:pw-9@h2/",
     "item 2 (http://v:***@h2/) must start with amqp:// or amqps://"),
    (" , ", "no URL given"),
])
def test_a_bad_url_is_named_without_its_password(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        split_amqp_urls(value)
    assert message in str(caught.value)
    assert "pw-9" not in str(caught.value)


def test_settings_take_a_list_and_refuse_a_bad_one_in_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSNODE_AMQP_URL", "amqp://u:pw-9@h1/ ,amqp://u:pw-9@h2/")
    assert load_settings().amqp_url == "amqp://u:pw-9@h1/,amqp://u:pw-9@h2/"
    monkeypatch.setenv("WSNODE_AMQP_URL", "amqp://u:pw-9@h1/,redis://u:pw-9@h2/")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith("invalid setting WSNODE_AMQP_URL='amqp://u:***@h1/,"
                           "redis://u:***@h2/': item 2 (redis://u:***@h2/) must start with")
    assert "pw-9" not in text


@pytest.mark.parametrize(("url", "shown"), [
    ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
    ("amqp://:pw@h/", "amqp://:***@h/"),
    ("amqp://user@h/", "amqp://user@h/"),
    ("amqp://u:p%40ss@[::1]:5672/v?x=1", "amqp://u:***@[::1]:5672/v?x=1"),
    ("amqp://u:secret@h:99999/", "amqp://u:***@h:99999/"),  # a bad port is still shown
    ("amqp://a:1@h1/,amqp://b:2@h2/", "amqp://a:***@h1/,amqp://b:***@h2/"),
])
def test_redact_hides_every_password(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_a_broker_refusing_transient_queues_is_explained() -> None:
    from aiormq.exceptions import ConnectionInternalError

    from wsnode.bus_rabbitmq_session import Endpoint, refused_everywhere

    refusal = ConnectionInternalError(
        541, "INTERNAL_ERROR - Feature `transient_nonexcl_queues` is deprecated.")
    endpoint = Endpoint("amqp://u:pw-9@h1/,amqp://u:pw-9@h2/", 5.0)
    text = str(endpoint.unavailable(refusal, 1))
    assert "deprecated_features.permit.transient_nonexcl_queues = true" in text
    assert refused_everywhere(refusal)  # the other nodes are not tried for it
    assert endpoint.safe_urls == ["amqp://u:***@h1/", "amqp://u:***@h2/"]
    assert str(endpoint.unavailable(TimeoutError(), 1)) == \
        "RabbitMQ at amqp://u:***@h2/ did not answer in 5.0s"
