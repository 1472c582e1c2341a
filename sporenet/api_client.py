"""Synchronous clients of a node's local HTTP API (``sporenet/transports/http_api.py``).

``ApiClient`` speaks JSON (``get``/``post`` of any path); the CLI and ``local_mesh``
use it. ``Client`` (``from sporenet import Client``) is the documented Python API
on top of it: messages, replies, pings, topic rules, routes, status, with typed
results (frozen dataclasses) and typed errors (``docs/messages.md``).
Plain ``urllib``, no proxies (a local API must never go through ``$http_proxy``).
Every failure is an ``ApiClientError`` whose message says what to do next:

- ``NodeUnreachable``: no node answers at the address (or not in time);
- ``ApiRequestError``: the node refused the request (``.status``: 400, 404, ...);
- ``DeliveryFailed``: a message was not acknowledged (``.reason``: ``deadline``,
  ``refused``);
- ``PingFailed``: a ping got no answer (``.reason``: ``timeout``, ``unreachable``);
- ``MessageTooLarge``: over ``MAX_API_MESSAGE`` bytes (the HTTP body limit).

JSON shapes (what ``sporenet up``'s api agent serves; see ``docs/config.md``)::

    GET /v1/status -> {"node_id": hex, "address": str, "name": str, "uptime_s": float,
                       "agents": {name: state}, "listen": [endpoint, ...],
                       "version": str}
    GET /v1/peers  -> {"peers": [{"node_id": hex, "address": str, "endpoint": str,
                       "outbound": bool, "name": str, "rtt_ms": float | None,
                       "jitter_ms": float | None, "loss": float (0..1) | None,
                       "cost": float | None, "since_s": float}]}
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, fields
from typing import Any, Iterable

from .config import DEFAULT_API, parse_host_port

# The HTTP API takes request bodies of at most 64 KiB (sporenet/transports/http_api.py), and a
# message travels in it as base64 (4/3 of its size) plus a few hundred bytes of JSON.
MAX_API_MESSAGE = 46 * 1024    # 62,806 bytes of base64; a 255-byte topic fits beside it


class ApiClientError(Exception):
    """The node's API could not be reached or answered with an error."""


class NodeUnreachable(ApiClientError):
    """No sporenet node answers at the API address (not running, wrong port, too slow)."""


class ApiRequestError(ApiClientError):
    """The node answered with an error status: the request does not fit (``status``)."""

    def __init__(self, message: str, status: int, detail: str) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail      # the node's own error text


class DeliveryFailed(ApiClientError):
    """A message was not acknowledged by its receiver before its deadline, or refused."""

    def __init__(self, message: str, msg_id: int, reason: str) -> None:
        super().__init__(message)
        self.msg_id = msg_id
        self.reason = reason      # "deadline", "refused", or "timeout" (no answer in time)


class MessageTooLarge(ApiClientError):
    """The message does not fit one request of the local HTTP API (``MAX_API_MESSAGE``)."""


class PingFailed(ApiClientError):
    """A ping got no pong (``reason``: ``timeout``, ``unreachable``)."""

    def __init__(self, message: str, to: str, reason: str) -> None:
        super().__init__(message)
        self.to = to
        self.reason = reason


