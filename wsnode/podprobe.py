"""Is a pod with a live lease really there? Ask its admin port (DESIGN §10).

A lease in presence only says that the pod heartbeated within the last lease
period: a pod that was SIGKILLed, or cut off from its clients, stays listed as
``active`` until the lease runs out (3 heartbeats). Its admin port tells the two
apart at once, so listings show such a pod as
:attr:`~wsnode.presence.PodState.UNREACHABLE`.

Contracts:

* :func:`ask` sends one ``GET <admin>/readyz`` per pod that advertises an
  admin URL, all at once, each bounded by ``timeout``; redirects are not
  followed (the URL comes from the store, not from an operator). A pod is
  *reachable* when it answers 200 or 503 with a JSON object (ready or not,
  it is up); a refused or reset connection, a timeout or any other answer
  makes it *unreachable*, with the reason. It never raises for a pod's failure.
* :func:`probe` returns the same pods, in the same order, with the state
  ``unreachable`` where :func:`ask` says so; pods without an admin URL, and
  pods in ``skip`` (the caller itself), keep the state their lease carries.

Seen from where the caller runs: a pod behind NAT must advertise an admin URL
that callers can reach (``WSNODE_ADMIN_ADVERTISE``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from wsnode.ids import PodId
from wsnode.presence import PodInfo, PodState

PROBE_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class Answer:
    """What a pod's admin ``/readyz`` said, or why it said nothing."""

    reachable: bool
    status: int | None = None  # HTTP status of /readyz (200 ready, 503 not ready)
    body: dict[str, Any] | None = None  # its JSON: ready, pod, state, checks
    error: str | None = None  # why it is unreachable

    @property
    def failing(self) -> list[str]:
        """The readiness checks that fail (empty when ready or unreachable)."""
        checks = (self.body or {}).get("checks") or {}
        return [name for name, ok in checks.items() if not ok]


async def ask_admin(session: aiohttp.ClientSession, admin: str,
                    timeout: float = PROBE_TIMEOUT) -> Answer:  # noqa: ASYNC109
    """``GET <admin>/readyz`` once (see the module contract)."""
    body: Any = None
    try:
        async with session.get(f"{admin.rstrip('/')}/readyz", allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            status = resp.status
            if status in (200, 503):
                body = await resp.json(content_type=None)
    except TimeoutError:
        return Answer(False, error=f"no answer within {timeout:g}s")
    except aiohttp.ClientConnectorError as exc:
        return Answer(False, error=f"connection failed: {exc.os_error.strerror or exc}")
    except aiohttp.ClientError as exc:
        return Answer(False, error=f"{type(exc).__name__}: {exc}")
    except ValueError:  # not JSON
        pass
    if not isinstance(body, dict):
        return Answer(False, status, error=f"not a wsnode admin port (HTTP {status})")
    return Answer(True, status, body)


@contextlib.asynccontextmanager
async def _session(given: aiohttp.ClientSession | None) -> AsyncIterator[aiohttp.ClientSession]:
    if given is not None:
        yield given
        return
    async with aiohttp.ClientSession() as session:
        yield session


def usable_admin(pod: PodInfo) -> str | None:
    """The pod's advertised admin URL if it is an http(s) URL, else None."""
    admin = pod.admin
    return admin if admin and admin.startswith(("http://", "https://")) else None


async def ask(pods: Sequence[PodInfo], *, timeout: float = PROBE_TIMEOUT,  # noqa: ASYNC109
              session: aiohttp.ClientSession | None = None) -> dict[PodId, Answer]:
    """The answer of every pod that advertises a usable admin URL."""
    targets = [(p.pod, url) for p in pods if (url := usable_admin(p)) is not None]
    if not targets:
        return {}
    async with _session(session) as http:
        answers = await asyncio.gather(*(ask_admin(http, url, timeout) for _, url in targets))
    return {pod: answer for (pod, _), answer in zip(targets, answers, strict=True)}


def with_states(pods: Sequence[PodInfo], answers: dict[PodId, Answer]) -> list[PodInfo]:
    """``pods`` with the state ``unreachable`` where their answer says so."""
    return [replace(p, state=PodState.UNREACHABLE)
            if p.pod in answers and not answers[p.pod].reachable else p for p in pods]


async def probe(pods: Sequence[PodInfo], *, timeout: float = PROBE_TIMEOUT,  # noqa: ASYNC109
                session: aiohttp.ClientSession | None = None,
                skip: Collection[PodId] = ()) -> list[PodInfo]:
    """``pods`` with their states as their admin ports tell (module contract)."""
    answers = await ask([p for p in pods if p.pod not in skip], timeout=timeout,
                        session=session)
    return with_states(pods, answers)
