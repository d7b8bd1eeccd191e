"""The delivery batch codec: what one pod publishes is what the other decodes."""

from __future__ import annotations

import pytest

from wsnode.bus import MAGIC, Delivery, decode_batch, encode_batch
from wsnode.ids import MsgId, PodId, UserId


def test_round_trip_keeps_every_field() -> None:
    frames = [b'{"type":"n","payload":"quote \\" and \\\\ and \xc3\xa9"}', b"{}"]
    batch = [
        Delivery(UserId("a b:ユ"), frames[0], "n", MsgId("m-1"), 123, 1,
                 (PodId("pod-a"), PodId("pod b"))),
        Delivery(UserId("bob"), frames[1], "t"),
    ]
    assert decode_batch(encode_batch(batch)) == batch


@pytest.mark.parametrize("body", [
    b"", b"not a batch", MAGIC, MAGIC + b"\x00\x00\x00\x05\x00\x00\x00\x00abc",
    MAGIC + b"\x00\x00\x00\x02\x00\x00\x00\x00{}",  # header without a user
    MAGIC + b"\x00\x00\x00\x0b\x00\x00\x00\x00{\"u\":\"x\"}!",  # not JSON
])
def test_malformed_bodies_raise_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (any ValueError: the poison path)
        decode_batch(body)
