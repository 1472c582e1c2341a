"""Node configuration: a TOML file (``tomllib``), then command-line overrides.

Driven by ``load_config(path)`` (or ``NodeConfig()`` for the defaults), then
``merge_cli(config, **flags)``. Every key, its default and an example file are in
``docs/config.md``.

Rules:
- Every key has a default; an empty file is a valid config.
- Unknown keys are errors that name the key, its section and the valid keys: a typo
  must never be silently ignored.
- Every bad value is an error naming the key (``listen[1]``, ``link.prober.interval``),
  the bad value and what is expected. All problems of a file are reported at once.
- Relative paths in a file are relative to the file's directory; on the command
  line, to the working directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
import tomllib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .keyfile import default_key_file

DEFAULT_API = "127.0.0.1:8990"
DEFAULT_LISTEN = "tcp://0.0.0.0:8991"
ENDPOINT_SCHEMES = ("tcp", "udp")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "console", "json")
UNKNOWN_TOPICS = ("accept", "refuse")
MAX_REGION_BYTES = 32     # as protocols.routing.messages.MAX_REGION_BYTES (a test checks)
MAX_TOPIC_BYTES = 255     # as protocols.routed.MAX_TOPIC_BYTES (a test checks)
ANYONE = "*"              # a topic's sender list ["*"]: every sender is accepted


class ConfigError(Exception):
    """The configuration is wrong. ``problems`` lists each fault, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ProberConfig:
    """Link probing (DESIGN.md §3 "Link probing")."""

    interval: float = 1.0     # seconds between probes on one link
    window: int = 256         # probes that loss is computed over (prober.py says why)
    dead_after: float = 5.0   # seconds without an answer before a link is declared dead


@dataclass(frozen=True, slots=True)
class SessionsConfig:
    """End-to-end sessions of overlay messages (``docs/messages.md``, "Encryption")."""

    pq: bool = True            # hybrid ML-KEM-768 psk on every session (needs ML-KEM)
    pq_required: bool = False  # hold data until the keys come from an ML-KEM psk


