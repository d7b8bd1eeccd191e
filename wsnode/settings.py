"""Settings: ``WSNODE_*`` environment variables, a ``.env`` file, or arguments.

Durations accept seconds (``2.5``) or a unit (``250ms``, ``10s``, ``5m``, ``1h``,
``1d``); sizes accept bytes (``65536``) or a unit (``64KiB``, ``1MiB``); lists are
comma-separated. :func:`load_settings` turns any invalid value into one
:class:`~wsnode.errors.SettingsError` line naming the variable.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from wsnode.errors import SettingsError

ENV_PREFIX = "WSNODE_"
POD_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"\s*(\d+)\s*(b|kb|kib|k|mb|mib|m|gb|gib|g)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1000**3, "gib": 1024**3}


def parse_duration(value: Any) -> float:
    """Seconds from ``2.5``, ``"250ms"``, ``"10s"``, ``"5m"``, ``"1h"`` or ``"1d"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 10s, 250ms or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration (examples: 10s, 250ms, 1h)")
        seconds = float(match.group(1)) * _DURATION_UNITS[(match.group(2) or "s").lower()]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from ``65536``, ``"64KiB"`` or ``"1MiB"``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 65536 or 64KiB")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a size (examples: 65536, 64KiB, 1MiB)")
        size = int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()]
    if size <= 0:
        raise ValueError("a size must be positive")
    return size


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` messages per ``period`` seconds."""

    count: int
    period: float

    def __str__(self) -> str:
        return f"{self.count}/{self.period:g}s"


def parse_rate(value: Any) -> Rate | None:
    """``"20/10s"`` -> Rate(20, 10.0); ``"0"``/``"off"`` -> None (no limit)."""
    if value is None or isinstance(value, Rate):
        return value
    text = str(value).strip().lower()
    if text in {"0", "off", "none", ""}:
        return None
    count_text, sep, period_text = text.partition("/")
    if not sep or not count_text.strip().isdigit():
        raise ValueError(f"{value!r} is not a rate: use COUNT/PERIOD such as 20/10s, or 0 for off")
    count = int(count_text)
    period = parse_duration(period_text)
    if count <= 0 or period <= 0:
        raise ValueError("a rate needs a positive count and period (or 0 for off)")
    return Rate(count, period)


def parse_byte_rate(value: Any) -> Rate | None:
    """``"256KiB/10s"`` -> Rate(262144, 10.0); ``"0"``/``"off"`` -> None (no limit)."""
    if value is None or isinstance(value, Rate):
        return value
    text = str(value).strip().lower()
    if text in {"0", "off", "none", ""}:
        return None
    size_text, sep, period_text = text.partition("/")
    if not sep:
        raise ValueError(f"{value!r} is not a byte rate: use SIZE/PERIOD such as 256KiB/10s, "
                         "or 0 for off")
    size, period = parse_size(size_text), parse_duration(period_text)
    if period <= 0:
        raise ValueError("a byte rate needs a positive period (or 0 for off)")
    return Rate(size, period)


def parse_origin(value: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an origin such as ``https://chat.example.com``:
    lower case, the default port filled in, ``ws``/``wss`` read as ``http``/``https``
    (so the WebSocket URL itself may be given). ValueError when it is not one."""
    try:
        parts = urlsplit(value.strip().rstrip("/"))
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an origin: {exc}") from None
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in ("http", "https") or not parts.hostname or parts.path \
            or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{value!r} is not an origin: use scheme://host[:port], "
                         "e.g. https://chat.example.com")
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80)


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
StrList = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]
OptRate = Annotated[Rate | None, NoDecode, BeforeValidator(parse_rate)]
OptByteRate = Annotated[Rate | None, NoDecode, BeforeValidator(parse_byte_rate)]

_SYMMETRIC = {"HS256", "HS384", "HS512"}
_ASYMMETRIC = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
               "ES512", "EdDSA"}


class NodeSettings(BaseSettings):
    """Every setting of a pod (DESIGN §7). Field ``x`` is read from ``WSNODE_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True,
        # WSNODE_REDIS_URL= (as docker-compose writes an unset ${VAR}) means unset.
        env_ignore_empty=True,
    )

    # Valid as an AMQP queue name and routing key, a Redis key part, a URL path
    # segment and a log field as it is: every hostname and Kubernetes pod name fits.
    pod_id: str = Field(default_factory=socket.gethostname)
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    admin_host: str | None = None  # defaults to host
    admin_port: int = Field(9765, ge=0, le=65535)
    # The admin URL other tools use to reach this pod (wsctl doctor), when the
    # bound address is not it (containers, NAT): e.g. http://pod-a.wsnode:9765.
    admin_advertise: str | None = Field(None, pattern=r"^https?://")
    redis_url: str | None = None
    amqp_url: str | None = None
    key_prefix: str = Field("ws", pattern=r"^[A-Za-z0-9_.:-]{1,32}$")

    jwt_secret: SecretStr | None = None
    jwt_public_key_file: Path | None = None
    jwt_algorithms: StrList = Field(default_factory=list)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    user_claim: str = "sub"
    allowed_origins: StrList = Field(default_factory=list)
    # Where browsers reach /ws (through the load balancer): a page of one of these
    # origins is same-origin. The Host header is never trusted for this.
    public_origins: StrList = Field(default_factory=list)
    api_key: SecretStr | None = None
    # Signs the messages pods (and wsctl) send each other over RabbitMQ; a pod
    # parks unsigned ones (wsnode.bus_sign). The same value on every pod.
    cluster_secret: SecretStr | None = None

    rate_limit: OptRate = Rate(20, 10.0)
    # Connections per user on this pod (handshakes in progress included): past it
    # a handshake gets 429. 0 turns it off.
    max_connections_per_user: int = Field(64, ge=0, le=1_000_000)
    # Handshakes admitted per user on this pod (burst COUNT): past it 429 with
    # Retry-After. Each one costs a welcome, a replay and presence writes.
    handshake_rate: OptRate = Rate(10, 10.0)
    # Handshakes started per event-loop iteration; the others wait, unread, for
    # the next (wsnode.intake). 0 turns it off.
    handshakes_per_iteration: int = Field(16, ge=0, le=100_000)
    # Users in one send_to_users (POST /v1/send "users", wsctl send U1 U2...):
    # past it the send is refused, whole.
    max_users_per_send: int = Field(1000, ge=1, le=100_000)
    # Topics one connection may be subscribed to (token claim, frames, the app).
    max_subscriptions_per_connection: int = Field(100, ge=1, le=10_000)
    # Connections on this pod: past it a handshake gets 503. Unset: the descriptor
    # limit minus a reserve (wsnode.admission).
    max_connections: int | None = Field(None, ge=1)
    # Per connection: client `restore` frames (past it: error rate_limited), and the
    # budget of ack/ping/restore frames and their bytes (past it: close 1008).
    restore_rate: OptRate = Rate(2, 10.0)
    control_frames: OptRate = Rate(100, 10.0)
    control_bytes: OptByteRate = Rate(256 * 1024, 10.0)
    compression: bool = False
    max_message_bytes: Size = 65536
    send_queue_size: Size = 1024 * 1024
    # The kernel's send buffer of each connection (SO_SNDBUF; 0: the kernel
    # tunes it, up to megabytes). Bounds what a client that stopped reading
    # still gets after its token expired, and the kernel memory it pins.
    socket_send_buffer: Annotated[int, BeforeValidator(
        lambda v: 0 if str(v).strip() == "0" else parse_size(v))] = 128 * 1024
    ping_interval: Duration = 20.0
    ping_timeout: Duration = 20.0
    heartbeat_interval: Duration = 5.0
    ack_retry_interval: Duration = 5.0
    ack_max_attempts: int = Field(5, ge=1, le=1000)
    ack_ttl: Duration = 86400.0
    # Pending messages kept per user; past it the oldest is dead-lettered
    # (reason overflow), and the send's report names it in "evicted".
    ack_max_pending: int = Field(10_000, ge=1, le=1_000_000)
    # Messages relayed from clients (an app handler sending on a client's behalf):
    # pending ones per recipient, and a client's own pending or dead-lettered ones.
    relayed_max_pending: int = Field(100, ge=1, le=1_000_000)
    relayed_budget: int = Field(100, ge=1, le=1_000_000)
    # How long a delivery may wait in a pod's queue before it is stranded
    # (re-routed by another pod): a pod that stops consuming this long is
    # treated as gone for that message. Must stay well under a minute (the
    # queue itself expires a minute after its pod stops consuming).
    bus_message_ttl: Duration = 30.0
    drain_timeout: Duration = 30.0
    # How long a SIGTERM drain spreads its reconnects over (bounded by drain_timeout),
    # so a deploy does not send every client to the other pods in the same instant.
    drain_over: Duration = 1.0
    # Message trails for `wsctl trace`: off, ack (ACK-required messages), all, or
    # a share (0.01) of the other messages with an id, on top of the ACK ones.
    trace: str = "ack"
    trace_ttl: Duration = 86400.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    # uvloop (libuv, transports in C) halves the loop's cost per socket write;
    # asyncio is there for debugging and for platforms without uvloop.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # Tests only: make this pod fail at named places (wsnode.failpoints). Off
    # by default, and costs nothing when off.
    failpoints: str = ""

    @field_validator("api_key")
    @classmethod
    def _long_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("use at least 16 characters (openssl rand -hex 16)")
        return value

    @field_validator("cluster_secret")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("use at least 32 characters (openssl rand -hex 32)")
        return value

    @field_validator("pod_id")
    @classmethod
    def _pod_id(cls, value: str) -> str:
        if not POD_ID.fullmatch(value):
            raise ValueError("use 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-' (the pod id "
                             "names AMQP queues, Redis keys and URLs)")
        return value

    @field_validator("public_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            parse_origin(origin)  # its ValueError names the bad one
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        from wsnode.urls import parse_redis_url

        return None if value is None else parse_redis_url(value).url

    @field_validator("amqp_url")
    @classmethod
    def _amqp_urls(cls, value: str | None) -> str | None:
        from wsnode.urls import split_amqp_urls

        return None if value is None else ",".join(split_amqp_urls(value))

    @field_validator("trace")
    @classmethod
    def _trace_policy(cls, value: str) -> str:
        from wsnode.trace import TracePolicy

        try:
            TracePolicy.parse(value, 1)
        except ValueError as exc:
            raise ValueError("use off, ack, all, or a share such as 0.01") from exc
        return value.strip().lower()

    @field_validator("failpoints")
    @classmethod
    def _failpoints(cls, value: str) -> str:
        from wsnode.failpoints import parse

        parse(value)  # its ValueError names the bad item
        return value.strip()

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("jwt_algorithms")
    @classmethod
    def _pinned_algorithms(cls, value: list[str]) -> list[str]:
        for alg in value:
            if alg not in _SYMMETRIC | _ASYMMETRIC:
                raise ValueError(
                    f"{alg!r} is not allowed; choose from HS256, RS256, ES256 (and their sizes)"
                )
        return value

    @field_validator("bus_message_ttl")
    @classmethod
    def _under_a_minute(cls, value: float) -> float:
        if not 0.1 <= value <= 50:
            raise ValueError("must be between 100ms and 50s (queues expire after 60s)")
        return value

    @field_validator("ping_interval", "heartbeat_interval", "ack_retry_interval", "ack_ttl")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than zero")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> NodeSettings:
        if self.jwt_secret is not None and self.jwt_public_key_file is not None:
            raise ValueError(
                "WSNODE_JWT_SECRET and WSNODE_JWT_PUBLIC_KEY_FILE are both set: set one "
                "(an HS256 secret or an RS256/ES256 public key)"
            )
        if self.jwt_secret is not None and set(self.jwt_algorithms) - _SYMMETRIC:
            raise ValueError("WSNODE_JWT_ALGORITHMS: a JWT secret only verifies HS256/HS384/HS512")
        if self.jwt_public_key_file is not None and set(self.jwt_algorithms) & _SYMMETRIC:
            raise ValueError(
                "WSNODE_JWT_ALGORITHMS: HS* with a public key would let anyone sign tokens; "
                "use RS256 or ES256"
            )
        return self

    @property
    def cluster(self) -> bool:
        """True when Redis and RabbitMQ are configured (cluster mode)."""
        return self.redis_url is not None and self.amqp_url is not None

    @property
    def mode(self) -> str:
        """The mode in words, for the log line a pod starts with."""
        if self.cluster:
            return "cluster mode"
        if self.redis_url is not None:
            return "single pod, state in Redis (no WSNODE_AMQP_URL: no other pod is reached)"
        return "embedded mode"

    @property
    def lease_seconds(self) -> float:
        """How long a pod counts after its last heartbeat."""
        return 3 * self.heartbeat_interval


def _describe(err: ErrorDetails) -> str:
    loc = err.get("loc") or ()
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if not loc:
        return f"invalid settings: {message}"
    field = str(loc[0])
    value = err.get("input")
    secret = field in {"jwt_secret", "api_key", "cluster_secret"}
    if field.endswith("_url") and isinstance(value, str):
        from wsnode.urls import redact

        value = redact(value)  # a backend URL may carry a password
    shown = "" if secret or value is None or isinstance(value, dict) else f"={value!r}"
    return f"invalid setting {ENV_PREFIX}{field.upper()}{shown}: {message}"


def load_settings(**overrides: Any) -> NodeSettings:
    """Build settings from the environment, ``.env`` and ``overrides``.

    ``None`` overrides are ignored, so CLI options that were not given fall back
    to the environment. Raises :class:`SettingsError` with one line per problem
    (the first line names the first bad setting).
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return NodeSettings(**given)
    except ValidationError as exc:
        raise SettingsError("; ".join(_describe(e) for e in exc.errors())) from exc
