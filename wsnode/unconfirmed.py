"""Deliveries handed to the bus before their confirm, until it comes.

A client's at-most-once message is handed to the bus without waiting for the
broker's confirm (``wsnode.sender``): the client is told nothing either way,
and waiting would hold that client's next frame behind a broker round trip.
What the confirm says is still acted on when it comes. :class:`Unconfirmed`
keeps, per broker message, the destination pod and the deliveries handed over
in it; when the message settles it reports the count confirmed, or the pod,
the deliveries and the failure, once per broker message (not per delivery:
a callback per delivery would cost more than the wait it replaces).

Bounded: every future the bus returns settles within its publish deadline,
and the bus holds a publisher back while too many are unconfirmed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from wsnode.bus import Delivery
from wsnode.errors import BackendUnavailable
from wsnode.ids import PodId

OnConfirmed = Callable[[int], None]
OnFailed = Callable[[PodId, list[Delivery], BaseException], None]


class Unconfirmed:
    """Outcomes of handed-over deliveries, reported per broker message."""

    def __init__(self, on_confirmed: OnConfirmed, on_failed: OnFailed) -> None:
        self._on_confirmed = on_confirmed
        self._on_failed = on_failed
        self._waiting: dict[asyncio.Future[None], tuple[PodId, list[Delivery]]] = {}

    def __len__(self) -> int:
        """Broker messages whose outcome is still awaited."""
        return len(self._waiting)

    def track(self, pod: PodId, delivery: Delivery,
              futures: Sequence[asyncio.Future[None]]) -> None:
        """Report ``delivery``'s outcome when the broker message(s) carrying it
        to ``pod`` (``futures``, from ``Bus.hand_over``) settle."""
        for future in futures:
            entry = self._waiting.get(future)
            if entry is None:
                entry = self._waiting[future] = (pod, [])
                future.add_done_callback(self._settled)
            entry[1].append(delivery)

    def _settled(self, future: asyncio.Future[None]) -> None:
        pod, deliveries = self._waiting.pop(future)
        failure = (BackendUnavailable("publish cancelled") if future.cancelled()
                   else future.exception())
        if failure is None:
            self._on_confirmed(len(deliveries))
        else:
            self._on_failed(pod, deliveries, failure)
