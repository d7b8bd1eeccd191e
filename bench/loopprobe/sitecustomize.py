"""The loop probe of ``bench/abuse.py --loop-probe``: diagnosis, never in production.

Python imports this module at start when its directory is on ``PYTHONPATH``; it
does something only in a ``wsnode serve`` process with ``LOOP_PROBE_FILE``
set to a file name. There, a task wakes every millisecond on the pod's event
loop and writes a line for every wake-up later than 4 ms: when the gap began
and ended (``time.monotonic()``), its length, the CPU this thread used during it,
and the time it waited for a CPU (``/proc/thread-self/schedstat``), all in ms.
A gap mostly spent on the CPU is the pod's own stall (one event-loop iteration
doing too much); a gap mostly spent waiting for a CPU is the machine's. Garbage
collections over 2 ms go to the same file (``gc`` lines). The probe costs the
pod about a thousand wake-ups a second.
"""

from __future__ import annotations

import os
import sys

if os.environ.get("LOOP_PROBE_FILE") and "serve" in sys.argv:
    import asyncio
    import gc
    import time
    from collections.abc import Coroutine
    from typing import Any

    import uvloop

    _path = os.environ["LOOP_PROBE_FILE"]
    _out = open(_path, "a", buffering=1)  # noqa: SIM115 (the process's life)
    _gc_started = [0.0]

    def _on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            _gc_started[0] = time.perf_counter()
            return
        ms = 1000 * (time.perf_counter() - _gc_started[0])
        if ms > 2:
            _out.write(f"gc {time.monotonic():.4f} {info['generation']} {ms:.1f}\n")

    async def _probe() -> None:
        stat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)

        def waited_ms() -> float:
            return int(os.pread(stat, 100, 0).split()[1]) / 1e6

        wall, cpu, wait = time.monotonic(), time.thread_time(), waited_ms()
        while True:
            await asyncio.sleep(0.001)
            now, cpu_now, wait_now = time.monotonic(), time.thread_time(), waited_ms()
            if now - wall > 0.004:
                _out.write(f"gap {wall:.4f} {now:.4f} {1000 * (now - wall):.1f} "
                           f"{1000 * (cpu_now - cpu):.1f} {wait_now - wait:.1f}\n")
            wall, cpu, wait = now, cpu_now, wait_now

    _run = uvloop.run

    def _run_probed(main: Coroutine[Any, Any, Any], **kwargs: Any) -> Any:
        async def probed() -> Any:
            task = asyncio.ensure_future(_probe())
            try:
                return await main
            finally:
                task.cancel()
        return _run(probed(), **kwargs)

    gc.callbacks.append(_on_gc)
    uvloop.run = _run_probed
