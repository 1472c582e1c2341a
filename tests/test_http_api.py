"""The local HTTP API: a real server on 127.0.0.1:0, aiohttp and urllib clients,
and the ``status``/``peers`` commands against it."""

import json
import socket
import threading

import aiohttp
import pytest
from click.testing import CliRunner

from sporenet.api_client import ApiClient, ApiClientError
from sporenet.cli import cli
from sporenet.transports.http_api import ApiError, ApiServer, ApiServerError, routes_of

STATUS = {
    "node_id": "ab" * 32, "address": "658:682d:d022:5251:838a:ef32:438c:540e", "name": "alpha",
    "uptime_s": 3723.5, "agents": {"router": "running", "prober": "running", "probe2": "failed"},
    "listen": ["tcp://127.0.0.1:40001"], "version": "0.1.0",
}
PEERS = {"peers": [
    {"node_id": "cd" * 32, "address": "6a1::1", "endpoint": "tcp://127.0.0.1:40002",
     "outbound": True, "name": "beta", "rtt_ms": 12.34, "jitter_ms": 0.5, "loss": 0.025,
     "cost": 13, "since_s": 65.0},
    {"node_id": "ef" * 32, "address": "6b2::1", "endpoint": "tcp://127.0.0.1:51234",
     "outbound": False, "name": "", "rtt_ms": None, "jitter_ms": None, "loss": None,
     "cost": None, "since_s": 1.2},
]}


class Provider:
    def __init__(self):
        self.threads = set()

    def get_status(self):
        self.threads.add(threading.current_thread().name)
        return STATUS

    def get_peers(self):
        return PEERS

    def get_echo(self, word="none"):
        return {"word": word}

    def post_ping(self, target, count=1):
        return {"target": target, "count": count}

    def get_broken(self):
        raise KeyError("no such thing")

    def get_teapot(self):
        raise ApiError(418, "short and stout")

    def get_list(self):
        return [1, 2]

    def get_bytes(self):
        return {"x": b"raw"}


@pytest.fixture
def provider():
    return Provider()


@pytest.fixture
def server(provider):
    srv = ApiServer("127.0.0.1", 0, provider, metrics=lambda: "sporenet_up 1\n")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def base(server):
    return f"http://{server.address}"


async def fetch(method, url, **kw):
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url, **kw) as r:
            return r.status, r.headers.get("Content-Type", ""), await r.text()


async def test_status_and_peers_answer_the_handlers_json(base, provider):
    status, ctype, body = await fetch("GET", base + "/v1/status")
    assert status == 200 and ctype.startswith("application/json")
    assert json.loads(body) == STATUS
    assert provider.threads == {"sporenet-api"}  # handlers run in the server thread
    status, _, body = await fetch("GET", base + "/v1/peers")
    assert json.loads(body) == PEERS


async def test_unknown_path_is_json_404_listing_endpoints(base):
    status, ctype, body = await fetch("GET", base + "/v1/nope")
    assert status == 404 and ctype.startswith("application/json")
    data = json.loads(body)
    assert data["error"] == "no such endpoint: GET /v1/nope"
    assert "GET /v1/status" in data["endpoints"] and "POST /v1/ping" in data["endpoints"]


async def test_failing_handler_is_json_500_and_server_survives(base):
    status, _, body = await fetch("GET", base + "/v1/broken")
    assert status == 500
    assert json.loads(body) == {"error": "GET /v1/broken failed: KeyError: 'no such thing'"}
    status, _, _ = await fetch("GET", base + "/v1/status")
    assert status == 200


async def test_api_error_sets_status(base):
    status, _, body = await fetch("GET", base + "/v1/teapot")
    assert (status, json.loads(body)) == (418, {"error": "short and stout"})


@pytest.mark.parametrize("path, needle", [("/v1/list", "returned list, not a JSON object"),
                                          ("/v1/bytes", "not JSON")])
async def test_non_json_results_are_500(base, path, needle):
    status, _, body = await fetch("GET", base + path)
    assert status == 500 and needle in json.loads(body)["error"]


