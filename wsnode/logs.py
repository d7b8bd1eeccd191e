"""Logging setup: text or JSON lines, with secrets redacted from every line.

Redaction runs on the final formatted line (message, arguments and traceback),
so a token cannot leak through a third-party logger either (websockets logs
request lines at DEBUG, aiohttp logs access lines).
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


def redact(text: str) -> str:
    """Remove tokens and bearer credentials from ``text``."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS if hasattr(record, k)
        )
        return redact(f"{line} {context}" if context else line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(out, default=str).decode())


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
