"""Logging that stays quiet during an outage: one line when a failure starts,
one when it ends, and a reminder with a count while it lasts.

Two helpers, for two shapes of trouble:

* :class:`Outage` tracks one thing that is either working or failing (a
  backend, a loop). ``failed()`` logs the first failure of an outage at
  WARNING (with its traceback when asked), later ones at DEBUG with a reminder
  every ``period`` seconds; ``recovered()`` logs once that it works again.
  ``reason`` says why it fails, for ``/readyz``.
* :class:`LogThrottle` limits independent kinds of events (bad messages,
  failing handlers) to one WARNING per kind per ``period``, saying how many
  similar lines it held back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Outage:
    """Failure state of one thing, logged once per outage (see the module)."""

    def __init__(self, logger: logging.Logger, what: str, *, period: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self.what = what
        self.period = period
        self._clock = clock
        self.reason: str | None = None
        self.since: float | None = None
        self.failures = 0
        self._reminded = 0.0

    @property
    def failing(self) -> bool:
        return self.reason is not None

    def failed(self, reason: object, *, exc_info: bool | BaseException = False,
               **extra: object) -> None:
        """Record a failure. Logs at WARNING when an outage starts (and every
        ``period`` while it lasts, with the count), at DEBUG otherwise."""
        now = self._clock()
        text = str(reason) or type(reason).__name__
        self.failures += 1
        if self.reason is None:
            self.reason, self.since, self._reminded = text, now, now
            self._log.warning("%s failing: %s", self.what, text, exc_info=exc_info,
                              extra=extra or None)
            return
        self.reason = text
        if now - self._reminded >= self.period:
            self._reminded = now
            self._log.warning("%s still failing after %.0fs (%d failures): %s", self.what,
                              now - (self.since or now), self.failures, text,
                              extra=extra or None)
        else:
            self._log.debug("%s failing: %s", self.what, text, extra=extra or None)

    def recovered(self, **extra: object) -> bool:
        """Record success; logs (INFO) and returns True when an outage just ended."""
        if self.reason is None:
            return False
        took = self._clock() - (self.since or self._clock())
        self._log.info("%s working again after %.1fs (%d failures)", self.what, took,
                       self.failures, extra=extra or None)
        self.reason, self.since, self.failures = None, None, 0
        return True


class LogThrottle:
    """At most one WARNING per kind per ``period`` (see the module)."""

    def __init__(self, logger: logging.Logger, period: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self.period = period
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warn(self, kind: str, msg: str, *args: object,
             exc_info: bool | BaseException = False) -> None:
        """Log ``msg % args`` at WARNING unless ``kind`` was logged less than
        ``period`` ago (then at DEBUG, counted for the next WARNING)."""
        now = self._clock()
        if now - self._last.get(kind, -self.period) < self.period:
            self._held[kind] = self._held.get(kind, 0) + 1
            self._log.debug(msg, *args)
            return
        self._last[kind] = now
        held = self._held.pop(kind, 0)
        suffix = f" ({held} similar held back)" if held else ""
        self._log.warning(msg + suffix, *args, exc_info=exc_info)
