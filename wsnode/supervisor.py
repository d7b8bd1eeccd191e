"""Supervision of a node's background loops: none may die quietly.

A loop is a *step* called over and over: ``step()`` does one round of work and
returns how long to wait before the next (or None for the loop's interval).
The supervisor owns the tasks and guarantees, for every loop:

* a step that raises is logged (the first failure of an outage with its
  traceback, then a reminder a minute; ``wsnode.outage.Outage``) and retried
  after a backoff with full jitter, doubling up to ``max_backoff``; the loop
  never stops until the supervisor does;
* while its steps fail, :meth:`Supervisor.problems` names the loop and the
  last error, which ``/readyz`` shows; the first clean step clears it (and
  logs the recovery);
* a step can also report trouble it handled itself (a backend it could not
  reach but worked around) with :meth:`Loop.trouble`, with the same effect;
* ``wake()`` cuts a wait short (new work arrived);
* :meth:`Supervisor.stop` cancels every loop and waits for them, bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from wsnode.errors import BackendUnavailable
from wsnode.outage import Outage

log = logging.getLogger("wsnode.loops")

Step = Callable[[], Awaitable[float | None]]
STOP_S = 5.0


class Loop:
    """One supervised loop (made by :meth:`Supervisor.every`)."""

    def __init__(self, name: str, step: Step, interval: float, max_backoff: float) -> None:
        self.name = name
        self._step = step
        self.interval = interval
        self._max_backoff = max_backoff
        self._wake = asyncio.Event()
        self.outage = Outage(log, f"loop {name}")
        self._trouble: str | None = None
        self.rounds = 0

    @property
    def problem(self) -> str | None:
        """Why this loop is not doing its job right now (None: it is)."""
        return self.outage.reason or self._trouble

    def trouble(self, reason: str | None) -> None:
        """Report (or clear, with None) a problem the step handled itself."""
        self._trouble = reason

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        backoff = min(0.1, self.interval)
        while True:
            try:
                delay = await self._step()
            except asyncio.CancelledError:
                raise
            except BackendUnavailable as exc:
                self.outage.failed(exc)
                delay = random.uniform(0, backoff)
                backoff = min(self._max_backoff, backoff * 2)
            except Exception as exc:  # a bug or corrupt data: log it, keep going
                self.outage.failed(f"{type(exc).__name__}: {exc}", exc_info=exc)
                delay = random.uniform(backoff / 2, backoff)
                backoff = min(self._max_backoff, backoff * 2)
            else:
                self.rounds += 1
                self.outage.recovered()
                backoff = min(0.1, self.interval)
                if delay is None:
                    delay = self.interval
            self._wake.clear()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            else:
                await asyncio.sleep(0)


class Supervisor:
    """Owns the background loops of one node (see the module)."""

    def __init__(self) -> None:
        self._loops: dict[str, Loop] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def every(self, name: str, step: Step, interval: float, *,
              max_backoff: float = 2.0) -> Loop:
        """Start calling ``step`` about every ``interval`` seconds, supervised."""
        if name in self._loops:
            raise ValueError(f"a loop named {name!r} already runs")
        loop = Loop(name, step, interval, max_backoff)
        self._loops[name] = loop
        task = asyncio.get_running_loop().create_task(loop.run(), name=f"wsnode:{name}")
        task.add_done_callback(self._ended)
        self._tasks[name] = task
        return loop

    def _ended(self, task: asyncio.Task[None]) -> None:
        # Loop.run only ends by cancellation; anything else is a bug worth a shout.
        if not task.cancelled() and task.exception() is not None:
            log.error("loop task %s ended", task.get_name(), exc_info=task.exception())

    def problems(self) -> dict[str, str]:
        """Loops that are failing now, with the last reason."""
        out = {name: p for name, loop in self._loops.items() if (p := loop.problem)}
        for name, task in self._tasks.items():
            if task.done() and not task.cancelled():
                out[name] = "stopped"
        return out

    def __getitem__(self, name: str) -> Loop:
        return self._loops[name]

    def __contains__(self, name: str) -> bool:
        return name in self._loops

    async def stop(self) -> None:
        """Cancel every loop and wait for them (at most ``STOP_S``); idempotent."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_S)
