"""Routing: Babel-style distance vector over signed per-node routes (RFC 8966, adapted).

Holds ``router`` (``Router``: the protocol object the router agent drives), ``table``
(routes, the source table and feasibility), ``select`` (route selection: tiers,
hysteresis, seqno requests), ``announce`` (what we advertise and when: triggered and
paced updates), ``view`` (read-only views for ``routes``/``explain``) and ``messages``
(the routing frames 0x10-0x1f).

May import: the shared modules at the top of ``protocols`` only. Routing learns link
costs from ``notices`` (``LinkMeasured``), never from ``link`` directly.
"""
