"""A Python client for wsnode (asyncio, on ``websockets``).

It does what DESIGN §3 asks of clients so that apps do not have to: acks
ACK-required messages once the app is done with them, gives each one to the
app once (dedup by ``id`` over a bounded window), stays connected (exponential
backoff with full jitter; a pod's ``reconnect`` frame moves it to the next URL
at once; only a close 1008, policy, stops it), collects the replay of pending
messages on every connect, and sends messages that wait for the server's ``ack``::

    from wsnode.client import Client

    async with Client(["ws://pod-a:8765/ws", "ws://pod-b:8765/ws"], token=jwt) as client:
        await client.send("chat_message", {"to": "bob", "text": "hi"})  # waits for the ack
        await client.subscribe("room:lobby")  # again on every reconnect, until unsubscribe()
        async for msg in client:          # msg.type, msg.payload, msg.id, msg.seq
            handle(msg)                   # acked when the loop asks for the next one

Errors::

    WsnodeError
    └── ClientError             anything the client raises
        ├── ConnectError        no URL reachable on the first connect
        │   └── HandshakeRefused  HTTP status instead of an upgrade (.status); 401/403 are final
        ├── ServerError         an ``error`` frame (.code, .message, .id, .payload)
        │   └── RateLimited     rate_limited (.retry_after seconds)
        ├── Disconnected        closed 1008 (policy): no reconnect can help (.code, .reason)
        ├── AckTimeout          send() saw no ack in time (.id)
        ├── NotConnected        send(require_ack=False) found no connection in time
        └── ClientClosed        the client was closed
"""

from wsnode.client._client import Client, TokenProvider
from wsnode.client._core import (
    Backoff,
    DedupWindow,
    Message,
    State,
    StateChange,
    Subscriptions,
    Verdict,
)
from wsnode.client._errors import (
    AckTimeout,
    ClientClosed,
    ClientError,
    ConnectError,
    Disconnected,
    HandshakeRefused,
    NotConnected,
    RateLimited,
    ServerError,
)

__all__ = [
    "AckTimeout",
    "Backoff",
    "Client",
    "ClientClosed",
    "ClientError",
    "ConnectError",
    "DedupWindow",
    "Disconnected",
    "HandshakeRefused",
    "Message",
    "NotConnected",
    "RateLimited",
    "ServerError",
    "State",
    "StateChange",
    "Subscriptions",
    "TokenProvider",
    "Verdict",
]
