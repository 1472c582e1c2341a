"""Chunked contract transfer (sporenet/protocols/contracts/transfer.py): golden bytes, roundtrips,
fuzz of the decoders, and the Fetcher's reassembly, timeouts and bad-peer handling."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sporenet.protocols import wire
from sporenet.protocols.contracts.transfer import (BAN_TIME, CHUNK_SIZE, KIND_CONTRACT, KIND_FORK,
                                                  MAX_PAYLOAD, MAX_RETRIES, REQUEST_TIMEOUT,
                                                  TRANSFER_TIMEOUT, WINDOW, ContractAnnounce,
                                                  ContractChunk, ContractChunkRequest, Fetched,
                                                  Fetcher, RateLimit, SendTo, TransferFailed,
                                                  announce, digest, fits_one_frame, serve)
from sporenet.protocols.errors import DecodeError, LocalProtocolError

D = bytes(range(32))
R = bytes(range(0x80, 0xA0))
P1, P2, P3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32

GOLDEN = [
    (ContractAnnounce(KIND_CONTRACT, "lab", 2, R, 0x012345, D),
     "0152" + "01" + "03" + b"lab".hex() + "0000000000000002" + R.hex() + "00012345" + D.hex()),
    (ContractAnnounce(KIND_FORK, "a", 7, R, 1, D),
     "0152" + "02" + "01" + "61" + "0000000000000007" + R.hex() + "00000001" + D.hex()),
    (ContractChunkRequest(D, 0x8000, 0x20000), "0153" + D.hex() + "00008000" + "00020000"),
    (ContractChunk(D, 10, 4, b"\xaa\xbb"), "0154" + D.hex() + "0000000a" + "00000004" + "aabb"),
]


@pytest.mark.parametrize("msg,hexbytes", GOLDEN)
def test_golden_encoding_and_decoding(msg, hexbytes):
    assert wire.encode_frame(msg) == bytes.fromhex(hexbytes)
    assert wire.decode_frame(bytes.fromhex(hexbytes)) == msg


def test_types_are_registered_in_the_contract_range():
    reg = wire.registered_types()
    assert [reg[t] for t in (0x52, 0x53, 0x54)] == [ContractAnnounce, ContractChunkRequest,
                                                    ContractChunk]


@pytest.mark.parametrize("make", [
    lambda: ContractAnnounce(3, "lab", 1, R, 1, D),            # unknown kind
    lambda: ContractAnnounce(1, "a b", 1, R, 1, D),            # not a network id
    lambda: ContractAnnounce(1, "lab", 0, R, 1, D),            # version 0
    lambda: ContractAnnounce(1, "lab", 1, R, 0, D),            # empty
    lambda: ContractAnnounce(1, "lab", 1, R, MAX_PAYLOAD + 1, D),  # over the bound
    lambda: ContractAnnounce(1, "lab", 1, R[:31], 1, D),
    lambda: ContractChunkRequest(D, 0, 0),
    lambda: ContractChunkRequest(D, 0, WINDOW + 1),
    lambda: ContractChunkRequest(D[:5], 0, 1),
    lambda: ContractChunk(D, 10, 9, b"ab"),                    # runs past the end
    lambda: ContractChunk(D, 10, 0, b""),
    lambda: ContractChunk(D, 1 << 30, 0, b"a"),
    lambda: ContractChunk(D, CHUNK_SIZE + 1, 0, bytes(CHUNK_SIZE + 1)),
])
def test_constructors_refuse_bad_fields(make):
    with pytest.raises(LocalProtocolError):
        make()


@pytest.mark.parametrize("hexbytes", [
    "0152" + "03" + "03" + b"lab".hex() + "00" * 8 + "00" * 72,  # kind 3
    "0152" + "01" + "03" + b"lab".hex() + "00" * 8 + "00" * 32 + "00000001" + "00" * 32,  # version 0
    "0153" + D.hex() + "00000000" + "00000000",                   # length 0
    "0153" + D.hex() + "00000000",                                 # truncated
    "0154" + D.hex() + "00000002" + "00000001" + "aabb",          # past the end
    "0154" + D.hex() + "00000002" + "00000000",                   # no data
    "0152" + "01" + "03" + b"lab".hex() + "00" * 80 + "ff",       # trailing
])
def test_malformed_frames_raise_decode_error(hexbytes):
    with pytest.raises(DecodeError):
        wire.decode_frame(bytes.fromhex(hexbytes))


hashes = st.binary(min_size=32, max_size=32)
messages = st.one_of(
    st.builds(ContractAnnounce, st.sampled_from([1, 2]), st.from_regex(r"[a-z0-9][a-z0-9._-]{0,62}", fullmatch=True),
              st.integers(1, 2**64 - 1), hashes, st.integers(1, MAX_PAYLOAD), hashes),
    st.builds(ContractChunkRequest, hashes, st.integers(0, MAX_PAYLOAD - 1), st.integers(1, WINDOW)),
    st.builds(lambda d, data, off, extra: ContractChunk(d, off + len(data) + extra, off, data),
              hashes, st.binary(min_size=1, max_size=300), st.integers(0, 10_000), st.integers(0, 99)),
)


@given(messages)
def test_roundtrip(msg):
    assert wire.decode_frame(wire.encode_frame(msg)) == msg


@settings(max_examples=300)
@given(st.sampled_from([0x52, 0x53, 0x54, 0x55]), st.binary(max_size=400))
def test_fuzz_decoders_raise_only_decode_error(ftype, body):
    try:
        wire.decode_frame(bytes([wire.VERSION, ftype]) + body)
    except DecodeError:
        pass


@settings(max_examples=100)
@given(messages, st.integers(0, 200), st.integers(0, 255))
def test_fuzz_mutated_frames_raise_only_decode_error(msg, pos, value):
    frame = bytearray(wire.encode_frame(msg))
    frame[2 + pos % max(1, len(frame) - 2)] = value
    for data in (bytes(frame), bytes(frame[:pos % len(frame)])):
        try:
            wire.decode_frame(data)
        except DecodeError:
            pass


def test_chunk_frames_fit_the_frame_cap_and_serve_splits_a_window():
    payload = os.urandom(WINDOW * 2 + 5)
    chunks = serve(payload, ContractChunkRequest(digest(payload), 0, WINDOW))
    assert [c.offset for c in chunks] == list(range(0, WINDOW, CHUNK_SIZE))
    assert all(len(wire.encode_frame(c)) <= ContractChunk.MAX_SIZE <= wire.MAX_FRAME_SIZE
               for c in chunks)
    tail = serve(payload, ContractChunkRequest(digest(payload), 2 * WINDOW, WINDOW))
    assert [len(c.data) for c in tail] == [5]
    assert serve(payload, ContractChunkRequest(digest(payload), len(payload), 1)) == []
    assert fits_one_frame(wire.MAX_FRAME_SIZE - 2) and not fits_one_frame(wire.MAX_FRAME_SIZE)


def test_rate_limit_refills_over_time_and_bounds_its_table():
    lim = RateLimit(rate=1.0, burst=2.0, max_peers=2)
    assert lim.allow(P1, 0) and lim.allow(P1, 0) and not lim.allow(P1, 0)
    assert lim.allow(P1, 1.0) and not lim.allow(P1, 1.0)
    lim.allow(P2, 0), lim.allow(P3, 0)
    assert len(lim._buckets) == 2


# -- the Fetcher ---------------------------------------------------------------------


class Servers:
    """Peers that answer chunk requests from their payloads (None: silent)."""

    def __init__(self, fetcher, payloads):
        self.f, self.payloads, self.out = fetcher, payloads, []

    def run(self, actions, now=0.0, tamper=None):
        queue = list(actions)
        while queue:
            a = queue.pop(0)
            if isinstance(a, SendTo):
                payload = self.payloads.get(a.peer)
                if payload is None:
                    self.out.append(a)  # a silent peer: the request stays unanswered
                    continue
                for ch in serve(payload, a.message):
                    ch = tamper(ch) if tamper else ch
                    queue += self.f.on_chunk(a.peer, ch, now)
            else:
                self.out.append(a)
        return self.out


def test_a_large_payload_arrives_window_by_window_and_matches_its_digest():
    payload = os.urandom(5 * WINDOW + 123)
    ann = announce(KIND_CONTRACT, "lab", 2, R, payload)
    f = Fetcher()
    first = f.start(P1, ann, 0.0)
    assert first == [SendTo(P1, ContractChunkRequest(ann.digest, 0, WINDOW))]
    out = Servers(f, {P1: payload}).run(first)
    assert out == [Fetched(P1, ann, payload)]
    assert f.counters["completed"] == 1 and f.counters["chunks"] == -(-len(payload) // CHUNK_SIZE)
    assert f.active() == [] and f.next_deadline() is None


def test_a_peer_sending_a_bad_chunk_is_counted_banned_and_an_alternate_takes_over():
    payload = os.urandom(2 * WINDOW)
    ann = announce(KIND_CONTRACT, "lab", 2, R, payload)
    f = Fetcher()
    first = f.start(P1, ann, 0.0)
    assert f.start(P2, ann, 0.0) == []  # the same digest: P2 is another source

    def lie(ch):  # P1 claims another total size
        return ContractChunk(ch.digest, ch.total + 1, ch.offset, ch.data) if ch.offset else ch
    servers = Servers(f, {P1: payload})
    out = servers.run(first, tamper=lie)
    failed = [a for a in out if isinstance(a, TransferFailed)]
    assert failed and failed[0].bad and "total" in failed[0].reason
    assert f.bad_peers[P1] == 1 and f.banned(P1, 1.0)
    # The transfer moved to P2, from the first byte (nothing of a bad peer is kept).
    req = [a for a in out if isinstance(a, SendTo)]
    assert req == [SendTo(P2, ContractChunkRequest(ann.digest, 0, WINDOW))]
    servers.payloads = {P2: payload}
    servers.out = []
    assert servers.run(req) == [Fetched(P2, ann, payload)]
    assert f.start(P1, ann, 2.0) == [] and f.counters["ignored_banned_peer"] == 1
    assert not f.banned(P1, BAN_TIME + 1)  # the ban ends


def test_a_payload_that_does_not_match_its_digest_is_a_bad_transfer():
    payload = os.urandom(CHUNK_SIZE + 10)
    ann = announce(KIND_CONTRACT, "lab", 2, R, payload)
    other = os.urandom(len(payload))
    f = Fetcher()
    out = Servers(f, {P1: other}).run(
        [SendTo(P1, ContractChunkRequest(ann.digest, 0, len(payload)))] and f.start(P1, ann, 0))
    assert len(out) == 1 and out[0].bad and "digest" in out[0].reason
    assert f.active() == [] and f.counters["dropped"] == 1


def test_chunks_outside_the_window_or_unsolicited_are_refused():
    payload = os.urandom(3 * WINDOW)
    ann = announce(KIND_CONTRACT, "lab", 2, R, payload)
    f = Fetcher()
    f.start(P1, ann, 0)
    assert f.on_chunk(P2, ContractChunk(ann.digest, len(payload), 0, payload[:10]), 0) == []
    assert f.counters["unsolicited_chunks"] == 1
    out = f.on_chunk(P1, ContractChunk(ann.digest, len(payload), WINDOW, payload[WINDOW:WINDOW + 5]), 0)
    assert out[0].bad and "window" in out[0].reason and f.active() == []


def test_silence_is_retried_then_dropped_and_a_gap_is_asked_again():
    payload = os.urandom(2 * CHUNK_SIZE)
    ann = announce(KIND_CONTRACT, "lab", 2, R, payload)
    f = Fetcher()
    f.start(P1, ann, 0.0)
    # The second chunk arrives, the first was lost: a gap, asked again at the timeout.
    assert f.on_chunk(P1, serve(payload, ContractChunkRequest(ann.digest, 0, WINDOW))[1], 0.1) == []
    assert f.counters["gap_chunks"] == 1 and f.next_deadline() == REQUEST_TIMEOUT
    t = REQUEST_TIMEOUT
    for i in range(MAX_RETRIES):
        assert f.on_timer(t) == [SendTo(P1, ContractChunkRequest(ann.digest, 0, len(payload)))]
        t += REQUEST_TIMEOUT
    out = f.on_timer(t)
    assert len(out) == 1 and not out[0].bad and "retries" in out[0].reason
    assert f.active() == [] and f.counters["timeouts"] == 1 and not f.banned(P1, t)


def test_progress_moves_to_an_alternate_keeping_good_bytes_and_no_transfer_outlives_its_bound():
    payload = os.urandom(2 * WINDOW)
    ann = announce(KIND_CONTRACT, "lab", 2, R, payload)
    f = Fetcher()
    f.start(P1, ann, 0.0)
    f.start(P2, ann, 0.0)
    for ch in serve(payload, ContractChunkRequest(ann.digest, 0, WINDOW)):
        f.on_chunk(P1, ch, 0.1)  # the first window arrives, then P1 goes down
    out = f.peer_down(P1, 1.0)
    assert out[-1] == SendTo(P2, ContractChunkRequest(ann.digest, WINDOW, WINDOW))
    assert f.on_timer(TRANSFER_TIMEOUT)[-1].reason == "the transfer took too long"
    assert f.active() == []


def test_at_most_max_transfers_at_once_and_a_waiting_one_starts_when_a_slot_frees():
    f = Fetcher(max_transfers=2)
    payloads = [os.urandom(100) for _ in range(3)]
    anns = [announce(KIND_CONTRACT, "lab", v, R, p) for v, p in zip((2, 3, 4), payloads)]
    assert f.start(P1, anns[0], 0) and f.start(P1, anns[1], 0)
    assert f.start(P2, anns[2], 0) == [] and f.counters["busy"] == 1
    assert len(f.active()) == 2
    out = f.on_chunk(P1, ContractChunk(anns[0].digest, 100, 0, payloads[0]), 0)
    assert out == [Fetched(P1, anns[0], payloads[0]),
                   SendTo(P2, ContractChunkRequest(anns[2].digest, 0, 100))]
    assert f.fail(P1, anns[0], "does not decode", 0)[0].bad and f.banned(P1, 1)
