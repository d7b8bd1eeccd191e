"""Authentication of the messages pods send each other over the broker.

The broker is shared infrastructure: anyone who can publish to the exchange (a
leaked broker password, another app on the same vhost) could otherwise hand a
pod a forged delivery (a fake ``welcome`` or ``reconnect`` to every user) or a
forged ``drain``. With ``WSNODE_CLUSTER_SECRET`` set, every message a pod or
``wsctl`` publishes carries ``x-wsnode-mac``: HMAC-SHA256 under the secret of
its kind and body; a pod parks any message whose MAC is missing or wrong in the
poison queue, unread. Without a secret nothing is signed or checked (a pod says
so at start); whatever the secret, a pod never gives its clients a frame of a
reserved type, or one that is not UTF-8 JSON text, from the bus
(:func:`wsnode.protocol.deliverable`).
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "x-wsnode-mac"


class Signer:
    """Signs and checks bus messages under one secret (None: does neither)."""

    def __init__(self, secret: bytes | None) -> None:
        self._secret = secret

    @property
    def enabled(self) -> bool:
        return self._secret is not None

    def sign(self, kind: str, body: bytes) -> dict[str, str]:
        """The headers to publish ``body`` of ``kind`` with."""
        if self._secret is None:
            return {}
        return {HEADER: self._mac(kind, body)}

    def valid(self, kind: str | None, body: bytes, headers: object) -> bool:
        """True when no secret is set, or the message carries the right MAC."""
        if self._secret is None:
            return True
        given = headers.get(HEADER) if isinstance(headers, dict) else None
        if isinstance(given, bytes):
            given = given.decode(errors="replace")
        return isinstance(given, str) and hmac.compare_digest(given,
                                                               self._mac(kind or "", body))

    def _mac(self, kind: str, body: bytes) -> str:
        assert self._secret is not None
        return hmac.new(self._secret, kind.encode() + b"\0" + body, hashlib.sha256).hexdigest()
