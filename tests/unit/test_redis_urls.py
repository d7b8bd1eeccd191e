"""``WSNODE_REDIS_URL``: one server, a Redis Cluster or Sentinel, chosen by the
scheme and checked at start (one line naming the setting, password hidden)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support.pods import base_env
from wsnode.errors import SettingsError
from wsnode.settings import load_settings
from wsnode.urls import RedisTarget, parse_redis_url, redact


@pytest.mark.parametrize(("url", "target"), [
    ("redis://h:6380/2", RedisTarget("server", "redis://h:6380/2", (("h", 6380),), db=2)),
    ("rediss://u:p@h/", RedisTarget("server", "rediss://u:p@h/", (("h", 6379),))),
    ("REDIS://h", RedisTarget("server", "REDIS://h", (("h", 6379),))),
    ("redis+cluster://a:7000,b:7001,[::1]:7002",
     RedisTarget("cluster", "redis+cluster://a:7000,b:7001,[::1]:7002",
                 (("a", 7000), ("b", 7001), ("::1", 7002)), wait_replicas=1)),
    ("redis+cluster://:p%40ss@a,b/0?wait_replicas=0",
     RedisTarget("cluster", "redis+cluster://:p%40ss@a,b/0?wait_replicas=0",
                 (("a", 6379), ("b", 6379)), password="p@ss", wait_replicas=0)),
    ("redis+sentinel://s1,s2:26380/mymaster",
     RedisTarget("sentinel", "redis+sentinel://s1,s2:26380/mymaster",
                 (("s1", 26379), ("s2", 26380)), service="mymaster", wait_replicas=1)),
    ("redis+sentinel://u:pw@s1:1/svc/3?wait_replicas=2",
     RedisTarget("sentinel", "redis+sentinel://u:pw@s1:1/svc/3?wait_replicas=2", (("s1", 1),),
                 service="svc", db=3, username="u", password="pw", wait_replicas=2)),
])
def test_each_scheme_names_its_topology(url: str, target: RedisTarget) -> None:
    assert parse_redis_url(url) == target


@pytest.mark.parametrize(("value", "message"), [
    ("unix:///tmp/redis.sock", "unknown scheme 'unix://': use redis://host:port/db"),
    ("localhost:6379", "no scheme: use redis://"),
    ("redis+clusters://u:pw-9@h", "unknown scheme 'redis+clusters://'"),
    ("redis://u:pw-9@h:99999/", "the URL cannot be parsed: Port out of range"),
    ("redis:///0", "the URL names no host"),
    ("redis://h/x", "the database 'x' is not a number"),
    ("redis+cluster://u:pw-9@a:1,,b:2", "host 2 is empty"),
    ("redis+cluster://a:x", "host 1 (a:x) has a bad port"),
    ("redis+cluster://a:1/2", "a Redis Cluster has database 0 only"),
    ("redis+cluster://a:1?db=2", "takes one option, wait_replicas=N, not 'db'"),
    ("redis+cluster://a:1?wait_replicas=x", "wait_replicas='x': use a number"),
    ("redis+sentinel://u:pw-9@s1,s2", "name the service the sentinels watch"),
    ("redis+sentinel://s1/svc/x", "the database 'x' is not a number"),
    ("redis+sentinel://s1/a/1/2", "name the service the sentinels watch"),
])
def test_a_bad_url_is_named_without_its_password(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        parse_redis_url(value)
    assert "pw-9" not in str(caught.value)


def test_settings_refuse_a_bad_url_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSNODE_REDIS_URL", "redis+sentinel://u:pw-9@s1:1,s2:2")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    text = str(caught.value)
    assert "\n" not in text and "pw-9" not in text
    assert text.startswith("invalid setting WSNODE_REDIS_URL='redis+sentinel://u:***@s1:1,"
                           "s2:2': name the service")
    monkeypatch.setenv("WSNODE_REDIS_URL", " redis+cluster://a:1,b:2 ")
    assert load_settings().redis_url == "redis+cluster://a:1,b:2"


def test_a_list_of_hosts_is_redacted() -> None:
    assert redact("redis+cluster://u:pw@a:1,b:2") == "redis+cluster://u:***@a:1,b:2"
    assert redact("redis+sentinel://:pw@a:1,b:2/svc/0") == "redis+sentinel://:***@a:1,b:2/svc/0"


@pytest.mark.parametrize("argv", [["wsnode", "serve"], ["wsctl", "presence", "ls"],
                                  ["wsctl", "dlq", "ls"]])
def test_the_clis_exit_2_with_one_line(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True,
                          timeout=60, check=False,
                          env=base_env(WSNODE_REDIS_URL="rediss+cluster://u:pw-9@h:1"))
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "WSNODE_REDIS_URL" in line and "unknown scheme 'rediss+cluster://'" in line
    assert "pw-9" not in line
