"""Settings (DESIGN §7): defaults, WSNODE_* variables, .env, and one-line errors.

The autouse fixture in conftest.py runs each test in an empty temporary
directory with no WSNODE_* variables set.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from wsnode.errors import SettingsError
from wsnode.settings import Rate, load_settings, parse_duration, parse_rate, parse_size


def settings_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(f"WSNODE_{name}", value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    return str(info.value)


# -- defaults -----------------------------------------------------------------


def test_defaults() -> None:
    s = load_settings()
    assert s.port == 8765
    assert s.admin_port == 9765
    assert s.rate_limit == Rate(20, 10.0)
    assert s.max_message_bytes == 65536
    assert s.compression is False
    assert s.key_prefix == "ws"
    assert s.user_claim == "sub"
    assert s.redis_url is None
    assert s.amqp_url is None
    assert s.cluster is False
    assert s.jwt_secret is None
    assert s.allowed_origins == []
    assert s.log_format == "text"
    assert s.pod_id  # the hostname


def test_cluster_needs_both_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSNODE_REDIS_URL", "redis://localhost:6379/0")
    assert load_settings().cluster is False
    monkeypatch.setenv("WSNODE_AMQP_URL", "amqp://guest:guest@localhost/")
    assert load_settings().cluster is True


# -- environment and .env -----------------------------------------------------


def test_env_vars_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSNODE_POD_ID", "pod-7")
    monkeypatch.setenv("WSNODE_PORT", "9000")
    monkeypatch.setenv("WSNODE_ADMIN_PORT", "9001")
    monkeypatch.setenv("WSNODE_KEY_PREFIX", "tenant.a")
    monkeypatch.setenv("WSNODE_COMPRESSION", "true")
    monkeypatch.setenv("WSNODE_LOG_LEVEL", "debug")
    monkeypatch.setenv("WSNODE_LOG_FORMAT", "json")
    monkeypatch.setenv("WSNODE_ACK_MAX_ATTEMPTS", "7")
    s = load_settings()
    assert (s.pod_id, s.port, s.admin_port, s.key_prefix) == ("pod-7", 9000, 9001, "tenant.a")
    assert s.compression is True
    assert s.log_level == "DEBUG"
    assert s.log_format == "json"
    assert s.ack_max_attempts == 7


def test_overrides_beat_env_and_none_overrides_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WSNODE_PORT", "9000")
    monkeypatch.setenv("WSNODE_POD_ID", "from-env")
    s = load_settings(port=9100, pod_id=None)
    assert s.port == 9100
    assert s.pod_id == "from-env"


def test_dotenv_file_is_read(isolated_env: Path) -> None:
    (isolated_env / ".env").write_text(
        "WSNODE_PORT=7777\nWSNODE_RATE_LIMIT=5/1s\nWSNODE_ALLOWED_ORIGINS=https://a.example\n"
    )
    s = load_settings()
    assert s.port == 7777
    assert s.rate_limit == Rate(5, 1.0)
    assert s.allowed_origins == ["https://a.example"]


def test_env_var_beats_dotenv(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated_env / ".env").write_text("WSNODE_PORT=7777\n")
    monkeypatch.setenv("WSNODE_PORT", "7778")
    assert load_settings().port == 7778


def test_bad_value_in_dotenv_is_named(isolated_env: Path) -> None:
    (isolated_env / ".env").write_text("WSNODE_ADMIN_PORT=nine\n")
    with pytest.raises(SettingsError, match="WSNODE_ADMIN_PORT"):
        load_settings()


# -- value syntaxes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("10s", 10.0), ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0),
     ("2.5", 2.5), ("0.5s", 0.5), (" 3 s ", 3.0), ("10S", 10.0)],
)
def test_durations(monkeypatch: pytest.MonkeyPatch, text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    monkeypatch.setenv("WSNODE_ACK_RETRY_INTERVAL", text)
    assert load_settings().ack_retry_interval == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [("65536", 65536), ("64KiB", 65536), ("1MiB", 1048576), ("2kb", 2000), ("1k", 1024)],
)
def test_sizes(monkeypatch: pytest.MonkeyPatch, text: str, size: int) -> None:
    assert parse_size(text) == size
    monkeypatch.setenv("WSNODE_MAX_MESSAGE_BYTES", text)
    assert load_settings().max_message_bytes == size


@pytest.mark.parametrize(
    ("text", "rate"),
    [("20/10s", Rate(20, 10.0)), ("100/1m", Rate(100, 60.0)), ("5/250ms", Rate(5, 0.25)),
     ("0", None), ("off", None)],
)
def test_rates(monkeypatch: pytest.MonkeyPatch, text: str, rate: Rate | None) -> None:
    assert parse_rate(text) == rate
    monkeypatch.setenv("WSNODE_RATE_LIMIT", text)
    assert load_settings().rate_limit == rate


def test_rate_str() -> None:
    assert str(Rate(20, 10.0)) == "20/10s"


def test_comma_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSNODE_ALLOWED_ORIGINS", "https://a.example.com, https://*.b.com,,")
    monkeypatch.setenv("WSNODE_JWT_ALGORITHMS", "RS256,ES256")
    s = load_settings()
    assert s.allowed_origins == ["https://a.example.com", "https://*.b.com"]
    assert s.jwt_algorithms == ["RS256", "ES256"]


# -- bad values: one line naming the variable ---------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("PORT", "-1"),
        ("ADMIN_PORT", "http"),
        ("RATE_LIMIT", "fast"),
        ("RATE_LIMIT", "20/soon"),
        ("RATE_LIMIT", "-5/10s"),
        ("PING_INTERVAL", "soon"),
        ("ACK_RETRY_INTERVAL", "-2s"),
        ("ACK_TTL", "0"),
        ("MAX_MESSAGE_BYTES", "-1"),
        ("MAX_MESSAGE_BYTES", "0"),
        ("SEND_QUEUE_SIZE", "lots"),
        ("LOG_FORMAT", "xml"),
        ("LOG_LEVEL", "loud"),
        ("JWT_ALGORITHMS", "none"),
        ("JWT_ALGORITHMS", "HS256,none"),
        ("ACK_MAX_ATTEMPTS", "0"),
        ("KEY_PREFIX", "a b"),
        ("COMPRESSION", "maybe"),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    message = settings_error(monkeypatch, **{name: value})
    assert f"WSNODE_{name}" in message
    assert "\n" not in message
    assert "\r" not in message


def test_secret_and_public_key_both_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = "SeCrEt-do-not-print-4f1c2a9e8b7d6c5e4f3a2b1c0d9e8f7a"
    message = settings_error(monkeypatch, JWT_SECRET=secret,
                             JWT_PUBLIC_KEY_FILE=str(tmp_path / "key.pem"))
    assert "WSNODE_JWT_SECRET" in message
    assert "WSNODE_JWT_PUBLIC_KEY_FILE" in message
    assert "\n" not in message
    assert secret not in message


def test_hs256_with_public_key_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    message = settings_error(monkeypatch, JWT_PUBLIC_KEY_FILE=str(tmp_path / "key.pem"),
                             JWT_ALGORITHMS="HS256")
    assert "WSNODE_JWT_ALGORITHMS" in message
    assert "\n" not in message


def test_secret_with_asymmetric_algorithm_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "SeCrEt-do-not-print-4f1c2a9e8b7d6c5e4f3a2b1c0d9e8f7a"
    message = settings_error(monkeypatch, JWT_SECRET=secret, JWT_ALGORITHMS="RS256")
    assert "WSNODE_JWT_ALGORITHMS" in message
    assert secret not in message


def test_secret_never_appears_in_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "SeCrEt-RECOGNIZABLE\nsecond-line"
    message = settings_error(monkeypatch, JWT_SECRET=secret, API_KEY="ApiKey-RECOGNIZABLE",
                             PORT="not-a-port")
    assert "WSNODE_PORT" in message
    assert "RECOGNIZABLE" not in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["jwt_secret", "api_key"])
def test_an_invalid_secret_is_named_but_not_shown(name: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(**{name: ["SeCrEt-RECOGNIZABLE"]})
    message = str(info.value)
    assert f"WSNODE_{name.upper()}" in message
    assert "RECOGNIZABLE" not in message
    assert "\n" not in message


def test_several_bad_values_stay_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    message = settings_error(monkeypatch, PORT="abc", LOG_FORMAT="xml")
    assert "\n" not in message
    assert "WSNODE_PORT" in message
    assert "WSNODE_LOG_FORMAT" in message


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValidationError):
        s.port = 1  # type: ignore[misc]
    assert s.port == 8765
