"""Node config: defaults, TOML loading, CLI overrides, and an error for every wrong value."""

from pathlib import Path

import pytest

from sporenet.config import (DEFAULT_API, DEFAULT_LISTEN, AgentSpec, ConfigError, NodeConfig,
                             ProberConfig, config_from_dict, default_run_dir, load_config,
                             merge_cli, parse_endpoint, parse_host_port)

EXAMPLE = """
key_file = "keys/node.key"
name = "alpha"
listen = ["tcp://0.0.0.0:8991", "tcp://[::]:8991"]
peers = ["tcp://192.0.2.7:8991", "tcp://seed.example.net:8991"]
api = "127.0.0.1:9000"
run_dir = "/run/sporenet-alpha"
tun = false
log_level = "debug"
log_format = "json"

[prober]
interval = 0.5
window = 20
dead_after = 3

[[agents]]
name = "echo"
class = "examples.echo_agent:EchoAgent"
requires = ["router"]

[agents.options]
greeting = "hi"
"""


def write(tmp_path, text, name="node.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(text, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    return err.value.problems


def test_empty_file_gives_defaults(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg == NodeConfig()
    assert cfg.api == DEFAULT_API == "127.0.0.1:8990"
    assert cfg.listen == (DEFAULT_LISTEN,) and cfg.peers == ()
    assert cfg.tun is True and cfg.log_level == "info" and cfg.log_format == "auto"
    assert cfg.prober == ProberConfig(interval=1.0, window=256, dead_after=5.0)
    assert cfg.agents == () and cfg.run_dir is None and cfg.name == ""


def test_full_example_file(tmp_path):
    cfg = load_config(write(tmp_path, EXAMPLE))
    assert cfg.key_file == tmp_path / "keys" / "node.key"  # relative to the file
    assert cfg.name == "alpha"
    assert cfg.listen == ("tcp://0.0.0.0:8991", "tcp://[::]:8991")
    assert cfg.peers == ("tcp://192.0.2.7:8991", "tcp://seed.example.net:8991")
    assert cfg.api == "127.0.0.1:9000" and cfg.run_dir == Path("/run/sporenet-alpha")
    assert cfg.tun is False and cfg.log_level == "debug" and cfg.log_format == "json"
    assert cfg.prober == ProberConfig(0.5, 20, 3.0)
    assert cfg.agents == (AgentSpec("echo", "examples.echo_agent:EchoAgent", ("router",),
                                    {"greeting": "hi"}),)


def test_docs_example_is_a_valid_config():
    doc = (Path(__file__).parent.parent / "docs" / "config.md").read_text()
    toml = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    cfg = config_from_dict(__import__("tomllib").loads(toml), source="docs/config.md")
    assert cfg.name


def test_brief_example_error_message(tmp_path):
    probs = problems_of('listen = ["tcp://0.0.0.0:1", "tcp:/bad"]', tmp_path)
    assert len(probs) == 1
    assert 'listen[1]: "tcp:/bad" is not an endpoint' in probs[0]
    assert probs[0].endswith("expected tcp://HOST:PORT or udp://HOST:PORT")
    assert probs[0].startswith(str(tmp_path / "node.toml"))


@pytest.mark.parametrize("text, where, bad, expected", [
    ('listen = "tcp://a:1"', "listen", '"tcp://a:1"', "is not a list"),
    ('listen = ["tcp://h:70000"]', "listen[0]", '"tcp://h:70000"', "port 70000 is out of range"),
    ('listen = ["quic://h:1"]', "listen[0]", '"quic://h:1"', "unknown scheme 'quic'"),
    ('listen = ["tcp://::1:1"]', "listen[0]", '"tcp://::1:1"', "IPv6 hosts go in brackets"),
    ('listen = ["tcp://[zz]:1"]', "listen[0]", '"tcp://[zz]:1"', "is not an IPv6 address"),
    ('listen = ["tcp://bad_host:1"]', "listen[0]", '"tcp://bad_host:1"', "not a host name"),
    ('listen = [5]', "listen[0]", "5", "is not an endpoint"),
    ('peers = ["tcp://h:0"]', "peers[0]", '"tcp://h:0"', "port 0 is out of range 1-65535"),
    ('api = "localhost"', "api", '"localhost"', "is not HOST:PORT"),
    ('api = 8990', "api", "8990", "is not HOST:PORT"),
    ('tun = "yes"', "tun", '"yes"', "expected true or false"),
    ('log_level = "loud"', "log_level", '"loud"', "expected one of debug, info, warning, error"),
    ('log_format = "xml"', "log_format", '"xml"', "expected one of auto, console, json"),
    ('name = 3', "name", "3", "is not a node name"),
    ('key_file = ""', "key_file", '""', "is not a path"),
    ('[prober]\ninterval = -1', "prober.interval", "-1", "expected a number of seconds > 0"),
    ('[prober]\ninterval = true', "prober.interval", "true", "expected a number"),
    ('[prober]\nwindow = 2.5', "prober.window", "2.5", "expected an integer >= 1"),
    ('[prober]\ndead_after = nan', "prober.dead_after", "NaN", "expected a number"),
    ('prober = 3', "prober", "3", "is not a table"),
    ('[[agents]]\nname = "Bad Name"\nclass = "m:C"', "agents[0].name", '"Bad Name"',
     "is not an agent name"),
    ('[[agents]]\nname = "x"\nclass = "no_colon"', "agents[0].class", '"no_colon"',
     'expected "package.module:ClassName"'),
    ('[[agents]]\nname = "x"\nclass = "m:C"\nrequires = "router"', "agents[0].requires",
     '"router"', "is not a list"),
    ('[[agents]]\nname = "x"\nclass = "m:C"\noptions = 1', "agents[0].options", "1",
     "is not a table"),
])
def test_each_bad_value_names_key_value_and_expectation(tmp_path, text, where, bad, expected):
    probs = problems_of(text, tmp_path)
    assert len(probs) == 1, probs
    assert f": {where}: {bad} " in probs[0] and expected in probs[0]


def test_unknown_top_level_key_lists_valid_keys_and_suggests(tmp_path):
    (msg,) = problems_of('lisen = ["tcp://a:1"]', tmp_path)
    assert 'unknown key "lisen" in the top level; did you mean "listen"?' in msg
    assert "valid keys: agents, api, contract, key_file, listen, log_format, log_level, name, peers," in msg


def test_unknown_key_in_section(tmp_path):
    (msg,) = problems_of("[prober]\nintervall = 2", tmp_path)
    assert 'unknown key "intervall" in [prober]' in msg
    assert "valid keys: dead_after, interval, window" in msg


def test_unknown_section_is_an_error(tmp_path):
    (msg,) = problems_of("[routing]\nfoo = 1", tmp_path)
    assert 'unknown key "routing" in the top level' in msg


def test_unknown_key_in_agent(tmp_path):
    probs = problems_of('[[agents]]\nname = "x"\nclass = "m:C"\nklass = 1', tmp_path)
    assert probs == [f'{tmp_path / "node.toml"}: unknown key "klass" in [[agents]] #1; '
                     'did you mean "class"? valid keys: class, name, options, requires']


def test_agent_missing_keys_duplicates_and_self_requirement(tmp_path):
    probs = problems_of('[[agents]]\nname = "a"\n'
                        '[[agents]]\nname = "b"\nclass = "m:B"\nrequires = ["b"]\n'
                        '[[agents]]\nname = "b"\nclass = "m:C"', tmp_path)
    text = "\n".join(probs)
    assert 'agents[0]: missing key "class" in [[agents]] #1' in text
    assert 'name "b" is used more than once' in text
    assert '"b" requires itself' in text


def test_dead_after_must_exceed_interval(tmp_path):
    (msg,) = problems_of("[prober]\ninterval = 2\ndead_after = 1", tmp_path)
    assert "prober.dead_after: 1.0 must be greater than prober.interval (2.0)" in msg


def test_all_problems_are_reported_at_once(tmp_path):
    probs = problems_of('tun = 1\napi = "x"\nfoo = 2', tmp_path)
    assert len(probs) == 3


def test_missing_and_invalid_toml_files(tmp_path):
    with pytest.raises(ConfigError, match="no config file at"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "listen = [\n"))


def test_merge_cli_overrides_and_keeps_unset(tmp_path):
    cfg = load_config(write(tmp_path, EXAMPLE))
    merged = merge_cli(cfg, listen=("tcp://127.0.0.1:0",), peers=(), api="127.0.0.1:0",
                       tun=None, name="beta", log_level="WARNING", run_dir=None,
                       key_file=str(tmp_path / "other.key"))
    assert merged.listen == ("tcp://127.0.0.1:0",)
    assert merged.peers == cfg.peers  # empty tuple = flag not given
    assert merged.api == "127.0.0.1:0" and merged.name == "beta"
    assert merged.tun is False and merged.log_level == "warning"
    assert merged.key_file == tmp_path / "other.key" and merged.run_dir == cfg.run_dir
    assert merge_cli(cfg, tun=True).tun is True


def test_merge_cli_errors_name_the_flag():
    with pytest.raises(ConfigError) as err:
        merge_cli(NodeConfig(), peers=("tcp://a:1", "nope"), api="x:99999")
    assert err.value.problems == [
        'command line: --peer: "nope" is not an endpoint (no scheme://); expected tcp://HOST:PORT or udp://HOST:PORT',
        'command line: --api: "x:99999" is not HOST:PORT (port 99999 is out of range 0-65535); '
        'expected e.g. "127.0.0.1:8990"',
    ]
    with pytest.raises(TypeError):
        merge_cli(NodeConfig(), agents=())


def test_parse_helpers():
    assert parse_endpoint("tcp://[::1]:80") == ("tcp", "::1", 80)
    assert parse_endpoint("tcp://node-1.example.org:8991") == ("tcp", "node-1.example.org", 8991)
    assert parse_host_port("127.0.0.1:0") == ("127.0.0.1", 0)
    with pytest.raises(ValueError):
        parse_host_port("1.2.3:4")  # all-digit labels are not host names
    with pytest.raises(ValueError):
        parse_host_port("127.0.0.1:0", allow_port_zero=False)


def test_run_dir_default(monkeypatch, tmp_path):
    nid = bytes.fromhex("ab" * 32)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert NodeConfig().run_dir_for(nid) == tmp_path / "sporenet-abababab"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_run_dir(nid) == Path("/tmp/sporenet-abababab")
    assert NodeConfig(run_dir=Path("/x")).run_dir_for(nid) == Path("/x")


def test_region_from_file_and_command_line(tmp_path):
    assert NodeConfig().region == ""
    cfg = load_config(write(tmp_path, 'region = "eu"'))
    assert cfg.region == "eu"
    assert merge_cli(cfg, region="us-east").region == "us-east"
    assert merge_cli(cfg, region=None).region == "eu"  # flag not given keeps the file's value
    assert load_config(write(tmp_path, 'region = "Zürich-ü"')).region == "Zürich-ü"
    assert len(("é" * 16).encode()) == 32
    assert load_config(write(tmp_path, f'region = "{"é" * 16}"')).region == "é" * 16


def test_region_limit_matches_the_wire_format():
    from sporenet.config import MAX_REGION_BYTES
    from sporenet.protocols.routing.messages import MAX_REGION_BYTES as WIRE_MAX

    assert MAX_REGION_BYTES == WIRE_MAX == 32


@pytest.mark.parametrize("text, bad, expected", [
    ('region = "' + "x" * 33 + '"', '"' + "x" * 33 + '"',
     "is too long for a region tag (33 bytes)"),
    ('region = "' + "é" * 17 + '"', '"\\u00e9\\u00e9', "(34 bytes)"),  # value cut at 80
    ('region = "eu\\u0007"', '"eu\\u0007"', "holds the control character U+0007"),
    ('region = "e\\nu"', '"e\\nu"', "holds the control character U+000A"),
    ('region = "e\\u200bu"', '"e\\u200bu"', "holds the non-printable character U+200B"),
    ("region = 7", "7", "is not a region tag"),
])
def test_bad_region_names_the_key(tmp_path, text, bad, expected):
    (msg,) = problems_of(text, tmp_path)
    assert f": region: {bad}" in msg and expected in msg
    assert "at most 32 UTF-8 bytes" in msg


def test_bad_region_on_the_command_line_names_the_flag():
    with pytest.raises(ConfigError) as err:
        merge_cli(NodeConfig(), region="a\tb")
    (msg,) = err.value.problems
    assert msg.startswith('command line: --region: "a\\tb" is not a region tag')


def test_up_refuses_a_bad_region_before_starting(tmp_path):
    from click.testing import CliRunner

    from sporenet.commands.up import command

    out = CliRunner().invoke(command, ["--region", "r" * 40, "--key-file", str(tmp_path / "k")])
    assert out.exit_code != 0
    assert "--region" in out.output and "is too long for a region tag (40 bytes)" in out.output


@pytest.mark.slow
def test_a_running_node_reports_its_region(tmp_path):
    import json
    import subprocess
    import sys

    from sporenet.local_mesh import LocalMesh, wait_for

    with LocalMesh(tmp_path, extra_args=("--probe-interval", "0.2")) as mesh:
        node = mesh.start_node("eu1", extra_args=("--region", "eu-west"))
        assert node.api.status()["region"] == "eu-west" and node.info["region"] == "eu-west"
        cli = [sys.executable, "-m", "sporenet.cli", "status", "--api", node.info["api"]]
        out = subprocess.run(cli + ["--json"], capture_output=True, text=True, timeout=30)
        assert json.loads(out.stdout)["region"] == "eu-west"
        out = subprocess.run(cli, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "eu-west" in out.stdout, out.stdout + out.stderr

        other = mesh.start_node("us1", peers=[node.endpoint], extra_args=("--region", "us"))

        def region_of_route() -> str | None:
            rows = [r for r in other.api.get("/v1/routes")["routes"]
                    if r["destination"] == node.node_id and r["selected"]]
            return rows[0]["region"] if rows else None
        assert wait_for(region_of_route, 20, "us1 to learn a route to eu1") == "eu-west"
