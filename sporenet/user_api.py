"""The user's message API over HTTP: send, receive, ping (handlers for the api agent).

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

from sporenet.agents.overlay import GetResult, SendMessage, StartPing, TakeMessages
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
                "GET /v1/ping": self.get_ping}

    def _ask(self, msg: Any) -> Any:
        out = self._ref().ask(msg, timeout=ASK_TIMEOUT)
        if isinstance(out, dict) and "error" in out:
            raise ApiError(400, out["error"])
        return out

    def post_message(self, to: str, topic: str = "", data: str | None = None,
                     data_b64: str | None = None, deadline: float = 30.0) -> dict:
        if (data is None) == (data_b64 is None):
            raise ApiError(400, "give exactly one of data (text) or data_b64 (base64)")
        try:
            payload = data.encode("utf-8") if data is not None else base64.b64decode(data_b64,
                                                                                     validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "data_b64 is not valid base64") from None
        return self._ask(SendMessage(resolve_destination(to), topic, payload, float(deadline)))

    def get_message(self, id: str) -> dict:
        return self._ask(GetResult("message", _int(id)))

    def get_messages(self, topic: str | None = None, limit: str = "100") -> dict:
        taken = self._ask(TakeMessages(topic, _int(limit)))
        return {"messages": [_render(m) for m in taken]}

    def post_ping(self, to: str, timeout: float = 5.0) -> dict:
        return self._ask(StartPing(resolve_destination(to), float(timeout)))

    def get_ping(self, id: str) -> dict:
        return self._ask(GetResult("ping", _int(id)))


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, f"{text!r} is not an integer") from None


def _render(m: dict) -> dict:
    out = {k: v for k, v in m.items() if k != "data"}
    out["data_b64"] = base64.b64encode(m["data"]).decode()
    try:
        out["data"] = m["data"].decode("utf-8")
    except UnicodeDecodeError:
        pass
    return out
