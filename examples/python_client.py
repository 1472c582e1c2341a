"""The Python API of a node (``from sporenet import Client``): an echo service and its client.

    python examples/python_client.py                       # demo: 3 local nodes, all below
    python examples/python_client.py --api HOST:PORT serve [--topic echo]
    python examples/python_client.py --api HOST:PORT ask DESTINATION TEXT [--topic echo]

``serve`` answers every message on the topic with the same bytes (a reply, so the
asker can match it); ``ask`` sends TEXT, waits for the answer and pings the server.
DESTINATION is an overlay address or a node id. ``--api`` defaults to
``$SPORENET_API``, else 127.0.0.1:8990. See docs/messages.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

from sporenet import ApiClientError, Client, DeliveryFailed


def serve(node: Client, topic: str, stop: threading.Event | None = None) -> None:
    """Echo every message on ``topic`` back to its sender, until ``stop`` is set."""
    while stop is None or not stop.is_set():
        for m in node.messages(topic, wait=1.0):
            print(f"[serve] {m.src} asked {m.text!r}; echoing")
            try:
                node.reply(m, m.data)
            except DeliveryFailed as e:          # the asker went away, or refuses us
                print(f"[serve] could not answer: {e}")


def ask(node: Client, destination: str, text: str, topic: str) -> int:
    sent = node.send(destination, text, topic=topic, deadline=10.0)   # waits for the ack
    print(f"[ask] message {sent.msg_id} delivered")
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        for m in node.messages(topic, wait=deadline - time.monotonic()):
            if m.reply_to == sent.msg_id:
                print(f"[ask] answer from {m.src}: {m.text!r}")
                pong = node.ping(destination)
                print(f"[ask] ping: {pong.rtt_ms:.2f} ms over {pong.hops} hops")
                return 0
    print("[ask] no answer within 10 s")
    return 1


def demo() -> int:
    """Three nodes in a line on loopback; the server on one end, the asker on the other."""
    from sporenet.local_mesh import LocalMesh, wait_for

    with tempfile.TemporaryDirectory(prefix="sn-client-") as tmp, LocalMesh(Path(tmp)) as mesh:
        a = mesh.start_node("a")
        b = mesh.start_node("b", peers=[a.endpoint])
        c = mesh.start_node("c", peers=[b.endpoint])
        asker, server = Client(a.info["api"]), Client(c.info["api"])
        wait_for(lambda: any(r.destination == c.node_id for r in asker.routes(selected_only=True))
                 and any(r.destination == a.node_id for r in server.routes(selected_only=True)),
                 60, "routes between the ends of the line")
        # Only the asker may use the echo topic on the server.
        server.allow("echo", [a.info["address"]])
        stop = threading.Event()
        worker = threading.Thread(target=serve, args=(server, "echo", stop), daemon=True)
        worker.start()
        try:
            status = ask(asker, c.node_id, "hello, echo", "echo")
        finally:
            stop.set()
            worker.join(5)
        rule = server.topics().get("echo")
        print(f"[demo] server's echo topic accepts {rule.senders}; refused {rule.refused_chunks}")
        return status


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--api", default=None, help="HOST:PORT of the node's API")
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("serve")
    s.add_argument("--topic", default="echo")
    q = sub.add_parser("ask")
    q.add_argument("destination")
    q.add_argument("text")
    q.add_argument("--topic", default="echo")
    args = p.parse_args()
    try:
        if args.cmd == "serve":
            serve(Client(args.api), args.topic)
            return 0
        if args.cmd == "ask":
            return ask(Client(args.api), args.destination, args.text, args.topic)
        return demo()
    except ApiClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
