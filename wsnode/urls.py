"""Backend URLs: what they may say, and how they may be shown.

Every message and log line that names a Redis or RabbitMQ URL goes through
:func:`redact`, so a password in ``WSNODE_REDIS_URL`` or ``WSNODE_AMQP_URL``
never reaches a log, a CLI error or ``/readyz``. :func:`parse_redis_url` and
:func:`split_amqp_urls` check a URL at start; their ValueError names what is
wrong (password hidden), and settings turn it into one line naming the setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit, urlunsplit


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (a comma-separated list of
    URLs is redacted item by item); a URL that cannot be parsed is not shown."""
    if "," in url:
        return ",".join(redact(part) for part in url.split(","))
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    # From the text, not parts.password/port: a URL with a bad port must still
    # be shown (redacted) in the error that says the port is bad.
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return urlunsplit((parts.scheme, f"{user}:***@{hostport}", parts.path, parts.query,
                       parts.fragment))


AMQP_SCHEMES = ("amqp", "amqps")


def split_amqp_urls(value: str) -> list[str]:
    """The broker URLs of ``WSNODE_AMQP_URL``: one ``amqp://`` or ``amqps://``
    URL, or a comma-separated list of them (nodes of one RabbitMQ cluster,
    tried in order). Raises ValueError, naming the item with its password
    hidden, for an empty item, another scheme, no host or a bad port. A comma
    inside a password must be written ``%2C``."""
    items = [item.strip() for item in value.split(",")]
    if not any(items):
        raise ValueError("no URL given (example: amqp://user:password@rabbitmq:5672/)")
    urls = []
    for n, item in enumerate(items, 1):
        # The whole value is shown beside the error already; a list names the item.
        where = f"item {n} ({redact(item)})" if len(items) > 1 else "the URL"
        if not item:
            raise ValueError(f"item {n} is empty (URLs are separated by single commas)")
        try:
            parts = urlsplit(item)
            parts.port  # noqa: B018 (a bad port raises ValueError only when read)
        except ValueError as exc:
            raise ValueError(f"{where} cannot be parsed: {exc}") from None
        if parts.scheme.lower() not in AMQP_SCHEMES:
            raise ValueError(f"{where} must start with amqp:// or amqps://")
        if not parts.hostname:
            raise ValueError(f"{where} names no host")
        urls.append(item)
    return urls


REDIS_SCHEMES = ("redis", "rediss", "redis+cluster", "redis+sentinel")
_REDIS_HELP = ("use redis://host:port/db, rediss:// (TLS), redis+cluster://host:port[,host:port...]"
               " or redis+sentinel://host:port[,host:port...]/SERVICE[/DB]")


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What ``WSNODE_REDIS_URL`` names (see :func:`parse_redis_url`).

    ``kind``: ``server`` (one Redis: ``redis://``, ``rediss://``; ``url`` is given
    to redis-py as it is), ``cluster`` (``nodes`` are startup nodes of a Redis
    Cluster) or ``sentinel`` (``nodes`` are sentinels watching ``service``).
    ``wait_replicas``: how many replicas must confirm an ACK-store write (the
    ``?wait_replicas=N`` of a cluster or sentinel URL, default 1; always 0 for
    one server, which has no failover to survive)."""

    kind: Literal["server", "cluster", "sentinel"]
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    wait_replicas: int = 0


def parse_redis_url(value: str) -> RedisTarget:
    """The Redis topology of ``WSNODE_REDIS_URL``; ValueError (password hidden)
    for another scheme, no host, a bad port or database, a sentinel URL without
    a service, or an empty item of a host list."""
    url = value.strip()
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in REDIS_SCHEMES:
        what = f"unknown scheme {scheme.lower() + '://'!r}" if sep else "no scheme"
        raise ValueError(f"{what}: {_REDIS_HELP}")
    scheme = scheme.lower()
    if scheme in ("redis", "rediss"):
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (a bad port raises ValueError only when read)
        except ValueError as exc:
            raise ValueError(f"the URL cannot be parsed: {exc}") from None
        if not parts.hostname:
            raise ValueError("the URL names no host (example: redis://redis:6379/0)")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ValueError(f"the database {db!r} is not a number")
        return RedisTarget("server", url, ((parts.hostname, parts.port or 6379),),
                           db=int(db or 0))
    netloc, _, path = rest.partition("/")
    path, _, query = path.partition("?")
    if "?" in netloc:
        netloc, _, query = netloc.partition("?")
    wait = _wait_replicas(scheme, query)
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(secret) if colon else None
    default_port = 26379 if scheme == "redis+sentinel" else 6379
    nodes = tuple(_host_port(item, n, default_port)
                  for n, item in enumerate(hosts.split(","), 1))
    segments = [s for s in path.split("/") if s]
    if scheme == "redis+cluster":
        if segments and segments != ["0"]:
            raise ValueError("a Redis Cluster has database 0 only: "
                             "redis+cluster://host:port[,host:port...]")
        return RedisTarget("cluster", url, nodes, username=username, password=password,
                           wait_replicas=wait)
    if not segments or len(segments) > 2:
        raise ValueError("name the service the sentinels watch: "
                         "redis+sentinel://host:port[,host:port...]/SERVICE[/DB]")
    if len(segments) == 2 and not segments[1].isdigit():
        raise ValueError(f"the database {segments[1]!r} is not a number")
    return RedisTarget("sentinel", url, nodes, service=unquote(segments[0]),
                       db=int(segments[1]) if len(segments) == 2 else 0,
                       username=username, password=password, wait_replicas=wait)


def _wait_replicas(scheme: str, query: str) -> int:
    """``wait_replicas=N`` (0-16), the only option of a cluster or sentinel URL."""
    wait = 1
    for item in filter(None, query.split("&")):
        name, _, value = item.partition("=")
        if name != "wait_replicas":
            raise ValueError(f"{scheme}:// takes one option, wait_replicas=N, not {name!r}")
        if not value.isdigit() or int(value) > 16:
            raise ValueError(f"wait_replicas={value!r}: use a number of replicas, 0 to 16")
        wait = int(value)
    return wait


def _host_port(item: str, n: int, default_port: int) -> tuple[str, int]:
    item = item.strip()
    if not item:
        raise ValueError(f"host {n} is empty (hosts are separated by single commas)")
    if item.startswith("["):  # [IPv6]:port
        host, _, port = item[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise ValueError(f"host {n} ({item}) names no host")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"host {n} ({item}) has a bad port")
    return host, int(port) if port else default_port
