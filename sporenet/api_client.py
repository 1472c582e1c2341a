"""A small synchronous client of a node's local HTTP API (``transports/http_api.py``).

Used by the CLI (``sporenet status``, ``sporenet peers``) and by ``local_mesh``.
Plain ``urllib``, no proxies (a local API must never go through ``$http_proxy``).
Every failure is an ``ApiClientError`` whose message says what to do next.

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

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .config import DEFAULT_API, parse_host_port


class ApiClientError(Exception):
    """The node's API could not be reached or answered with an error."""


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
            raise ApiClientError(f"the node at {self.api} answered {exc.code} to {what}: "
                                 f"{_error_text(exc)}") from None
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
            return ApiClientError(f"the node at {self.api} did not answer within {self.timeout:g}s")
        if isinstance(reason, ConnectionRefusedError):
            return ApiClientError(f"no sporenet node answers on {self.api}: is `sporenet up` "
                                  f"running with --api {self.api}?")
        detail = getattr(reason, "strerror", None) or reason
        return ApiClientError(f"cannot reach the node API at {self.api}: {detail}")


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
        return str(body["error"])
    except (ValueError, KeyError, TypeError, OSError):
        return exc.reason if isinstance(exc.reason, str) else "error"
