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
        password, port = parts.password, parts.port
    except ValueError:
        return "<unparseable URL>"
    if password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if port:
        host = f"{host}:{port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))
