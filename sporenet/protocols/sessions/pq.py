"""Post-quantum PSK for the next handshake: "PQ-PSK rekey" (security.md §2, v1).

Driven by the session layer, inside an established (classical IKpsk2) session:

1. the initiator makes a ``PqInitiator`` and sends ``offer()`` (a ``PqOffer``) as an
   encrypted session payload;
2. the responder calls ``answer_offer(offer, transcript_hash)``, sends the
   ``PqAnswer`` back the same way and keeps the returned ``PqPsk``;
3. the initiator calls ``finish(answer, transcript_hash)`` and gets the same ``PqPsk``.

Both feed ``bytes(psk)`` into the psk slot of the next handshake and rekey at once;
every later rekey carries a fresh exchange, so each epoch gets PQ forward secrecy.
Authentication stays classical (the PQXDH position).

Layouts (after the two-byte frame header of ``wire.py``), fixed size, no fields
besides the KEM bytes (FIPS 203 ML-KEM-768):
- ``PqOffer`` 0x24: ``ek[1184]`` (encapsulation key).
- ``PqAnswer`` 0x25: ``ct[1088]`` (ciphertext).

KDF: ``psk = HKDF-BLAKE2s(ikm=ss, salt=transcript_hash, info=PQ_LABEL ||
BLAKE2s(ek || ct))``, 32 bytes (RFC 5869 with Noise's hash). The brief asks for
``HKDF(ss, transcript_hash, label)``; hashing ``ek || ct`` into ``info`` as well binds
the psk to this exact exchange (the X-Wing/TLS hybrid habit), at no cost.
``transcript_hash`` is ``HandshakeResult.transcript_hash`` of the session carrying
the exchange, so a psk cannot be moved to another session.

Invariants: the ML-KEM private key lives only in memory, is used once and then
dropped, and never appears in a repr; decoders check lengths only (ek validity is
checked by ``answer_offer``, which raises ``BadPqOffer``). Sans-IO: key generation
takes an explicit 64-byte ``seed`` when the caller wants determinism; otherwise, like
encapsulation, it draws from OpenSSL's CSPRNG (never from ``random``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar

import cryptography
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import wire
from ..errors import LocalProtocolError, RemoteProtocolError

try:  # cryptography >= 47
    from cryptography.hazmat.primitives.asymmetric import mlkem as _mlkem
except ImportError:  # pragma: no cover - depends on the installed cryptography
    _mlkem = None

PQ_LABEL = b"sporenet pq psk v1"
EK_SIZE = 1_184
CT_SIZE = 1_088
SEED_SIZE = 64  # FIPS 203 (d || z)
PSK_SIZE = 32
TRANSCRIPT_HASH_SIZE = 32  # Noise BLAKE2s HASHLEN


class MlkemUnavailable(LocalProtocolError):
    """This node's ``cryptography``/OpenSSL cannot do ML-KEM-768."""


class BadPqOffer(RemoteProtocolError):
    """The peer's encapsulation key is not a valid ML-KEM-768 key."""


def mlkem_available() -> bool:
    """True if ML-KEM-768 works here: cryptography >= 47 linked to OpenSSL >= 3.5
    (the PyPI wheels bundle one; some distro builds link an older system OpenSSL)."""
    if _mlkem is None:
        return False
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.backends.openssl.backend import backend

    probe = getattr(backend, "mlkem_supported", None)
    if probe is not None:
        return bool(probe())
    try:  # older layouts without the probe: try the real thing
        _mlkem.MLKEM768PrivateKey.from_seed_bytes(bytes(SEED_SIZE))
    except UnsupportedAlgorithm:
        return False
    return True


def require_mlkem() -> None:
    """Raise ``MlkemUnavailable`` with what to do, unless ML-KEM-768 works here.

    Nodes call this at start-up when the network contract says ``pq: required``.
    """
    if mlkem_available():
        return
    try:
        from cryptography.hazmat.backends.openssl.backend import backend
        openssl = backend.openssl_version_text()
    except ImportError:  # pragma: no cover
        openssl = "unknown OpenSSL"
    raise MlkemUnavailable(
        f"ML-KEM-768 is unavailable (cryptography {cryptography.__version__}, {openssl}): "
        "post-quantum sessions need cryptography>=47 with OpenSSL>=3.5. "
        "Run `pip install -U 'cryptography>=47'` (the PyPI wheels bundle a suitable "
        "OpenSSL), or rebuild cryptography against OpenSSL 3.5+.")


