"""Pure protocol logic, sans-IO.

Rule 1: nothing in this package touches sockets, threads, zmq, asyncio, clocks or
global randomness. Time arrives as ``now: float`` (seconds), entropy as ``rng``
(a ``random.Random``) or as explicit bytes. This is what lets the simulator run the
same objects as the real node.
"""
