"""The event loop a pod runs on.

uvloop by default: its transports write and read in C, which is where a busy
pod spends most of its time (one socket write per WebSocket frame, per AMQP
frame, per Redis pipeline). ``WSNODE_EVENT_LOOP=asyncio`` picks the standard
loop (debugging, or a platform without uvloop wheels).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")

log = logging.getLogger("wsnode.loop")

LoopKind = Literal["uvloop", "asyncio"]


def run_loop(main: Coroutine[Any, Any, T], kind: LoopKind) -> T:
    """Run ``main`` to completion on a new loop of ``kind`` (like asyncio.run)."""
    log.debug("event loop: %s", kind)
    if kind == "uvloop":
        import uvloop  # only the pods that use it pay the import

        return uvloop.run(main)
    return asyncio.run(main)
