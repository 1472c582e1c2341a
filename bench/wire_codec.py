"""Wire codec micro-benchmark: encode_frame / decode_frame µs for each registered frame type.

    python bench/wire_codec.py [--number 20000] [--quick]

For every type in ``protocols.wire.registered_types()`` (today the link-control
frames of sporenet/protocols/link/messages.py: Hello, HelloProof, Probe, ProbeAck, Close) it
builds one representative message, checks ``decode_frame(encode_frame(m)) == m``,
then times each call with ``timeit``: 5 repeats of ``--number`` calls, best
repeat reported (the least disturbed by other work on a shared machine).
A registered type with no sample here is listed as missing, so a new frame type
shows up instead of being silently skipped. About 2 s.
"""

from __future__ import annotations

import argparse
import sys
import timeit

from sporenet.protocols.link import messages
from sporenet.protocols.wire import Message, decode_frame, encode_frame, registered_types

REPEAT = 5


def samples() -> dict[type[Message], Message]:
    """One realistic message per frame type (fields as a live link sends them)."""
    return {
        messages.Hello: messages.Hello(public_key=b"k" * messages.PUBLIC_KEY_SIZE,
                                       nonce=b"n" * messages.NONCE_SIZE,
                                       endpoint="tcp://192.0.2.1:7000", name="node-a"),
        messages.HelloProof: messages.HelloProof(signature=b"s" * messages.SIGNATURE_SIZE),
        messages.Probe: messages.Probe(seq=12345),
        messages.ProbeAck: messages.ProbeAck(seq=12345),
        messages.Close: messages.Close(code=messages.CloseCode.SHUTDOWN, reason="node stopping"),
    }


def best_us(fn, number: int) -> float:
    """Best of REPEAT runs of ``number`` calls, in µs per call."""
    return min(timeit.Timer(fn).repeat(repeat=REPEAT, number=number)) / number * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=20_000, help="calls per timed repeat")
    ap.add_argument("--quick", action="store_true", help="tiny run, to check it works")
    args = ap.parse_args()
    number = 200 if args.quick else args.number
    known = samples()
    print(f"wire codec, best of {REPEAT} x {number} calls, µs per call")
    print(f"{'type':<12} {'code':>5} {'bytes':>6} {'encode_frame':>13} {'decode_frame':>13}")
    missing = []
    for ftype, cls in sorted(registered_types().items()):
        msg = known.get(cls)
        if msg is None:
            missing.append(cls.__name__)
            continue
        raw = encode_frame(msg)
        assert decode_frame(raw) == msg, cls.__name__
        enc = best_us(lambda: encode_frame(msg), number)
        dec = best_us(lambda: decode_frame(raw), number)
        print(f"{cls.__name__:<12} {f'0x{ftype:02x}':>5} {len(raw):>6} {enc:>13.2f} {dec:>13.2f}")
    if missing:
        print(f"no sample for: {', '.join(missing)} (add one to samples())")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
