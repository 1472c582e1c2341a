"""The user's message API over HTTP: send, receive, reply, ping, topic rules, sessions
(handlers for the api agent; the shapes are in ``docs/messages.md``).

Handlers run in the HTTP server's thread and ``ask`` the overlay agent, which is
allowed there (it is not an actor). Destinations are an overlay address or a full
64-hex-digit node id. Payloads travel as UTF-8 text (``data``) or base64
(``data_b64``); received messages carry both when the bytes are text.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from typing import Any, Callable

from sporenet.agents.overlay import (GetResult, GetSessions, GetTopics, SendMessage, SetTopic,
                                     StartPing, StartTrace, TakeMessages)
from sporenet.config import check_topic_name, parse_senders
from sporenet.protocols.identity import address_of_node_id
from sporenet.transports.http_api import ApiError

ASK_TIMEOUT = 10.0


def resolve_destination(to: str) -> str:
    text = to.strip()
    if len(text) == 64:
        try:
            return str(address_of_node_id(bytes.fromhex(text)))
        except ValueError:
            pass
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise ApiError(400, f"destination {to!r} is neither an overlay address nor a "
                            "64-hex-digit node id") from None


class UserApi:
    def __init__(self, overlay_ref: Callable[[], Any]) -> None:
        self._ref = overlay_ref

    def routes(self) -> dict[str, Callable[..., dict]]:
        return {"POST /v1/messages": self.post_message, "GET /v1/messages": self.get_messages,
                "GET /v1/message": self.get_message, "POST /v1/ping": self.post_ping,
                "GET /v1/ping": self.get_ping, "POST /v1/trace": self.post_trace,
                "GET /v1/trace": self.get_trace, "GET /v1/topics": self.get_topics,
                "POST /v1/topics": self.post_topics, "GET /v1/sessions": self.get_sessions}

    def _ask(self, msg: Any) -> Any:
        out = self._ref().ask(msg, timeout=ASK_TIMEOUT)
        if isinstance(out, dict) and "error" in out:
            raise ApiError(400, out["error"])
        return out

    def post_message(self, to: str, topic: str = "", data: str | None = None,
                     data_b64: str | None = None, deadline: float = 30.0,
                     reply_to: int | str = 0) -> dict:
        """``reply_to``: the ``msg_id`` of a received message this answers (send it
        back to that message's ``from``, usually on its topic)."""
        if (data is None) == (data_b64 is None):
            raise ApiError(400, "give exactly one of data (text) or data_b64 (base64)")
        try:
            payload = data.encode("utf-8") if data is not None else base64.b64decode(data_b64,
                                                                                     validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "data_b64 is not valid base64") from None
        if not isinstance(topic, str):
            raise ApiError(400, f"topic {topic!r} is not text")
        reply = _int(reply_to, "reply_to")
        if not 0 <= reply < 2 ** 64:
            raise ApiError(400, f"reply_to {reply} is not a message id (0 .. 2**64-1)")
        return self._ask(SendMessage(resolve_destination(to), topic, payload,
                                     _float(deadline, "deadline"), reply))

    def get_message(self, id: str) -> dict:
        return self._ask(GetResult("message", _int(id)))

    def get_messages(self, topic: str | None = None, limit: str = "100") -> dict:
        taken = self._ask(TakeMessages(topic, _int(limit, "limit")))
        return {"messages": [_render(m) for m in taken]}

    def post_ping(self, to: str, timeout: float = 5.0) -> dict:
        return self._ask(StartPing(resolve_destination(to), _float(timeout, "timeout")))

    def get_ping(self, id: str) -> dict:
        return self._ask(GetResult("ping", _int(id)))

    def post_trace(self, to: str, timeout: float = 2.0) -> dict:
        """Trace the path to ``to``; ``GET /v1/trace?id=`` gives ``{"state", "rtt_ms",
        "truncated", "hops"}`` (hops as in ``/v1/explain``'s ``path``)."""
        return self._ask(StartTrace(resolve_destination(to), _float(timeout, "timeout")))

    def get_trace(self, id: str) -> dict:
        return self._ask(GetResult("trace", _int(id)))

    def get_topics(self) -> dict:
        return self._ask(GetTopics())

    def get_sessions(self) -> dict:
        """``{"sessions": [{"peer" (node id), "peer_key", "address", "state", "age", "key_age", "rekeys",
        "bytes_in", "bytes_out", "replay_drops", "pq", "initiator", "queued"}],
        "counters": {name: n}, "guard": {...}, "now": float}``: ``guard`` is the
        handshake flood guard (under load or not and since when, its queue, DH
        operations, initiations by outcome), ``now`` the node's monotonic clock."""
        return self._ask(GetSessions())

    def post_topics(self, topic: str, senders: Any = (), reset: bool = False) -> dict:
        """``senders``: a list (``[]`` = nobody), ``null`` or ``["*"]`` = anyone;
        ``reset``: drop the rule, the topic follows ``accept_unknown_topics`` again."""
        try:
            check_topic_name(topic)
        except ValueError as exc:
            raise ApiError(400, f"topic {topic!r} {exc}") from None
        if not isinstance(reset, bool):
            raise ApiError(400, "reset must be true or false")
        if reset:
            return self._ask(SetTopic(topic, None, reset=True))
        if senders == ():
            raise ApiError(400, 'give senders: a list of senders, [] for nobody, or null or '
                                '["*"] for anyone (or "reset": true to drop the rule)')
        try:
            parsed = parse_senders(senders)
        except ValueError as exc:
            raise ApiError(400, f"senders {exc}") from None
        return self._ask(SetTopic(topic, parsed))


def _int(text: Any, what: str = "id") -> int:
    if isinstance(text, bool):
        raise ApiError(400, f"{what}: {text!r} is not an integer")
    try:
        return int(text)
    except (TypeError, ValueError):
        raise ApiError(400, f"{what}: {text!r} is not an integer") from None


def _float(text: Any, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ApiError(400, f"{what}: {text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise ApiError(400, f"{what}: {text!r} must be a positive number of seconds")
    return value


def _render(m: dict) -> dict:
    out = {k: v for k, v in m.items() if k != "data"}
    out["data_b64"] = base64.b64encode(m["data"]).decode()
    try:
        out["data"] = m["data"].decode("utf-8")
    except UnicodeDecodeError:
        pass
    return out
