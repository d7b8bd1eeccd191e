"""Every Redis key and AMQP name wsnode uses, in one place.

Redis keys live under ``KEY_PREFIX`` and are laid out for Redis Cluster: keys
that one script or transaction touches share a hash tag (``{u:<user>}`` for a
user's state, ``{p:<pod>}`` for a pod's), so nothing needs a cross-slot command.
User and pod ids are percent-encoded in keys, so ``:``, spaces, braces and
non-ASCII characters in ids cannot break the layout.

AMQP: one durable direct exchange; one queue per pod bound by its pod id; a
dead-letter exchange and queue through which messages stranded on a dead pod's
queue reach a live pod that re-routes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote


def _enc(value: str) -> str:
    return quote(value, safe="")


@dataclass(frozen=True, slots=True)
class AmqpNames:
    """Exchange and queue names for one ``KEY_PREFIX``."""

    prefix: str = "ws"

    @property
    def exchange(self) -> str:
        """Durable direct exchange; routing key = pod id."""
        return f"{self.prefix}.deliver"

    def pod_queue(self, pod: str) -> str:
        """The queue a pod consumes (bound to :attr:`exchange` with key = pod id)."""
        return f"{self.prefix}.pod.{pod}"

    @property
    def stranded_exchange(self) -> str:
        """Dead-letter exchange of every pod queue (fanout)."""
        return f"{self.prefix}.stranded"

    @property
    def stranded_queue(self) -> str:
        """Shared queue of stranded messages, consumed by every live pod."""
        return f"{self.prefix}.stranded"

    @property
    def poison_queue(self) -> str:
        """Bodies that could not be decoded: parked for an operator, never requeued."""
        return f"{self.prefix}.poison"
