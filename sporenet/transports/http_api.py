"""The node's local HTTP JSON API (DESIGN.md §6): asyncio and h11, in its own thread.

Driven by ``start()`` and ``stop()`` from any thread; requests are answered by
plain callables from a route table.

Rules:
- One runtime per thread: the asyncio loop, the listening socket and every
  connection belong to the server thread. Handlers run in that thread too, so they
  must be quick and must not block: they read a snapshot that another thread
  publishes (for example the api agent), they never ``ask`` an actor.
- Routes are ``"METHOD /path"`` keys (a bare ``"/path"`` means GET). A GET handler
  gets the query parameters as keyword arguments (strings); a POST handler gets
  the keys of a JSON object body. Parameters that do not fit the handler's
  signature are a 400, not a crash.
- Every answer is JSON, errors included: ``{"error": "..."}`` with 400, 403, 404,
  405, 413, 415 or 500. ``GET /metrics`` is Prometheus text when a metrics source
  is given or ``prometheus_client`` is installed.
- Bounded: at most ``MAX_CONNECTIONS`` open connections (more are closed at once and
  counted), ``REQUEST_TIMEOUT`` to send each request, 16 KB of request head, 64 KB of
  body. HTTP/1.1 parsing is h11's (keep-alive, pipelining, errors as 400/431).
- Why not aiohttp: it cost 12 MB of every node's ~60 MB at idle, for a loopback API
  of a dozen JSON routes (bench/README.md "Idle memory").
- The API has no authentication: it is meant for loopback. Two browser-borne
  attacks are closed anyway: POST requires ``Content-Type: application/json`` (a
  page cannot send that cross-origin without a preflight we never grant), and a
  Host header that is neither an IP literal nor ``localhost`` is refused (DNS
  rebinding).
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import json
import threading
from typing import Any, Callable, Mapping

from urllib.parse import parse_qsl, unquote

import h11
import structlog

from .log_limit import LimitedLogger

log = structlog.get_logger("sporenet.api")
_handler_log = LimitedLogger(log)  # a client can make a handler fail on every request

Handler = Callable[..., Mapping[str, Any]]
METHODS = ("GET", "POST")
_MAX_BODY = 64 * 1024
_MAX_HEAD = 16 * 1024        # request line and headers
MAX_CONNECTIONS = 64         # open at once; more are closed at once (counted ``refused``)
REQUEST_TIMEOUT = 10.0       # s a connection may take to send one request (slowloris)


class ApiError(Exception):
    """Raised by a handler to answer with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ApiServerError(Exception):
    """The API server could not start (for example, the port is taken)."""


def routes_of(provider: object) -> dict[str, Handler]:
    """Route table from a provider object's public methods named ``get_<name>`` or
    ``post_<name>``: ``get_status`` -> ``GET /v1/status``, ``post_ping`` ->
    ``POST /v1/ping``; ``<name>`` is used as is (``get_peer_stats`` -> ``/v1/peer_stats``)."""
    table: dict[str, Handler] = {}
    for attr in dir(provider):
        method, _, name = attr.partition("_")
        if method.upper() in METHODS and name and not attr.startswith("_"):
            fn = getattr(provider, attr)
            if callable(fn):
                table[f"{method.upper()} /v1/{name}"] = fn
    return table


def _route_key(key: str) -> tuple[str, str]:
    method, _, path = key.strip().rpartition(" ")
    method = (method or "GET").upper()
    if method not in METHODS or not path.startswith("/"):
        raise ValueError(f"bad route {key!r}: expected \"/path\" or \"GET|POST /path\"")
    return method, path


def _default_metrics() -> Callable[[], bytes] | None:
    try:
        import prometheus_client
    except ImportError:
        return None
    return prometheus_client.generate_latest


