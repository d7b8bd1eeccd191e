"""Router: client message type -> handler."""

from __future__ import annotations

import pytest

from wsnode.protocol import RESERVED_TYPES
from wsnode.router import Router


async def handler(conn: object, env: object) -> None:
    return None


async def other(conn: object, env: object) -> None:
    return None


def test_register_and_get() -> None:
    router = Router()
    assert router.on("chat_message")(handler) is handler  # the decorator returns it unchanged
    assert router.get("chat_message") is handler
    assert router.get("unknown") is None
    assert router.types == frozenset({"chat_message"})


def test_types_are_exact() -> None:
    router = Router()
    router.on("a.b:c-d_e")(handler)
    router.on("A.B:C-D_E")(other)
    assert router.get("a.b:c-d_e") is handler
    assert router.get("A.B:C-D_E") is other
    assert router.types == {"a.b:c-d_e", "A.B:C-D_E"}


def test_duplicate_registration_raises() -> None:
    router = Router()
    router.on("chat_message")(handler)
    with pytest.raises(ValueError, match="already registered"):
        router.on("chat_message")(other)
    assert router.get("chat_message") is handler


@pytest.mark.parametrize("msg_type", sorted(RESERVED_TYPES))
def test_reserved_type_raises(msg_type: str) -> None:
    router = Router()
    with pytest.raises(ValueError, match="reserved"):
        router.on(msg_type)
    assert router.types == frozenset()


@pytest.mark.parametrize("msg_type", ["", "a" * 65, "chat message", "chat/x", "ü", "a\n"])
def test_bad_type_raises(msg_type: str) -> None:
    with pytest.raises(ValueError, match="not a valid type"):
        Router().on(msg_type)


def test_64_char_type_is_valid() -> None:
    router = Router()
    router.on("t" * 64)(handler)
    assert router.get("t" * 64) is handler
