"""Errors, typed by who is at fault (h11 style).

- ``LocalProtocolError``: our caller misused an API (a bug on this node).
- ``RemoteProtocolError``: a peer broke the protocol; the usual answer is to
  disconnect that peer, never to stop the node.
- ``DecodeError``: bytes from the wire did not parse. A subclass of
  ``RemoteProtocolError`` because wire bytes always come from a peer.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every error raised by ``protocols/``."""


class LocalProtocolError(ProtocolError):
    """The caller used a protocol object wrongly."""


class RemoteProtocolError(ProtocolError):
    """The remote peer sent something the protocol forbids."""


class DecodeError(RemoteProtocolError):
    """Bytes from the wire are malformed (wrong length, bad field, ...)."""


class UnknownFrameType(DecodeError):
    """A well-formed frame header names a type this node does not know.

    Receivers skip and count such frames instead of disconnecting: a newer peer
    may speak types we do not know yet.
    """

    def __init__(self, frame_type: int) -> None:
        super().__init__(f"unknown frame type 0x{frame_type:02x}")
        self.frame_type = frame_type
