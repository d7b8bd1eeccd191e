"""wsnode: deliver a message to a user, on every device, across pods, reliably.

Public API (everything else is internal)::

    from wsnode import Node, Envelope, Conn, NodeSettings, Sender, SendReport
    from wsnode import FanoutReport, ManyReport, SubscribeError  # broadcasts, many users, topics

Names are imported on first use, so that ``import wsnode.client`` (or the
protocol alone) does not load the server's dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsnode.errors import (
        AuthError,
        BackendUnavailable,
        NotFound,
        ProtocolError,
        SendError,
        SettingsError,
        SubscribeError,
        WsnodeError,
    )
    from wsnode.fanout import FanoutReport
    from wsnode.hub import Conn
    from wsnode.ids import ConnId, MsgId, PodId, UserId
    from wsnode.node import Node, NodeState
    from wsnode.protocol import CloseCode, Envelope, ErrorCode
    from wsnode.sender import Sender, SendReport
    from wsnode.sendmany import ManyReport
    from wsnode.settings import NodeSettings, load_settings

__version__ = "0.1.0"

_WHERE = {
    "AuthError": "errors", "BackendUnavailable": "errors", "NotFound": "errors",
    "ProtocolError": "errors", "SendError": "errors", "SettingsError": "errors",
    "WsnodeError": "errors", "SubscribeError": "errors", "FanoutReport": "fanout",
    "ManyReport": "sendmany", "Conn": "hub", "ConnId": "ids", "MsgId": "ids", "PodId": "ids",
    "UserId": "ids", "Node": "node", "NodeState": "node", "CloseCode": "protocol",
    "Envelope": "protocol", "ErrorCode": "protocol", "Sender": "sender",
    "SendReport": "sender", "NodeSettings": "settings", "load_settings": "settings",
}

__all__ = [
    "AuthError",
    "BackendUnavailable",
    "CloseCode",
    "Conn",
    "ConnId",
    "Envelope",
    "ErrorCode",
    "FanoutReport",
    "ManyReport",
    "MsgId",
    "Node",
    "NodeSettings",
    "NodeState",
    "NotFound",
    "PodId",
    "ProtocolError",
    "SendError",
    "SendReport",
    "Sender",
    "SettingsError",
    "SubscribeError",
    "UserId",
    "WsnodeError",
    "__version__",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'wsnode' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"wsnode.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
