"""Commands packed by hiredis (C) instead of redis-py's asyncio packer (Python).

redis-py's synchronous client packs commands with hiredis when it is installed
(``redis.connection.HiredisRespSerializer``); its asyncio client always packs
in Python, one bytes join per argument. For an ACK store (an ``EVALSHA`` of
~20 arguments) that is ~13 µs of the pod's CPU per command against ~2 µs with
hiredis (measured on this project's machine), and pods send tens of thousands
of such commands a second. :func:`hiredis_packing` gives a connection class
that hands str, bytes, int and float arguments to ``hiredis.pack_command`` and
anything else to redis-py's own hiredis serializer; the bytes on the wire are
the same RESP either way (``tests/unit/test_redis_pack.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import hiredis
from redis.asyncio.cluster import RedisCluster
from redis.connection import HiredisRespSerializer

_SERIALIZER = HiredisRespSerializer()


class HiredisPacking:
    """Mixin for a ``redis.asyncio`` connection class: packs with hiredis."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return [_pack(args)]

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]:
        # One buffer for the whole pipeline: one socket write.
        return [b"".join(_pack(tuple(command)) for command in commands)]


def _pack(args: tuple[Any, ...]) -> bytes:
    """``args`` as one RESP command. A command name with a space ('CONFIG GET')
    is split, as redis-py does; str, bytes, int and float arguments go to
    hiredis as they are, anything else through redis-py's serializer (which
    converts a memoryview and refuses what Redis cannot take with DataError)."""
    first = args[0]
    if isinstance(first, str):
        if " " in first:
            args = (*first.encode().split(), *args[1:])
    elif b" " in first:
        args = (*first.split(), *args[1:])
    try:
        packed: bytes = hiredis.pack_command(args)
    except TypeError:
        packed = _SERIALIZER.pack(*args)[0]
    return packed


_classes: dict[type[Any], type[Any]] = {}


def hiredis_packing(cls: type[Any]) -> type[Any]:
    """``cls`` (a redis.asyncio connection class) packing with hiredis: one
    class per ``cls``, made once."""
    if issubclass(cls, HiredisPacking):
        return cls
    if cls not in _classes:
        _classes[cls] = type(cls.__name__, (HiredisPacking, cls), {"__module__": __name__})
    return _classes[cls]


def pack_cluster_with_hiredis(client: RedisCluster) -> None:
    """Make every connection ``client`` opens (to the startup nodes and to the
    nodes it discovers) pack with hiredis. Call before the first command."""
    manager = client.nodes_manager
    cls = hiredis_packing(manager.connection_kwargs["connection_class"])
    manager.connection_kwargs["connection_class"] = cls
    for node in manager.startup_nodes.values():
        node.connection_class = cls
