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
callbacks (``pipe.parse_response``), errors returned in place as
``execute(raise_on_error=False)`` returns them. A dropped connection is retried
with the connection's own ``Retry``, as redis-py retries a pipeline (the whole
pipeline again: our scripts carry request tokens, the other commands are
idempotent). The connection comes from, and goes back to, the client's pool,
so Sentinel's pool still drops connections to a former master.

Redis Cluster clients keep redis-py's cluster pipeline (it routes by slot).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError


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
    for args, options in stack:
        try:
            replies.append(await pipe.parse_response(conn, args[0], **options))
        except ResponseError as exc:
            replies.append(exc)
    return replies
