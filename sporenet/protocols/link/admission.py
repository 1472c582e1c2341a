"""How many inbound connections may wait for their hello, in total and per source.

A connection costs us a file descriptor and a table entry from the moment we accept
it, but only proves who it is after the hello exchange. Without a bound, a fast
opener holds ``rate x handshake timeout`` descriptors and runs a node with a 1,024
fd limit out of them (the issue "A connection flood makes a node spin"). Other
overlays bound the same window: WireGuard's handshake queue, Nebula's pending
handshake limit, nginx's ``limit_conn`` per address.

The policy (``PendingLimit``), applied when a connection is accepted:
- a source (an IPv4 address, an IPv6 /64: one host or one subnet a user gets) holds
  at most ``per_source`` waiting connections; a new one pushes out that source's
  oldest, so an opener only ever pushes out its own, and a real peer behind the same
  address that retries still gets its newest attempt through;
- all sources together hold at most ``total``; a new one pushes out the oldest of
  the source holding the most, so a many-source flood pays before a quiet source.
A connection leaves the count when its hello is proven (``confirm``) or when it
closes (``discard``). Outbound connections never count: we chose to open them.

Sans-IO: the carrier calls it on its I/O thread and closes what it returns.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Hashable

DEFAULT_TOTAL = 256
DEFAULT_PER_SOURCE = 16


def source_key(host: str) -> str:
    """The bucket of a remote address: the IPv4 address itself, the /64 of an IPv6 one
    (an IPv4-mapped IPv6 address counts as its IPv4). Anything unparsable is its own
    bucket, named by the text, so it can never share a bucket with a real address."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return f"?{host}"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))
    return str(addr)


class PendingLimit:
    """Inbound connections waiting for their hello, bounded; see the module docstring."""

    def __init__(self, total: int = DEFAULT_TOTAL, per_source: int = DEFAULT_PER_SOURCE) -> None:
        if not 1 <= per_source <= total:
            raise ValueError("need 1 <= per_source <= total")
        self.total, self.per_source = total, per_source
        # source -> its waiting connections, oldest first; conn -> its source
        self._by_source: dict[str, OrderedDict[Hashable, None]] = {}
        self._source_of: dict[Hashable, str] = {}
        self.evicted = 0  # connections pushed out since the start

    def __len__(self) -> int:
        return len(self._source_of)

    def __contains__(self, conn: Hashable) -> bool:
        return conn in self._source_of

    def sources(self) -> int:
        return len(self._by_source)

    def add(self, conn: Hashable, source: str) -> list[Hashable]:
        """Count ``conn`` as waiting; return the connections it pushes out (already
        forgotten here), which the caller must close."""
        if conn in self._source_of:
            raise ValueError(f"connection {conn!r} is already waiting")
        out: list[Hashable] = []
        mine = self._by_source.get(source)
        if mine is not None and len(mine) >= self.per_source:
            out.append(self._pop_oldest(source))
        elif len(self._source_of) >= self.total:
            # The biggest source pays. Sources are at most ``total``: a bounded scan,
            # and only while the table is full.
            biggest = max(self._by_source, key=lambda s: len(self._by_source[s]))
            out.append(self._pop_oldest(biggest))
        self._by_source.setdefault(source, OrderedDict())[conn] = None
        self._source_of[conn] = source
        self.evicted += len(out)
        return out

    def confirm(self, conn: Hashable) -> bool:
        """The hello is proven: ``conn`` no longer counts. False if it was not waiting."""
        return self.discard(conn)

    def discard(self, conn: Hashable) -> bool:
        """``conn`` closed (or proved itself); forget it. False if it was not waiting."""
        source = self._source_of.pop(conn, None)
        if source is None:
            return False
        mine = self._by_source[source]
        del mine[conn]
        if not mine:
            del self._by_source[source]
        return True

    def _pop_oldest(self, source: str) -> Hashable:
        mine = self._by_source[source]
        conn, _ = mine.popitem(last=False)
        del self._source_of[conn]
        if not mine:
            del self._by_source[source]
        return conn
