"""The node bus: codec, inproc and ipc roundtrips (across real processes), tap."""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import types
import typing
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sporenet.protocols import notices
from sporenet.protocols.errors import DecodeError, LocalProtocolError
from sporenet.protocols.notices import LinkMeasured, PeerDown, PeerUp
from sporenet.transports.bus import Bus, BusError, BusNotRunning, load_endpoints
from sporenet.transports.bus_codec import RawNotice, decode_notice, encode_notice

DEADLINE = 10.0


@pytest.fixture
def run_dir():
    d = tempfile.mkdtemp(prefix="sn-bus-", dir="/tmp")  # short: ipc paths are <= 107 bytes
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def bus(run_dir):
    b = Bus(run_dir).start()
    yield b
    b.stop()


def sample(hint):
    """A value of the annotated type (enough for every plain-data notice field)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return sample(next(a for a in args if a is not type(None)))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return (sample(args[0]),)
        return tuple(sample(a) for a in args)
    if origin is list:
        return (sample(args[0]),)  # msgpack arrays decode as tuples
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        return {"k": 1}
    return {bytes: b"\x00\x01\xfe", str: "sé", int: 7, float: 1.5, bool: True}[hint]


def every_notice():
    for topic in notices.notice_topics():
        cls = notices.notice_class(topic)
        hints = typing.get_type_hints(cls)
        yield cls(**{f.name: sample(hints[f.name]) for f in dataclasses.fields(cls)})


@pytest.mark.parametrize("notice", list(every_notice()), ids=lambda n: type(n).TOPIC)
def test_codec_roundtrip_every_notice_type(notice):
    topic, payload = encode_notice(notice)
    assert topic == type(notice).TOPIC.encode()
    assert decode_notice(topic, payload) == notice


def test_codec_golden_bytes():
    topic, payload = encode_notice(PeerDown(b"\x01\x02", "gone"))
    assert topic == b"link.peer_down"
    assert payload == b"\x82\xa7node_id\xc4\x02\x01\x02\xa6reason\xa4gone"


def test_unknown_topic_decodes_to_raw_notice_and_reencodes():
    payload = msgpack.packb({"a": b"\x01", "b": 2}, use_bin_type=True)
    raw = decode_notice(b"custom.thing", payload)
    assert raw == RawNotice("custom.thing", {"a": b"\x01", "b": 2})
    assert encode_notice(raw) == (b"custom.thing", payload)


def test_decode_tolerates_extra_keys_and_fills_defaults():
    payload = msgpack.packb({"agent": "x", "state": "running", "new_field": 1})
    assert decode_notice(b"node.agent_state", payload) == notices.AgentStateChanged("x", "running")


@pytest.mark.parametrize("payload", [b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"agent": "x"}),
                                     b"\x82\xa1a"])
def test_malformed_payload_raises_decode_error(payload):
    with pytest.raises(DecodeError):
        decode_notice(b"node.agent_state", payload)


@given(st.binary(max_size=64), st.binary(max_size=200))
def test_decode_fuzz_raises_only_decode_error(topic, payload):
    try:
        decode_notice(topic, payload)
    except DecodeError:
        pass


def test_encode_rejects_non_plain_fields():
    with pytest.raises(LocalProtocolError):
        encode_notice(PeerDown(b"x", object()))


def test_inproc_roundtrip_with_prefix_filter(bus):
    client = bus.client()
    try:
        client.subscribe("link.")
        client.sync()
        sent = [PeerUp(b"\x01" * 32, b"\x02" * 32, "fd00::1", "tcp://127.0.0.1:1", True),
                LinkMeasured(b"\x01" * 32, 1.0, 0.1, 0.0, 1.0, 3), PeerDown(b"\x01" * 32, "bye")]
        for n in sent:
            client.publish(n)
        got = [client.recv(DEADLINE) for _ in range(2)]
        assert got == [sent[0], sent[2]]  # prober.* is not subscribed
        assert client.recv(0.05) is None
    finally:
        client.close()


def test_bus_json_points_at_live_ipc_endpoints(bus, run_dir):
    info = json.loads((run_dir / "bus.json").read_text())
    assert info["pub"] == bus.endpoints("ipc").pub == f"ipc://{run_dir}/bus-in.sock"
    assert load_endpoints(run_dir) == bus.endpoints("ipc")
    assert bus.endpoints("inproc").pub.startswith("inproc://sporenet-bus-")


PUBLISHER = textwrap.dedent("""
    import sys
    from sporenet.protocols.notices import PeerDown
    from sporenet.transports.bus import BusClient, load_endpoints
    c = BusClient(load_endpoints(sys.argv[1]))
    c.sync()
    for i in range(3):
        c.publish(PeerDown(bytes([i]), "from-child"))
    c.close()
