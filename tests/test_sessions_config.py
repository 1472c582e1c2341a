"""The ``[sessions]`` config section and the node's ML-KEM check at start."""

from pathlib import Path

import pytest

from sporenet.config import ConfigError, NodeConfig, SessionsConfig, config_from_dict
from sporenet.protocols.identity import Identity


def problems(data):
    with pytest.raises(ConfigError) as e:
        config_from_dict(data, source="node.toml")
    return e.value.problems


def test_defaults_and_values():
    assert NodeConfig().sessions == SessionsConfig(pq=True, pq_required=False)
    cfg = config_from_dict({"sessions": {"pq": False}})
    assert cfg.sessions == SessionsConfig(pq=False, pq_required=False)
    cfg = config_from_dict({"sessions": {"pq": True, "pq_required": True}})
    assert cfg.sessions.pq_required is True


@pytest.mark.parametrize("data, text", [
    ({"sessions": {"pq": "yes"}}, 'node.toml: sessions.pq: "yes" is not a boolean'),
    ({"sessions": {"pq_required": 1}}, "node.toml: sessions.pq_required: 1 is not a boolean"),
    ({"sessions": {"pqq": True}}, 'unknown key "pqq" in [sessions]; did you mean "pq"?'),
    ({"sessions": 3}, "node.toml: sessions: 3 is not a table"),
    ({"sessions": {"pq": False, "pq_required": True}},
     "node.toml: sessions.pq_required: true needs sessions.pq = true"),
])
def test_bad_values_name_the_key(data, text):
    [p] = problems(data)
    assert text in p


def test_node_refuses_to_start_with_pq_on_and_no_mlkem(monkeypatch, tmp_path):
    from sporenet import node as node_mod
    from sporenet.protocols.sessions import pq

    monkeypatch.setattr(pq, "mlkem_available", lambda: False)
    ident = Identity(bytes(32))
    with pytest.raises(ValueError) as e:
        node_mod.Node(NodeConfig(run_dir=Path(tmp_path)), ident)
    assert "ML-KEM-768 is unavailable" in str(e.value) and "sessions.pq = false" in str(e.value)
