"""The data path's sans-IO parts: what a packet from or to the TUN is made of.

``vnet`` (the ``virtio_net_hdr`` in front of each superpacket, and its sanitizing),
``icmp6`` (the ICMPv6 errors the node answers with: no route, packet too big) and the
IPv6 header helpers they share. No sockets, fds, threads or clocks: the TUN bridge in
``transports/`` reads and writes; these only parse and build bytes.

May import: the shared top modules (``wire``, ``identity``, ``base``, ``errors``,
``notices``, ``routed``) and ``sessions`` (its replay window and key limits, so a data
keypair keeps the same rules as a session's). Nothing from ``link``, ``routing``,
``contracts`` or ``overlay``: the data path gets their results as snapshots.
"""