""")

SUBSCRIBER = textwrap.dedent("""
    import sys
    from sporenet.transports.bus import BusClient, load_endpoints
    c = BusClient(load_endpoints(sys.argv[1]))
    c.subscribe("link.")
    c.sync()
    print("ready", flush=True)
    for _ in range(2):
        n = c.recv(10)
        print(repr(n), flush=True)
    c.close()
""")


def test_ipc_child_process_publishes_test_subscribes(bus, run_dir):
    client = bus.client()
    try:
        client.subscribe("link.")
        client.sync()
        proc = subprocess.run([sys.executable, "-c", PUBLISHER, str(run_dir)], timeout=DEADLINE,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        got = [client.recv(DEADLINE) for _ in range(3)]
        assert got == [PeerDown(bytes([i]), "from-child") for i in range(3)]
    finally:
        client.close()


def test_ipc_test_publishes_child_process_subscribes(bus, run_dir):
    proc = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = bus.client()
    try:
        assert proc.stdout.readline().strip() == "ready"  # its subscription is live
        client.sync()
        client.publish(notices.AgentStateChanged("x", "running"))  # not subscribed by the child
        client.publish(PeerDown(b"\xaa", "one"))
        client.publish(PeerUp(b"\xbb", b"\xcc", "fd00::2", "tcp://h:2", False, "n"))
        out, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 0, err
        assert out.splitlines() == [repr(PeerDown(b"\xaa", "one")),
                                    repr(PeerUp(b"\xbb", b"\xcc", "fd00::2", "tcp://h:2", False, "n"))]
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stop_removes_files_and_threads(run_dir):
    before = set(threading.enumerate())
    bus = Bus(run_dir).start()
    assert {p.name for p in run_dir.iterdir()} == {"bus.json", "bus-in.sock", "bus-out.sock"}
    bus.stop()
    bus.stop()  # idempotent
    assert list(run_dir.iterdir()) == []
    assert set(threading.enumerate()) == before
    with pytest.raises(BusNotRunning, match="does not exist"):
        load_endpoints(run_dir)


def test_second_bus_in_same_run_dir_is_refused(bus, run_dir):
    with pytest.raises(BusError, match="already runs"):
        Bus(run_dir).start()
    assert load_endpoints(run_dir) == bus.endpoints("ipc")  # the first is untouched


def test_stale_bus_json_is_reported(run_dir):
    (run_dir / "bus.json").write_text(json.dumps({"pub": f"ipc://{run_dir}/bus-in.sock",
                                                  "sub": f"ipc://{run_dir}/bus-out.sock"}))
    with pytest.raises(BusNotRunning, match="nothing listens"):
        load_endpoints(run_dir)


def test_too_long_run_dir_is_a_clear_error(run_dir):
    with pytest.raises(BusError, match="too long"):
        Bus(run_dir / ("x" * 120)).start()


# -- sporenet bus tap ----------------------------------------------------------------------

def start_tap(run_dir, *args):
    proc = subprocess.Popen([sys.executable, "-m", "sporenet.cli", "bus", "tap", "--run-dir",
                             str(run_dir), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stderr.readline()  # "tapping ...": its subscription is live
    assert line.startswith("tapping"), line + proc.stderr.read()
    return proc


def test_tap_prints_notices_as_json(bus, run_dir):
    proc = start_tap(run_dir, "--json", "--count", "2", "--topic", "link.", "--topic", "custom.")
    client = bus.client()
    try:
        client.sync()
        client.publish(notices.AgentStateChanged("x", "running"))  # filtered out
        client.publish(PeerDown(b"\x01\x02", "bye"))
        client.publish(RawNotice("custom.event", {"n": 1, "blob": b"\xff"}))
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        client.close()
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(x["topic"], x["fields"]) for x in lines] == [
        ("link.peer_down", {"node_id": "0102", "reason": "bye"}),
        ("custom.event", {"n": 1, "blob": "ff"})]
    assert all("time" in x for x in lines)


def test_tap_human_output_shows_short_hex(bus, run_dir):
    proc = start_tap(run_dir, "--count", "1")
    client = bus.client()
    try:
        client.sync()
        client.publish(PeerDown(bytes(range(32)), "bye"))
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        client.close()
    assert proc.returncode == 0, err
    assert "link.peer_down node_id=00010203…1e1f(32B) reason='bye'" in out


def test_tap_without_a_node_is_a_clear_error(run_dir):
    proc = subprocess.run([sys.executable, "-m", "sporenet.cli", "bus", "tap", "--run-dir",
                           str(run_dir)], capture_output=True, text=True, timeout=DEADLINE)
    assert proc.returncode == 1
    assert "no node bus in" in proc.stderr and "bus.json does not exist" in proc.stderr


def test_tap_exits_when_the_node_stops(run_dir):
    bus = Bus(run_dir).start()
    proc = start_tap(run_dir)
    bus.stop()
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 1 and "stopped" in err
