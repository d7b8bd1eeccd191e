"""Handshake authentication: JWT verification and the origin allowlist.

Contract: :meth:`Authenticator.authenticate` returns an :class:`Identity` or
raises :class:`~wsnode.errors.AuthError` with status 401 (no/bad/expired token,
or one without ``exp``), 403 (origin refused) or 400 (two ``Origin`` or two
``Authorization`` headers: which one counts would be a guess). Algorithms are
pinned from settings, never read from the token, so ``alg: none`` and HS/RS key
confusion are refused. Error messages never contain the token.

Origins: a page is allowed when its origin matches ``ALLOWED_ORIGINS`` (globs)
or is one of ``PUBLIC_ORIGINS`` (scheme, host and port compared, default ports
filled in). The ``Host`` header is never trusted: with DNS rebinding a hostile
page reaches the pod under a name of its own, and its Host header says so.
"""

from __future__ import annotations

import fnmatch
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt

from wsnode.errors import AuthError, SettingsError
from wsnode.ids import UserId
from wsnode.settings import NodeSettings, parse_origin
from wsnode.topics import claimed_topics

BEARER_SUBPROTOCOL = "bearer"
MAX_USER_ID_LENGTH = 256


def user_id_problem(user: object) -> str | None:
    """Why ``user`` cannot be a user id, or None when it can. One rule for logins,
    the admin API and ``wsctl``: 1 to 256 characters of text that UTF-8 can encode
    (a JSON ``\\ud800`` escape decodes to a lone surrogate, which no key, log or
    frame could carry)."""
    if not isinstance(user, str) or not user:
        return "a user id must be a non-empty string"
    if len(user) > MAX_USER_ID_LENGTH:
        return f"a user id has at most {MAX_USER_ID_LENGTH} characters"
    try:
        user.encode()
    except UnicodeEncodeError:
        return "a user id must be valid Unicode text (no lone surrogates)"
    return None


def _one(headers: Mapping[str, str], name: str) -> str | None:
    """The value of a header that may appear once; AuthError 400 when repeated."""
    get_all = getattr(headers, "get_all", None)
    if get_all is None:  # a plain mapping holds one value per name
        return headers.get(name)
    values: list[str] = get_all(name)
    if len(values) > 1:
        raise AuthError(400, f"more than one {name} header: send one")
    return values[0] if values else None


