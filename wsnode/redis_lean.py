"""A pipeline's commands sent and read on one pooled connection, without
redis-py's per-call machinery (one server or Sentinel's master).

``Pipeline.execute`` in redis-py 8 costs ~110 µs of client CPU for a pipeline
of two small commands (20 in flight, measured on this project's machine), ~20
of them in machinery a coalesced pipeline does not need: observability hooks on
every execute, HIMPORT preflight bookkeeping, the retry wrapper's bookkeeping.
The :class:`~wsnode.coalescer.Coalescer` sends thousands of pipelines a second, so
:func:`run_queued` does only what a pipeline without MULTI needs: the queued
commands (``pipe.command_stack``, filled by redis-py's own command methods)
packed into one write, each reply read and passed through redis-py's reply
callbacks (as ``Redis.parse_response`` does), errors returned in place as
``execute(raise_on_error=False)`` returns them. The replies are read under one
deadline, the connection's ``socket_timeout`` for the whole pipeline, rather
than redis-py's timer per reply (a timeout context costs ~4 µs, and an ACK
pipeline has a dozen replies). A dropped connection is retried
with the connection's own ``Retry``, as redis-py retries a pipeline (the whole
pipeline again: our scripts carry request tokens, the other commands are
idempotent). The connection comes from, and goes back to, the client's pool,
so Sentinel's pool still drops connections to a former master.

Redis Cluster clients keep redis-py's cluster pipeline (it routes by slot).
"""

from __future__ import annotations

import asyncio
import inspect
import math
from typing import Any

from redis.asyncio import Redis
from redis.client import EMPTY_RESPONSE, NEVER_DECODE
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Options of a queued command that are for the reading, not for its callback.
_READ_OPTIONS = frozenset({EMPTY_RESPONSE, NEVER_DECODE, "keys"})


async def run_queued(client: Redis, pipe: Any) -> list[Any]:
    """The replies to the commands queued on ``pipe`` (a non-transaction
    pipeline of ``client``, never executed), errors as exception objects."""
    stack = pipe.command_stack
    if not stack:
        return []
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        replies: list[Any] = await conn.retry.call_with_retry(
            lambda: _round_trip(pipe, conn, stack), lambda _error: conn.disconnect())
    except BaseException:
        # Replies may be left unread (a cancellation, a timeout): the connection
        # must not be handed to another caller in that state.
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)
    return replies


async def _round_trip(pipe: Any, conn: Any, stack: list[tuple[Any, Any]]) -> list[Any]:
    await conn.send_packed_command(conn.pack_commands([args for args, _ in stack]))
    replies: list[Any] = []
    try:
        async with asyncio.timeout(conn.socket_timeout):
            await _read_replies(conn, stack, pipe.response_callbacks, replies)
    except TimeoutError:
        # As redis-py reports a read past its timeout (and retries it).
        raise RedisTimeoutError(f"Timeout reading from {conn.host}:{conn.port}") from None
    return replies


async def _read_replies(conn: Any, stack: list[tuple[Any, Any]], callbacks: Any,
                        replies: list[Any]) -> None:
    """Read a reply per queued command into ``replies``, as ``Redis.parse_response``
    reads one (``NEVER_DECODE``, ``EMPTY_RESPONSE``, the command's reply callback)."""
    for args, options in stack:
        try:
            reply = await conn.read_response(disable_decoding=NEVER_DECODE in options,
                                             timeout=math.inf)
        except ResponseError as exc:
            replies.append(options.get(EMPTY_RESPONSE, exc))
            continue
        callback = callbacks.get(args[0])
        if callback is not None:
            reply = callback(reply, **{k: v for k, v in options.items()
                                       if k not in _READ_OPTIONS})
            if inspect.isawaitable(reply):
                reply = await reply
        replies.append(reply)
