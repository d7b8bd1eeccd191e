"""Logging setup: text or JSON lines, with secrets redacted from every line.

Redaction runs on the final formatted line (message, arguments and traceback),
so a token cannot leak through a third-party logger either (websockets logs
request lines at DEBUG, aiohttp logs access lines).

One record is one line, whatever a client put in it (a user id, a close
reason, a message id): in text format control characters (newline, CR, ESC,
...), Unicode line separators and lone surrogates in the message and in every
context field are escaped (``\\n``, ``\\x1b``, ``\\ud800``), and a context
value with a space, ``=`` or ``"`` is quoted, so no field can be forged
either. A traceback follows on lines that each start with two spaces, so
none of them can pass for a record of its own. JSON lines are escaped by the
encoder, with lone surrogates escaped first (UTF-8 cannot carry them) and
U+0085, U+2028 and U+2029 escaped after (line breaks to many readers).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

_SECRETS = [
    # The value stops at a backslash too: in a JSON line, eating the backslash of
    # an escaped quote (``token=abc\"``) would leave the quote bare and break the line.
    (re.compile(r"((?:access_)?token=)[^&\s\"'\\]+", re.IGNORECASE), r"\1<redacted>"),
    (re.compile(r"(bearer[,\s]+)[A-Za-z0-9._~+/=-]{4,}", re.IGNORECASE), r"\1<redacted>"),
    (re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "<jwt>"),
    # A password in a URL (a library's traceback may print the broker URL).
    (re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/\s@\"']*:)[^@\s/\"']+@"), r"\1***@"),
]
# Context fields a log call may pass in ``extra`` and JSON lines carry.
CONTEXT_FIELDS = ("pod", "conn", "user", "code", "reason", "peer")


# C0 and C1 controls, DEL, Unicode line/paragraph separators, lone surrogates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


_JSON_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape(text: str) -> str:
    """``text`` with control characters, line separators and lone surrogates
    escaped: printable on one line, whatever it held."""
    return _UNSAFE.sub(_escape_char, text)


def _field(value: object) -> str:
    text = escape(str(value))
    if not text or any(c in text for c in ' ="'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _json_safe(value: object) -> object:
    """A string UTF-8 can encode (lone surrogates escaped); other values as they are."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return escape(value)
    return value


def redact(text: str) -> str:
    """Remove tokens and bearer credentials from ``text``."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` on one line (see the module)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape(record.getMessage())
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        context = " ".join(
            f"{k}={_field(getattr(record, k))}" for k in CONTEXT_FIELDS if hasattr(record, k)
        )
        if context:
            line = f"{line} {context}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for extra in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if extra:
                line += "".join(f"\n  {escape(part)}" for part in extra.splitlines())
        return redact(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _json_safe(record.getMessage()),
        }
        for key in CONTEXT_FIELDS:
            if hasattr(record, key):
                out[key] = _json_safe(getattr(record, key))
        if record.exc_info:
            out["exc"] = _json_safe(self.formatException(record.exc_info))
        # JSON may carry these raw, but many line readers (Python's splitlines,
        # JavaScript) end a line at them.
        return redact(orjson.dumps(out, default=str).decode().translate(_JSON_BREAKS))


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Send every logger's records to stderr in ``fmt`` (``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library chatter that would be one line per request or frame stays below INFO.
    for noisy in ("aiohttp.access", "aio_pika"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # aiormq logs a traceback per failed connect; RabbitBus reports outages itself,
    # once per outage, so these would only flood the log during a broker restart.
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    # websockets logs each handshake and close at INFO; the gateway logs its own,
    # with the pod/conn/user fields, so keep the library's to warnings.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))
