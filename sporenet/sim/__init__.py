"""Deterministic discrete-event simulator running the real ``protocols/`` objects.

- ``clock.VirtualClock``: timers in (time, sequence) order.
- ``network.NetworkModel``: seeded latency / jitter / loss per link direction;
  ``network.random_topology`` builds connected random graphs.
- ``node.SimNode``: a LinkTable and a Prober, their actions executed on the model.
- ``scenario.run_probe_scenario``: link probing on a random topology, with a report
  and a byte-exact trace (``python -m sporenet.sim.scenario [n] [seed] [duration]``).
"""
