"""Commands packed by hiredis are the bytes redis-py's Python packer writes
(wsnode/redis_pack.py), for every kind of argument wsnode sends."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from wsnode.redis_pack import HiredisPacking, hiredis_packing

COMMANDS: list[tuple[Any, ...]] = [
    ("PING",),
    ("CONFIG GET", "maxmemory"),  # a command name with a space: split, as redis-py does
    ("SET", "k ey", b"v\x00\xff\r\nx"),
    ("ZADD", "z", 1.5, "m", -3, "n", 10**15, "o"),
    ("EVALSHA", "a" * 40, 2, "{u}k1", "{u}k2", "store", "tok.1", "é ü", b"x" * 200, "", 0),
    ("SET", "big", b"y" * 100_000),  # past redis-py's buffer cutoff
    ("SET", "view", memoryview(b"mv")),
]


def test_each_command_packs_to_the_same_bytes() -> None:
    plain, fast = Connection(), hiredis_packing(Connection)()
    for command in COMMANDS:
        assert b"".join(fast.pack_command(*command)) == b"".join(plain.pack_command(*command))


def test_a_pipeline_packs_to_the_same_bytes_in_one_buffer() -> None:
    plain, fast = Connection(), hiredis_packing(Connection)()
    packed = fast.pack_commands(COMMANDS)
    assert len(packed) == 1
    assert packed[0] == b"".join(plain.pack_commands(COMMANDS))


def test_an_argument_redis_cannot_take_is_refused_as_redis_py_refuses_it() -> None:
    with pytest.raises(DataError):
        hiredis_packing(Connection)().pack_command("SET", "k", {"a": 1})
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", {"a": 1})


def test_one_class_per_connection_class() -> None:
    fast = hiredis_packing(Connection)
    assert hiredis_packing(Connection) is fast and hiredis_packing(fast) is fast
    assert issubclass(fast, HiredisPacking) and issubclass(fast, Connection)
