"""The default ledger: one append-only, hash-chained log file per network (docs/contracts.md).

File ``<directory>/<network id>.ledger``::

    "sporenet-ledger-v1\\n" | record*
    record = length:u32 | previous_record_hash[32] | signed contract (length bytes)

``previous_record_hash`` is BLAKE2b-256 of the whole previous record (zeros for the
first), so records cannot be dropped, reordered or edited without breaking the chain;
each contract is itself signed by its owners and chained to the version before.

Invariants:
- The whole file is re-verified when first read and whenever its size changed: record
  chain, decoding, network id, versions 1, 2, 3..., owner signatures. A file that fails
  is refused as a whole (``LedgerError`` naming the file, the record and what to do):
  we never guess which part of a tampered log to trust.
- An append holds an exclusive ``flock`` on the file, re-reads it if another process
  appended, writes one record with ``O_APPEND``, then fsyncs the file (and the
  directory when the file is new) before it returns. A failed write is cut off again,
  so a crash can leave at most one truncated record at the end, which load reports.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
from pathlib import Path

from sporenet.protocols.contracts.contract import (MAX_CONTRACT_SIZE, NAME_PATTERN, Contract, ContractError,
                                         decode, encode)
from sporenet.protocols.contracts.fork import ForkEvidence, decode_evidence, encode_evidence
from sporenet.protocols.errors import DecodeError, LocalProtocolError
from sporenet.protocols.contracts.ledger import Ledger, check_append

MAGIC = b"sporenet-ledger-v1\n"
SUFFIX = ".ledger"
FORKS_SUFFIX = ".forks"   # <directory>/<network>.forks/v<version>-<fork id>.fork
_HEADER = struct.Struct("!I32s")
_NO_RECORD = bytes(32)


class LedgerError(Exception):
    """A ledger file cannot be read, trusted or written. The message names the file."""


def _record_hash(record: bytes) -> bytes:
    return hashlib.blake2b(record, digest_size=32).digest()


def parse_log(path: Path, data: bytes) -> tuple[list[Contract], bytes]:
    """Verify a whole log; return its versions in order and the last record's hash."""
    network = path.name[: -len(SUFFIX)]
    if not data.startswith(MAGIC):
        raise LedgerError(f"{path} is not a sporenet ledger (bad header); "
                          "move it away: the ledger directory holds only ledger files")
    chain: list[Contract] = []
    pos, prev, number = len(MAGIC), _NO_RECORD, 0
    while pos < len(data):
        number += 1
        where = f"{path}: record {number} (at byte {pos})"
        contract, end = _read_record(path, data, pos, prev, where)
        if contract.network != network:
            raise LedgerError(f"{where} holds network {contract.network}, not {network}; "
                              "the file was renamed or tampered with")
        try:
            held = chain[contract.version - 1] if contract.version <= len(chain) else None
            if not check_append(chain[-1] if chain else None, contract, held):
                raise ContractError(f"version {contract.version} appears twice")
        except ContractError as exc:
            raise LedgerError(f"{where} fails verification: {exc}. The file was tampered with; "
                              "restore it from a backup or another node") from None
        chain.append(contract)
        prev, pos = _record_hash(data[pos:end]), end
    return chain, prev


def _read_record(path: Path, data: bytes, pos: int, prev: bytes, where: str) -> tuple[Contract, int]:
    """One record's contract and end offset, checking its length and its link to ``prev``."""
    if len(data) - pos < _HEADER.size:
        raise _truncated(where, path, pos)
    length, rec_prev = _HEADER.unpack_from(data, pos)
    end = pos + _HEADER.size + length
    if length > MAX_CONTRACT_SIZE:
        raise LedgerError(f"{where} declares {length} bytes, more than a contract may hold: "
                          "the file is corrupt or was tampered with; restore it from a "
                          "backup or another node")
    if end > len(data):
        raise _truncated(where, path, pos)
    if rec_prev != prev:
        raise LedgerError(f"{where} does not follow the record before it (record hash chain "
                          "broken): records were edited, removed or reordered; restore the "
                          "file from a backup or another node")
    try:
        return decode(data[pos + _HEADER.size : end]), end
    except DecodeError as exc:
        raise LedgerError(f"{where} does not decode ({exc}): the file was tampered with; "
                          "restore it from a backup or another node") from None


def _truncated(where: str, path: Path, pos: int) -> LedgerError:
    return LedgerError(f"{where} is truncated: the last append was interrupted or the file was "
                       f"cut. The records before it are intact; if you trust this machine, keep "
                       f"them with `truncate -s {pos} {path}`, else restore from a backup")


