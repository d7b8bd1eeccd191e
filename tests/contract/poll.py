"""Bounded polling for contract tests whose subject is the passing of time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    timeout: float = 3.0,
    interval: float = 0.02,
) -> T:
    """Poll ``probe`` until ``done(result)``; fail with the last result after ``timeout``.

    For contract tests where the passing of time is the thing under test (a
    lease or an expiry) and the backend's clock is not ours to move.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout}s; last value: {result!r}")
        await asyncio.sleep(interval)
