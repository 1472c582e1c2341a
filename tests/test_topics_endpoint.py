"""The overlay agent's per-topic refusal counts (``agents.overlay._TopicEndpoint``),
driven sans-IO with a hand-advanced ``now``."""

import ipaddress
import random

from sporenet.agents.overlay import MAX_REFUSED_TOPICS, _TopicEndpoint
from sporenet.protocols.overlay.messaging import MessageReceived, PacketReceived
from sporenet.protocols.routed import MessageChunk, Proto

ME, A, B = (ipaddress.IPv6Address(x) for x in ("600::1", "602::a", "604::b"))


def chunk(src, topic, msg_id=1, data=b"hi"):
    c = MessageChunk(msg_id, topic, 0, 1, len(data), 5000, 0, data)
    return PacketReceived(src, Proto.MESSAGE_CHUNK, c.encode())


def delivered(actions):
    return [a for a in actions if isinstance(a, MessageReceived)]


def test_refusals_are_counted_per_topic_with_the_last_sender():
    ep = _TopicEndpoint(ME, rng=random.Random(1))
    ep.allow("ops", [A])
    ep.allow("lan", [ipaddress.IPv6Network("604::/64")])
    ep.allow("closed", [])
    assert delivered(ep.handle(chunk(A, "ops"), 0.0))
    assert ep.handle(chunk(B, "ops", 2), 0.0) == []          # dropped, not even acked
    assert ep.handle(chunk(B, "ops", 2), 0.5) == []          # a retransmission counts too
    assert delivered(ep.handle(chunk(B, "lan", 3), 0.0))
    assert ep.handle(chunk(A, "lan", 4), 0.0) == []
    assert ep.handle(chunk(A, "closed", 5), 0.0) == []
    assert delivered(ep.handle(chunk(B, "free", 6), 0.0))    # no rule: default accepts
    assert ep.refused == {"ops": [2, str(B)], "lan": [1, str(A)], "closed": [1, str(A)]}
    assert ep.counters["refused_sender"] == 4


def test_default_refuse_and_the_table_is_bounded():
    ep = _TopicEndpoint(ME, rng=random.Random(1), default_accept=False)
    for i in range(MAX_REFUSED_TOPICS + 50):
        assert ep.handle(chunk(A, f"t{i}", i + 1), 0.0) == []
    assert len(ep.refused) == MAX_REFUSED_TOPICS
    assert ep.counters["refused_sender"] == MAX_REFUSED_TOPICS + 50   # the total sees all
    ep.handle(chunk(B, "t0", 999), 0.0)
    assert ep.refused["t0"] == [2, str(B)]
