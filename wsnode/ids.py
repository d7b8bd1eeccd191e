"""Identifier types shared by every module.

They are plain strings at run time; ``NewType`` keeps a user id from being passed
where a pod id is expected.
"""

from __future__ import annotations

from typing import NewType

UserId = NewType("UserId", str)
ConnId = NewType("ConnId", str)
PodId = NewType("PodId", str)
MsgId = NewType("MsgId", str)

__all__ = ["ConnId", "MsgId", "PodId", "UserId"]
