"""The bundle: dependency order, restarts with a limit, clean stop, SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sporenet.agents.base import ProtocolAgent
from sporenet.agents.bundle import AgentSpec, Bundle, BundleError, start_order
from sporenet.protocols.notices import AgentStateChanged, Notice

DEADLINE = 10.0
EVENTS: list[tuple[str, str]] = []  # (agent, "start"|"stop"), appended from actor threads


class Recorder(ProtocolAgent):
    """Records its start and stop; a direct tell of "boom" is a bug that crashes it."""

    def on_ready(self) -> None:
        self.options["events"].append((self.name, "start"))

    def on_message(self, message: Any) -> None:
        if message == "boom":
            raise RuntimeError(f"{self.name} hit a bug")

    def on_stop(self) -> None:
        self.options["events"].append((self.name, "stop"))
        super().on_stop()


class FailsToStart(ProtocolAgent):
    def on_ready(self) -> None:
        raise RuntimeError("no config for this agent")


@pytest.fixture
def run_dir():
    d = Path(tempfile.mkdtemp(prefix="sn-bundle-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def wait_for(cond, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)  # polling a condition, not waiting a fixed time
    raise AssertionError("condition not met in time")


def spec(name, requires=(), events=None, factory=Recorder):
    return AgentSpec(name, factory, tuple(requires), {"events": events if events is not None else []})


def test_start_order_is_topological_and_keeps_listed_order_for_ties():
    specs = [spec("api", ["router", "session"]), spec("router", ["prober"]), spec("session"),
             spec("prober")]
    assert [s.name for s in start_order(specs)] == ["session", "prober", "router", "api"]


def test_cycle_is_an_error_naming_the_agents():
    with pytest.raises(BundleError, match="cycle: a, b"):
        start_order([spec("a", ["b"]), spec("b", ["a"]), spec("c")])


def test_unknown_dependency_is_an_error_naming_it():
    with pytest.raises(BundleError, match='"router" requires unknown agent.*: prober'):
        start_order([spec("router", ["prober"])])


def test_duplicate_name_and_bad_class_path_are_errors(run_dir):
    with pytest.raises(BundleError, match='"a" is used twice'):
        start_order([spec("a"), spec("a")])
    with pytest.raises(BundleError, match='cannot load "nowhere.module:Agent"'):
        Bundle([AgentSpec("x", "nowhere.module:Agent")], run_dir).start()
    assert list(run_dir.iterdir()) == []


def test_agents_start_in_order_stop_in_reverse_and_leave_nothing_behind(run_dir):
    events: list = []
    threads_before = set(threading.enumerate())
    bundle = Bundle([spec("c", ["b"], events), spec("a", [], events),
                     AgentSpec("b", "test_bundle:Recorder", ("a",), {"events": events})], run_dir)
    bundle.start()
    assert events == [("a", "start"), ("b", "start"), ("c", "start")]
    assert bundle.states() == {"a": "running", "b": "running", "c": "running"}
    assert (run_dir / "bus.json").exists()
    bundle.stop()
    assert events[3:] == [("c", "stop"), ("b", "stop"), ("a", "stop")]
    assert bundle.states() == {"a": "stopped", "b": "stopped", "c": "stopped"}
    assert set(threading.enumerate()) == threads_before
    assert list(run_dir.iterdir()) == []
    assert bundle.wait(0) is True


def test_agent_state_changes_are_published_on_the_bus(run_dir):
    bundle = Bundle([spec("a")], run_dir).start()
    client = bundle.bus.client()
    try:
        client.subscribe(AgentStateChanged.TOPIC)
        client.sync()
        bundle.agent("a").tell("boom")
        seen: list[Notice] = []
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end and (not seen or seen[-1].state != "running"):
            n = client.recv(0.1)
            if n is not None and (seen or n.state == "restarting"):  # skip the late first "running"
                seen.append(n)
        assert [(n.agent, n.state) for n in seen] == [("a", "restarting"), ("a", "starting"),
                                                     ("a", "running")]
        assert "a hit a bug" in seen[0].detail
    finally:
        client.close()
        bundle.stop()


def test_a_crashed_agent_is_restarted_then_the_node_stops_at_the_limit(run_dir):
    events: list = []
    threads_before = set(threading.enumerate())
    bundle = Bundle([spec("base", [], events), spec("flaky", ["base"], events)], run_dir,
                    restart_limit=2)
    bundle.start()
    for restart in (1, 2):
        old = bundle.agent("flaky")
        old.tell("boom")
        wait_for(lambda: bundle.states()["flaky"] == "running" and bundle.agent("flaky") != old)
        assert events.count(("flaky", "start")) == 1 + restart
    assert bundle.agent("base").is_alive()  # a restart touches only the crashed agent
    bundle.agent("flaky").tell("boom")
    with pytest.raises(BundleError, match='agent "flaky" crashed 3 times within 60 s .*flaky hit a bug'):
        bundle.wait(DEADLINE)
    assert bundle.states() == {"base": "stopped", "flaky": "failed"}
    assert events[-1] == ("base", "stop")
    wait_for(lambda: set(threading.enumerate()) == threads_before)
    assert list(run_dir.iterdir()) == []
    bundle.stop()  # still fine after the node stopped itself


def test_an_agent_that_cannot_start_stops_the_node_with_its_error(run_dir):
    events: list = []
    threads_before = set(threading.enumerate())
    with pytest.raises(BundleError, match='agent "bad" did not start: .*no config for this agent'):
        Bundle([spec("ok", [], events), spec("bad", ["ok"], events, FailsToStart)], run_dir).start()
    assert events == [("ok", "start"), ("ok", "stop")]
    assert set(threading.enumerate()) == threads_before
    assert list(run_dir.iterdir()) == []


def test_config_agent_entries_are_accepted():
    from sporenet.config import AgentSpec as ConfigAgentSpec  # the [[agents]] shape

    cfg = ConfigAgentSpec(name="r", class_path="test_bundle:Recorder", requires=("a",))
    assert AgentSpec.coerce(cfg) == AgentSpec("r", "test_bundle:Recorder", ("a",), cfg.options)


NODE = textwrap.dedent("""
    import sys
    from sporenet.agents.bundle import AgentSpec, Bundle
    from sporenet.logs import configure_logging
    configure_logging()  # logs to stderr
    sys.path.insert(0, sys.argv[2])
    bundle = Bundle([AgentSpec("a", "test_bundle:Recorder", options={"events": []})], sys.argv[1])
    bundle.run_forever(on_ready=lambda: print("ready", flush=True))
    print("stopped", bundle.states(), flush=True)
""")


def test_sigterm_stops_a_bundle_process_cleanly(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", NODE, str(run_dir), os.path.dirname(__file__)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert (run_dir / "bus.json").exists()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped {'a': 'stopped'}" in out
    assert list(run_dir.iterdir()) == []
