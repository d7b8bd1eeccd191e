"""Backend URLs as they may be shown: :func:`redact` hides the password.

Every message and log line that names a Redis or RabbitMQ URL goes through
:func:`redact`, so a password in ``WSNODE_REDIS_URL`` or ``WSNODE_AMQP_URL``
never reaches a log, a CLI error or ``/readyz``.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


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
