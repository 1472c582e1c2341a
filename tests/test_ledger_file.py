"""Ledgers: the conformance every backend passes (memory and file), then the file log's
durability and its refusal of tampered or truncated logs."""

import hashlib
import shutil
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sporenet.ledger_file import MAGIC, FileLedger, LedgerError
from sporenet.protocols.contracts import contract as ct
from sporenet.protocols import wire
from sporenet.protocols.errors import DecodeError, LocalProtocolError
from sporenet.protocols.identity import Identity
from sporenet.protocols.contracts.ledger import ContractOffer, ContractRequest, MemoryLedger

OWNERS = [Identity(bytes([i + 1]) * 32) for i in range(3)]
A, B = Identity(b"\x41" * 32), Identity(b"\x42" * 32)


def signed(c, *owners):
    for o in owners or OWNERS[:2]:
        c = ct.sign(c, o)
    return c


@pytest.fixture
def chain():
    """Versions 1-3 of network lab, each signed by two of three owners."""
    v1 = ct.new_contract("lab", [o.public_key for o in OWNERS], 2, rules=[("*", "*")])
    v1 = signed(ct.add_member(v1, A.public_key, "alice", ["app"]))
    v2 = signed(ct.add_member(v1, B.public_key, "bob", ["db"]))
    v3 = signed(ct.remove_member(v2, B.public_key), OWNERS[1], OWNERS[2])
    return [v1, v2, v3]


@pytest.fixture(params=["memory", "file"])
def ledger(request, tmp_path):
    return MemoryLedger() if request.param == "memory" else FileLedger(tmp_path / "ledger")


# -- conformance: every backend ---------------------------------------------------------


def test_empty(ledger):
    assert ledger.latest("lab") is None and ledger.versions("lab") == [] and ledger.get("lab", 1) is None


def test_append_in_order(ledger, chain):
    for c in chain:
        assert ledger.append(c) is True
    assert ledger.versions("lab") == [1, 2, 3]
    assert ledger.latest("lab") == chain[2] and ledger.get("lab", 2) == chain[1]
    assert ledger.get("lab", 4) is None and ledger.latest("other") is None


def test_append_is_idempotent_for_the_same_body(ledger, chain):
    ledger.append(chain[0])
    assert ledger.append(chain[0]) is False
    assert ledger.append(ct.sign(chain[0], OWNERS[2])) is False  # more signatures, same body
    assert ledger.versions("lab") == [1]


def test_genesis_first(ledger, chain):
    with pytest.raises(ct.VersionNotNext, match="append version 1"):
        ledger.append(chain[1])


def test_gaps_forks_and_bad_signatures_refused(ledger, chain):
    ledger.append(chain[0])
    with pytest.raises(ct.VersionNotNext, match="skips"):
        ledger.append(chain[2])
    with pytest.raises(ct.ThresholdNotMet):
        ledger.append(ct.sign(ct.bump_version(chain[0]), OWNERS[0]))
    ledger.append(chain[1])
    fork = signed(ct.set_rules(ct.bump_version(chain[0]), []))
    with pytest.raises(ct.VersionNotNext, match="fork"):
        ledger.append(fork)
    assert ledger.versions("lab") == [1, 2]


def test_owner_takeover_refused(ledger, chain):
    ledger.append(chain[0])
    mallory = Identity(b"\x66" * 32)
    takeover = ct.sign(ct.set_owners(chain[0], [mallory.public_key], 1), mallory)
    with pytest.raises(ct.ThresholdNotMet, match="previous version's owners"):
        ledger.append(takeover)


# -- the file log -----------------------------------------------------------------------


def write_chain(tmp_path, chain):
    led = FileLedger(tmp_path / "ledger")
    for c in chain:
        led.append(c)
    return led.path_of("lab")


def test_survives_reopening(tmp_path, chain):
    path = write_chain(tmp_path, chain)
    again = FileLedger(tmp_path / "ledger")  # a new process would see exactly this
    assert again.versions("lab") == [1, 2, 3] and again.latest("lab") == chain[2]
    assert again.networks() == ["lab"] and path.name == "lab.ledger"


def test_file_layout_is_a_record_hash_chain(tmp_path, chain):
    data = write_chain(tmp_path, chain[:2]).read_bytes()
    assert data.startswith(MAGIC)
    pos, prev = len(MAGIC), bytes(32)
    for c in chain[:2]:
        length, rec_prev = struct.unpack_from("!I32s", data, pos)
        end = pos + 36 + length
        assert rec_prev == prev and data[pos + 36:end] == ct.encode(c)
        prev, pos = hashlib.blake2b(data[pos:end], digest_size=32).digest(), end
    assert pos == len(data)


