"""End-to-end sessions between node pairs: Noise IKpsk2, the PQ-PSK rekey, data frames.

Holds ``manager`` (``SessionManager``, driven by the overlay), the handshake parts
``noise``, ``initiator``, ``responder``, ``peer``, ``cookie`` and ``guard`` (the flood
guard), the post-quantum exchange ``pq`` (ML-KEM-768) and ``pq_exchange`` (its steps in
a session), the data path pieces ``data`` (keypairs, sealing, expiry) and ``replay``
(the sliding window), and ``messages`` / ``events`` (frames 0x20-0x2f, events,
actions and rows).

May import: the shared modules at the top of ``protocols`` (sessions ride inside
``routed`` packets) and nothing else of ``protocols``.
"""