class FileLedger(Ledger):
    """A directory of ledger files. Driven by the ``Ledger`` methods; safe across processes."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        # network -> (file size when verified, versions, last record hash)
        self._cache: dict[str, tuple[int, list[Contract], bytes]] = {}

    def path_of(self, network: str) -> Path:
        if not isinstance(network, str) or not NAME_PATTERN.match(network):
            raise LocalProtocolError(f"{network!r} is not a network id")
        return self.directory / f"{network}{SUFFIX}"

    def networks(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.name[: -len(SUFFIX)] for p in self.directory.glob(f"*{SUFFIX}"))

    def _chain(self, network: str, fd: int | None = None) -> tuple[list[Contract], bytes]:
        path = self.path_of(network)
        try:
            size = os.fstat(fd).st_size if fd is not None else path.stat().st_size
        except FileNotFoundError:
            return [], _NO_RECORD
        except OSError as exc:
            raise LedgerError(f"cannot read ledger {path}: {exc.strerror}") from None
        cached = self._cache.get(network)
        if cached and cached[0] == size:  # append-only: same size, same records
            return cached[1], cached[2]
        data = self._read(path, fd)
        if not data:
            return [], _NO_RECORD
        chain, last = parse_log(path, data)
        self._cache[network] = (len(data), chain, last)
        return chain, last

    @staticmethod
    def _read(path: Path, fd: int | None) -> bytes:
        try:
            if fd is not None:
                return os.pread(fd, os.fstat(fd).st_size, 0)
            return path.read_bytes()
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise LedgerError(f"cannot read ledger {path}: {exc.strerror}") from None

    def latest(self, network: str) -> Contract | None:
        chain, _ = self._chain(network)
        return chain[-1] if chain else None

    def versions(self, network: str) -> list[int]:
        return [c.version for c in self._chain(network)[0]]

    def get(self, network: str, version: int) -> Contract | None:
        chain, _ = self._chain(network)
        return chain[version - 1] if 0 < version <= len(chain) else None

    def append(self, contract: Contract) -> bool:
        path = self.path_of(contract.network)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise LedgerError(f"cannot open ledger {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one writer at a time, across processes
            chain, last = self._chain(contract.network, fd)
            held = chain[contract.version - 1] if contract.version <= len(chain) else None
            if not check_append(chain[-1] if chain else None, contract, held):
                return False
            body = encode(contract)
            record = _HEADER.pack(len(body), last) + body
            size = os.fstat(fd).st_size
            self._write(fd, path, (MAGIC if size == 0 else b"") + record, size)
            if size == 0:
                _fsync_dir(self.directory)
            new_size = size + (len(MAGIC) if size == 0 else 0) + len(record)
            self._cache[contract.network] = (new_size, chain + [contract], _record_hash(record))
            return True
        finally:
            os.close(fd)  # also releases the flock

    @staticmethod
    def _write(fd: int, path: Path, data: bytes, size: int) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, size)  # leave the log as it was, not half-written
            except OSError:
                pass  # load will report the truncated record and how to cut it off
            raise LedgerError(f"cannot append to ledger {path}: {exc.strerror}") from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the file itself is synced
    finally:
        os.close(fd)


# -- fork evidence, kept next to the ledger ---------------------------------------------


def save_fork(directory: str | os.PathLike[str], ev: ForkEvidence) -> Path:
    """Store fork evidence (both signed versions, ``contracts.fork.encode_evidence``) as
    ``<directory>/<network>.forks/v<version>-<fork id[:16]>.fork``, atomically and
    fsync'd; an existing file of the same fork is kept. Returns the path."""
    folder = Path(directory) / f"{ev.network}{FORKS_SUFFIX}"
    path = folder / f"v{ev.version}-{ev.id.hex()[:16]}.fork"
    if path.exists():
        return path
    tmp = folder / f".{path.name}.tmp-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(encode_evidence(ev))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise LedgerError(f"cannot store fork evidence in {folder}: {exc.strerror}") from None
    return path


def load_forks(directory: str | os.PathLike[str]) -> list[tuple[Path, ForkEvidence]]:
    """Every fork evidence file under ``directory`` (a ledger directory, or a
    ``<network>.forks`` folder), decoded; ``LedgerError`` names a file that is not."""
    root = Path(directory)
    files = sorted(root.glob("*.fork")) + sorted(root.glob(f"*{FORKS_SUFFIX}/*.fork"))
    out = []
    for path in files:
        try:
            out.append((path, decode_evidence(path.read_bytes())))
        except OSError as exc:
            raise LedgerError(f"cannot read fork evidence {path}: {exc.strerror}") from None
        except DecodeError as exc:
            raise LedgerError(f"{path} is not fork evidence ({exc}); move it away") from None
    return out
