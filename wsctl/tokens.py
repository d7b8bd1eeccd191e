"""``wsctl token``: a JWT the pods accept, signed locally with their settings.

Contract of :func:`mint`: reads the ``WSNODE_*`` settings (and ``.env``) as a
pod does, signs with ``WSNODE_JWT_SECRET`` using the first of
``WSNODE_JWT_ALGORITHMS`` (default HS256), ``WSNODE_JWT_AUDIENCE``,
``WSNODE_JWT_ISSUER`` and ``WSNODE_USER_CLAIM``. A bad setting raises
:class:`~wsctl.errors.UsageProblem` (exit 2) with the settings line; no secret
raises :class:`~wsctl.errors.CtlError` (exit 1) with a hint. No network.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from wsctl.errors import CtlError, UsageProblem
from wsnode.auth import Authenticator, mint_token
from wsnode.errors import SettingsError
from wsnode.settings import load_settings

MIN_TTL_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Minted:
    token: str
    user: str
    expires_at_ms: int  # the token's ``exp``, in epoch milliseconds like every wsctl time

    def to_json(self) -> dict[str, object]:
        return {"token": self.token, "user": self.user, "expiresAt": self.expires_at_ms}


def mint(user: str, ttl_seconds: float, *, now: float | None = None,
         topics: list[str] | None = None) -> Minted:
    """Sign a token for ``user`` valid ``ttl_seconds`` (see the module contract),
    with ``topics`` as its ``topics`` claim (subscribed at connect)."""
    if not user:
        raise UsageProblem("USER must not be empty")
    if ttl_seconds < MIN_TTL_SECONDS:
        raise UsageProblem("--ttl must be at least 1s")
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise UsageProblem(str(exc)) from None
    if settings.jwt_secret is None or not settings.jwt_secret.get_secret_value():
        hint = ("export WSNODE_JWT_SECRET with the pods' secret "
                "(for a new setup: openssl rand -hex 32)")
        if settings.jwt_public_key_file is not None:
            hint = ("the pods verify RS256/ES256 tokens with WSNODE_JWT_PUBLIC_KEY_FILE: "
                    "mint those with the private key of your identity provider")
        raise CtlError("WSNODE_JWT_SECRET is not set: wsctl token signs with the pod's "
                       "HS256 secret", hint)
    try:
        Authenticator(settings)  # refuses a secret too short for its algorithm, as a pod does
    except SettingsError as exc:
        raise UsageProblem(str(exc)) from None
    issued = int(now if now is not None else time.time())
    secret = settings.jwt_secret.get_secret_value()
    token = mint_token(secret, user, ttl_seconds,
                       algorithm=(settings.jwt_algorithms or ["HS256"])[0],
                       audience=settings.jwt_audience, issuer=settings.jwt_issuer,
                       claim=settings.user_claim, now=issued, topics=topics or ())
    return Minted(token, user, (issued + int(ttl_seconds)) * 1000)