class ApiClient:
    """Talks to the API of the node at ``api`` ("HOST:PORT")."""

    def __init__(self, api: str = DEFAULT_API, *, timeout: float = 5.0) -> None:
        try:
            host, port = parse_host_port(api, allow_port_zero=False)
        except ValueError as exc:
            raise ApiClientError(f'bad API address "{api}": {exc}; '
                                 f'expected e.g. {DEFAULT_API}') from None
        self.api = api
        self.timeout = timeout
        self._base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __repr__(self) -> str:
        return f"ApiClient({self.api!r})"

    def status(self) -> dict[str, Any]:
        return self.get("/v1/status")

    def peers(self) -> dict[str, Any]:
        return self.get("/v1/peers")

    def get(self, path: str, **params: str) -> dict[str, Any]:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return self._request(urllib.request.Request(self._base + path + query, method="GET"))

    def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body or {}).encode("utf-8")
        req = urllib.request.Request(self._base + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        return self._request(req)

    def _request(self, req: urllib.request.Request) -> dict[str, Any]:
        what = f"{req.get_method()} {urllib.parse.urlsplit(req.full_url).path}"
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = _error_text(exc)
            raise ApiRequestError(f"the node at {self.api} answered {exc.code} to {what}: "
                                  f"{detail}", exc.code, detail) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except (TimeoutError, ConnectionError) as exc:
            raise self._unreachable(exc) from None
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ApiClientError(f"the server at {self.api} sent a reply to {what} that is not "
                                 "a JSON object: is something other than sporenet listening there?")
        return data

    def _unreachable(self, reason: object) -> ApiClientError:
        if isinstance(reason, TimeoutError):
            return NodeUnreachable(f"the node at {self.api} did not answer within "
                                   f"{self.timeout:g}s")
        if isinstance(reason, ConnectionRefusedError):
            return NodeUnreachable(f"no sporenet node answers on {self.api}: is `sporenet up` "
                                   f"running with --api {self.api}?")
        detail = getattr(reason, "strerror", None) or reason
        return NodeUnreachable(f"cannot reach the node API at {self.api}: {detail}")


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
        return str(body["error"])
    except (ValueError, KeyError, TypeError, OSError):
        return exc.reason if isinstance(exc.reason, str) else "error"


# -- the Python API ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """A message this node received. ``src``: the sender's overlay address."""

    src: str
    topic: str
    data: bytes
    msg_id: int
    reply_to: int = 0          # non-zero: the msg_id (of a message we sent) this answers

    @property
    def text(self) -> str:
        """``data`` as UTF-8 text (undecodable bytes replaced)."""
        return self.data.decode("utf-8", errors="replace")

    @property
    def is_reply(self) -> bool:
        return self.reply_to != 0


@dataclass(frozen=True, slots=True)
class Sent:
    """A message this node sent: ``state`` is ``pending``, ``delivered`` or ``failed``."""

    msg_id: int
    to: str
    state: str
    reason: str | None = None  # when failed: "deadline" or "refused"

    @property
    def delivered(self) -> bool:
        return self.state == "delivered"


@dataclass(frozen=True, slots=True)
class PingResult:
    """An answered ping: round trip in milliseconds, routed hops the answer took."""

    to: str
    rtt_ms: float
    hops: int


@dataclass(frozen=True, slots=True)
class TopicRule:
    """Who may send on ``topic``: ``senders`` None = anyone, ``()`` = nobody.

    ``rule`` False: no rule is set, the topic follows ``accept_unknown_topics`` (it is
    listed because that default refused something on it)."""

    topic: str
    senders: tuple[str, ...] | None
    rule: bool = True
    refused_chunks: int = 0
    last_refused_from: str | None = None


@dataclass(frozen=True, slots=True)
class Topics:
    accept_unknown_topics: bool
    refused_chunks: int
    rules: tuple[TopicRule, ...]

    def get(self, topic: str) -> TopicRule | None:
        return next((r for r in self.rules if r.topic == topic), None)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node_id: str
    address: str
    name: str = ""
    region: str = ""
    version: str = ""
    uptime_s: float = 0.0
    agents: dict[str, str] | None = None
    listen: tuple[str, ...] = ()
    peers: int = 0


@dataclass(frozen=True, slots=True)
class Peer:
    node_id: str
    address: str
    endpoint: str = ""
    outbound: bool = False
    name: str = ""
    rtt_ms: float | None = None
    jitter_ms: float | None = None
    loss: float | None = None
    cost: float | None = None
    since_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Route:
    """One route the router knows (``selected``: the one it forwards on)."""

    destination: str            # node id (hex)
    address: str
    next_hop: str               # neighbour's node id (hex)
    metric: int = 0
    seqno: int = 0
    age: float = 0.0
    region: str = ""
    crossed: bool = False
    feasible: bool = True
    selected: bool = False


@dataclass(frozen=True, slots=True)
class RouteChoice:
    next_hop: str
    metric: int = 0
    seqno: int = 0
    region: str = ""
    crossed: bool = False
    ruled_out: str | None = None   # for alternatives: the rule that ruled it out


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why the router forwards to ``destination`` the way it does (``sporenet explain``)."""

    destination: str
    selected: RouteChoice | None
    alternatives: tuple[RouteChoice, ...] = ()
    last_change: float | None = None
    reason: str | None = None


def _build(cls: type, row: dict[str, Any], **extra: Any) -> Any:
    """``cls`` from a JSON row, ignoring keys it does not know (the API may grow)."""
    known = {f.name for f in fields(cls)}
    values = {k: v for k, v in row.items() if k in known}
    values.update(extra)
    return cls(**values)


def _topics(data: dict[str, Any]) -> Topics:
    rules = tuple(_build(TopicRule, r, senders=None if r.get("senders") is None
                         else tuple(r["senders"])) for r in data.get("topics", ()))
    return Topics(bool(data.get("accept_unknown_topics", True)),
                  int(data.get("refused_chunks", 0)), rules)


class Client:
    """The Python API of a running node (``sporenet up``), over its local HTTP API.

    >>> from sporenet import Client
    >>> node = Client("127.0.0.1:8990")            # default: $SPORENET_API or 127.0.0.1:8990
    >>> node.send(address, b"hello", topic="chat")  # waits for the receiver's ack
    >>> for m in node.messages(topic="chat", wait=10): node.reply(m, b"hi back")
    >>> node.ping(address).rtt_ms

    Every method blocks the calling thread only; failures raise ``ApiClientError``
    subclasses (module docstring). Safe to share between threads.
    """

    POLL_MIN, POLL_MAX = 0.01, 0.1   # seconds between polls while waiting

    def __init__(self, api: str | None = None, *, timeout: float = 5.0) -> None:
        self.api_client = ApiClient(api or os.environ.get("SPORENET_API") or DEFAULT_API,
                                    timeout=timeout)
        self.api = self.api_client.api

    def __repr__(self) -> str:
        return f"Client({self.api!r})"

    # -- node --------------------------------------------------------------------

    def status(self) -> NodeStatus:
        d = self.api_client.status()
        return _build(NodeStatus, d, listen=tuple(d.get("listen", ())),
                      agents=dict(d.get("agents", {})))

    def peers(self) -> list[Peer]:
        return [_build(Peer, p) for p in self.api_client.peers().get("peers", [])]

    def routes(self, *, selected_only: bool = False) -> list[Route]:
        rows = [_build(Route, r) for r in self.api_client.get("/v1/routes").get("routes", [])]
        return [r for r in rows if r.selected] if selected_only else rows

    def explain(self, destination: str) -> Explanation:
        """``destination``: a node id (or a unique prefix of one) or an overlay address."""
        d = self.api_client.get("/v1/explain", destination=destination)
        sel = d.get("selected")
        return Explanation(d.get("destination", ""), None if sel is None else _build(RouteChoice, sel),
                           tuple(_build(RouteChoice, a) for a in d.get("alternatives", ())),
                           d.get("last_change"), d.get("reason"))

    # -- messages ----------------------------------------------------------------

    def send(self, to: str, data: bytes | str, *, topic: str = "", deadline: float = 10.0,
             wait: bool = True, reply_to: int = 0) -> Sent:
        """Send ``data`` to ``to`` (overlay address or node id) on ``topic``.

        The node chunks it, retransmits unacknowledged chunks and gives up after
        ``deadline`` seconds. ``wait``: block until the receiver acknowledged every
        chunk and return ``Sent(state="delivered")``, or raise ``DeliveryFailed``;
        otherwise return at once (``state="pending"``; see ``wait_sent``)."""
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if len(payload) > MAX_API_MESSAGE:
            raise MessageTooLarge(f"a message of {len(payload)} bytes does not fit the local API "
                                  f"(at most {MAX_API_MESSAGE} bytes per message); split it, "
                                  "or send from an agent inside the node (up to 1 MiB)")
        started = self.api_client.post("/v1/messages", {
            "to": to, "topic": topic, "deadline": deadline, "reply_to": reply_to,
            "data_b64": base64.b64encode(payload).decode("ascii")})
        sent = Sent(int(started["id"]), to, "pending")
        return self.wait_sent(sent, timeout=deadline + 2.0) if wait else sent

    def sent_state(self, sent: Sent | int) -> Sent:
        """The current state of a message sent with ``wait=False``."""
        msg_id, to = (sent.msg_id, sent.to) if isinstance(sent, Sent) else (int(sent), "")
        res = self.api_client.get("/v1/message", id=str(msg_id))
        return Sent(msg_id, to, str(res.get("state")), res.get("reason"))

    def wait_sent(self, sent: Sent | int, timeout: float = 12.0) -> Sent:
        """Block until the message is delivered (returned) or failed (``DeliveryFailed``)."""
        res = self._poll(lambda: _done(self.sent_state(sent)), timeout)
        if res is None:
            msg_id = sent.msg_id if isinstance(sent, Sent) else int(sent)
            raise DeliveryFailed(f"message {msg_id} still pending after {timeout:g}s; "
                                 "wait longer or check `sporenet routes`", msg_id, "timeout")
        if not res.delivered:
            hint = {"deadline": "no route, the receiver is down, or its topic rules refused "
                                "this sender (`sporenet topics` on the receiver)",
                    "refused": "the receiver refused it (too big for it)"}.get(
                        res.reason or "", "see the node's log")
            raise DeliveryFailed(f"message {res.msg_id} to {res.to or '?'} not delivered: "
                                 f"{res.reason or res.state} ({hint})", res.msg_id,
                                 res.reason or res.state)
        return res

    def messages(self, topic: str | None = None, *, wait: float = 0.0,
                 limit: int = 100) -> list[Message]:
        """Take up to ``limit`` received messages (on ``topic``; None: any) from the
        node's inbox. ``wait`` > 0: block up to that many seconds for a first one
        (polling; an empty list if none came)."""
        params = {"limit": str(limit)}
        if topic is not None:
            params["topic"] = topic

        def take() -> list[Message] | None:
            rows = self.api_client.get("/v1/messages", **params).get("messages", [])
            return [Message(r["from"], r["topic"], base64.b64decode(r["data_b64"]),
                            int(r["msg_id"]), int(r.get("reply_to") or 0)) for r in rows] or None

        return self._poll(take, wait) or []

    def receive(self, topic: str | None = None, *, timeout: float = 10.0) -> Message | None:
        """One message (on ``topic``), waiting up to ``timeout`` seconds; None if none came."""
        got = self.messages(topic, wait=timeout, limit=1)
        return got[0] if got else None

    def reply(self, message: Message, data: bytes | str, *, deadline: float = 10.0,
              wait: bool = True) -> Sent:
        """Answer ``message``: back to its sender, on its topic, with ``reply_to`` set
        (the sender sees ``Message.reply_to == message.msg_id``)."""
        return self.send(message.src, data, topic=message.topic, deadline=deadline, wait=wait,
                         reply_to=message.msg_id)

    # -- ping --------------------------------------------------------------------

    def ping(self, to: str, *, timeout: float = 5.0) -> PingResult:
        """One overlay echo to ``to`` (address or node id); raises ``PingFailed``."""
        started = self.api_client.post("/v1/ping", {"to": to, "timeout": timeout})

        def answer() -> dict[str, Any] | None:
            res = self.api_client.get("/v1/ping", id=str(started["id"]))
            return res if res.get("state") != "pending" else None

        res = self._poll(answer, timeout + 2.0) or {"state": "failed", "reason": "timeout"}
        if res.get("state") != "ok":
            reason = str(res.get("reason") or res.get("state"))
            raise PingFailed(f"no pong from {to}: {reason} (is there a route? "
                             "`sporenet routes`)", to, reason)
        return PingResult(to, float(res["rtt_ms"]), int(res["hops"]))

    # -- topic rules -------------------------------------------------------------

    def topics(self) -> Topics:
        """The node's topic rules and what they refused."""
        return _topics(self.api_client.get("/v1/topics"))

    def allow(self, topic: str, senders: Iterable[str] | None) -> Topics:
        """Accept ``topic`` only from ``senders`` (overlay addresses, networks such as
        ``"600:1234::/64"``, node ids); None = anyone, ``[]`` = nobody. Replaces the
        topic's rule until the node restarts (``[topics]`` in the config persists)."""
        body = {"topic": topic, "senders": None if senders is None else list(senders)}
        return _topics(self.api_client.post("/v1/topics", body))

    def close_topic(self, topic: str) -> Topics:
        """Refuse ``topic`` from everyone."""
        return self.allow(topic, [])

    def reset_topic(self, topic: str) -> Topics:
        """Drop ``topic``'s rule: it follows ``accept_unknown_topics`` again."""
        return _topics(self.api_client.post("/v1/topics", {"topic": topic, "reset": True}))

    # -- helpers -----------------------------------------------------------------

    def _poll(self, fetch: Any, timeout: float) -> Any:
        """``fetch()`` until it returns something truthy or ``timeout`` seconds pass
        (at least one call); the interval grows from POLL_MIN to POLL_MAX."""
        deadline = time.monotonic() + max(0.0, timeout)
        interval = self.POLL_MIN
        while True:
            got = fetch()
            left = deadline - time.monotonic()
            if got or left <= 0:
                return got
            time.sleep(min(interval, left))
            interval = min(interval * 2, self.POLL_MAX)


def _done(sent: Sent) -> Sent | None:
    return None if sent.state == "pending" else sent
