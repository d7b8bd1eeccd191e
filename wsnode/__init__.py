"""wsnode: deliver a message to a user, on every device, across pods, reliably.

Public API (everything else is internal)::

    from wsnode import Node, Envelope, Conn, NodeSettings, Sender, SendReport
"""

from wsnode.errors import (
    AuthError,
    BackendUnavailable,
    NotFound,
    ProtocolError,
    SendError,
    SettingsError,
    WsnodeError,
)
from wsnode.hub import Conn
from wsnode.ids import ConnId, MsgId, PodId, UserId
from wsnode.node import Node, NodeState
from wsnode.protocol import CloseCode, Envelope, ErrorCode
from wsnode.sender import Sender, SendReport
from wsnode.settings import NodeSettings, load_settings

__version__ = "0.1.0"

__all__ = [
    "AuthError",
    "BackendUnavailable",
    "CloseCode",
    "Conn",
    "ConnId",
    "Envelope",
    "ErrorCode",
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
    "UserId",
    "WsnodeError",
    "__version__",
    "load_settings",
]
