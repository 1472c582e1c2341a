"""sporenet: a peer-to-peer overlay network run by cooperating agents."""

__version__ = "0.1.0"