_REMEMBERED = 4096


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection belongs to, from a verified token."""

    user: UserId
    expires_at: float | None = None  # epoch seconds (``exp``), None when the token has none
    claims: Mapping[str, Any] = field(default_factory=dict)
    via_subprotocol: bool = False


def _load_key(settings: NodeSettings) -> tuple[Any, list[str]]:
    if settings.jwt_secret is not None:
        secret = settings.jwt_secret.get_secret_value()
        algorithms = settings.jwt_algorithms or ["HS256"]
        # RFC 7518 §3.2: the key MUST be at least as long as the hash output.
        needed = max(int(alg[2:]) // 8 for alg in algorithms)
        if len(secret.encode()) < needed:
            raise SettingsError(
                f"invalid setting WSNODE_JWT_SECRET: {'/'.join(algorithms)} needs at least "
                f"{needed} bytes (RFC 7518); generate one with: openssl rand -hex 32")
        return secret, algorithms
    path = settings.jwt_public_key_file
    assert path is not None
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise SettingsError(
            f"invalid setting WSNODE_JWT_PUBLIC_KEY_FILE={str(path)!r}: {exc.strerror}"
        ) from exc
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem)
    except ValueError as exc:
        raise SettingsError(
            f"invalid setting WSNODE_JWT_PUBLIC_KEY_FILE={str(path)!r}: not a PEM public key"
        ) from exc
    if settings.jwt_algorithms:
        return key, settings.jwt_algorithms
    if isinstance(key, rsa.RSAPublicKey):
        return key, ["RS256"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key, ["ES256"]
    raise SettingsError(
        "invalid setting WSNODE_JWT_ALGORITHMS: cannot infer the algorithm of this key; set it")


def token_from(headers: Mapping[str, str], path: str) -> tuple[str | None, bool]:
    """The token of a handshake and whether it came in ``Sec-WebSocket-Protocol``.

    Order: ``Authorization: Bearer``, ``?token=``, ``?access_token=``, then the
    subprotocol pair ``bearer, <token>``.
    """
    auth = _one(headers, "Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip(), False
    query = parse_qs(urlsplit(path).query)
    for name in ("token", "access_token"):
        values = query.get(name)
        if values and values[0]:
            return values[0], False
    # This header may be repeated: its values then form one list (RFC 9110 §5.3).
    get_all = getattr(headers, "get_all", None)
    offered = ", ".join(get_all("Sec-WebSocket-Protocol")) if get_all is not None \
        else headers.get("Sec-WebSocket-Protocol", "")
    protocols = [p.strip() for p in offered.split(",")]
    if len(protocols) >= 2 and protocols[0].lower() == BEARER_SUBPROTOCOL and protocols[1]:
        return protocols[1], True
    return None, False


class Authenticator:
    """Verifies handshakes for one pod."""

    def __init__(self, settings: NodeSettings, *, insecure: bool = False) -> None:
        self.insecure = insecure
        self._claim = settings.user_claim
        self._max_topics = settings.max_subscriptions_per_connection
        self._verified: OrderedDict[str, Identity] = OrderedDict()
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._origins = [o.rstrip("/").lower() for o in settings.allowed_origins]
        self._public = {parse_origin(o) for o in settings.public_origins}
        if settings.jwt_secret is None and settings.jwt_public_key_file is None:
            if not insecure:
                raise SettingsError(
                    "invalid settings: set WSNODE_JWT_SECRET or WSNODE_JWT_PUBLIC_KEY_FILE "
                    "(or pass --insecure for a development pod without authentication)")
            self._key: Any = None
            self._algorithms: list[str] = []
        else:
            self._key, self._algorithms = _load_key(settings)

    def check_origin(self, headers: Mapping[str, str]) -> None:
        """Refuse (403) a browser origin that is neither allowed nor public.

        No ``Origin`` header (a non-browser client) is allowed. A page passes
        when its origin matches ``allowed_origins`` (globs; ``*`` allows all)
        or equals one of ``public_origins`` in scheme, host and port. With both
        empty, every page is refused: the ``Host`` header is not evidence of
        anything (DNS rebinding sets it to the attacker's name).
        """
        origin = _one(headers, "Origin")
        if origin is None:
            return
        origin_l = origin.rstrip("/").lower()
        if any(fnmatch.fnmatchcase(origin_l, pattern) for pattern in self._origins):
            return
        if self._public:
            try:
                if parse_origin(origin) in self._public:
                    return
            except ValueError:
                pass  # "null", or not an origin at all
        raise AuthError(403, "origin not allowed")

    def authenticate(self, headers: Mapping[str, str], path: str) -> Identity:
        token, via_subprotocol = token_from(headers, path)
        if token is None:
            if self.insecure:
                user = parse_qs(urlsplit(path).query).get("user", [""])[0]
                if user_id_problem(user) is None:
                    return Identity(UserId(user))
                raise AuthError(401, "insecure mode: pass ?user=NAME or a token")
            raise AuthError(401, "missing token")
        if self._key is None:
            raise AuthError(401, "tokens are not configured on this pod (insecure mode)")
        return self.verify(token, via_subprotocol)

    def verify(self, token: str, via_subprotocol: bool = False) -> Identity:
        """Verify a JWT and read the user id from it. A token verified once is
        remembered until its ``exp`` (at most ``_REMEMBERED`` of them): a client
        that reconnects, or a flood of handshakes with one token, costs one
        signature check, not one per handshake."""
        known = self._verified.get(token)
        if known is not None:
            if known.expires_at is not None and known.expires_at > time.time():
                self._verified.move_to_end(token)
                return replace(known, via_subprotocol=via_subprotocol)
            del self._verified[token]
        identity = self._verify(token, via_subprotocol)
        self._verified[token] = identity
        if len(self._verified) > _REMEMBERED:
            self._verified.popitem(last=False)
        return identity

    def _verify(self, token: str, via_subprotocol: bool) -> Identity:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                # verify_sub off: PyJWT >= 2.10 refuses a numeric ``sub``, which the
                # claim check below accepts (and checks) like a numeric ``user_id``.
                # exp is required: a token without one would open connections
                # forever. sub is checked below (PyJWT refuses numeric ones).
                options={"verify_aud": self._audience is not None, "verify_sub": False,
                         "require": ["exp"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError(401, "token expired") from exc
        except jwt.InvalidTokenError as exc:
            # PyJWT messages name claims and algorithms, never the token itself.
            raise AuthError(401, f"invalid token: {exc}") from exc
        user = claims.get(self._claim)
        if user is None and self._claim == "sub":
            user = claims.get("user_id")
        if isinstance(user, int) and not isinstance(user, bool):
            user = str(user)
        if not isinstance(user, str) or user_id_problem(user) is not None:
            raise AuthError(401, f"token has no usable '{self._claim}' claim")
        try:
            claimed_topics(claims, self._max_topics)  # subscribed at connect (wsnode.topics)
        except ValueError as exc:
            raise AuthError(401, str(exc)) from None
        exp = claims.get("exp")
        return Identity(UserId(user), float(exp) if exp is not None else None, claims,
                        via_subprotocol)


def mint_token(
    secret: str,
    user: str,
    ttl_seconds: float,
    *,
    algorithm: str = "HS256",
    audience: str | None = None,
    issuer: str | None = None,
    claim: str = "sub",
    now: float | None = None,
    topics: Sequence[str] = (),
) -> str:
    """Sign a token for ``user`` (dev and tests: ``wsctl token``); ``topics``
    become its ``topics`` claim (subscribed at connect)."""
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {claim: user, "iat": issued, "exp": issued + int(ttl_seconds)}
    if topics:
        claims["topics"] = list(topics)
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm=algorithm)
