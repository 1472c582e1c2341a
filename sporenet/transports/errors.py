"""Transport errors, typed by who is at fault (trio's Closed/Broken split).

- ``TransportClosed``: *we* closed it (or never had it): a connection id that
  this carrier closed, never opened, or already reported as ``Disconnected``;
  a carrier after ``shutdown()``.
- ``TransportBroken``: the peer or the network ended it (reset, EOF, bad bytes).
"""

from __future__ import annotations


class TransportError(Exception):
    """Base of every error raised by ``transports/``."""


class TransportClosed(TransportError):
    """The resource was closed on our side (or is unknown to us)."""


class TransportBroken(TransportError):
    """The peer or the network broke the resource."""
