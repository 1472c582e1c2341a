"""Links between neighbours: the signed hello, the link table, dialling, probing.

Holds ``table`` (``LinkTable``: every carrier connection and its signed hello),
``manager`` (the link table plus the ``dialer`` of configured peers), ``messages``
(link-control frames 0x01-0x0f), ``framing`` (length-prefixed stream framing for
stream carriers), ``datagram`` (connections over datagrams for the UDP carrier:
reliable stream frames and unreliable datagrams), ``admission`` (the pre-hello limit)
and ``prober`` (RTT, jitter, loss and link cost per link).

May import: the shared modules at the top of ``protocols`` (``wire``, ``identity``,
``base``, ``errors``, ``notices``) and nothing else of ``protocols``
(``tests/test_layout.py`` checks).
"""
