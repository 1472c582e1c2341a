"""sporenet: a peer-to-peer overlay network run by cooperating agents.

The Python API of a running node: ``from sporenet import Client`` (``docs/messages.md``).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = ("Client", "Message", "Sent", "PingResult", "Topics", "TopicRule", "NodeStatus", "Peer",
         "Route", "RouteChoice", "Explanation", "ApiClientError", "NodeUnreachable",
         "ApiRequestError", "DeliveryFailed", "PingFailed", "MessageTooLarge")
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    # Lazy, so `import sporenet` (and the CLI's start-up) stays light.
    if name in _LAZY:
        from . import api_client
        return getattr(api_client, name)
    raise AttributeError(f"module 'sporenet' has no attribute {name!r}")
