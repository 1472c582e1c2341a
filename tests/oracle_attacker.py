"""The key-compromise attacker shared by ``test_session_oracles.py`` (in-process
managers) and ``test_node_compromise.py`` (real node processes).

Given some private keys and a capture of session frames (type 0x20 msg1, 0x21 msg2,
0x23 data), ``attack`` replays the responder's side of Noise IKpsk2 on every captured
handshake, for every responder static it knows of, trying in each DH slot (es, ss,
ee, se) every DH its private keys can make with that slot's two public points, and
every psk it holds; each guess is checked against the AEAD fields of the handshake
(encrypted static, timestamp, empty payload). It then tries every transport key it
derived, every DH value, and every raw key it holds on the captured data frames. Its
primitives are its own (BLAKE2s, HKDF, ChaCha20-Poly1305 from the Noise spec and the
WireGuard whitepaper §5.4), not ``sessions/noise.py``'s; only the spec constants are imported.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field

import nacl.bindings
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from sporenet.protocols import wire
from sporenet.protocols.identity import Identity
from sporenet.protocols.sessions.noise import CONSTRUCTION, IDENTIFIER, ZERO_PSK
from sporenet.protocols.sessions.data import SessionData
from sporenet.protocols.sessions.messages import HandshakeInit, HandshakeResp

STAGES = ("nothing", "static", "timestamp", "keys")  # how far into a handshake the attacker got


# -- the attacker's own primitives (Noise spec / WireGuard whitepaper §5.4; not ours) ----

def _h(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def _kdf(key: bytes, data: bytes, n: int) -> list[bytes]:
    prk = hmac.new(key, data, hashlib.blake2s).digest()
    out, prev = [], b""
    for i in range(1, n + 1):
        prev = hmac.new(prk, prev + bytes((i,)), hashlib.blake2s).digest()
        out.append(prev)
    return out


def _aead_open(key: bytes, ciphertext: bytes, ad: bytes, counter: int = 0) -> bytes | None:
    try:
        return ChaCha20Poly1305(key).decrypt(struct.pack("<4xQ", counter), ciphertext, ad)
    except InvalidTag:
        return None


def open_data(key: bytes, frame: bytes) -> bytes | None:
    """A 0x23 frame's plaintext under ``key`` (nonce from its counter, AAD its header)."""
    (counter,) = struct.unpack_from("!Q", frame, 6)
    return _aead_open(key, frame[14:], frame[:14], counter)


def x25519_private(ed_identity: Identity) -> X25519PrivateKey:
    """The Noise static private key, derived from the Ed25519 key file as libsodium does."""
    raw = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(ed_identity.seed
                                                             + ed_identity.public_key)
    return X25519PrivateKey.from_private_bytes(raw)


def x25519_public(ed_public: bytes) -> bytes:
    return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed_public)


def _pub(k: X25519PrivateKey) -> bytes:
    return k.public_key().public_bytes_raw()


def _dh(k: X25519PrivateKey, point: bytes) -> bytes | None:
    try:
        return k.exchange(X25519PublicKey.from_public_bytes(point))
    except ValueError:
        return None


_C0 = _h(CONSTRUCTION)
_H0 = _h(_C0 + IDENTIFIER)


# -- the attack --------------------------------------------------------------------------

@dataclass
class Knowledge:
    privates: list[X25519PrivateKey]  # every X25519 private key the attacker holds
    psks: list[bytes] = field(default_factory=list)  # besides the all-zero psk
    raw_keys: list[bytes] = field(default_factory=list)  # anything else, tried as AEAD keys
    statics: list[bytes] = field(default_factory=list)  # every node's X25519 static (public)


@dataclass
class Report:
    stages: dict[tuple[int, int], str]  # (msg1 sender index, msg2 sender index) -> stage
    derived: set[bytes]  # every transport key derived (verified or not)
    tried: int  # (key, data frame) decryptions tried
    opened: list[tuple[bytes, bytes]]  # (frame, plaintext)
    verified_keys: list[bytes]  # transport keys confirmed by the handshake's empty payload


def _slot(privates: list[X25519PrivateKey], *points: bytes) -> list[bytes]:
    """Every DH value the attacker can make with the points of one Noise DH slot."""
    out = {v for k in privates for p in points if (v := _dh(k, p)) is not None}
    return sorted(out)