@dataclass(frozen=True, slots=True)
class ContractConfig:
    """The network contract this node enforces (``docs/contracts.md``, "Enforcement").

    ``file``: a contract JSON file (``sporenet contract``); ``ledger``: a ledger
    directory (``sporenet contract publish --ledger``) the node watches for newer
    versions. At least one; without ``file`` the ledger must hold exactly one network."""

    file: Path | None = None
    ledger: Path | None = None


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """A custom agent listed in the config (``[[agents]]``)."""

    name: str
    class_path: str                      # "package.module:ClassName"
    requires: tuple[str, ...] = ()       # agents that must run before this one
    options: dict[str, Any] = field(default_factory=dict)  # passed to the agent as is


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything ``sporenet up`` needs; built by ``load_config`` then ``merge_cli``."""

    key_file: Path = field(default_factory=default_key_file)
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    peers: tuple[str, ...] = ()
    api: str = DEFAULT_API
    run_dir: Path | None = None          # None: see run_dir_for()
    name: str = ""                       # "": shown as the short node id
    region: str = ""                     # signed into route updates; "": no region
    tun: bool = True
    tun_device: str = "sporenet0"        # the TUN's name (at most 15 bytes)
    tun_mtu: int = 1420                  # the overlay MTU: the TUN's, and each packet's limit
    log_level: str = "info"
    log_format: str = "auto"
    agents: tuple[AgentSpec, ...] = ()
    prober: ProberConfig = ProberConfig()
    sessions: SessionsConfig = SessionsConfig()
    # [topics]: topic -> canonical senders (addresses, networks), or None for anyone
    topics: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    unknown_topics: str = "accept"       # topics not in [topics]: "accept" or "refuse"
    contract: ContractConfig | None = None  # None: an open network (no whitelist)

    @property
    def accept_unknown_topics(self) -> bool:
        return self.unknown_topics == "accept"

    def run_dir_for(self, node_id: bytes) -> Path:
        """The configured run directory, or the default for this node id."""
        return self.run_dir if self.run_dir is not None else default_run_dir(node_id)


def default_run_dir(node_id: bytes) -> Path:
    """``$XDG_RUNTIME_DIR/sporenet-<short id>``, else ``/tmp/sporenet-<short id>``."""
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return Path(base) / f"sporenet-{node_id[:4].hex()}"


# -- endpoints and HOST:PORT --------------------------------------------------------

_ENDPOINT_RE = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<rest>.*)", re.S)
_HOST_PORT_RE = re.compile(r"(?P<host>\[[^\]]*\]|[^:\[\]/]*):(?P<port>[0-9]+)", re.S)
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def parse_host_port(text: str, *, allow_port_zero: bool = True) -> tuple[str, int]:
    """``"127.0.0.1:8990"`` -> ``("127.0.0.1", 8990)``; IPv6 as ``[::1]:8990``.

    Raises ``ValueError`` saying what is wrong.
    """
    m = _HOST_PORT_RE.fullmatch(text)
    if m is None:
        raise ValueError("not HOST:PORT (IPv6 hosts go in brackets: [::1]:8990)")
    host, port = m["host"], int(m["port"])
    if host.startswith("["):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif not _valid_host(host):
        raise ValueError(f"{host!r} is not a host name or IPv4 address")
    if port > 65535 or (port == 0 and not allow_port_zero):
        raise ValueError(f"port {port} is out of range {0 if allow_port_zero else 1}-65535")
    return host, port


def _valid_host(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    if not host or len(host) > 253 or host.replace(".", "").isdigit():
        return False
    return all(_LABEL_RE.fullmatch(label) for label in host.removesuffix(".").split("."))


def parse_endpoint(text: str, *, allow_port_zero: bool = True) -> tuple[str, str, int]:
    """``"tcp://10.0.0.1:8991"`` -> ``("tcp", "10.0.0.1", 8991)``; raises ``ValueError``."""
    m = _ENDPOINT_RE.fullmatch(text)
    if m is None:
        raise ValueError("no scheme://")
    if m["scheme"] not in ENDPOINT_SCHEMES:
        raise ValueError(f"unknown scheme {m['scheme']!r}; known: {', '.join(ENDPOINT_SCHEMES)}")
    host, port = parse_host_port(m["rest"], allow_port_zero=allow_port_zero)
    return m["scheme"], host, port


# -- topic senders ------------------------------------------------------------------

_NODE_ID_RE = re.compile(r"[0-9a-fA-F]{64}")
SENDER_EXAMPLE = '"*", an overlay address, a network such as "600:1234::/64", or a 64-hex-digit node id'


def parse_sender(text: str) -> ipaddress.IPv6Address | ipaddress.IPv6Network:
    """One allowed sender of a topic: an overlay address (``"602:ab::1"``), a network
    (``"602:ab::/64"``) or a node id (64 hex digits, turned into its address).

    Raises ``ValueError`` saying what is wrong. ``"*"`` is not a sender (see
    ``parse_senders``)."""
    if not isinstance(text, str):
        raise ValueError("is not a string")
    text = text.strip()
    if _NODE_ID_RE.fullmatch(text):
        from sporenet.protocols.identity import address_of_node_id
        return address_of_node_id(bytes.fromhex(text))
    from sporenet.protocols.identity import OVERLAY_PREFIX
    if "/" in text:
        try:
            net = ipaddress.IPv6Network(text, strict=True)
        except ValueError as exc:
            raise ValueError(f"is not an IPv6 network ({exc})") from None
        if not net.overlaps(OVERLAY_PREFIX):
            raise ValueError(f"holds no overlay address (they are in {OVERLAY_PREFIX})")
        return net
    try:
        addr = ipaddress.IPv6Address(text)
    except ValueError:
        raise ValueError("is neither an IPv6 address, a network nor a node id") from None
    if addr not in OVERLAY_PREFIX:
        raise ValueError(f"is not an overlay address (they are in {OVERLAY_PREFIX})")
    return addr


def parse_senders(items: Any) -> tuple[str, ...] | None:
    """A topic's sender list -> canonical strings, or None for ``["*"]`` (anyone).

    ``[]`` means nobody. Raises ``ValueError`` naming the faulty item (``[1]: ...``)."""
    if items is None or items == ANYONE:
        return None
    if isinstance(items, str) or not isinstance(items, (list, tuple)):
        raise ValueError(f"is not a list of senders; expected e.g. [\"{ANYONE}\"] or "
                         '["600:1234::/64"]')
    if ANYONE in items:
        if len(items) != 1:
            raise ValueError(f'mixes "{ANYONE}" (anyone) with other senders; give ["{ANYONE}"] '
                             "alone or only the senders to accept")
        return None
    out = []
    for i, item in enumerate(items):
        try:
            out.append(str(parse_sender(item)))
        except ValueError as exc:
            raise ValueError(f"[{i}]: {_show(item)} {exc}; expected {SENDER_EXAMPLE}") from None
    return tuple(dict.fromkeys(out))


def check_topic_name(topic: Any) -> str:
    """A topic name: text of at most 255 UTF-8 bytes (``""`` is the default topic)."""
    if not isinstance(topic, str):
        raise ValueError("is not a topic; expected text")
    size = len(topic.encode("utf-8", errors="replace"))
    if size > MAX_TOPIC_BYTES:
        raise ValueError(f"is too long for a topic ({size} bytes); expected at most "
                         f"{MAX_TOPIC_BYTES} UTF-8 bytes")
    return topic


# -- value checkers -----------------------------------------------------------------
# Each takes (value, where, ctx) and returns the parsed value, or records a problem
# in ctx and returns _BAD.

_BAD = object()


@dataclass
class _Ctx:
    source: str               # "node.toml" or "command line"
    base: Path                # relative paths are joined to this
    problems: list[str] = field(default_factory=list)

    def bad(self, where: str, value: Any, expected: str) -> object:
        self.problems.append(f"{self.source}: {where}: {_show(value)} {expected}")
        return _BAD


def _show(value: Any) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= 80 else text[:77] + "..."


def _endpoint_checker(allow_port_zero: bool) -> Callable[[Any, str, _Ctx], Any]:
    def check(value: Any, where: str, ctx: _Ctx) -> Any:
        if not isinstance(value, str):
            return ctx.bad(where, value, "is not an endpoint; expected a string tcp://HOST:PORT or udp://HOST:PORT")
        try:
            parse_endpoint(value, allow_port_zero=allow_port_zero)
        except ValueError as exc:
            return ctx.bad(where, value, f"is not an endpoint ({exc}); expected tcp://HOST:PORT or udp://HOST:PORT")
        return value
    return check


def _list_of(item: Callable[[Any, str, _Ctx], Any], example: str) -> Callable[[Any, str, _Ctx], Any]:
    def check(value: Any, where: str, ctx: _Ctx) -> Any:
        if not isinstance(value, (list, tuple)):
            return ctx.bad(where, value, f"is not a list; expected e.g. {example}")
        items = [item(v, f"{where}[{i}]", ctx) for i, v in enumerate(value)]
        return _BAD if _BAD in items else tuple(dict.fromkeys(items))
    return check


def _check_api(value: Any, where: str, ctx: _Ctx) -> Any:
    if not isinstance(value, str):
        return ctx.bad(where, value, f"is not HOST:PORT; expected e.g. \"{DEFAULT_API}\"")
    try:
        parse_host_port(value)
    except ValueError as exc:
        return ctx.bad(where, value, f"is not HOST:PORT ({exc}); expected e.g. \"{DEFAULT_API}\"")
    return value


def _check_path(value: Any, where: str, ctx: _Ctx) -> Any:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        return ctx.bad(where, value, "is not a path; expected a non-empty string")
    return ctx.base / Path(value).expanduser()


def _check_bool(value: Any, where: str, ctx: _Ctx) -> Any:
    if not isinstance(value, bool):
        return ctx.bad(where, value, "is not a boolean; expected true or false")
    return value


def _check_device(value: Any, where: str, ctx: _Ctx) -> Any:
    if (not isinstance(value, str) or not 0 < len(value.encode()) < 16 or "/" in value
            or not value.isprintable() or value.strip() != value or " " in value):
        return ctx.bad(where, value, 'is not a network device name; expected 1-15 bytes '
                                     'without "/" or spaces, e.g. "sporenet0"')
    return value


def _check_mtu(value: Any, where: str, ctx: _Ctx) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or not 1280 <= value <= 65_000:
        return ctx.bad(where, value, "is not an IPv6 MTU; expected an integer from 1280 "
                                     "(IPv6's minimum) to 65000, e.g. 1420")
    return value


def _check_name(value: Any, where: str, ctx: _Ctx) -> Any:
    if not isinstance(value, str) or len(value) > 64 or not value.isprintable():
        return ctx.bad(where, value, "is not a node name; expected printable text, at most 64 characters")
    return value


def _check_region(value: Any, where: str, ctx: _Ctx) -> Any:
    expected = (f"expected printable text (no control characters) of at most {MAX_REGION_BYTES} "
                "UTF-8 bytes, e.g. \"eu\"")
    if not isinstance(value, str):
        return ctx.bad(where, value, f"is not a region tag; {expected}")
    size = len(value.encode("utf-8", errors="replace"))
    if size > MAX_REGION_BYTES:
        return ctx.bad(where, value, f"is too long for a region tag ({size} bytes); {expected}")
    if not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        kind = "control" if unicodedata.category(bad) == "Cc" else "non-printable"
        return ctx.bad(where, value, f"is not a region tag (it holds the {kind} character "
                                     f"U+{ord(bad):04X}); {expected}")
    return value


def _choice(options: tuple[str, ...], what: str) -> Callable[[Any, str, _Ctx], Any]:
    def check(value: Any, where: str, ctx: _Ctx) -> Any:
        if not isinstance(value, str) or value.lower() not in options:
            return ctx.bad(where, value, f"is not a {what}; expected one of {', '.join(options)}")
        return value.lower()
    return check


def _number(integer: bool, minimum: float) -> Callable[[Any, str, _Ctx], Any]:
    kinds = (int,) if integer else (int, float)
    what = "an integer" if integer else "a number of seconds"

    def check(value: Any, where: str, ctx: _Ctx) -> Any:
        if isinstance(value, bool) or not isinstance(value, kinds) or not value >= minimum \
                or value == float("inf"):
            bound = f">= {minimum}" if integer else "> 0"
            return ctx.bad(where, value, f"is not valid; expected {what} {bound}")
        return value if integer else float(value)
    return check


_AGENT_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_CLASS_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _check_agent_name(value: Any, where: str, ctx: _Ctx) -> Any:
    if not isinstance(value, str) or not _AGENT_NAME_RE.fullmatch(value):
        return ctx.bad(where, value, "is not an agent name; expected lowercase letters, digits, "
                                     "- or _, starting with a letter, at most 32 characters")
    return value


def _check_class(value: Any, where: str, ctx: _Ctx) -> Any:
    if not isinstance(value, str) or not _CLASS_RE.fullmatch(value):
        return ctx.bad(where, value, "is not a class; expected \"package.module:ClassName\"")
    return value


def _check_table(value: Any, where: str, ctx: _Ctx) -> Any:
    if not isinstance(value, dict):
        return ctx.bad(where, value, "is not a table; expected e.g. { key = \"value\" }")
    return dict(value)


_PROBER_KEYS = {
    "interval": _number(integer=False, minimum=1e-9),
    "window": _number(integer=True, minimum=1),
    "dead_after": _number(integer=False, minimum=1e-9),
}
_SESSIONS_KEYS = {"pq": _check_bool, "pq_required": _check_bool}
_AGENT_KEYS = {
    "name": _check_agent_name,
    "class": _check_class,
    "requires": _list_of(_check_agent_name, '["router"]'),
    "options": _check_table,
}
_AGENT_FIELDS = {"name": "name", "class": "class_path", "requires": "requires", "options": "options"}


def _check_section(data: Any, where: str, ctx: _Ctx, keys: dict[str, Callable],
                   label: str) -> dict[str, Any] | object:
    if not isinstance(data, dict):
        return ctx.bad(where, data, f"is not a table; expected {label}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in keys:
            ctx.problems.append(f"{ctx.source}: {_unknown_key(key, label, keys)}")
            continue
        parsed = keys[key](value, f"{where}.{key}" if where else key, ctx)
        if parsed is not _BAD:
            out[key] = parsed
    return out


def _unknown_key(key: str, label: str, keys: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(keys), n=1)
    hint = f'; did you mean "{close[0]}"?' if close else ""
    return f'unknown key "{key}" in {label}{hint} valid keys: {", ".join(sorted(keys))}'


def _check_prober(value: Any, where: str, ctx: _Ctx) -> Any:
    out = _check_section(value, where, ctx, _PROBER_KEYS, "[prober]")
    if out is _BAD:
        return _BAD
    prober = ProberConfig(**out)
    if prober.dead_after <= prober.interval:
        ctx.problems.append(f"{ctx.source}: prober.dead_after: {prober.dead_after} must be greater "
                            f"than prober.interval ({prober.interval})")
    return prober


def _check_sessions(value: Any, where: str, ctx: _Ctx) -> Any:
    out = _check_section(value, where, ctx, _SESSIONS_KEYS, "[sessions]")
    if out is _BAD:
        return _BAD
    sessions = SessionsConfig(**out)
    if sessions.pq_required and not sessions.pq:
        return ctx.bad(f"{where}.pq_required", True, "needs sessions.pq = true (post-quantum "
                                                     "keys cannot be required with pq off)")
    return sessions


def _check_agents(value: Any, where: str, ctx: _Ctx) -> Any:
    if not isinstance(value, list):
        return ctx.bad(where, value, "is not a list of tables; expected [[agents]] sections")
    specs, before = [], len(ctx.problems)
    for i, item in enumerate(value):
        label, item_before = f"[[agents]] #{i + 1}", len(ctx.problems)
        out = _check_section(item, f"agents[{i}]", ctx, _AGENT_KEYS, label)
        if out is _BAD:
            continue
        for k in (k for k in ("name", "class") if k not in item):
            ctx.problems.append(f'{ctx.source}: agents[{i}]: missing key "{k}" in {label}')
        if len(ctx.problems) == item_before:
            specs.append(AgentSpec(**{_AGENT_FIELDS[k]: v for k, v in out.items()}))
    names = [s.name for s in specs]
    for name in sorted({n for n in names if names.count(n) > 1}):
        ctx.problems.append(f'{ctx.source}: agents: name "{name}" is used more than once')
    for spec in specs:
        if spec.name in spec.requires:
            ctx.problems.append(f'{ctx.source}: agents: "{spec.name}" requires itself')
    return tuple(specs) if len(ctx.problems) == before else _BAD


def _check_topics(value: Any, where: str, ctx: _Ctx) -> Any:
    if not isinstance(value, dict):
        return ctx.bad(where, value, 'is not a table; expected [topics] with lines like '
                                     'chat = ["*"] or control = ["600:1234::/64"]')
    before, out = len(ctx.problems), {}
    for topic, senders in value.items():
        shown = topic if len(topic) <= 40 else topic[:37] + "..."
        key = f"{where}.{shown}" if re.fullmatch(r"[A-Za-z0-9_.-]+", shown) \
            else f"{where}.{json.dumps(shown)}"
        try:
            check_topic_name(topic)
        except ValueError as exc:
            ctx.problems.append(f"{ctx.source}: {key}: topic name {exc}")
            continue
        try:
            out[topic] = parse_senders(senders)
        except ValueError as exc:
            text = str(exc)
            if text.startswith("["):     # an item: name it as topics.x[1]
                ctx.problems.append(f"{ctx.source}: {key}{text}")
            else:
                ctx.bad(key, senders, text)
    return out if len(ctx.problems) == before else _BAD


_CONTRACT_KEYS = {"file": _check_path, "ledger": _check_path}


def _check_contract(value: Any, where: str, ctx: _Ctx) -> Any:
    if isinstance(value, str):
        path = _check_path(value, where, ctx)
        return _BAD if path is _BAD else ContractConfig(file=path)
    if not isinstance(value, dict):
        return ctx.bad(where, value, 'is not a contract; expected a path "lab.json" or a '
                                     'table [contract] with file = "lab.json" and/or '
                                     'ledger = "DIR"')
    before = len(ctx.problems)
    out = _check_section(value, where, ctx, _CONTRACT_KEYS, "[contract]")
    if len(ctx.problems) != before or out is _BAD:
        return _BAD
    if not out:
        return ctx.bad(where, value, 'names no contract; expected file = "lab.json" and/or '
                                     'ledger = "DIR"')
    return ContractConfig(**out)


_TOP_KEYS: dict[str, Callable[[Any, str, _Ctx], Any]] = {
    "key_file": _check_path,
    "listen": _list_of(_endpoint_checker(allow_port_zero=True), f'["{DEFAULT_LISTEN}"]'),
    "peers": _list_of(_endpoint_checker(allow_port_zero=False), '["tcp://192.0.2.7:8991"]'),
    "api": _check_api,
    "run_dir": _check_path,
    "name": _check_name,
    "region": _check_region,
    "tun": _check_bool,
    "tun_device": _check_device,
    "tun_mtu": _check_mtu,
    "log_level": _choice(LOG_LEVELS, "log level"),
    "log_format": _choice(LOG_FORMATS, "log format"),
    "agents": _check_agents,
    "prober": _check_prober,
    "sessions": _check_sessions,
    "topics": _check_topics,
    "unknown_topics": _choice(UNKNOWN_TOPICS, "policy for topics without a rule"),
    "contract": _check_contract,
}


def config_from_dict(data: Mapping[str, Any], *, source: str = "config",
                     base: Path | None = None) -> NodeConfig:
    """Build a ``NodeConfig`` from parsed TOML; raise ``ConfigError`` listing every fault."""
    ctx = _Ctx(source, base if base is not None else Path.cwd())
    values = _check_section(dict(data), "", ctx, _TOP_KEYS, "the top level")
    if ctx.problems:
        raise ConfigError(ctx.problems)
    return NodeConfig(**values)


def load_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read and check a TOML config file; raise ``ConfigError``."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"no config file at {path}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read config file {path}: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return config_from_dict(data, source=str(path), base=path.parent)


_CLI_FLAGS = {"key_file": "--key-file", "listen": "--listen", "peers": "--peer", "api": "--api",
              "run_dir": "--run-dir", "name": "--name", "region": "--region",
              "tun": "--tun/--no-tun", "tun_device": "--tun-device", "tun_mtu": "--tun-mtu",
              "contract": "--contract",
              "log_level": "--log-level", "log_format": "--log-format"}


def merge_cli(config: NodeConfig, **overrides: Any) -> NodeConfig:
    """Return ``config`` with command-line values replacing file values.

    A value of ``None`` or an empty tuple/list means "flag not given" and keeps the
    file's value. ``listen`` and ``peers`` replace the file's lists. Raises
    ``ConfigError`` for bad values, ``TypeError`` for a key that is not a CLI flag.
    """
    ctx = _Ctx("command line", Path.cwd())
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in _CLI_FLAGS:
            raise TypeError(f"merge_cli() got an unknown option {key!r}")
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        if key == "contract":  # --contract FILE replaces the file, keeps [contract] ledger
            path = _check_path(os.fspath(value), _CLI_FLAGS[key], ctx)
            if path is not _BAD:
                changes[key] = ContractConfig(path, config.contract.ledger
                                              if config.contract else None)
            continue
        if key in ("listen", "peers"):
            check = _endpoint_checker(allow_port_zero=(key == "listen"))
            items = [check(v, _CLI_FLAGS[key], ctx) for v in value]
            parsed = _BAD if _BAD in items else tuple(dict.fromkeys(items))
        else:
            parsed = _TOP_KEYS[key](os.fspath(value) if isinstance(value, os.PathLike) else value,
                                    _CLI_FLAGS[key], ctx)
        if parsed is not _BAD:
            changes[key] = parsed
    if ctx.problems:
        raise ConfigError(ctx.problems)
    return dataclasses.replace(config, **changes)

