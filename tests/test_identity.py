"""Identity and overlay addressing: ids, addresses in 600::/7, signatures, redaction."""

import hashlib
import ipaddress

import pytest

from sporenet.protocols.errors import LocalProtocolError, RemoteProtocolError
from sporenet.protocols.identity import (OVERLAY_PREFIX, Identity, PeerIdentity, address_belongs_to,
                                         address_of, node_id_of, short_id, subnet_belongs_to,
                                         subnet_of, verify_signature)

SEED_A = bytes(range(32))
SEED_B = bytes(range(1, 33))


def test_node_id_is_blake2b_256_of_public_key():
    ident = Identity(SEED_A)
    assert ident.node_id == hashlib.blake2b(ident.public_key, digest_size=32).digest()
    assert node_id_of(ident.public_key) == ident.node_id
    assert len(ident.public_key) == 32


def test_address_in_overlay_prefix_and_owns_a_64():
    for seed in (SEED_A, SEED_B, b"\xff" * 32, b"\0" * 32):
        ident = Identity(seed)
        assert ident.address in OVERLAY_PREFIX
        assert ident.address == address_of(ident.public_key)
        net = subnet_of(ident.public_key)
        assert net.prefixlen == 64 and ident.address in net and net.subnet_of(OVERLAY_PREFIX)
    assert OVERLAY_PREFIX == ipaddress.IPv6Network("600::/7")


def test_address_carries_node_id_bits():
    ident = Identity(SEED_A)
    expected = int.from_bytes(ident.node_id[:16], "big") >> 7
    assert int(ident.address) & ((1 << 121) - 1) == expected


def test_address_belongs_to():
    a, b = Identity(SEED_A), Identity(SEED_B)
    assert address_belongs_to(a.address, a.public_key)
    assert address_belongs_to(str(a.address), a.public_key)
    assert not address_belongs_to(b.address, a.public_key)
    assert subnet_belongs_to(subnet_of(a.public_key), a.public_key)
    assert not subnet_belongs_to(subnet_of(b.public_key), a.public_key)


def test_repr_and_str_hide_the_secret():
    ident = Identity(SEED_A)
    for text in (repr(ident), str(ident)):
        assert "redacted" in text and SEED_A.hex() not in text and short_id(ident.node_id) in text


def test_signatures_verify_and_bad_ones_raise_remote_protocol_error():
    a, b = Identity(SEED_A), Identity(SEED_B)
    sig = a.sign(b"msg")
    verify_signature(a.public_key, b"msg", sig)
    with pytest.raises(RemoteProtocolError):
        verify_signature(a.public_key, b"msG", sig)
    with pytest.raises(RemoteProtocolError):
        verify_signature(b.public_key, b"msg", sig)
    with pytest.raises(RemoteProtocolError):
        verify_signature(a.public_key, b"msg", sig[:63])
    with pytest.raises(RemoteProtocolError):
        verify_signature(a.public_key[:31], b"msg", sig)


def test_bad_seed_is_a_local_error():
    with pytest.raises(LocalProtocolError):
        Identity(b"short")
    with pytest.raises(LocalProtocolError):
        node_id_of(b"short")


def test_peer_identity_derives_id_and_address():
    a = Identity(SEED_A)
    peer = PeerIdentity(a.public_key)
    assert peer.node_id == a.node_id and peer.address == a.address
    assert Identity(SEED_A).seed == SEED_A
