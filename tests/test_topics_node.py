"""Topic rules on real nodes: from the config, at runtime over HTTP and the CLI.

A restricted topic refuses a message from a sender it does not list (the sender's
message fails, the receiver counts the refused chunks and names the sender) and
accepts one from a listed sender."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

import pytest

from sporenet import Client, DeliveryFailed
from sporenet.keyfile import generate_identity, write_key_file
from sporenet.local_mesh import LocalMesh, wait_for

pytestmark = pytest.mark.slow


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sporenet.cli", *args], capture_output=True,
                          text=True, timeout=60)


def identity_for(mesh: LocalMesh, name: str):
    """Make the key ``LocalMesh`` will use for node ``name`` (so a config can name it)."""
    ident = generate_identity()
    (mesh.base_dir / name).mkdir(parents=True, exist_ok=True)
    write_key_file(mesh.base_dir / name / "node.key", ident)
    return ident


def has_route(client: Client, node_id: str) -> bool:
    return any(r.destination == node_id for r in client.routes(selected_only=True))


@pytest.fixture
def star(tmp_path):
    """Receiver ``r`` with topic rules in its config; ``a`` (not allowed on "ops") and
    ``b`` (allowed, by node id) link to it."""
    mesh = LocalMesh(tmp_path, extra_args=("--probe-interval", "0.2"))
    try:
        b_id = identity_for(mesh, "b")
        config = tmp_path / "r.toml"
        config.write_text(f'[topics]\nops = ["{b_id.node_id.hex()}"]\nclosed = []\n'
                          'chat = ["*"]\n')
        r = mesh.start_node("r", extra_args=("--config", str(config)))
        a = mesh.start_node("a", peers=[r.endpoint])
        b = mesh.start_node("b", peers=[r.endpoint])
        A, B, R = (Client(n.info["api"]) for n in (a, b, r))
        wait_for(lambda: has_route(A, r.node_id) and has_route(B, r.node_id)
                 and has_route(R, a.node_id) and has_route(R, b.node_id), 30,
                 "a, b and r to learn routes to each other")
        yield mesh, A, B, R
    finally:
        mesh.close()


def test_config_rules_refuse_the_unlisted_sender_and_accept_the_listed(star):
    mesh, A, B, R = star
    a, b, r = (mesh.nodes[n] for n in "abr")
    ops = R.topics().get("ops")
    assert ops is not None and ops.senders == (b.info["address"],) and ops.refused_chunks == 0

    with pytest.raises(DeliveryFailed) as err:
        A.send(r.info["address"], b"let me in", topic="ops", deadline=1.0)
    assert err.value.reason == "deadline"
    topics = R.topics()
    ops = topics.get("ops")
    assert ops.refused_chunks >= 1 and ops.last_refused_from == a.info["address"]
    assert topics.refused_chunks >= ops.refused_chunks

    assert B.send(r.node_id, b"from b", topic="ops").delivered
    assert A.send(r.node_id, b"chat is open", topic="chat").delivered
    assert A.send(r.node_id, b"no rule: default accepts", topic="other").delivered
    got = {(m.src, m.topic, m.data) for m in R.messages()}   # delivered = in r's inbox
    assert got == {(b.info["address"], "ops", b"from b"), (a.info["address"], "chat", b"chat is open"),
                   (a.info["address"], "other", b"no rule: default accepts")}

    with pytest.raises(DeliveryFailed):
        B.send(r.node_id, b"closed to all", topic="closed", deadline=1.0)
    assert R.topics().get("closed").last_refused_from == b.info["address"]


def test_rules_change_at_runtime_through_the_cli(star):
    mesh, A, B, R = star
    a, b, r = (mesh.nodes[n] for n in "abr")
    api = ("--api", r.info["api"])

    out = cli("topics", "allow", "ops", a.node_id, *api)      # now only a, by node id
    assert out.returncode == 0, out.stderr
    assert "ops" in out.stdout and a.info["address"] in out.stdout
    assert A.send(r.node_id, b"a now", topic="ops").delivered
    with pytest.raises(DeliveryFailed):
        B.send(r.node_id, b"b no more", topic="ops", deadline=1.0)

    out = cli("topics", "--json", *api)
    rules = {t["topic"]: t for t in json.loads(out.stdout)["topics"]}
    assert rules["ops"]["senders"] == [a.info["address"]]
    assert rules["ops"]["last_refused_from"] == b.info["address"]
    assert rules["closed"]["senders"] == [] and rules["chat"]["senders"] is None

    network = str(ipaddress.IPv6Network(a.info["address"] + "/64", strict=False))  # a's /64
    assert cli("topics", "allow", "closed", network, *api).returncode == 0
    assert A.send(r.node_id, b"via the /64", topic="closed").delivered

    assert cli("topics", "close", "chat", *api).returncode == 0
    with pytest.raises(DeliveryFailed):
        A.send(r.node_id, b"chat closed", topic="chat", deadline=1.0)
    out = cli("topics", "allow", "chat", "--anyone", "--json", *api)
    assert {t["topic"]: t["senders"] for t in json.loads(out.stdout)["topics"]}["chat"] is None
    assert B.send(r.node_id, b"chat open again", topic="chat").delivered

    out = cli("topics", "reset", "ops", *api)
    assert out.returncode == 0 and R.topics().get("ops").rule is False  # refusals keep a row
    assert B.send(r.node_id, b"ops follows the default", topic="ops").delivered

    bad = cli("topics", "allow", "ops", "nope", *api)
    assert bad.returncode != 0 and '[0]: "nope" is neither an IPv6 address' in bad.stderr
    bad = cli("topics", "allow", "ops", *api)
    assert bad.returncode != 0 and "give SENDER... or --anyone" in bad.stderr


def test_unknown_topics_refuse_only_opens_the_listed_topics(tmp_path):
    config = tmp_path / "strict.toml"
    config.write_text('unknown_topics = "refuse"\n[topics]\nopen = "*"\n')
    with LocalMesh(tmp_path, extra_args=("--probe-interval", "0.2")) as mesh:
        r = mesh.start_node("r", extra_args=("--config", str(config)))
        a = mesh.start_node("a", peers=[r.endpoint])
        A, R = Client(a.info["api"]), Client(r.info["api"])
        wait_for(lambda: has_route(A, r.node_id) and has_route(R, a.node_id), 30,
                 "a and r to learn routes to each other")
        assert R.topics().accept_unknown_topics is False
        assert A.send(r.node_id, b"listed", topic="open").delivered
        with pytest.raises(DeliveryFailed):
            A.send(r.node_id, b"unlisted", topic="random", deadline=1.0)
        row = R.topics().get("random")
        assert row.rule is False and row.senders == () and row.refused_chunks >= 1
        out = cli("topics", "--api", r.info["api"])
        assert "topics without a rule: refused" in out.stdout and "random" in out.stdout
        assert [m.data for m in R.messages(wait=5)] == [b"listed"]
