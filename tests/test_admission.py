"""The pre-hello limit (protocols/link/admission.py): who gets pushed out when too many
inbound connections wait for their hello."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sporenet.protocols.link.admission import PendingLimit, source_key


@pytest.mark.parametrize("host,key", [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("fe80::1%eth0", "fe80::/64"),
    ("not-an-address", "?not-an-address"),
])
def test_source_key_groups_by_host_or_ipv6_64(host, key):
    assert source_key(host) == key


def test_a_source_over_its_share_pushes_out_its_own_oldest():
    lim = PendingLimit(total=10, per_source=3)
    for i in range(3):
        assert lim.add(("a", i), "A") == []
    assert lim.add(("b", 0), "B") == []
    assert lim.add(("a", 3), "A") == [("a", 0)]
    assert lim.add(("a", 4), "A") == [("a", 1)]
    assert ("b", 0) in lim and ("a", 0) not in lim
    assert len(lim) == 4 and lim.evicted == 2


def test_full_table_makes_the_biggest_source_pay():
    lim = PendingLimit(total=5, per_source=4)
    for i in range(4):
        lim.add(("flood", i), "F")
    lim.add(("peer", 0), "P")
    # full: the next from a quiet source pushes out the flood's oldest, not the peer
    assert lim.add(("peer2", 0), "Q") == [("flood", 0)]
    assert lim.add(("peer3", 0), "R") == [("flood", 1)]
    assert all(c in lim for c in [("peer", 0), ("peer2", 0), ("peer3", 0)])
    assert len(lim) == 5


def test_confirmed_and_closed_connections_stop_counting():
    lim = PendingLimit(total=2, per_source=2)
    lim.add(1, "A")
    lim.add(2, "A")
    assert lim.confirm(1) is True
    assert lim.confirm(1) is False
    assert lim.add(3, "A") == []        # 1 proved itself: room again
    assert lim.discard(2) and lim.discard(3)
    assert len(lim) == 0 and lim.sources() == 0


def test_the_same_connection_twice_is_our_bug():
    lim = PendingLimit()
    lim.add(1, "A")
    with pytest.raises(ValueError):
        lim.add(1, "B")
    with pytest.raises(ValueError):
        PendingLimit(total=4, per_source=5)


@given(st.lists(st.tuples(st.sampled_from(["add", "confirm"]), st.integers(0, 40),
                          st.sampled_from("ABCD")), max_size=300))
def test_bounds_hold_whatever_the_order(ops):
    lim = PendingLimit(total=8, per_source=3)
    waiting: dict[int, str] = {}
    for op, conn, src in ops:
        if op == "add" and conn not in lim:
            for gone in lim.add(conn, src):
                assert waiting.pop(gone) is not None
            waiting[conn] = src
        elif op == "confirm":
            assert lim.confirm(conn) == (waiting.pop(conn, None) is not None)
        assert len(lim) == len(waiting) <= 8
        for s in "ABCD":
            assert sum(1 for v in waiting.values() if v == s) <= 3