async def test_query_parameters_become_keyword_arguments(base):
    assert json.loads((await fetch("GET", base + "/v1/echo?word=hi"))[2]) == {"word": "hi"}
    status, _, body = await fetch("GET", base + "/v1/echo?colour=red")
    assert status == 400 and "bad parameters for GET /v1/echo" in json.loads(body)["error"]


async def test_post_json_body(base):
    status, _, body = await fetch("POST", base + "/v1/ping", json={"target": "6a1::1", "count": 3})
    assert status == 200 and json.loads(body) == {"target": "6a1::1", "count": 3}
    status, _, body = await fetch("POST", base + "/v1/ping", json={})
    assert status == 400 and "missing a required argument" in body
    status, _, _ = await fetch("POST", base + "/v1/ping", json=[1])
    assert status == 400
    status, _, _ = await fetch("POST", base + "/v1/ping", data="{bad",
                               headers={"Content-Type": "application/json"})
    assert status == 400


async def test_post_without_json_content_type_is_refused(base):
    status, _, body = await fetch("POST", base + "/v1/ping", data="target=x",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and "Content-Type: application/json" in json.loads(body)["error"]


async def test_oversized_body_is_413(base):
    status, _, _ = await fetch("POST", base + "/v1/ping", json={"target": "x" * 100_000})
    assert status == 413


async def test_wrong_method_is_405(base):
    status, _, body = await fetch("POST", base + "/v1/status", json={})
    assert status == 405 and "use GET" in json.loads(body)["error"]


async def test_dns_rebinding_host_is_refused(base):
    status, _, _ = await fetch("GET", base + "/v1/status", headers={"Host": "evil.example:80"})
    assert status == 403
    status, _, _ = await fetch("GET", base + "/v1/status", headers={"Host": "localhost:1"})
    assert status == 200


async def test_metrics_text(base):
    status, ctype, body = await fetch("GET", base + "/metrics")
    assert status == 200 and ctype.startswith("text/plain") and body == "sporenet_up 1\n"


def test_dict_routes_and_default_method():
    srv = ApiServer(handlers={"/v1/a": lambda: {"a": 1}, "POST /v1/b": lambda: {}})
    assert srv.routes == ["GET /v1/a", "POST /v1/b"]
    with pytest.raises(ValueError):
        srv.add_route("DELETE /v1/c", dict)
    assert routes_of(Provider())["GET /v1/status"]


def test_port_in_use_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = ApiServer("127.0.0.1", port, {})
        with pytest.raises(ApiServerError, match=f"cannot serve the API on 127.0.0.1:{port}"):
            srv.start()
        assert not srv._thread.is_alive()


def test_stop_joins_the_thread_and_frees_the_port():
    srv = ApiServer("127.0.0.1", 0, {"/v1/status": lambda: STATUS})
    host, port = srv.start()
    thread = srv._thread
    srv.stop()
    assert not thread.is_alive()
    srv.stop()  # idempotent
    with socket.socket() as s:
        assert s.connect_ex((host, port)) != 0


def test_ipv6_loopback(provider):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        srv = ApiServer("::1", 0, provider)
        srv.start()
    except ApiServerError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert srv.address.startswith("[::1]:")
        assert ApiClient(srv.address).status() == STATUS
    finally:
        srv.stop()


# -- the urllib client ---------------------------------------------------------------------


def test_client_status_peers_get_post(server):
    client = ApiClient(server.address)
    assert client.status() == STATUS and client.peers() == PEERS
    assert client.get("/v1/echo", word="yo") == {"word": "yo"}
    assert client.post("/v1/ping", {"target": "t"}) == {"target": "t", "count": 1}


def test_client_reports_http_errors(server):
    with pytest.raises(ApiClientError, match="answered 500 to GET /v1/broken: GET /v1/broken failed"):
        ApiClient(server.address).get("/v1/broken")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_says_when_nothing_listens():
    api = f"127.0.0.1:{free_port()}"
    with pytest.raises(ApiClientError) as err:
        ApiClient(api).status()
    assert str(err.value) == (f"no sporenet node answers on {api}: "
                              f"is `sporenet up` running with --api {api}?")


def test_client_ignores_http_proxy_environment(server, monkeypatch):
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("no_proxy", raising=False)
    assert ApiClient(server.address).status() == STATUS


def test_client_rejects_bad_address():
    with pytest.raises(ApiClientError, match='bad API address "nope"'):
        ApiClient("nope")


# -- sporenet status / peers ----------------------------------------------------------------


def invoke(*args):
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_status_json_is_the_api_json(server):
    code, out = invoke("status", "--api", server.address, "--json")
    assert code == 0 and json.loads(out) == STATUS


def test_status_table(server):
    code, out = invoke("status", "--api", server.address)
    assert code == 0, out
    for text in ("alpha", "ab" * 32, STATUS["address"], "1h 02m 03s", "tcp://127.0.0.1:40001",
                 "0.1.0"):
        assert text in out
    assert "contract" in out and "open network" in out  # the fixture's node has no contract
    after = out.split("AGENT", 1)[1].splitlines()[1:]
    lines = {line.split()[0]: line.split()[1] for line in after if line.strip()}
    assert lines == {"probe2": "failed", "prober": "running", "router": "running"}


def test_peers_json_is_the_api_json(server):
    code, out = invoke("peers", "--api", server.address, "--json")
    assert code == 0 and json.loads(out) == PEERS


def test_peers_table(server):
    code, out = invoke("peers", "--api", server.address)
    assert code == 0, out
    header, beta, anon = out.splitlines()
    assert header.split() == ["NODE", "NAME", "ADDRESS", "ENDPOINT", "DIR", "RTT", "ms", "JITTER",
                              "ms", "LOSS", "COST", "UP"]
    assert beta.split() == ["cdcdcdcd", "beta", "6a1::1", "tcp://127.0.0.1:40002", "out", "12.3",
                            "0.5", "2.5%", "13", "1m", "05s"]
    assert anon.split() == ["efefefef", "-", "6b2::1", "tcp://127.0.0.1:51234", "in", "-", "-",
                            "-", "-", "1s"]


def test_no_peers():
    with ApiServer("127.0.0.1", 0, {"/v1/peers": lambda: {"peers": []}}) as srv:
        code, out = invoke("peers", "--api", srv.address)
    assert code == 0 and out.strip() == "no peers"


@pytest.mark.parametrize("cmd", ["status", "peers"])
def test_commands_fail_in_one_line_when_no_node(cmd):
    api = f"127.0.0.1:{free_port()}"
    code, out = invoke(cmd, "--api", api)
    assert code == 1
    assert out.strip() == (f"Error: no sporenet node answers on {api}: "
                           f"is `sporenet up` running with --api {api}?")


def _get_status(address: str, timeout: float = 5.0) -> bytes:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def test_garbage_and_an_oversized_head_get_400_or_431_and_the_server_goes_on(server):
    host, port = server.address.rsplit(":", 1)
    for junk in (b"\x16\x03\x01\x00garbage\r\n\r\n", b"GET / HTTP/1.1\r\nX: " + b"a" * 20_000):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(junk)
            answer = s.recv(65536)
        assert answer.split(b" ")[1] in (b"400", b"431"), answer[:80]
    assert b'"alpha"' in _get_status(server.address)


def test_connections_are_bounded_and_a_slow_client_is_cut_off(server, monkeypatch):
    import sporenet.transports.http_api as http_api
    monkeypatch.setattr(http_api, "REQUEST_TIMEOUT", 0.5)
    host, port = server.address.rsplit(":", 1)
    idle = [socket.create_connection((host, int(port)), timeout=5)
            for _ in range(http_api.MAX_CONNECTIONS + 20)]
    try:
        # 64 held, 20 closed at once; each held one is cut off after REQUEST_TIMEOUT
        # without a request, and then the API answers again
        for s in idle[:2]:
            s.sendall(b"GET /v1/sta")  # a request that never finishes (slowloris)
        closed = 0
        for s in idle:
            try:
                closed += s.recv(1) == b""
            except OSError:
                closed += 1
        assert closed == len(idle)
        assert server.refused >= 20
        assert b'"alpha"' in _get_status(server.address)
    finally:
        for s in idle:
            s.close()
