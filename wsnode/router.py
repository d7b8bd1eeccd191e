"""The router: client message type -> handler.

``node.on("chat_message")`` registers a coroutine ``handler(conn, env)``.
Handlers of one connection run one at a time, in arrival order (so a sender's
messages keep their order); different connections run concurrently, so a slow
handler only delays its own connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from wsnode.protocol import RESERVED_TYPES, TYPE_PATTERN

if TYPE_CHECKING:
    from wsnode.hub import Conn
    from wsnode.protocol import Envelope

Handler = Callable[["Conn", "Envelope"], Awaitable[None]]
HandlerT = TypeVar("HandlerT", bound=Handler)


class Router:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def on(self, msg_type: str) -> Callable[[HandlerT], HandlerT]:
        """Decorator registering the handler of ``msg_type``.

        Raises ValueError for a reserved or malformed type, or a second handler.
        """
        if not TYPE_PATTERN.fullmatch(msg_type):
            raise ValueError(f"{msg_type!r} is not a valid type: 1-64 of [A-Za-z0-9_.:-]")
        if msg_type in RESERVED_TYPES:
            raise ValueError(f"{msg_type!r} is reserved by the protocol")

        def register(handler: HandlerT) -> HandlerT:
            if msg_type in self._handlers:
                raise ValueError(f"a handler for {msg_type!r} is already registered")
            self._handlers[msg_type] = handler
            return handler

        return register

    def get(self, msg_type: str) -> Handler | None:
        return self._handlers.get(msg_type)

    @property
    def types(self) -> frozenset[str]:
        return frozenset(self._handlers)
