"""Network contracts: the signed, versioned whitelist and how nodes agree on it.

Holds ``contract`` (the document, its canonical body, signatures and rules),
``ledger`` (the ``Ledger`` interface and the checks every backend applies),
``transfer`` (chunked transfer of contracts between neighbours), ``fork`` (fork
evidence and its checks) and ``gossip`` (``ContractGossip``, the contract agent's
protocol). Frames 0x50-0x5f.

May import: the shared modules at the top of ``protocols`` only.
"""
