"""Failpoints: named places in the code where a test makes a pod fail on purpose.

A fault test needs to stop a pod at an exact point (between storing a message
and routing it, say), which no outside signal can time. Each such place calls::

    if failpoints.ACTIVE:
        await failpoints.hit("sender.after_store")

Off by default, and free when off (one falsy-dict check). They are switched on
only by the setting ``WSNODE_FAILPOINTS`` (tests only; a pod logs a warning
when any is set), a comma-separated list of ``name=action``:

``kill``         SIGKILL this process (a crash at exactly this point)
``raise``        raise RuntimeError (a bug in our code)
``unavailable``  raise BackendUnavailable (a backend outage at this call)
``hang``         wait until cancelled (a call that never returns)
``sleep:MS``     wait MS milliseconds, then go on
``N*ACTION``     fire on the first N hits only, then never again

and one setting that is not a place: ``clock.skew=MS`` shifts this process's
wall clock (``wsnode.clock.SystemClock``) by MS milliseconds (may be negative),
to test clock skew between pods and Redis.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from dataclasses import dataclass

from wsnode import clock
from wsnode.errors import BackendUnavailable

ACTIVE: dict[str, _Action] = {}
"""Enabled failpoints by name; empty (falsy) unless ``configure`` was given some."""

_SPEC = re.compile(r"(?:(\d+)\*)?(kill|raise|unavailable|hang|sleep:(\d+))")


@dataclass(slots=True)
class _Action:
    kind: str
    sleep_ms: int = 0
    left: int | None = None  # hits that still fire; None: every hit


def configure(spec: str) -> None:
    """Enable the failpoints of ``spec`` (see the module); ValueError names a bad item.
    An empty spec turns every failpoint off."""
    parsed, skew = parse(spec)
    ACTIVE.clear()
    ACTIVE.update(parsed)
    clock.set_skew(skew)


def parse(spec: str) -> tuple[dict[str, _Action], int]:
    """The failpoints and clock skew ``spec`` asks for; ValueError names a bad item."""
    parsed: dict[str, _Action] = {}
    skew = 0
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, action = item.partition("=")
        name, action = name.strip(), action.strip()
        if not sep or not name:
            raise ValueError(f"{item!r} is not name=action")
        if name == "clock.skew":
            try:
                skew = int(action.removesuffix("ms"))
            except ValueError:
                raise ValueError(f"clock.skew takes milliseconds, not {action!r}") from None
            continue
        match = _SPEC.fullmatch(action)
        if match is None:
            raise ValueError(f"{action!r} is not one of kill, raise, unavailable, hang, "
                             "sleep:MS (optionally N*ACTION)")
        count, kind, ms = match.groups()
        parsed[name] = _Action(kind.split(":")[0], int(ms or 0),
                               int(count) if count else None)
    return parsed, skew


def _fires(name: str) -> _Action | None:
    action = ACTIVE.get(name)
    if action is None:
        return None
    if action.left is not None:
        if action.left <= 0:
            return None
        action.left -= 1
    return action


async def hit(name: str) -> None:
    """Run the action of failpoint ``name``, if enabled (see the module)."""
    action = _fires(name)
    if action is None:
        return
    if action.kind == "hang":
        await asyncio.Event().wait()
    elif action.kind == "sleep":
        await asyncio.sleep(action.sleep_ms / 1000)
    else:
        _fire(name, action)


def hit_sync(name: str) -> None:
    """:func:`hit` for code that cannot await (``hang`` and ``sleep`` do nothing)."""
    action = _fires(name)
    if action is not None and action.kind not in ("hang", "sleep"):
        _fire(name, action)


def _fire(name: str, action: _Action) -> None:
    if action.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action.kind == "unavailable":
        raise BackendUnavailable(f"failpoint {name}")
    raise RuntimeError(f"failpoint {name}")
