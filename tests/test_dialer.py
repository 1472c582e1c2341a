"""The dialer keeps configured peers dialled, with bounded, jittered backoff."""

import random

from sporenet.protocols.link.dialer import Dial, Dialer, DialLost, DialSucceeded


def make(now=0.0, **kw):
    return Dialer(["tcp://a:1", "tcp://b:2"], rng=random.Random(1), now=now, **kw)


def test_dials_every_peer_at_start():
    d = make()
    assert d.next_deadline() == 0.0
    assert d.on_timer(0.0) == [Dial("tcp://a:1"), Dial("tcp://b:2")]
    assert d.next_deadline() is None  # waiting for outcomes


def test_failed_dial_is_retried_with_growing_backoff_capped():
    d = make(min_backoff=1.0, max_backoff=8.0)
    d.on_timer(0.0)
    now, gaps = 0.0, []
    for _ in range(8):
        d.handle(DialLost("tcp://a:1"), now)
        due = d.next_deadline()
        gaps.append(due - now)
        now = due
        assert d.on_timer(now) == [Dial("tcp://a:1")]
    assert 0.8 <= gaps[0] <= 1.2
    assert gaps[1] > gaps[0] and gaps[2] > gaps[1]
    assert max(gaps) <= 8.0 * 1.2


def test_connected_peer_is_not_redialled_until_lost():
    d = make()
    d.on_timer(0.0)
    d.handle(DialSucceeded("tcp://a:1"), 0.1)
    d.handle(DialSucceeded("tcp://b:2"), 0.1)
    assert d.next_deadline() is None
    d.handle(DialLost("tcp://b:2"), 5.0)
    assert d.next_deadline() is not None
    assert d.on_timer(d.next_deadline()) == [Dial("tcp://b:2")]


def test_stable_link_resets_backoff():
    d = make(min_backoff=1.0, max_backoff=30.0, stable_after=10.0)
    d.on_timer(0.0)
    now = 0.0
    for _ in range(5):  # grow the backoff
        d.handle(DialLost("tcp://a:1"), now)
        now = d.next_deadline()
        d.on_timer(now)
    d.handle(DialSucceeded("tcp://a:1"), now)
    d.handle(DialLost("tcp://a:1"), now + 100.0)
    assert d.next_deadline() - (now + 100.0) <= 1.2


def test_unknown_endpoint_events_are_ignored():
    d = make()
    assert d.handle(DialLost("tcp://zzz:9"), 0.0) == []
    assert set(d.endpoints) == {"tcp://a:1", "tcp://b:2"}
