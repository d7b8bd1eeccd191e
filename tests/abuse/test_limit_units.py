"""The arithmetic of the limits, without a pod: token buckets, the connection
budget, the limits derived from the descriptor limit, log escaping."""

from __future__ import annotations

import asyncio
import logging

import pytest

from wsnode.admission import connection_limits, quiet_accept_errors
from wsnode.budget import ConnBudget, TokenBucket
from wsnode.errors import SettingsError
from wsnode.logs import TextFormatter, escape
from wsnode.settings import Rate, parse_byte_rate, parse_origin


def test_a_bucket_allows_a_burst_then_refills() -> None:
    bucket = TokenBucket(Rate(2, 10.0), now=0.0)
    assert bucket.take(1, 0.0) == 0 and bucket.take(1, 0.0) == 0
    assert bucket.take(1, 0.0) == pytest.approx(5.0)  # one token per 5 s
    assert bucket.take(1, 4.0) == pytest.approx(1.0)
    assert bucket.take(1, 5.0) == 0
    bucket.give(10)
    assert bucket.tokens == 2  # never above the burst


def test_the_budget_is_spent_by_frames_or_bytes_and_refunds() -> None:
    budget = ConnBudget(Rate(3, 10.0), Rate(1000, 10.0), None, now=0.0)
    assert budget.charge(100, 0.0) and budget.charge(100, 0.0)
    budget.refund(100)  # an ack that settled something
    assert budget.charge(100, 0.0) and budget.charge(100, 0.0)
    assert not budget.charge(100, 0.0) and budget.spent
    assert not budget.charge(1, 100.0)  # spent stays spent
    big = ConnBudget(None, Rate(1000, 10.0), None, now=0.0)
    assert not big.charge(1001, 0.0)


def test_restore_wait_is_in_milliseconds() -> None:
    budget = ConnBudget(None, None, Rate(1, 10.0), now=0.0)
    assert budget.restore_wait_ms(0.0) == 0
    assert budget.restore_wait_ms(2.5) == 7500
    assert ConnBudget(None, None, None, now=0.0).restore_wait_ms(0.0) == 0


def test_limits_follow_the_descriptor_limit() -> None:
    assert connection_limits(None, 64, 256).max_connections == 128
    assert connection_limits(None, 64, 20_000).max_connections == 18_000
    assert connection_limits(None, 64, 1 << 20).max_connections == (1 << 20) - 4096
    limits = connection_limits(100, 5, 1024)
    assert (limits.max_connections, limits.per_user, limits.max_transports) == (100, 5, 132)
    with pytest.raises(SettingsError, match=r"WSNODE_MAX_CONNECTIONS=900: .* at most 896"):
        connection_limits(900, 64, 1024)
    with pytest.raises(SettingsError, match="ulimit -n"):
        connection_limits(None, 64, 100)


def test_byte_rates_and_origins_parse() -> None:
    assert parse_byte_rate("256KiB/10s") == Rate(262144, 10.0)
    assert parse_byte_rate("0") is None
    with pytest.raises(ValueError, match="SIZE/PERIOD"):
        parse_byte_rate("1MiB")
    assert parse_origin("wss://Chat.Example.com/") == ("https", "chat.example.com", 443)
    assert parse_origin("http://[::1]:8765") == ("http", "::1", 8765)
    for bad in ("chat.example.com", "https://a/b", "ftp://a", "https://u:p@a", "null"):
        with pytest.raises(ValueError, match="is not an origin"):
            parse_origin(bad)


def test_escape_leaves_no_line_break() -> None:
    text = escape("a\nb\rc\x1b[0m\x00\x85\u2028\ud800é ユ")
    assert text == "a\\nb\\rc\\x1b[0m\\x00\\x85\\u2028\\ud800é ユ"
    assert len(text.splitlines()) == 1


def test_a_traceback_cannot_pass_for_a_record() -> None:
    try:
        raise ValueError("x\n2030-01-01 00:00:00,000 INFO    forged")
    except ValueError as exc:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (),
                                   (type(exc), exc, exc.__traceback__))
    lines = TextFormatter().format(record).splitlines()
    assert "failed" in lines[0]
    assert all(line.startswith("  ") for line in lines[1:])
    assert any("forged" in line for line in lines[1:])


def test_accept_failures_are_logged_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        quiet_accept_errors(loop)
        with caplog.at_level(logging.DEBUG, logger="wsnode.admission"):
            for _ in range(500):
                loop.call_exception_handler({
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(24, "Too many open files")})
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "descriptor limit" in warnings[0].getMessage()
        handler = loop.get_exception_handler()
        assert handler is not None
        quiet_accept_errors(loop)  # a loop with its own handler is left alone
        assert loop.get_exception_handler() is handler
    finally:
        loop.close()
