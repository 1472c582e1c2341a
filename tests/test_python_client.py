"""The Python API (``from sporenet import Client``) against real nodes on loopback:
send, receive with wait, reply and ping across two hops, typed results and errors."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sporenet import (ApiRequestError, Client, DeliveryFailed, Message, MessageTooLarge,
                      NodeUnreachable, PingFailed, PingResult, Sent)
from sporenet.api_client import MAX_API_MESSAGE, Explanation, NodeStatus, Peer, Route
from sporenet.local_mesh import LocalMesh, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    """a - b - c: a and c are two hops apart."""
    mesh = LocalMesh(tmp_path_factory.mktemp("line"), extra_args=("--probe-interval", "0.2"))
    try:
        a = mesh.start_node("a")
        b = mesh.start_node("b", peers=[a.endpoint])
        c = mesh.start_node("c", peers=[b.endpoint])
        A, C = Client(a.info["api"]), Client(c.info["api"])

        def routes_both_ways() -> bool:
            return (any(r.destination == c.node_id for r in A.routes(selected_only=True))
                    and any(r.destination == a.node_id for r in C.routes(selected_only=True)))
        wait_for(routes_both_ways, 60, "a and c to learn routes to each other")
        yield mesh, A, C
    finally:
        mesh.close()


def test_send_receive_with_wait_and_reply_across_two_hops(line):
    mesh, A, C = line
    a, c = mesh.nodes["a"], mesh.nodes["c"]
    got: list[Message] = []
    waiter = threading.Thread(target=lambda: got.extend(C.messages("greet", wait=20)))
    waiter.start()                      # blocks in messages() until the message is in
    sent = A.send(c.info["address"], b"hello over two hops", topic="greet")
    waiter.join(25)
    assert not waiter.is_alive()
    assert isinstance(sent, Sent) and sent.delivered and sent.msg_id
    (m,) = got
    assert m == Message(a.info["address"], "greet", b"hello over two hops", sent.msg_id, 0)
    assert m.text == "hello over two hops" and not m.is_reply

    answer = C.reply(m, "hello back")
    assert answer.delivered and answer.to == a.info["address"]
    back = A.receive("greet", timeout=20)
    assert back is not None and back.is_reply and back.reply_to == sent.msg_id
    assert back.src == c.info["address"] and back.data == b"hello back"


def test_binary_multi_chunk_message_by_node_id(line):
    mesh, A, C = line
    data = bytes(range(256)) * (MAX_API_MESSAGE // 256)   # 48 KiB, 41 chunks, not UTF-8
    sent = A.send(mesh.nodes["c"].node_id, data, topic="blob", deadline=20)
    assert sent.delivered
    m = C.receive("blob", timeout=10)
    assert m is not None and m.data == data and m.msg_id == sent.msg_id


def test_send_without_waiting_then_wait(line):
    mesh, A, C = line
    sent = A.send(mesh.nodes["c"].info["address"], b"later", topic="later", wait=False)
    assert sent.state == "pending"
    assert A.wait_sent(sent, timeout=15).delivered
    assert A.sent_state(sent.msg_id).state == "delivered"
    assert [m.data for m in C.messages("later", wait=10)] == [b"later"]


def test_messages_wait_returns_empty_after_the_wait(line):
    _, A, _ = line
    started = time.monotonic()
    assert A.messages("nothing-here", wait=0.3) == []
    assert 0.3 <= time.monotonic() - started < 5
    assert A.receive("nothing-here", timeout=0) is None


def test_ping_counts_the_hops(line):
    mesh, A, C = line
    res = A.ping(mesh.nodes["c"].node_id)
    assert isinstance(res, PingResult) and res.hops == 2 and res.rtt_ms > 0
    assert C.ping(mesh.nodes["a"].info["address"]).hops == 2


def test_node_views_are_typed(line):
    mesh, A, _ = line
    a, b, c = (mesh.nodes[n] for n in "abc")
    status = A.status()
    assert isinstance(status, NodeStatus)
    assert status.node_id == a.node_id and status.name == "a" and status.agents["overlay"] == "running"
    (peer,) = A.peers()
    assert isinstance(peer, Peer) and peer.node_id == b.node_id and peer.name == "b"
    routes = A.routes(selected_only=True)
    assert all(isinstance(r, Route) and r.selected for r in routes)
    to_c = next(r for r in routes if r.destination == c.node_id)
    assert to_c.next_hop == b.node_id and to_c.address == c.info["address"]
    why = A.explain(c.node_id)
    assert isinstance(why, Explanation) and why.destination == c.node_id
    assert why.selected is not None and why.selected.next_hop == b.node_id


def test_typed_errors_say_what_went_wrong(line):
    _, A, _ = line
    with pytest.raises(DeliveryFailed) as err:
        A.send("600::1", b"nobody there", deadline=0.5)
    assert err.value.reason == "deadline" and "not delivered: deadline" in str(err.value)
    with pytest.raises(PingFailed) as perr:
        A.ping("600::1", timeout=0.5)
    assert perr.value.reason in ("timeout", "unreachable") and perr.value.to == "600::1"
    with pytest.raises(ApiRequestError) as rerr:
        A.send("not-an-address", b"x")
    assert rerr.value.status == 400 and "neither an overlay address" in rerr.value.detail
    with pytest.raises(ApiRequestError) as rerr:
        A.allow("t", ["2001:db8::1"])
    assert rerr.value.status == 400 and "not an overlay address" in str(rerr.value)
    with pytest.raises(MessageTooLarge):
        A.send("600::1", b"x" * (MAX_API_MESSAGE + 1))


def test_no_node_is_node_unreachable():
    with socket.socket() as s:          # a port nothing listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(NodeUnreachable) as err:
            Client(f"127.0.0.1:{port}").status()
    assert "is `sporenet up` running" in str(err.value)


def test_the_example_runs():
    example = Path(__file__).resolve().parent.parent / "examples" / "python_client.py"
    out = subprocess.run([sys.executable, str(example)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[ask] answer from" in out.stdout and "over 2 hops" in out.stdout


def test_cli_replies_are_seen_by_the_client(line):
    mesh, A, C = line
    a, c = mesh.nodes["a"], mesh.nodes["c"]
    sent = A.send(c.node_id, b"question", topic="q")
    m = C.receive("q", timeout=10)
    assert m is not None and m.msg_id == sent.msg_id
    out = subprocess.run([sys.executable, "-m", "sporenet.cli", "send", "--api", c.info["api"],
                          "--to", m.src, "--topic", m.topic, "--reply-to", str(m.msg_id),
                          "answer"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run([sys.executable, "-m", "sporenet.cli", "recv", "--api", a.info["api"],
                          "--topic", "q", "--wait", "10"], capture_output=True, text=True,
                         timeout=60)
    assert f"[q] from {c.info['address']} (reply to {sent.msg_id}): answer" in out.stdout
