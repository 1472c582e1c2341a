"""Data keypairs and IP data frames (protocols/datapath/keys.py)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from hypothesis import given, strategies as st

from sporenet.protocols import wire
from sporenet.protocols.datapath import keys
from sporenet.protocols.datapath.keys import DataKeypair, DataRejected
from sporenet.protocols.errors import DecodeError, LocalProtocolError
from sporenet.protocols.routed import Proto, Routed
from sporenet.protocols.sessions.data import REJECT_AFTER_TIME, Keypair

K1, K2 = os.urandom(32), os.urandom(32)
SRC, DST = bytes.fromhex("06" + "11" * 15), bytes.fromhex("07" + "22" * 15)


def pair(now=0.0):
    a = DataKeypair(local_index=1, remote_index=2, send_key=K1, recv_key=K2, peer=b"B", now=now)
    b = DataKeypair(local_index=2, remote_index=1, send_key=K2, recv_key=K1, peer=b"A", now=now,
                    confirmed=False)
    return a, b


def deliver(b: DataKeypair, frame: bytes, now=1.0) -> bytes:
    index, counter = keys.parse_ip_data(frame)
    assert index == b.local_index
    return b.open(frame, counter, now)


@given(st.binary(max_size=70_000))
def test_what_one_side_seals_the_other_opens(packet):
    a, b = pair()
    if len(packet) > keys.MAX_PLAINTEXT:
        with pytest.raises(LocalProtocolError):
            a.seal(packet, 1.0)
        return
    assert deliver(b, a.seal(packet, 1.0)) == packet


def test_a_replay_is_refused_and_a_forgery_does_not_move_the_window():
    a, b = pair()
    first, second = a.seal(b"one", 1.0), a.seal(b"two", 1.0)
    assert deliver(b, first) == b"one"
    with pytest.raises(DataRejected) as e:
        deliver(b, first)
    assert e.value.reason == "replayed"
    forged = second[:-1] + bytes([second[-1] ^ 1])
    with pytest.raises(DataRejected) as e:
        deliver(b, forged)
    assert e.value.reason == "forged"
    assert deliver(b, second) == b"two"      # the forgery did not burn its counter


def test_the_data_keys_are_not_the_session_keys():
    """A frame sealed under the raw session key does not open as IP data: the two
    streams can never share a nonce under one key."""
    a, b = pair()
    session = Keypair(SimpleNamespace(local_index=1, remote_index=2, send_key=K1, recv_key=K2,
                                      remote_public_key=b"B", initiator=True), 0.0)
    raw = bytearray(session.seal(b"x" * 100, 1.0))
    raw[1] = keys.IP_DATA_TYPE                # same layout, retyped
    with pytest.raises(DataRejected):
        deliver(b, bytes(raw))


def test_an_old_keypair_neither_seals_nor_opens():
    a, b = pair()
    frame = a.seal(b"late", 1.0)
    with pytest.raises(DataRejected) as e:
        deliver(b, frame, now=REJECT_AFTER_TIME)
    assert e.value.reason == "expired"
    with pytest.raises(LocalProtocolError):
        a.seal(b"late", REJECT_AFTER_TIME)


def test_from_session_confirms_only_the_initiator_and_keeps_secrets_out_of_repr():
    res = SimpleNamespace(local_index=7, remote_index=9, send_key=K1, recv_key=K2,
                          remote_public_key=b"P" * 32, initiator=False)
    kp = DataKeypair.from_session(res, 0.0)
    assert not kp.confirmed and (kp.local_index, kp.remote_index) == (7, 9)
    assert K1.hex() not in repr(kp) and "redacted" in repr(kp)


def test_the_routed_ip_frame_is_a_routed_frame_of_proto_ip_packet():
    a, _ = pair()
    data = a.seal(b"\x60" + bytes(50), 1.0)
    frame = keys.routed_ip_frame(SRC, DST, 64, data)
    msg = wire.decode_frame(frame)            # the general codec agrees with the fast path
    assert isinstance(msg, Routed) and msg.proto == Proto.IP_PACKET
    assert (msg.src, msg.dst, msg.hop_limit, msg.payload) == (SRC, DST, 64, data)
    assert keys.parse_routed_ip(frame) == (SRC, DST, 64, 0)
    assert bytes(memoryview(frame)[keys.ROUTED_HEADER:]) == data


def test_other_frames_are_not_ip_and_short_ones_are_malformed():
    other = wire.encode_frame(Routed(SRC, DST, 64, 0, Proto.PING, b"12345678abcd"))
    assert keys.parse_routed_ip(other) is None
    assert keys.parse_routed_ip(b"\x01\x01hello") is None
    with pytest.raises(DecodeError):
        keys.parse_routed_ip(b"\x01\x30" + bytes(10))
    with pytest.raises(DecodeError):
        keys.parse_ip_data(b"\x01\x31" + bytes(10))
    with pytest.raises(DecodeError):
        keys.parse_ip_data(b"\x01\x23" + bytes(40))
