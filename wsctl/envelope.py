"""The envelope of ``wsctl send``, built from command-line options. Pure.

Contract: :func:`build_envelope` returns a wire envelope (DESIGN §2) or raises
:class:`~wsctl.errors.UsageProblem` (exit 2) for a payload that is not JSON, an
unreadable ``@file``, a bad duration or an option combination that cannot
work. The type itself is checked by the pod, which answers 400.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import orjson

from wsctl.errors import UsageProblem
from wsnode.protocol import Envelope
from wsnode.settings import parse_duration


def parse_seconds(option: str, value: str, *, positive: bool = True) -> float:
    """Seconds from ``90``, ``30s``, ``250ms``, ``15m``, ``1h``, ``1d``; UsageProblem if bad."""
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise UsageProblem(f"{option}: {exc}") from None
    if positive and seconds <= 0:
        raise UsageProblem(f"{option} must be greater than zero")
    return seconds


def read_payload(text: str | None) -> Any:
    """``--payload``: inline JSON, ``@path`` to read a file, ``@-`` for stdin; None when absent."""
    if text is None:
        return None
    source = "--payload"
    if text.startswith("@"):
        name = text[1:]
        if not name:
            raise UsageProblem("--payload @: name a file after @, or @- for stdin")
        try:
            raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as exc:
            raise UsageProblem(f"--payload {text}: cannot read it: "
                               f"{exc.strerror or exc}") from None
        source = f"--payload {text}"
    else:
        raw = text.encode()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UsageProblem(f"{source} is not valid JSON: {exc}",
                           "a JSON string needs its quotes: --payload '\"hi\"'") from None


def build_envelope(msg_type: str, *, payload: Any = None, msg_id: str | None = None,
                   ack: bool = False, expires_in: float | None = None,
                   now_ms: int, need_id: bool = False) -> Envelope:
    """The envelope to send. ``--ack`` (or ``need_id``) without ``--id`` gets a
    fresh uuid4 hex id."""
    if (ack or need_id) and not msg_id:
        msg_id = uuid.uuid4().hex
    expires_at = now_ms + round(expires_in * 1000) if expires_in is not None else None
    return Envelope(type=msg_type, payload=payload, id=msg_id or None, requires_ack=ack,
                    expires_at=expires_at)
