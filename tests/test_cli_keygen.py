"""``sporenet keygen``: creates 0600 keys, refuses to overwrite, refuses exposed keys, --show."""

import base64
import json
import os
import re
import stat

from click.testing import CliRunner

from sporenet.cli import cli
from sporenet.keyfile import load_key_file, write_key_file
from sporenet.protocols.identity import Identity, subnet_of

SEED = bytes(range(100, 132))


def run(*args, env=None):
    result = CliRunner().invoke(cli, ["keygen", *args], env=env)
    return result.exit_code, result.output


def test_creates_key_0600_and_prints_identity(tmp_path):
    path = tmp_path / "node.key"
    code, out = run("--key-file", str(path))
    assert code == 0, out
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    ident = load_key_file(path)
    assert f"wrote a new key to {path} (mode 0600)" in out
    assert ident.node_id.hex() in out and str(ident.address) in out
    assert base64.b64encode(ident.seed).decode() not in out


def test_default_path_is_under_xdg_config_home(tmp_path):
    code, out = run(env={"XDG_CONFIG_HOME": str(tmp_path), "SPORENET_KEY_FILE": None})
    assert code == 0, out
    assert (tmp_path / "sporenet" / "node.key").exists()


def test_key_file_from_environment(tmp_path):
    path = tmp_path / "env.key"
    code, _ = run(env={"SPORENET_KEY_FILE": str(path)})
    assert code == 0 and path.exists()


def test_refuses_to_overwrite(tmp_path):
    path = write_key_file(tmp_path / "node.key", Identity(SEED))
    before = path.read_bytes()
    code, out = run("--key-file", str(path))
    assert code == 1
    assert out.strip() == f"Error: {path} already exists; remove it first or choose another path"
    assert path.read_bytes() == before


def test_show_refuses_group_readable_file_with_chmod_hint(tmp_path):
    path = write_key_file(tmp_path / "node.key", Identity(SEED))
    os.chmod(path, 0o640)
    code, out = run("--show", "--key-file", str(path))
    assert code == 1
    assert len(out.strip().splitlines()) == 1
    assert f"{path} has mode 0640" in out and f"chmod 600 {path}" in out


def test_show_text(tmp_path):
    ident = Identity(SEED)
    path = write_key_file(tmp_path / "node.key", ident)
    code, out = run("--show", "--key-file", str(path))
    assert code == 0, out
    assert dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines()) == {
        "key file": str(path),
        "node id": ident.node_id.hex(),
        "public key": ident.public_key.hex(),
        "address": str(ident.address),
        "subnet": str(subnet_of(ident.public_key)),
    }


def test_show_json(tmp_path):
    ident = Identity(SEED)
    path = write_key_file(tmp_path / "node.key", ident)
    code, out = run("--show", "--json", "--key-file", str(path))
    assert code == 0
    assert json.loads(out) == {
        "key_file": str(path),
        "node_id": ident.node_id.hex(),
        "public_key": ident.public_key.hex(),
        "address": str(ident.address),
        "subnet": str(subnet_of(ident.public_key)),
    }
    assert SEED.hex() not in out and base64.b64encode(SEED).decode() not in out


def test_show_missing_file(tmp_path):
    code, out = run("--show", "--key-file", str(tmp_path / "nope.key"))
    assert code == 1 and "no key file at" in out and "sporenet keygen" in out


def test_create_json(tmp_path):
    path = tmp_path / "node.key"
    code, out = run("--json", "--key-file", str(path))
    assert code == 0
    assert json.loads(out)["node_id"] == load_key_file(path).node_id.hex()