def _host_allowed(host_header: str | None) -> bool:
    if not host_header:
        return True  # HTTP/1.0 clients; a browser always sends Host
    host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class ApiServer:
    """A JSON API on ``host:port`` (port 0: the kernel picks; ``start()`` says which)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 handlers: Mapping[str, Handler] | object | None = None, *,
                 metrics: Callable[[], bytes | str] | None = None) -> None:
        self.host, self.port = host, port
        self._metrics = metrics if metrics is not None else _default_metrics()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: OSError | None = None
        self._bound: tuple[str, int] | None = None
        self._routes: dict[tuple[str, str], Handler] = {}
        self._conns: set[asyncio.Task] = set()  # server thread only
        self.refused = 0
        table = handlers if isinstance(handlers, Mapping) or handlers is None else routes_of(handlers)
        for key, fn in (table or {}).items():
            self.add_route(key, fn)

    def add_route(self, key: str, handler: Handler) -> None:
        """Add ``"GET /v1/x"`` (or ``"/v1/x"``, ``"POST /v1/x"``); only before ``start()``."""
        if self._thread is not None:
            raise RuntimeError("routes are fixed once the server has started")
        self._routes[_route_key(key)] = handler

    @property
    def routes(self) -> list[str]:
        return sorted(f"{m} {p}" for m, p in self._routes)

    @property
    def address(self) -> str:
        """The bound ``HOST:PORT`` (IPv6 in brackets), for clients and node.json."""
        if self._bound is None:
            raise RuntimeError("the API server is not running")
        host, port = self._bound
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self, timeout: float = 10.0) -> tuple[str, int]:
        """Bind and serve in a new thread; return the bound ``(host, port)``."""
        if self._thread is not None:
            raise RuntimeError("the API server was already started")
        self._thread = threading.Thread(target=self._run, name="sporenet-api", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ApiServerError(f"the API server on {self.host}:{self.port} did not start "
                                 f"within {timeout:.0f}s")
        if self._error is not None or self._bound is None:
            self._thread.join(timeout)
            reason = self._error.strerror if self._error else "unknown error"
            raise ApiServerError(f"cannot serve the API on {self.host}:{self.port}: {reason}; "
                                 "choose another --api address (port 0 lets the kernel pick)")
        log.info("api_listening", address=self.address)
        return self._bound

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and connections and join the server thread. Idempotent."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or not thread.is_alive():
            return
        if loop is not None and stopping is not None:
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:
                pass  # the loop already closed: the thread is on its way out
        thread.join(timeout)
        if thread.is_alive():
            raise ApiServerError(f"the API server thread did not stop within {timeout:.0f}s")

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- server thread only ------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()
            self._ready.set()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(self._connection, self.host, self.port,
                                                reuse_address=True)
        except OSError as exc:
            self._error = exc
            return
        self._bound = tuple(server.sockets[0].getsockname()[:2])  # type: ignore[assignment]
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for task in list(self._conns):
                task.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._conns) >= MAX_CONNECTIONS or task is None:
            self.refused += 1  # a local client holding connections open: the rest still work
            writer.close()
            return
        self._conns.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
        try:
            while True:
                try:
                    got = await asyncio.wait_for(_read_request(conn, reader), REQUEST_TIMEOUT)
                except h11.RemoteProtocolError as exc:
                    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        await _respond(conn, writer, _error(exc.error_status_hint,
                                                            f"bad HTTP request: {exc}"))
                    return
                if got is None:
                    return
                request, body = got
                answer = self._answer(request, body)
                await _respond(conn, writer, answer)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return  # a body we did not read (413), or the client asked to close
                conn.start_next_cycle()
        except (asyncio.TimeoutError, ConnectionError, h11.LocalProtocolError):
            pass  # a slow or vanished client: nothing to answer
        finally:
            self._conns.discard(task)
            writer.close()

    def _answer(self, request: h11.Request, body: bytes | None) -> _Answer:
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace")
        raw_path, _, query = target.partition("?")
        path = unquote(raw_path)
        headers = {k: v.decode("latin-1") for k, v in request.headers}
        if not _host_allowed(headers.get(b"host")):
            return _error(403, "Host header not allowed: use an IP address or localhost")
        if path == "/metrics" and method == "GET" and self._metrics:
            return self._serve_metrics()
        handler = self._routes.get((method, path))
        if handler is None:
            allowed = sorted(m for m, p in self._routes if p == path)
            if allowed:
                return _error(405, f"{method} is not allowed on {path}; use {', '.join(allowed)}")
            return _json(404, {"error": f"no such endpoint: {method} {path}",
                               "endpoints": self.routes})
        if method == "POST":
            kwargs = _json_body(headers.get(b"content-type", ""), body)
            if isinstance(kwargs, _Answer):
                return kwargs
        else:
            kwargs = dict(parse_qsl(query, keep_blank_values=True))
        return self._call(f"{method} {path}", handler, kwargs)

    def _call(self, route: str, handler: Handler, kwargs: dict[str, Any]) -> _Answer:
        try:
            inspect.signature(handler).bind(**kwargs)
        except TypeError as exc:
            return _error(400, f"bad parameters for {route}: {exc}")
        try:
            result = handler(**kwargs)
        except ApiError as exc:
            return _error(exc.status, exc.message)
        # A failing handler is a bug in this node, but one bad endpoint must not take
        # the API down: answer 500 with the reason and log the traceback.
        except Exception as exc:  # noqa: BLE001
            _handler_log.exception("api_handler_failed", route=route, error=type(exc).__name__)
            return _error(500, f"{route} failed: {type(exc).__name__}: {exc}")
        if not isinstance(result, Mapping):
            return _error(500, f"{route} returned {type(result).__name__}, not a JSON object")
        try:
            return _json(200, dict(result))
        except (TypeError, ValueError) as exc:
            return _error(500, f"{route} returned a value that is not JSON: {exc}")

    def _serve_metrics(self) -> _Answer:
        assert self._metrics is not None
        data = self._metrics()
        body = data if isinstance(data, bytes) else data.encode("utf-8")
        return _Answer(200, body, "text/plain; version=0.0.4; charset=utf-8")


class _Answer:
    __slots__ = ("body", "content_type", "status")

    def __init__(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.status, self.body, self.content_type = status, body, content_type


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader
                        ) -> tuple[h11.Request, bytes | None] | None:
    """The next request and its body (None: over ``_MAX_BODY``, left unread), or None
    when the client closed."""
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65_536))
        elif isinstance(event, h11.Request):
            request = event
            length = dict(event.headers).get(b"content-length", b"0")
            if length.isdigit() and int(length) > _MAX_BODY:
                return request, None
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > _MAX_BODY:
                return request, None  # type: ignore[return-value]
        elif isinstance(event, h11.EndOfMessage):
            return request, bytes(body)  # type: ignore[return-value]
        else:  # ConnectionClosed, or PAUSED after a close
            return None


async def _respond(conn: h11.Connection, writer: asyncio.StreamWriter, answer: _Answer) -> None:
    headers = [("content-type", answer.content_type), ("content-length", str(len(answer.body)))]
    if answer.status == 413 or conn.their_state is not h11.DONE:
        headers.append(("connection", "close"))
    writer.write(conn.send(h11.Response(status_code=answer.status, headers=headers)))
    writer.write(conn.send(h11.Data(data=answer.body)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


def _json_body(content_type: str, body: bytes | None) -> dict[str, Any] | _Answer:
    if content_type.split(";")[0].strip().lower() != "application/json":
        return _error(415, "POST bodies must be JSON (Content-Type: application/json)")
    if body is None:
        return _error(413, f"request body larger than {_MAX_BODY} bytes")
    if not body:
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _error(400, "request body is not valid JSON")
    if not isinstance(value, dict):
        return _error(400, "request body must be a JSON object")
    return value


def _json(status: int, value: dict[str, Any]) -> _Answer:
    return _Answer(status, json.dumps(value).encode())


def _error(status: int, message: str) -> _Answer:
    return _json(status, {"error": message})
