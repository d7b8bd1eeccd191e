"""The delivery batch codec: what one pod publishes is what the other decodes."""

from __future__ import annotations

import dataclasses

import pytest

from wsnode.bus import MAGIC, Delivery, decode_batch, encode_batch
from wsnode.ids import MsgId, PodId, UserId


def test_round_trip_keeps_every_field() -> None:
    frames = [b'{"type":"n","payload":"quote \\" and \\\\ and \xc3\xa9"}', b"{}"]
    batch = [
        Delivery(UserId("a b:ユ"), frames[0], "n", MsgId("m-1"), 123, 1,
                 (PodId("pod-a"), PodId("pod b"))),
        Delivery(UserId("bob"), frames[1], "t"),
        Delivery(UserId(""), frames[1], "t", topic="room:42"),  # a topic publish
        Delivery(UserId(""), frames[1], "t", expires_at=5, topic="*"),  # a broadcast
    ]
    assert decode_batch(encode_batch(batch)) == batch


@pytest.mark.parametrize("body", [
    b"", b"not a batch", MAGIC, MAGIC + b"\x00\x00\x00\x05\x00\x00\x00\x00abc",
    MAGIC + b"\x00\x00\x00\x02\x00\x00\x00\x00{}",  # header without a user
    MAGIC + b"\x00\x00\x00\x0b\x00\x00\x00\x00{\"u\":\"x\"}!",  # not JSON
    *(MAGIC + len(h).to_bytes(4, "big") + b"\x00\x00\x00\x00" + h for h in (
        b'{"u":"","t":"t","f":"bad topic"}',  # not a topic name
        b'{"u":"","t":"t","f":7}',
        b'{"u":"x","t":"t","f":"news"}',  # a fanout names no user
        b'{"u":"","t":"t","a":"m1","f":"news"}',  # and is never ACK-required
        b'{"u":"","t":"t"}',  # neither a user nor a fanout
        b'{"u":"x","t":"t","r":["p1",2]}',  # a pod that is not a name
        b'{"u":"x","t":"t","r":"p1"}',
        b'{"u":"x","t":"t","h":"1"}',
        b'{"u":"x","t":"t","e":1.5}',
        b'{"u":"x","t":"t","a":""}',
        b'{"u":"x","t":"t","x":5}',
        b'{"u":"x","t":5}',
        b'["u","t"]',
    )),
])
def test_malformed_bodies_raise_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (any ValueError: the poison path)
        decode_batch(body)


def test_published_also_copies_every_field_but_published_to() -> None:
    values = {f.name: f"v-{f.name}" for f in dataclasses.fields(Delivery)}
    original = Delivery(**values)  # type: ignore[arg-type]
    copy = original.published_also((PodId("p1"), PodId("p2")))
    assert copy is not original
    assert dataclasses.asdict(copy) == {**values, "published_to": ("p1", "p2")}
    assert original.published_to == "v-published_to"
