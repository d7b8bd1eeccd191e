"""Bounded waits for observable state that has no event to await."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from tests.support.pods import PodProcess


async def eventually(probe: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    """Poll ``probe`` every 50 ms until it returns something truthy (returned),
    failing with ``what`` after ``timeout`` seconds."""
    async def loop() -> Any:
        while True:
            got = await probe()
            if got:
                return got
            await asyncio.sleep(0.05)
    try:
        return await asyncio.wait_for(loop(), timeout)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what}") from None


async def api(pod: PodProcess, method: str, path: str, body: Any = None) -> Any:
    """An admin API call that must succeed (2xx); its decoded answer."""
    status, answer = await asyncio.to_thread(pod.api, method, path, body)
    assert status < 300, (status, answer)
    return answer
