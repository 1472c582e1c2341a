"""[topics] and unknown_topics in the node config, their checks, and the HTTP/CLI validation
of runtime topic rules (no processes here; tests/test_topics_node.py runs real nodes)."""

from pathlib import Path

import pytest

from sporenet.config import (ANYONE, MAX_TOPIC_BYTES, ConfigError, NodeConfig, load_config,
                             parse_sender, parse_senders)
from sporenet.protocols.identity import address_of_node_id
from sporenet.transports.http_api import ApiError
from sporenet.user_api import UserApi

NODE_ID = "ab" * 32
NODE_ADDR = str(address_of_node_id(bytes.fromhex(NODE_ID)))


def write(tmp_path, text):
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def problems_of(text, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    return err.value.problems


def test_defaults_accept_everything():
    cfg = NodeConfig()
    assert cfg.unknown_topics == "accept" and cfg.accept_unknown_topics is True
    assert cfg.topics == {}


def test_topics_section_and_unknown_topics(tmp_path):
    cfg = load_config(write(tmp_path, f"""
unknown_topics = "refuse"

[topics]
chat = ["*"]
shout = "*"
control = ["600:1234::/64", "{NODE_ID}", "0600:0::0001", "600::1"]
closed = []
"" = ["600::2"]
"with space" = ["*"]
"""))
    assert cfg.unknown_topics == "refuse" and cfg.accept_unknown_topics is False
    assert cfg.topics == {
        "chat": None, "shout": None,
        # canonical text, node ids as their address, duplicates dropped (first wins)
        "control": ("600:1234::/64", NODE_ADDR, "600::1"),
        "closed": (), "": ("600::2",), "with space": None,
    }


@pytest.mark.parametrize("text, expected", [
    ('[topics]\nx = ["600::1", "nope"]',
     'node.toml: topics.x[1]: "nope" is neither an IPv6 address, a network nor a node id; '
     'expected "*", an overlay address'),
    ('[topics]\nx = ["10.0.0.1"]', 'topics.x[0]: "10.0.0.1" is neither an IPv6 address'),
    ('[topics]\nx = ["2001:db8::1"]',
     'topics.x[0]: "2001:db8::1" is not an overlay address (they are in 600::/7)'),
    ('[topics]\nx = ["2001:db8::/64"]', 'topics.x[0]: "2001:db8::/64" holds no overlay address'),
    ('[topics]\nx = ["600::1/64"]', 'topics.x[0]: "600::1/64" is not an IPv6 network (600::1/64 '
                                    'has host bits set)'),
    ('[topics]\nx = ["*", "600::1"]', 'topics.x: ["*", "600::1"] mixes "*" (anyone) with other'),
    ('[topics]\nx = "600::1"', 'topics.x: "600::1" is not a list of senders; expected e.g. ["*"]'),
    ('[topics]\nx = [1]', 'topics.x[0]: 1 is not a string'),
    ('[topics]\n"a b" = 3', 'topics."a b": 3 is not a list of senders'),
    ('topics = ["chat"]', 'topics: ["chat"] is not a table; expected [topics] with lines like'),
    ('unknown_topics = "deny"', 'unknown_topics: "deny" is not a policy for topics without a '
                                'rule; expected one of accept, refuse'),
    ('unknown_topics = false', 'unknown_topics: false is not a policy'),
    (f'[topics]\n"{"t" * (MAX_TOPIC_BYTES + 1)}" = ["*"]',
     f'topic name is too long for a topic ({MAX_TOPIC_BYTES + 1} bytes); expected at most 255'),
])
def test_each_bad_value_names_its_key(tmp_path, text, expected):
    (msg,) = problems_of(text, tmp_path)
    assert expected in msg, msg


def test_misspelt_key_suggests(tmp_path):
    (msg,) = problems_of('unknown_topic = "refuse"', tmp_path)
    assert 'unknown key "unknown_topic" in the top level; did you mean "unknown_topics"?' in msg
    (msg,) = problems_of('[topic]\nchat = ["*"]', tmp_path)
    assert 'did you mean "topics"?' in msg


def test_every_bad_topic_is_reported_at_once(tmp_path):
    probs = problems_of('tun = 1\n[topics]\na = ["x"]\nb = ["600::1", "y"]\nc = ["*"]', tmp_path)
    assert len(probs) == 3
    assert any("topics.a[0]" in p for p in probs) and any("topics.b[1]" in p for p in probs)


def test_topic_limit_matches_the_wire_format():
    from sporenet.protocols import routed as overlay_messages
    assert MAX_TOPIC_BYTES == overlay_messages.MAX_TOPIC_BYTES


def test_parse_sender_and_senders():
    assert str(parse_sender(" 600::1 ")) == "600::1"
    assert str(parse_sender(NODE_ID)) == NODE_ADDR
    assert str(parse_sender("600:1::/64")) == "600:1::/64"
    assert parse_senders(None) is None and parse_senders([ANYONE]) is None
    assert parse_senders(ANYONE) is None and parse_senders([]) == ()
    with pytest.raises(ValueError, match=r"\[0\]"):
        parse_senders(["bad"])


def test_node_hands_the_rules_to_the_overlay_agent(tmp_path):
    from sporenet.keyfile import generate_identity
    from sporenet.node import Node

    cfg = load_config(write(tmp_path, f'run_dir = "{tmp_path / "run"}"\n'
                                      'unknown_topics = "refuse"\n'
                                      '[topics]\nops = ["600::/64"]\n'))
    node = Node(cfg, generate_identity())
    spec = next(s for s in node._specs() if s.name == "overlay")
    assert spec.options["topics"] == {"ops": ("600::/64",)}
    assert spec.options["accept_unknown_topics"] is False


def test_docs_messages_config_example_is_valid():
    import tomllib

    from sporenet.config import config_from_dict
    doc = (Path(__file__).parent.parent / "docs" / "messages.md").read_text()
    toml = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    cfg = config_from_dict(tomllib.loads(toml), source="docs/messages.md")
    assert cfg.topics


# -- POST /v1/topics and POST /v1/messages checks (before anything reaches the agent) --


class FakeOverlay:
    def __init__(self):
        self.asked = []

    def ask(self, msg, timeout):
        self.asked.append(msg)
        return {"id": 1}


@pytest.fixture
def api():
    ref = FakeOverlay()
    return UserApi(lambda: ref), ref


@pytest.mark.parametrize("kwargs, expected", [
    ({"topic": "x"}, "give senders"),
    ({"topic": "x", "senders": ["nope"]}, 'senders [0]: "nope" is neither'),
    ({"topic": "x", "senders": "600::1"}, "is not a list of senders"),
    ({"topic": 3, "senders": None}, "is not a topic"),
    ({"topic": "t" * 256, "senders": None}, "too long for a topic"),
    ({"topic": "x", "reset": "yes"}, "reset must be true or false"),
])
def test_post_topics_refuses_bad_input(api, kwargs, expected):
    user, ref = api
    with pytest.raises(ApiError) as err:
        user.post_topics(**kwargs)
    assert err.value.status == 400 and expected in err.value.message
    assert ref.asked == []


def test_post_topics_hands_canonical_rules_to_the_agent(api):
    from sporenet.agents.overlay import SetTopic
    user, ref = api
    user.post_topics("a", ["600::0001", NODE_ID])
    user.post_topics("b", None)
    user.post_topics("c", ["*"])
    user.post_topics("d", [])
    user.post_topics("e", reset=True)
    assert ref.asked == [SetTopic("a", ("600::1", NODE_ADDR)), SetTopic("b", None),
                         SetTopic("c", None), SetTopic("d", ()), SetTopic("e", None, reset=True)]


@pytest.mark.parametrize("kwargs, expected", [
    ({"reply_to": "x"}, "reply_to: 'x' is not an integer"),
    ({"reply_to": -1}, "reply_to -1 is not a message id"),
    ({"reply_to": 2 ** 64}, "is not a message id"),
    ({"deadline": 0}, "deadline: 0 must be a positive number"),
    ({"deadline": "soon"}, "deadline: 'soon' is not a number"),
])
def test_post_messages_checks_reply_to_and_deadline(api, kwargs, expected):
    user, ref = api
    with pytest.raises(ApiError) as err:
        user.post_message(to="600::1", data="x", **kwargs)
    assert expected in err.value.message
    user.post_message(to="600::1", data="x", reply_to=str(2 ** 64 - 1))
    assert ref.asked[-1].reply_to == 2 ** 64 - 1
