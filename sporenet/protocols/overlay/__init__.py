"""The overlay layer of a node: routed packets, messages, ping and path traces.

Holds ``layer`` (``Overlay``: the forwarder, the message endpoint, the tracer and the
session manager wired together), ``forwarding`` (hop-by-hop forwarding of ``Routed``
packets over the FIB snapshot), ``messaging`` (messages and ping) and ``trace``.

May import: the shared modules at the top of ``protocols`` and ``sessions`` (the
overlay owns the node's session manager). Nothing imports ``overlay`` from inside
``protocols``.
"""
