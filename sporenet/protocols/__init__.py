"""Pure protocol logic, sans-IO.

Rule 1: nothing in this package touches sockets, threads, zmq, asyncio, clocks or
global randomness. Time arrives as ``now: float`` (seconds), entropy as ``rng``
(a ``random.Random``) or as explicit bytes. This is what lets the simulator run the
same objects as the real node.

The parts, one subpackage per capability; each ``__init__`` says what it may import
(``tests/test_layout.py`` checks):

- shared at the top: ``wire`` (frame registry, readers, writers), ``identity`` (keys,
  node ids, addresses), ``base`` (events, actions, the protocol-object shape),
  ``errors`` (errors by fault), ``notices`` (typed bus messages), ``routed`` (the
  routed overlay packet 0x30 that sessions and the overlay both carry);
- ``link``: the signed hello, the link table, dialling and probing;
- ``routing``: the Babel-style router;
- ``sessions``: end-to-end sessions (Noise IKpsk2, PQ-PSK, data frames, replay);
- ``contracts``: the network contract, its ledger, transfer, forks and gossip;
- ``overlay``: forwarding, messages, ping and traces, with the session manager.

The shared modules import no subpackage; ``link``, ``routing``, ``sessions`` and
``contracts`` import only the shared modules; ``overlay`` adds ``sessions``.
"""