def test_two_writers_see_each_other(tmp_path, chain):
    one, two = FileLedger(tmp_path / "l"), FileLedger(tmp_path / "l")
    one.append(chain[0])
    assert two.versions("lab") == [1]
    two.append(chain[1])
    one.append(chain[2])  # one's cache is stale: it must re-read under the lock
    assert FileLedger(tmp_path / "l").versions("lab") == [1, 2, 3]


def test_every_flipped_byte_is_refused(tmp_path, chain):
    path = write_chain(tmp_path, chain[:2])
    good = path.read_bytes()
    for i in range(len(good)):
        path.write_bytes(good[:i] + bytes([good[i] ^ 0x01]) + good[i + 1:])
        with pytest.raises(LedgerError, match=str(path)):
            FileLedger(path.parent).versions("lab")


def test_tampered_record_is_named(tmp_path, chain):
    path = write_chain(tmp_path, chain)
    data = bytearray(path.read_bytes())
    second = len(MAGIC) + 36 + len(ct.encode(chain[0]))
    data[second + 36 + 60] ^= 0xFF  # inside record 2's contract
    path.write_bytes(bytes(data))
    with pytest.raises(LedgerError, match=rf"record 2 \(at byte {second}\).*restore"):
        FileLedger(path.parent).latest("lab")


def test_dropped_record_breaks_the_chain(tmp_path, chain):
    path = write_chain(tmp_path, chain)
    data = path.read_bytes()
    first = len(MAGIC) + 36 + len(ct.encode(chain[0]))
    path.write_bytes(data[:len(MAGIC)] + data[first:])
    with pytest.raises(LedgerError, match="record 1 .*chain broken"):
        FileLedger(path.parent).latest("lab")


def test_truncated_log_is_refused_with_the_way_out(tmp_path, chain):
    path = write_chain(tmp_path, chain[:2])
    data = path.read_bytes()
    end_of_first = len(MAGIC) + 36 + len(ct.encode(chain[0]))
    for cut in (len(data) - 1, end_of_first + 10):
        path.write_bytes(data[:cut])
        with pytest.raises(LedgerError, match=rf"record 2 .*truncated.*truncate -s {end_of_first}"):
            FileLedger(path.parent).versions("lab")
    path.write_bytes(data[:end_of_first])  # what the message advises
    assert FileLedger(path.parent).versions("lab") == [1]


def test_foreign_files_refused(tmp_path, chain):
    path = write_chain(tmp_path, chain[:1])
    shutil.copy(path, path.with_name("other.ledger"))
    with pytest.raises(LedgerError, match="holds network lab, not other"):
        FileLedger(path.parent).latest("other")
    path.write_bytes(b"hello")
    with pytest.raises(LedgerError, match="not a sporenet ledger"):
        FileLedger(path.parent).latest("lab")


def test_appending_to_a_tampered_log_is_refused(tmp_path, chain):
    path = write_chain(tmp_path, chain[:1])
    cut = path.read_bytes()[:-1]
    path.write_bytes(cut)
    with pytest.raises(LedgerError, match="truncated"):
        FileLedger(path.parent).append(chain[1])
    assert path.read_bytes() == cut  # nothing was written after the bad record


# -- gossip frames (0x50-0x5f) ------------------------------------------------------------


def test_gossip_frames_registered_in_contract_range():
    reg = wire.registered_types()
    assert reg[0x50] is ContractOffer and reg[0x51] is ContractRequest


def test_contract_request_golden_and_roundtrip():
    frame = bytes.fromhex("0151" + "03" + b"lab".hex() + "0000000000000002")
    assert wire.encode_frame(ContractRequest("lab", 2)) == frame
    assert wire.decode_frame(frame) == ContractRequest("lab", 2)
    assert wire.decode_frame(wire.encode_frame(ContractRequest("lab"))).version == ContractRequest.LATEST
    with pytest.raises(DecodeError):
        wire.decode_frame(bytes.fromhex("0151" + "03" + b"../".hex() + "00" * 8))
    with pytest.raises(LocalProtocolError):
        ContractRequest("a b")


def test_contract_offer_carries_the_signed_form(chain):
    frame = wire.encode_frame(ContractOffer(chain[1]))
    assert frame == bytes([wire.VERSION, 0x50]) + ct.encode(chain[1])
    assert wire.decode_frame(frame) == ContractOffer(chain[1])


@settings(max_examples=200)
@given(st.sampled_from([0x50, 0x51]), st.binary(max_size=300))
def test_gossip_decoders_raise_only_decode_error(ftype, body):
    try:
        wire.decode_frame(bytes([wire.VERSION, ftype]) + body)
    except DecodeError:
        pass
