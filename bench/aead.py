"""Session crypto micro-benchmarks (sporenet/protocols/sessions/data.py, sporenet/protocols/sessions/pq.py).

Run: ``python3 bench/aead.py`` (about 20 s; ``--quick`` for a smoke run).

Measures, as the best of ``--repeat`` runs (the box is shared, so the minimum is
the least disturbed figure):
- raw AEAD seal/open µs with ``cryptography``'s ChaCha20-Poly1305 and AES-256-GCM,
  one object reused, at 1,400 B and 64 KiB;
- ``Keypair.seal`` (header pack + AEAD) and the full receive path
  ``KeyRing.open`` (header parse + index lookup + replay pre-check + AEAD open +
  window update + key-confirmation check) at 1,400 B and 64 KiB, on fresh counters;
- ML-KEM-768 keygen, encapsulation (incl. parsing the 1,184 B key) and
  decapsulation µs, and one whole PQ-PSK exchange (``PqInitiator`` + ``answer_offer``
  + ``finish``, with both KDFs).

Numbers from a shared 2-core machine vary by ±30 % run to run; compare runs made
side by side, never against a threshold in a test.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from sporenet.protocols.sessions.pq import PqInitiator, answer_offer, mlkem_available
from sporenet.protocols.sessions.data import KeyRing

SIZES = {"1,400 B": 1_400, "64 KiB": 65_536}
NONCE = bytes(12)
AAD = bytes(14)


@dataclass(frozen=True)
class _Keys:  # the shape of noise.HandshakeResult that KeyRing reads
    local_index: int
    remote_index: int
    send_key: bytes
    recv_key: bytes
    remote_public_key: bytes
    initiator: bool
    transcript_hash: bytes = bytes(32)


def best_us(fn, n: int, repeat: int) -> float:
    """Best per-call µs over ``repeat`` runs of ``n`` calls."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def calls(size: int, scale: float) -> int:
    return max(50, int(scale * 4_000_000 / max(size, 1_024)))


def bench_aead(scale: float, repeat: int) -> list[tuple[str, str, float]]:
    rows = []
    for name, aead in (("ChaCha20-Poly1305", ChaCha20Poly1305(bytes(32))),
                       ("AES-256-GCM", AESGCM(bytes(32)))):
        for label, size in SIZES.items():
            pt = bytes(size)
            ct = aead.encrypt(NONCE, pt, AAD)
            n = calls(size, scale)
            rows.append((label, f"{name} seal", best_us(lambda: aead.encrypt(NONCE, pt, AAD), n,
                                                        repeat)))
            rows.append((label, f"{name} open", best_us(lambda: aead.decrypt(NONCE, ct, AAD), n,
                                                        repeat)))
    return rows


def _ring_pair() -> tuple[KeyRing, KeyRing, bytes]:
    a, b = KeyRing(), KeyRing()
    k1, k2, pub_a, pub_b = b"\x01" * 32, b"\x02" * 32, b"\xaa" * 32, b"\xbb" * 32
    a.install(_Keys(1, 2, k1, k2, pub_b, True), 0.0)
    b.install(_Keys(2, 1, k2, k1, pub_a, False), 0.0)
    b.open(a.seal(pub_b, b"confirm", 0.0), 0.0)  # key confirmation: b's next -> current
    return a, b, pub_b


def bench_session(scale: float, repeat: int) -> list[tuple[str, str, float]]:
    rows = []
    for label, size in SIZES.items():
        pt = bytes(size)
        n = calls(size, scale)
        a, _, pub_b = _ring_pair()
        rows.append((label, "Keypair.seal (ChaCha)", best_us(lambda: a.seal(pub_b, pt, 1.0), n,
                                                             repeat)))
        best = float("inf")
        for _ in range(repeat):
            a, b, pub_b = _ring_pair()
            frames = [a.seal(pub_b, pt, 1.0) for _ in range(n)]  # fresh counters each
            it = iter(frames)
            t0 = time.perf_counter()
            for frame in it:
                b.open(frame, 1.0)
            best = min(best, (time.perf_counter() - t0) / n)
        rows.append((label, "rx path KeyRing.open", best * 1e6))
    return rows


def bench_mlkem(scale: float, repeat: int) -> list[tuple[str, str, float]]:
    if not mlkem_available():
        return [("-", "ML-KEM-768 unavailable", float("nan"))]
    from cryptography.hazmat.primitives.asymmetric import mlkem
    dk = mlkem.MLKEM768PrivateKey.generate()
    ek_raw = dk.public_key().public_bytes_raw()
    _, ct = dk.public_key().encapsulate()
    th = bytes(32)
    n = max(20, int(scale * 2_000))

    def exchange():
        init = PqInitiator()
        answer, _ = answer_offer(init.offer(), th)
        init.finish(answer, th)

    return [
        ("768", "ML-KEM keygen", best_us(mlkem.MLKEM768PrivateKey.generate, n, repeat)),
        ("768", "ML-KEM encaps (incl. ek parse)", best_us(
            lambda: mlkem.MLKEM768PublicKey.from_public_bytes(ek_raw).encapsulate(), n, repeat)),
        ("768", "ML-KEM decaps", best_us(lambda: dk.decapsulate(ct), n, repeat)),
        ("768", "PQ-PSK exchange, both sides", best_us(exchange, n, repeat)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (1/20 of the calls)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    scale = 0.05 if args.quick else 1.0
    rows = bench_aead(scale, args.repeat) + bench_session(scale, args.repeat)
    rows += bench_mlkem(scale, args.repeat)
    print("| size | operation | µs | MB/s |\n|--:|---|--:|--:|")
    for label, op, us in rows:
        size = SIZES.get(label)
        rate = f"{size / us:,.0f}" if size and us == us else "-"
        print(f"| {label} | {op} | {us:,.2f} | {rate} |")


if __name__ == "__main__":
    main()
