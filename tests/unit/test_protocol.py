"""Wire protocol v1 (DESIGN §2): parsing client frames, encoding server frames."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from wsnode.errors import ProtocolError
from wsnode.protocol import (
    MAX_CLOSE_REASON_BYTES,
    Envelope,
    ErrorCode,
    Reserved,
    ack_target,
    close_reason,
    control_frame,
    error_frame,
    parse_client_frame,
    restore_since,
)


def parse_error(data: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(data)
    return info.value


# -- valid frames -------------------------------------------------------------


def test_minimal_frame_has_defaults() -> None:
    env = parse_client_frame('{"type": "chat_message"}')
    assert env == Envelope(type="chat_message")
    assert env.payload is None
    assert env.id is None
    assert env.requires_ack is False
    assert env.expires_at is None


def test_full_frame_reads_every_field() -> None:
    frame = orjson.dumps({
        "type": "chat.message:v1-x_y", "payload": {"to": "bob", "n": [1, 2]},
        "id": "m" * 128, "requiresAck": True, "expiresAt": 1_700_000_000_123,
    }).decode()
    env = parse_client_frame(frame)
    assert env.type == "chat.message:v1-x_y"
    assert env.payload == {"to": "bob", "n": [1, 2]}
    assert env.id == "m" * 128
    assert env.requires_ack is True
    assert env.expires_at == 1_700_000_000_123


def test_client_seq_is_ignored() -> None:
    env = parse_client_frame('{"type": "t", "seq": 99}')
    assert env.seq is None


@pytest.mark.parametrize("payload", [None, 0, "text", [1, "a"], {"nested": {"x": None}}, True])
def test_payload_is_any_json(payload: object) -> None:
    env = parse_client_frame(orjson.dumps({"type": "t", "payload": payload}).decode())
    assert env.payload == payload


def test_type_of_64_chars_is_accepted() -> None:
    assert parse_client_frame(orjson.dumps({"type": "a" * 64}).decode()).type == "a" * 64


def test_requires_ack_false_without_id_is_accepted() -> None:
    env = parse_client_frame('{"type": "t", "requiresAck": false}')
    assert env.requires_ack is False


def test_expires_at_zero_is_accepted() -> None:
    assert parse_client_frame('{"type": "t", "expiresAt": 0}').expires_at == 0


# -- bad frames ---------------------------------------------------------------


@pytest.mark.parametrize("data", ["", "{", "{'type': 't'}", '{"type": "t",}', "nope"])
def test_invalid_json_is_bad_json(data: str) -> None:
    err = parse_error(data)
    assert err.code == ErrorCode.BAD_JSON
    assert err.msg_id is None


@pytest.mark.parametrize("data", ['[{"type": "t"}]', '"t"', "42", "null", "true"])
def test_non_object_json_is_bad_envelope(data: str) -> None:
    err = parse_error(data)
    assert err.code == ErrorCode.BAD_ENVELOPE
    assert err.msg_id is None


def test_binary_frame_is_bad_envelope() -> None:
    err = parse_error(b'{"type": "t"}')
    assert err.code == ErrorCode.BAD_ENVELOPE
    assert "binary" in err.message


@pytest.mark.parametrize(
    "frame",
    [
        {"payload": 1},  # missing
        {"type": ""},  # empty
        {"type": "a" * 65},  # too long
        {"type": "chat message"},  # space
        {"type": "chat/message"},
        {"type": "ünïcode"},
        {"type": "t\n"},
        {"type": 7},
        {"type": None},
        {"type": ["t"]},
    ],
)
def test_bad_type_is_bad_envelope(frame: dict[str, object]) -> None:
    err = parse_error(orjson.dumps(frame).decode())
    assert err.code == ErrorCode.BAD_ENVELOPE
    assert "type" in err.message


def test_bad_type_names_the_id_when_readable() -> None:
    err = parse_error('{"id": "msg-1", "type": "bad type"}')
    assert err.code == ErrorCode.BAD_ENVELOPE
    assert err.msg_id == "msg-1"


@pytest.mark.parametrize("raw_id", [1, 1.5, True, ["x"], {"a": 1}, "", "i" * 129])
def test_bad_id_is_bad_envelope_without_msg_id(raw_id: object) -> None:
    err = parse_error(orjson.dumps({"type": "t", "id": raw_id}).decode())
    assert err.code == ErrorCode.BAD_ENVELOPE
    assert "id" in err.message
    assert err.msg_id is None


@pytest.mark.parametrize("value", ["true", 1, 0, None, "yes"])
def test_requires_ack_must_be_bool(value: object) -> None:
    frame = {"type": "t", "id": "m1", "requiresAck": value}  # null is not a boolean either
    err = parse_error(orjson.dumps(frame).decode())
    assert err.code == ErrorCode.BAD_ENVELOPE
    assert "requiresAck" in err.message
    assert err.msg_id == "m1"


def test_requires_ack_without_id_is_bad_envelope() -> None:
    err = parse_error('{"type": "t", "requiresAck": true}')
    assert err.code == ErrorCode.BAD_ENVELOPE
    assert "id" in err.message
    assert err.msg_id is None


@pytest.mark.parametrize("value", [True, False, -1, "1700000000000", 1.5, [1], {"ms": 1}])
def test_bad_expires_at_is_bad_envelope(value: object) -> None:
    err = parse_error(orjson.dumps({"type": "t", "id": "m2", "expiresAt": value}).decode())
    assert err.code == ErrorCode.BAD_ENVELOPE
    assert "expiresAt" in err.message
    assert err.msg_id == "m2"


def test_protocol_error_str_has_code_and_message() -> None:
    err = parse_error('{"type": ""}')
    assert str(err).startswith("bad_envelope: ")


# -- ack_target / restore_since -----------------------------------------------


def test_ack_target_reads_payload_id() -> None:
    env = parse_client_frame('{"type": "ack", "payload": {"id": "msg-1"}}')
    assert ack_target(env) == "msg-1"


def test_ack_target_prefers_payload_id_over_top_level() -> None:
    env = parse_client_frame('{"type": "ack", "id": "top", "payload": {"id": "inner"}}')
    assert ack_target(env) == "inner"


def test_ack_target_falls_back_to_top_level_id() -> None:
    env = parse_client_frame('{"type": "ack", "id": "msg-2"}')
    assert ack_target(env) == "msg-2"


@pytest.mark.parametrize("payload", [{"id": 5}, {"id": ""}, {"id": "x" * 161}, {}, "msg-3", None])
def test_ack_target_ignores_unusable_payload_id(payload: object) -> None:
    env = Envelope(type="ack", payload=payload, id="top")
    assert ack_target(env) == "top"


def test_an_ack_may_name_an_id_longer_than_a_clients_own() -> None:
    """Ids the server sends (relayed ones) may be up to 160 characters."""
    relayed = "~" + "a" * 13 + "." + "x" * 128
    assert ack_target(parse_client_frame(orjson.dumps(
        {"type": "ack", "payload": {"id": relayed}}).decode())) == relayed
    assert ack_target(parse_client_frame(orjson.dumps(
        {"type": "ack", "id": relayed}).decode())) == relayed
    with pytest.raises(ProtocolError):  # other frames keep the 128 of a client's own
        parse_client_frame(orjson.dumps({"type": "m", "id": "x" * 129}).decode())


def test_ack_target_none_without_any_id() -> None:
    assert ack_target(Envelope(type="ack", payload={"other": 1})) is None


def test_restore_since_reads_ms() -> None:
    env = parse_client_frame('{"type": "restore", "payload": {"since": 1700000000000}}')
    assert restore_since(env) == 1_700_000_000_000


@pytest.mark.parametrize("payload", [None, {}, {"other": 1}])
def test_restore_since_missing_is_none(payload: object) -> None:
    assert restore_since(Envelope(type="restore", payload=payload)) is None


@pytest.mark.parametrize("since", ["1700000000000", 1.5, True, [1]])
def test_restore_since_bad_value_is_bad_envelope(since: object) -> None:
    env = Envelope(type="restore", payload={"since": since}, id="r1")
    with pytest.raises(ProtocolError) as info:
        restore_since(env)
    assert info.value.code == ErrorCode.BAD_ENVELOPE
    assert info.value.msg_id == "r1"


@pytest.mark.parametrize("payload", ["since", 5, [1]])
def test_restore_payload_must_be_object(payload: object) -> None:
    with pytest.raises(ProtocolError) as info:
        restore_since(Envelope(type="restore", payload=payload))
    assert info.value.code == ErrorCode.BAD_ENVELOPE


# -- encoding -----------------------------------------------------------------


def test_to_wire_uses_go_field_names() -> None:
    env = Envelope(type="n", payload={"a": 1}, id="m", requires_ack=True,
                   expires_at=1_700_000_000_000, seq=3)
    assert env.to_wire() == {"type": "n", "payload": {"a": 1}, "id": "m", "requiresAck": True,
                             "expiresAt": 1_700_000_000_000, "seq": 3}


def test_to_wire_omits_unset_optional_fields() -> None:
    assert Envelope(type="n").to_wire() == {"type": "n", "payload": None}


def test_encode_is_utf8_json_of_to_wire() -> None:
    env = Envelope(type="n", payload={"text": "héllo ユーザー"}, id="m", requires_ack=True, seq=1)
    raw = env.encode()
    assert isinstance(raw, bytes)
    assert "ユーザー".encode() in raw
    assert orjson.loads(raw) == env.to_wire()


def test_encoded_envelope_parses_back() -> None:
    env = Envelope(type="n", payload=[1, "2"], id="m", requires_ack=True, expires_at=5)
    assert parse_client_frame(env.encode().decode()) == env


def test_error_frame_shape() -> None:
    frame = orjson.loads(error_frame(ErrorCode.RATE_LIMITED, "slow down", "m1",
                                     retryAfterMs=500))
    assert frame == {"type": "error", "id": "m1",
                     "payload": {"code": "rate_limited", "message": "slow down",
                                 "retryAfterMs": 500}}


def test_error_frame_without_id_has_no_id_field() -> None:
    frame = orjson.loads(error_frame(ErrorCode.BAD_JSON, "invalid JSON"))
    assert frame == {"type": "error", "payload": {"code": "bad_json", "message": "invalid JSON"}}


def test_control_frame_shape() -> None:
    frame = orjson.loads(control_frame(Reserved.ACK, {"id": "m1"}))
    assert frame == {"type": "ack", "payload": {"id": "m1"}}


def test_close_reason_short_text_unchanged() -> None:
    assert close_reason("draining") == "draining"
    text = "x" * MAX_CLOSE_REASON_BYTES
    assert close_reason(text) == text


def test_close_reason_trims_ascii_to_123_bytes() -> None:
    out = close_reason("y" * 200)
    assert out == "y" * 123


@pytest.mark.parametrize("char", ["é", "ユ", "😀"])
def test_close_reason_trims_multibyte_on_a_char_boundary(char: str) -> None:
    text = "a" + char * 100  # offset by one so the cut falls inside a character
    out = close_reason(text)
    raw = out.encode()
    assert len(raw) <= MAX_CLOSE_REASON_BYTES
    assert len(raw) > MAX_CLOSE_REASON_BYTES - len(char.encode())  # nothing more lost
    assert text.startswith(out)


def test_copy_keeps_every_field_but_the_three_it_sets() -> None:
    values = {f.name: f"v-{f.name}" for f in dataclasses.fields(Envelope)}
    original = Envelope(**values)  # type: ignore[arg-type]
    copy = original.copy(id="i", requires_ack=True, seq=7)
    assert copy is not original
    assert dataclasses.asdict(copy) == {**values, "id": "i", "requires_ack": True, "seq": 7}
    assert dataclasses.asdict(original) == values