def _need(raw: bytes, size: int, what: str) -> None:
    if len(raw) != size:
        raise LocalProtocolError(f"{what} must be {size} bytes, got {len(raw)}")


@wire.register
@dataclass(frozen=True, slots=True)
class PqOffer(wire.Message):
    TYPE: ClassVar[int] = 0x24
    MAX_SIZE: ClassVar[int] = wire.HEADER_SIZE + EK_SIZE

    ek: bytes = field(repr=False)  # public, but 1 KiB of noise in a log

    def __post_init__(self) -> None:
        _need(self.ek, EK_SIZE, "ML-KEM-768 encapsulation key")

    def encode_body(self) -> bytes:
        return self.ek

    @classmethod
    def decode_body(cls, r: wire.Reader) -> PqOffer:
        ek = r.take(EK_SIZE)
        r.end()
        return cls(ek)


@wire.register
@dataclass(frozen=True, slots=True)
class PqAnswer(wire.Message):
    TYPE: ClassVar[int] = 0x25
    MAX_SIZE: ClassVar[int] = wire.HEADER_SIZE + CT_SIZE

    ct: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _need(self.ct, CT_SIZE, "ML-KEM-768 ciphertext")

    def encode_body(self) -> bytes:
        return self.ct

    @classmethod
    def decode_body(cls, r: wire.Reader) -> PqAnswer:
        ct = r.take(CT_SIZE)
        r.end()
        return cls(ct)


@dataclass(frozen=True, slots=True)
class PqPsk:
    """A derived pre-shared key; ``bytes(psk)`` feeds the next handshake."""

    key: bytes = field(repr=False)

    def __bytes__(self) -> bytes:
        return self.key

    def __repr__(self) -> str:
        return "PqPsk(<redacted>)"


def derive_psk(shared_secret: bytes, transcript_hash: bytes, ek: bytes, ct: bytes) -> PqPsk:
    """The psk both sides derive from one exchange (module header "KDF")."""
    _need(shared_secret, 32, "ML-KEM shared secret")
    _need(transcript_hash, TRANSCRIPT_HASH_SIZE, "transcript hash")
    info = PQ_LABEL + hashlib.blake2s(ek + ct).digest()
    hkdf = HKDF(algorithm=hashes.BLAKE2s(32), length=PSK_SIZE, salt=transcript_hash, info=info)
    return PqPsk(hkdf.derive(shared_secret))


class PqInitiator:
    """The initiator's half of one exchange. Driven by ``offer()`` then ``finish()``,
    once: the private key is dropped after ``finish`` (forward secrecy per epoch)."""

    __slots__ = ("_dk", "_ek")

    def __init__(self, seed: bytes | None = None) -> None:
        require_mlkem()
        if seed is None:
            dk = _mlkem.MLKEM768PrivateKey.generate()
        else:
            _need(seed, SEED_SIZE, "ML-KEM seed")
            dk = _mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        self._dk = dk
        self._ek = dk.public_key().public_bytes_raw()

    def offer(self) -> PqOffer:
        return PqOffer(self._ek)

    @property
    def finished(self) -> bool:
        return self._dk is None

    def finish(self, answer: PqAnswer, transcript_hash: bytes) -> PqPsk:
        if self._dk is None:
            raise LocalProtocolError("PQ exchange already finished: start a new one")
        # ML-KEM decapsulation never fails on a well-sized ct: a tampered one yields
        # an unrelated secret (implicit rejection), so the next handshake fails instead.
        ss = self._dk.decapsulate(answer.ct)
        self._dk = None
        return derive_psk(ss, transcript_hash, self._ek, answer.ct)

    def __repr__(self) -> str:
        state = "finished" if self._dk is None else "pending"
        return f"PqInitiator({state}, ek={self._ek[:4].hex()}..., dk=<redacted>)"


def answer_offer(offer: PqOffer, transcript_hash: bytes) -> tuple[PqAnswer, PqPsk]:
    """The responder's half: encapsulate to the offered key. Raises ``BadPqOffer``
    if the key is not a valid ML-KEM-768 key (FIPS 203 §7.2 modulus check)."""
    require_mlkem()
    try:
        ek = _mlkem.MLKEM768PublicKey.from_public_bytes(offer.ek)
    except ValueError:
        raise BadPqOffer("PqOffer carries an invalid ML-KEM-768 key") from None
    ss, ct = ek.encapsulate()
    return PqAnswer(ct), derive_psk(ss, transcript_hash, offer.ek, ct)


PQ_TYPES = (PqOffer, PqAnswer)
