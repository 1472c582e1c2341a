"""Key files: a node's Ed25519 identity on disk (DESIGN.md §3 "Identity and addressing").

Format (TOML, so it is readable and can grow fields)::

    # sporenet identity key. Keep it secret: anyone holding it is this node.
    # node id: 3f1c...
    # address: 7e3:...
    format = "sporenet-ed25519-v1"
    seed = "<base64 of the 32-byte Ed25519 seed>"
    public_key = "<hex>"

Invariants:
- A key file is created with mode 0600, atomically (a private temp file in the same
  directory, fsync, then a no-clobber ``link``), and never overwrites an existing file.
- A key file that its group or others may read or write is refused on load.
- The seed never appears in a log, repr or error message: errors name the file and
  what is wrong with it, never its content.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
import tomllib
from pathlib import Path

from sporenet.protocols.errors import LocalProtocolError
from sporenet.protocols.identity import Identity

FORMAT = "sporenet-ed25519-v1"
_MAX_SIZE = 64 * 1024  # a key file is ~300 bytes; anything huge is not a key file


class KeyFileError(Exception):
    """A key file cannot be written or used. The message names the file, never the key."""


def default_key_file() -> Path:
    """``$XDG_CONFIG_HOME/sporenet/node.key``, or ``~/.config/sporenet/node.key``."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "sporenet" / "node.key"


def generate_identity() -> Identity:
    """A fresh identity from the OS CSPRNG."""
    return Identity(secrets.token_bytes(32))


def _render(identity: Identity) -> bytes:
    seed = base64.b64encode(identity.seed).decode("ascii")
    return (
        "# sporenet identity key. Keep it secret: anyone holding it is this node.\n"
        f"# node id: {identity.node_id.hex()}\n"
        f"# address: {identity.address}\n"
        f'format = "{FORMAT}"\n'
        f'seed = "{seed}"\n'
        f'public_key = "{identity.public_key.hex()}"\n'
    ).encode("ascii")


def write_key_file(path: str | os.PathLike[str], identity: Identity) -> Path:
    """Write ``identity`` to a new file at ``path`` with mode 0600; return the path.

    Refuses (``KeyFileError``) if anything already exists at ``path``. A missing
    parent directory is created with mode 0700.
    """
    path = Path(path)
    if os.path.lexists(path):
        raise KeyFileError(f"{path} already exists; remove it first or choose another path")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot create directory {path.parent}: {exc.strerror}") from None
    tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(6)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise KeyFileError(f"cannot create key file in {path.parent}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # exactly 0600 whatever the umask
            f.write(_render(identity))
            f.flush()
            os.fsync(f.fileno())
        _link_no_clobber(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def _link_no_clobber(tmp: Path, path: Path) -> None:
    # link() fails with EEXIST instead of replacing, unlike rename(): a racing writer
    # cannot have its key silently replaced by ours.
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; remove it first or choose another path") from None
    except OSError as exc:
        raise KeyFileError(f"cannot write key file {path}: {exc.strerror}") from None


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the file itself is synced
    finally:
        os.close(fd)


def load_key_file(path: str | os.PathLike[str]) -> Identity:
    """Read the identity in ``path``.

    Raises ``KeyFileError`` if the file is missing, unreadable, not a regular file,
    readable or writable by group or others, or malformed.
    """
    path = Path(path)
    data = _read_private(path)
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        raise KeyFileError(f"{path} is not a sporenet key file (not valid TOML)") from None
    if doc.get("format") != FORMAT:
        raise KeyFileError(f'{path} is not a sporenet key file (expected format = "{FORMAT}")')
    seed = _decode_seed(path, doc.get("seed"))
    try:
        identity = Identity(seed)
    except LocalProtocolError:
        raise KeyFileError(f"{path}: seed must be 32 bytes") from None
    public_key = doc.get("public_key")
    if public_key is not None and public_key != identity.public_key.hex():
        raise KeyFileError(f"{path} is corrupt: its public_key does not match its seed")
    return identity


def _read_private(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(f"no key file at {path}; "
                           f"create one with `sporenet keygen --key-file {path}`") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)  # the file we opened, not whatever is at path now
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"{path} has mode {mode:04o}: group or others may access it; "
                f"run `chmod 600 {path}` (and check that nobody copied the key)")
        try:
            return os.read(fd, _MAX_SIZE)
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _decode_seed(path: Path, value: object) -> bytes:
    if not isinstance(value, str):
        raise KeyFileError(f"{path}: missing or non-string seed")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{path}: seed is not valid base64") from None