def attack_handshake(m1: HandshakeInit, m2: HandshakeResp,
                     know: Knowledge) -> tuple[str, list[tuple[bytes, bytes]], list[bytes]]:
    """Replay the responder's side of IK on a captured msg1/msg2 with every guess.

    Returns the furthest stage reached, every (T1, T2) transport key pair derivable on a
    path that passed every check so far, and the pairs the empty payload confirmed.
    """
    stage, candidates, verified = "nothing", [], []
    psks = list(dict.fromkeys([ZERO_PSK, *know.psks]))
    for r_pub in know.statics:  # which node answered: try them all
        c, h = _C0, _h(_H0 + r_pub)
        (c,) = _kdf(c, m1.ephemeral, 1)
        h = _h(h + m1.ephemeral)
        for es in _slot(know.privates, m1.ephemeral, r_pub):
            c1, k = _kdf(c, es, 2)
            s_pub = _aead_open(k, m1.encrypted_static, h)
            if s_pub is None:
                continue
            stage = max(stage, "static", key=STAGES.index)
            h1 = _h(h + m1.encrypted_static)
            for ss in _slot(know.privates, s_pub, r_pub):
                c2, k = _kdf(c1, ss, 2)
                if _aead_open(k, m1.encrypted_timestamp, h1) is None:
                    continue
                stage = max(stage, "timestamp", key=STAGES.index)
                h2 = _h(h1 + m1.encrypted_timestamp)
                (c3,) = _kdf(c2, m2.ephemeral, 1)
                h3 = _h(h2 + m2.ephemeral)
                for ee in _slot(know.privates, m1.ephemeral, m2.ephemeral):
                    (c4,) = _kdf(c3, ee, 1)
                    for se in _slot(know.privates, s_pub, m2.ephemeral):
                        (c5,) = _kdf(c4, se, 1)
                        for psk in psks:
                            c6, tau, k = _kdf(c5, psk, 3)
                            keys = tuple(_kdf(c6, b"", 2))
                            candidates.append(keys)
                            if _aead_open(k, m2.encrypted_nothing, _h(h3 + tau)) is not None:
                                stage = "keys"
                                verified.append(keys)
    return stage, candidates, verified


def attack(frames: list[bytes], know: Knowledge) -> Report:
    """Everything ``know`` gives against the session frames ``frames``."""
    parsed = [(f, wire.decode_frame(f)) for f in frames if f[1] in (0x20, 0x21)]
    inits = [m for f, m in parsed if isinstance(m, HandshakeInit)]
    resps = [m for f, m in parsed if isinstance(m, HandshakeResp)]
    data = [f for f in frames if f[1] == SessionData.TYPE]
    stages: dict[tuple[int, int], str] = {}
    opened, verified_all, tried, derived = [], [], 0, set()

    def try_key(key: bytes, targets: list[bytes]) -> None:
        nonlocal tried
        for f in targets:
            tried += 1
            plain = open_data(key, f)
            if plain is not None:
                opened.append((f, plain))

    for m1 in inits:
        for m2 in [r for r in resps if r.receiver_index == m1.sender_index]:
            stage, candidates, verified = attack_handshake(m1, m2, know)
            stages[(m1.sender_index, m2.sender_index)] = stage
            derived |= {k for pair in candidates for k in pair}
            verified_all += [k for pair in verified for k in pair]
            # Frames of this keypair carry one of its two indices; a wrong key fails on
            # any frame, so two per direction suffice for the unconfirmed guesses.
            mine = [f for f in data
                    if struct.unpack_from("!I", f, 2)[0] in (m1.sender_index, m2.sender_index)]
            for pair in verified or candidates:
                for key in pair:
                    try_key(key, mine if verified else mine[:4])
    # Then every raw secret, every DH value it can make with any point in the capture or
    # any node's static, and their hashes, as the AEAD key itself, on every data frame.
    points = sorted({m.ephemeral for m in inits + resps} | set(know.statics))
    raw = set(know.raw_keys) | set(know.psks)
    for k in know.privates:
        raw.add(k.private_bytes_raw())
        for p in points:
            if (v := _dh(k, p)) is not None:
                raw |= {v, _h(v)}
    for key in sorted(raw):
        if len(key) == 32:
            try_key(key, data)
    return Report(stages, derived, tried, opened, verified_all)
