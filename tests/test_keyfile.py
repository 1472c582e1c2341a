"""Key files: created 0600 atomically, never overwritten, refused when others may read them."""

import base64
import os
import stat

import pytest

from sporenet.keyfile import (FORMAT, KeyFileError, default_key_file, generate_identity,
                              load_key_file, write_key_file)
from sporenet.protocols.identity import Identity

SEED = bytes(range(32))


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_roundtrip_and_mode_0600(tmp_path):
    ident = Identity(SEED)
    path = write_key_file(tmp_path / "node.key", ident)
    assert mode_of(path) == 0o600
    loaded = load_key_file(path)
    assert loaded.node_id == ident.node_id and loaded.seed == SEED
    assert os.listdir(tmp_path) == ["node.key"]  # no temp file left behind


def test_mode_is_0600_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        path = write_key_file(tmp_path / "k", Identity(SEED))
    finally:
        os.umask(old)
    assert mode_of(path) == 0o600


def test_file_names_node_id_and_address_in_comments(tmp_path):
    ident = Identity(SEED)
    text = write_key_file(tmp_path / "k", ident).read_text()
    assert f"# node id: {ident.node_id.hex()}" in text
    assert f"# address: {ident.address}" in text
    assert f'format = "{FORMAT}"' in text


def test_refuses_to_overwrite(tmp_path):
    path = tmp_path / "node.key"
    path.write_text("precious")
    with pytest.raises(KeyFileError, match="already exists; remove it first"):
        write_key_file(path, generate_identity())
    assert path.read_text() == "precious"


def test_refuses_to_overwrite_a_dangling_symlink(tmp_path):
    link = tmp_path / "node.key"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(KeyFileError, match="already exists"):
        write_key_file(link, generate_identity())
    assert not (tmp_path / "elsewhere").exists()


def test_creates_missing_parent_directory_private(tmp_path):
    path = write_key_file(tmp_path / "conf" / "sporenet" / "node.key", generate_identity())
    assert mode_of(path.parent) == 0o700


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644, 0o660])
def test_refuses_file_open_to_group_or_others(tmp_path, mode):
    path = write_key_file(tmp_path / "node.key", Identity(SEED))
    os.chmod(path, mode)
    with pytest.raises(KeyFileError) as err:
        load_key_file(path)
    msg = str(err.value)
    assert str(path) in msg and f"{mode:04o}" in msg and f"chmod 600 {path}" in msg


def test_0400_is_accepted(tmp_path):
    path = write_key_file(tmp_path / "node.key", Identity(SEED))
    os.chmod(path, 0o400)
    assert load_key_file(path).seed == SEED


def test_missing_file_suggests_keygen(tmp_path):
    with pytest.raises(KeyFileError, match="no key file at .*sporenet keygen"):
        load_key_file(tmp_path / "nope.key")


def test_directory_is_not_a_key_file(tmp_path):
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_key_file(d)


def write_raw(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


SECRET_B64 = base64.b64encode(b"S" * 31).decode()  # wrong length, must not leak


@pytest.mark.parametrize("text, expected", [
    ("not toml = = =", "not valid TOML"),
    ('format = "other-v9"\nseed = "AAAA"', "not a sporenet key file"),
    (f'format = "{FORMAT}"\n', "missing or non-string seed"),
    (f'format = "{FORMAT}"\nseed = "!!{SECRET_B64}"', "not valid base64"),
    (f'format = "{FORMAT}"\nseed = "{SECRET_B64}"', "seed must be 32 bytes"),
    (f'format = "{FORMAT}"\nseed = "{base64.b64encode(SEED).decode()}"\npublic_key = "00"',
     "public_key does not match"),
])
def test_malformed_files_get_clear_errors_without_the_key(tmp_path, text, expected):
    path = write_raw(tmp_path / "bad.key", text)
    with pytest.raises(KeyFileError, match=expected) as err:
        load_key_file(path)
    assert SECRET_B64 not in str(err.value) and str(path) in str(err.value)
    assert err.value.__cause__ is None
    assert err.value.__context__ is None or err.value.__suppress_context__


def test_secret_not_in_repr_of_loaded_identity(tmp_path):
    path = write_key_file(tmp_path / "k", Identity(SEED))
    ident = load_key_file(path)
    assert base64.b64encode(SEED).decode() not in repr(ident)
    assert SEED.hex() not in repr(ident)


def test_generate_identity_is_random():
    assert generate_identity().node_id != generate_identity().node_id


def test_default_key_file_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_key_file() == tmp_path / "sporenet" / "node.key"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert str(default_key_file()).endswith(".config/sporenet/node.key")
