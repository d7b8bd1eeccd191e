"""A terminal client on the Python SDK: ``python -m wsnode.examples.chat_client alice``.

Connects as a user with :class:`wsnode.client.Client` and prints every message
that reaches that user as one JSON line on stdout; ACK-required ones are acked
by the SDK once printed, so they are delivered once even across reconnects.
With ``--to bob``, every line typed on stdin goes to ``bob`` through the chat
example app (``wsnode serve --app wsnode.examples.chat``) and waits for the
pod's ack. With ``--room lobby`` it joins that room of the chat example (the
SDK's ``subscribe("room:lobby")``, made again on every reconnect) and prints
what is posted there; without ``--to``, typed lines are posted to the room.
Connection changes (connected, a drain moving it to another pod, a lost pod,
reconnects with backoff) are reported on stderr; Ctrl-C closes it.

The token is ``--token`` (or ``WSNODE_TOKEN``); without one, the client mints
its own with ``WSNODE_JWT_SECRET`` as ``wsctl token`` does, a fresh one on every
reconnect. That is for development: a real client gets its token from its
backend.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys

from wsnode.client import Client, ServerError, State, StateChange
from wsnode.errors import WsnodeError

DEFAULT_URL = "ws://127.0.0.1:8765/ws"


def dev_token(user: str) -> str:
    """A 1-hour token for ``user`` signed with the pods' settings (WSNODE_*, .env)."""
    from wsnode.auth import mint_token
    from wsnode.settings import load_settings

    settings = load_settings()
    if settings.jwt_secret is None:
        raise WsnodeError("no token: pass --token, or export WSNODE_JWT_SECRET (the pods' "
                          "secret) to mint one")
    return mint_token(settings.jwt_secret.get_secret_value(), user, 3600,
                      algorithm=(settings.jwt_algorithms or ["HS256"])[0],
                      audience=settings.jwt_audience, issuer=settings.jwt_issuer,
                      claim=settings.user_claim)


def report(change: StateChange) -> None:
    if change.state is State.CONNECTED:
        note = f"connected to pod {change.pod} ({change.replayed} pending replayed)"
    elif change.state is State.RECONNECTING:
        what = "connection lost" if change.attempt == 0 else "no connection"
        note = f"{what} ({change.reason}): trying again in {change.delay or 0:.1f}s"
    elif change.state is State.CLOSED:
        note = f"closed ({change.reason})"
    else:
        return
    print(f"-- {note}", file=sys.stderr, flush=True)


async def type_to(client: Client, to: str | None, room: str | None) -> None:
    """Send each line of stdin to user ``to`` as a chat_message, or else post it to
    ``room`` as a room_message (a pod ack per line)."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def readable() -> None:
        line = sys.stdin.readline()
        lines.put_nowait(line if line else None)

    loop.add_reader(sys.stdin.fileno(), readable)
    try:
        while (line := await lines.get()) is not None:
            if line.strip():
                text = line.rstrip("\n")
                try:
                    if to is not None:
                        await client.send("chat_message", {"to": to, "text": text})
                    else:
                        await client.send("room_message", {"room": room, "text": text})
                except ServerError as exc:  # e.g. a pod without the chat app
                    print(f"-- not sent: {exc}", file=sys.stderr, flush=True)
    finally:
        loop.remove_reader(sys.stdin.fileno())


async def run(args: argparse.Namespace) -> None:
    token = args.token or os.environ.get("WSNODE_TOKEN")
    if token:
        client = Client(args.url, token=token)
    else:
        dev_token(args.user)  # no secret: say so now, not on every reconnect
        client = Client(args.url, token_provider=lambda: dev_token(args.user))
    client.on_state(report)
    async with client:
        if args.room:
            await client.subscribe(f"room:{args.room}")
            print(f"-- in room {args.room}", file=sys.stderr, flush=True)
        typing = asyncio.ensure_future(type_to(client, args.to, args.room)) \
            if args.to or args.room else None
        try:
            async for msg in client:  # acked when the loop asks for the next one
                print(json.dumps({"type": msg.type, "payload": msg.payload, "id": msg.id,
                                  "seq": msg.seq}), flush=True)
        finally:
            if typing is not None:
                typing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await typing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wsnode.examples.chat_client",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("user", help="the user to connect as")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the pod or balancer ({DEFAULT_URL})")
    parser.add_argument("--to", metavar="USER", help="send each line of stdin to USER")
    parser.add_argument("--room", metavar="NAME", help="join room NAME (lines typed go there "
                        "unless --to is given)")
    parser.add_argument("--token", help="a JWT (default: WSNODE_TOKEN, else minted)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        print("-- bye", file=sys.stderr)
        return 0
    except WsnodeError as exc:  # refused, unreachable, no token: one line, no traceback
        print(f"chat_client: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
