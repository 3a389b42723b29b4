"""Production limits and proxies (issue 12): header and body-stall timeouts, the keep-alive idle
timeout, connections per client address, and which X-Forwarded-For / Forwarded headers the
hub believes. Real hubs on real sockets; raw sockets where a client must misbehave."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import httpx
import pytest
import websockets
from tests.conftest import CHAT_NAMESPACE, Hub, HubFactory, token

from clarion.errors import ConfigError
from clarion.hub.config import load_config
from clarion.hub.limits import ConnectionLimits, address_key
from clarion.hub.proxies import TrustedProxies, parse_networks

BOUND = 15.0  # a generous bound for anything the hub does after a 1 s timeout


# -- helpers ----------------------------------------------------------------------------------


def _connect(hub: Hub) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", hub.port), timeout=BOUND)
    sock.settimeout(BOUND)
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length body, read from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def _read_to_eof(sock: socket.socket) -> bytes:
    """Everything until the hub closes; fails if it has not within ``BOUND``."""
    data = b""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the hub did not close the connection within {BOUND}s: {data!r}")


def _get(sock: socket.socket, path: str = "/health", **headers: str) -> tuple[int, bytes]:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    status, _, body = _read_response(sock)
    return status, body


def _held(hub: Hub, **headers: str) -> socket.socket:
    """A keep-alive connection that has had one request answered (so the hub has accepted
    and counted it)."""
    sock = _connect(hub)
    status, body = _get(sock, **headers)
    assert status == 200, body
    return sock


def _metric(hub: Hub, name: str) -> float:
    # Under a per-address limit the scrape itself may wait for a closed connection's slot.
    deadline = time.monotonic() + BOUND
    while (resp := httpx.get(f"{hub.url}/metrics", timeout=10)).status_code == 429 \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    text = resp.text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


# -- timeouts ---------------------------------------------------------------------------------


def test_slow_request_head_is_answered_408_and_closed(hub_factory: HubFactory) -> None:
    hub = hub_factory("http_header_timeout = 1\n")
    slow = _connect(hub)
    slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and no more
    silent = _connect(hub)  # sends nothing at all
    for sock in (slow, silent):
        data = _read_to_eof(sock)
        assert data.startswith(b"HTTP/1.1 408 "), data
        assert b"request head not complete within 1 seconds" in data
        assert b"connection: close" in data.lower()
        sock.close()
    assert _metric(hub, 'clarion_http_refused_total{reason="header_timeout"}') >= 2
    # The hub goes on serving everyone else.
    assert httpx.get(f"{hub.url}/health", timeout=10).status_code == 200


def test_stalled_request_body_is_answered_408(hub_factory: HubFactory) -> None:
    hub = hub_factory("http_header_timeout = 1\n")
    sock = _connect(hub)
    sock.sendall(b"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n"
                 b"Content-Type: application/json\r\n\r\n{\"chan")
    data = _read_to_eof(sock)
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert b"request body stalled" in data
    assert _metric(hub, 'clarion_http_refused_total{reason="body_timeout"}') == 1


def test_a_slow_but_steady_head_within_the_timeout_is_served(hub_factory: HubFactory) -> None:
    hub = hub_factory("http_header_timeout = 5\n")
    sock = _connect(hub)
    for part in (b"GET /health HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"\r\n"):
        sock.sendall(part)
        time.sleep(0.2)
    status, _, _ = _read_response(sock)
    assert status == 200


def test_idle_keepalive_connection_is_closed(hub_factory: HubFactory) -> None:
    hub = hub_factory("http_keepalive_timeout = 1\n")
    sock = _connect(hub)
    for _ in range(3):  # a connection in use is not idle
        status, _ = _get(sock)
        assert status == 200
    assert _read_to_eof(sock) == b""  # closed without an answer: nothing was asked
    assert _metric(hub, "clarion_http_idle_closed_total") >= 1


async def test_websocket_and_sse_outlive_the_http_timeouts(hub_factory: HubFactory) -> None:
    hub = hub_factory("http_header_timeout = 1\nhttp_keepalive_timeout = 1\n"
                      "[namespaces.chat]\nallow_subscribe_for_client = true\n")
    async with websockets.connect(hub.ws_url, origin=websockets.Origin(hub.url)) as ws, \
            httpx.AsyncClient(timeout=BOUND) as client, \
            client.stream("GET", f"{hub.url}/connection/sse",
                          params={"channel": "chat:t", "token": token("bob")}) as sse:
        assert sse.status_code == 200
        await ws.send(json.dumps({"id": 1, "connect": {"token": token("ann")}}))
        assert "connect" in json.loads(await ws.recv())
        await asyncio.sleep(3)  # three sweeps past both timeouts
        await ws.send(json.dumps({"id": 2, "subscribe": {"channel": "chat:t"}}))
        async with asyncio.timeout(BOUND):
            while (reply := json.loads(await ws.recv())).get("id") != 2:
                pass  # a push (a ping) meanwhile
        assert "subscribe" in reply, reply
        answer = hub.api("publish", {"channel": "chat:t", "data": {"n": 1}}).json()
        assert "result" in answer, answer
        seen: list[Any] = []
        async with asyncio.timeout(BOUND):
            async for line in sse.aiter_lines():
                if line.startswith("data:") and '"pub"' in line:
                    seen.append(json.loads(line[5:]))
                    break
        assert seen and seen[0]["pub"]["data"] == {"n": 1}


# -- connections per address ------------------------------------------------------------------


def test_per_address_limit_refuses_at_accept_and_ignores_spoofed_headers(
        hub_factory: HubFactory) -> None:
    hub = hub_factory("max_connections_per_address = 2\n", "--log-level", "debug")
    held = [_held(hub, X_Forwarded_For=f"10.0.0.{i}") for i in range(2)]
    extra = _connect(hub)
    # The peer is not a trusted proxy: its X-Forwarded-For is a claim, not an address.
    extra.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 10.0.0.99\r\n"
                  b"Forwarded: for=10.0.0.98\r\n\r\n")
    status, headers, body = _read_response(extra)
    assert status == 429
    assert headers["connection"] == "close"
    assert "max_connections_per_address is 2" in json.loads(body)["error"]["message"]
    assert _read_to_eof(extra) == b""
    assert "reason=address_limit client=127.0.0.1" in hub.output()
    # A closed connection makes room again.
    held.pop().close()
    deadline = time.monotonic() + BOUND
    while True:
        sock = _connect(hub)
        status, _ = _get(sock)
        sock.close()
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status == 200
    for sock in held:
        sock.close()
    assert _metric(hub, 'clarion_http_refused_total{reason="address_limit"}') >= 1


def test_per_address_limit_counts_the_client_behind_a_trusted_proxy(
        hub_factory: HubFactory) -> None:
    hub = hub_factory('trusted_proxies = ["127.0.0.0/8"]\nmax_connections_per_address = 2\n',
                      "--log-level", "debug")
    held = [_held(hub, X_Forwarded_For="10.0.0.1") for _ in range(2)]
    # The same client again, behind a forged leftmost hop: the rightmost untrusted counts.
    third = _connect(hub)
    status, body = _get(third, X_Forwarded_For="6.6.6.6, 10.0.0.1")
    assert status == 429, body
    assert "reason=address_limit client=10.0.0.1 proxy=127.0.0.1" in hub.output()
    third.close()
    # Another client through the same proxy, and the proxy's own requests, are not limited.
    for headers in ({"X_Forwarded_For": "10.0.0.2"}, {"X_Forwarded_For": "10.0.0.2"}, {}):
        held.append(_held(hub, **headers))
    # A hop that is itself a trusted proxy is skipped: 10.0.0.1 again, one hop further.
    fourth = _connect(hub)
    status, _ = _get(fourth, X_Forwarded_For="10.0.0.1, 127.0.0.5")
    assert status == 429
    for sock in [fourth, *held]:
        sock.close()


def test_forwarded_header_mode_believes_forwarded_only(hub_factory: HubFactory) -> None:
    hub = hub_factory('trusted_proxies = ["127.0.0.1"]\nproxy_header = "forwarded"\n'
                      "max_connections_per_address = 1\n")
    first = _held(hub, Forwarded='for="10.0.0.1:5555";proto=https')
    second = _connect(hub)
    assert _get(second, Forwarded="for=10.0.0.1")[0] == 429
    # X-Forwarded-For is not the configured header: this request is the proxy's own.
    third = _held(hub, X_Forwarded_For="10.0.0.1")
    for sock in (first, second, third):
        sock.close()


def test_origin_check_uses_the_host_a_trusted_proxy_names(hub_factory: HubFactory) -> None:
    trusted = hub_factory('trusted_proxies = ["127.0.0.1"]\n' + CHAT_NAMESPACE)
    untrusted = hub_factory(CHAT_NAMESPACE)
    headers = {"Origin": "https://app.example", "X-Forwarded-Host": "app.example",
               "X-Forwarded-Proto": "https", "X-Forwarded-For": "192.0.2.7"}
    params = {"channel": "chat:o", "token": token("ann")}
    for hub, expected in ((trusted, 200), (untrusted, 403)):
        with httpx.Client(timeout=BOUND) as client, client.stream(
                "GET", f"{hub.url}/connection/sse", params=params, headers=headers) as resp:
            assert resp.status_code == expected, (hub.url, resp.read())


# -- configuration ----------------------------------------------------------------------------


def test_defaults_are_documented_values() -> None:
    config = load_config(environ={})
    assert config.trusted_proxies == []
    assert config.proxy_header == "x-forwarded-for"
    assert config.seconds("http_header_timeout") == 20.0
    assert config.seconds("http_keepalive_timeout") == 75.0
    assert config.max_connections_per_address == 0
    assert config.certfile == config.keyfile == ""


def test_environment_sets_the_new_keys() -> None:
    config = load_config(environ={
        "CLARION_TRUSTED_PROXIES": "10.0.0.0/8,fd00::/8",
        "CLARION_HTTP_HEADER_TIMEOUT": "5s", "CLARION_HTTP_KEEPALIVE_TIMEOUT": "2m",
        "CLARION_MAX_CONNECTIONS_PER_ADDRESS": "100", "CLARION_PROXY_HEADER": "forwarded",
        "CLARION_CERTFILE": "/etc/tls/full.pem", "CLARION_KEYFILE": "/etc/tls/key.pem"})
    assert (config.certfile, config.keyfile) == ("/etc/tls/full.pem", "/etc/tls/key.pem")
    assert config.trusted_proxies == ["10.0.0.0/8", "fd00::/8"]
    assert config.seconds("http_header_timeout") == 5.0
    assert config.seconds("http_keepalive_timeout") == 120.0
    assert config.max_connections_per_address == 100
    assert config.proxy_header == "forwarded"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"trusted_proxies": ["10.0.0.0/33"]}, "'10.0.0.0/33' is not an IP address or network"),
    ({"trusted_proxies": ["proxy.internal"]}, "is not an IP address or network"),
    ({"proxy_header": "x-real-ip"}, "proxy_header: must be one of"),
    ({"http_header_timeout": 0}, "http_header_timeout: must be between 1 second and 1 day"),
    ({"http_header_timeout": "0.5s"}, "http_header_timeout: must be between"),
    ({"http_keepalive_timeout": "2d"}, "http_keepalive_timeout: must be between"),
    ({"http_keepalive_timeout": "soon"}, "is not a duration"),
    ({"max_connections_per_address": -1}, "max_connections_per_address: must not be negative"),
    ({"keyfile": "/etc/key.pem"}, "keyfile: set without certfile"),
])
def test_bad_values_are_clear_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(environ={}, overrides=overrides)


def test_limit_edges_are_accepted() -> None:
    config = load_config(environ={}, overrides={
        "http_header_timeout": 1, "http_keepalive_timeout": "1d",
        "max_connections_per_address": 1})
    assert config.seconds("http_header_timeout") == 1.0
    assert config.seconds("http_keepalive_timeout") == 86400.0


# -- units: the pure parts --------------------------------------------------------------------


def _resolve(header: str, peer: str, headers: dict[str, str],
             trusted: tuple[str, ...] = ("127.0.0.1", "10.1.0.0/16")) -> tuple[str, str, str]:
    got = TrustedProxies(parse_networks(trusted), header).resolve(peer, headers, "http")
    return got.client, got.scheme, got.host


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, ("127.0.0.1", "http", "")),  # the proxy's own request
    ({"x-forwarded-for": "192.0.2.1"}, ("192.0.2.1", "http", "")),
    ({"x-forwarded-for": "6.6.6.6, 192.0.2.1"}, ("192.0.2.1", "http", "")),  # forged left part
    ({"x-forwarded-for": "192.0.2.1, 10.1.2.3"}, ("192.0.2.1", "http", "")),  # two proxies
    ({"x-forwarded-for": "10.1.0.1, 10.1.2.3"}, ("10.1.0.1", "http", "")),  # all trusted
    ({"x-forwarded-for": "192.0.2.1:5678"}, ("192.0.2.1", "http", "")),
    ({"x-forwarded-for": "[2001:db8::1]:80"}, ("2001:db8::1", "http", "")),
    ({"x-forwarded-for": "2001:db8::1"}, ("2001:db8::1", "http", "")),
    ({"x-forwarded-for": "unknown"}, ("unknown", "http", "")),
    ({"x-forwarded-for": " , ,"}, ("127.0.0.1", "http", "")),
    ({"x-forwarded-for": "192.0.2.1", "x-forwarded-proto": "https",
      "x-forwarded-host": "app.example"}, ("192.0.2.1", "https", "app.example")),
    ({"x-forwarded-for": "192.0.2.1", "x-forwarded-proto": "gopher"}, ("192.0.2.1", "http", "")),
    ({"forwarded": "for=192.0.2.1"}, ("127.0.0.1", "http", "")),  # not the configured header
])
def test_x_forwarded_for_resolution(headers: dict[str, str],
                                    expected: tuple[str, str, str]) -> None:
    assert _resolve("x-forwarded-for", "127.0.0.1", headers) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ('for="[2001:db8:cafe::17]:4711";proto=https;host=app.example',
     ("2001:db8:cafe::17", "https", "app.example")),
    ("for=6.6.6.6, for=192.0.2.43;proto=https", ("192.0.2.43", "https", "")),
    ("For=192.0.2.43, for=10.1.9.9", ("192.0.2.43", "http", "")),
    ("for=_hidden", ("_hidden", "http", "")),
    ("by=10.1.9.9", ("127.0.0.1", "http", "")),
])
def test_forwarded_resolution(value: str, expected: tuple[str, str, str]) -> None:
    assert _resolve("forwarded", "127.0.0.1", {"forwarded": value}) == expected


def test_trust_is_by_network_and_maps_ipv4_in_ipv6() -> None:
    proxies = TrustedProxies(parse_networks(["10.0.0.0/8", "::1"]))
    assert proxies.trusted("10.200.3.4")
    assert proxies.trusted("::ffff:10.0.0.1")
    assert proxies.trusted("::1")
    assert not proxies.trusted("11.0.0.1")
    assert not proxies.trusted("")
    assert not proxies.trusted("not-an-address")
    assert not TrustedProxies(()).trusted("10.0.0.1")


def test_a_very_long_chain_is_cut_to_its_rightmost_hops() -> None:
    chain = ", ".join(["10.1.0.1"] * 10_000 + ["192.0.2.9"] + ["10.1.0.2"] * 5)
    assert _resolve("x-forwarded-for", "127.0.0.1", {"x-forwarded-for": chain})[0] == "192.0.2.9"


class _Conn:
    def __init__(self) -> None:
        self.events: list[str] = []

    def header_timed_out(self) -> None:
        self.events.append("head")

    def idle_timed_out(self) -> None:
        self.events.append("idle")


def test_sweep_expires_in_deadline_order_and_skips_busy_connections() -> None:
    limits = ConnectionLimits(header_timeout=10, keepalive_timeout=60, per_address=2)
    a, b, c, d = _Conn(), _Conn(), _Conn(), _Conn()
    limits.wait_head(a, 0)
    limits.wait_head(b, 5)
    limits.wait_head(c, 6)
    limits.busy(c)  # sent its head
    limits.wait_request(d, 0)
    failures: list[BaseException] = []
    limits.sweep(12, failures.append)
    assert (a.events, b.events, c.events, d.events) == (["head"], [], [], [])
    limits.touch(b, 20)  # a body chunk: a fresh deadline
    limits.sweep(25, failures.append)
    assert b.events == []
    limits.sweep(61, failures.append)
    assert (b.events, d.events) == (["head"], ["idle"])
    assert not failures and not limits.heads and not limits.idle


def test_per_address_counting() -> None:
    limits = ConnectionLimits(10, 10, per_address=2)
    assert limits.acquire("a") and limits.acquire("a")
    assert not limits.acquire("a")
    assert limits.acquire("b")
    limits.release("a")
    assert limits.acquire("a")
    for _ in range(3):
        limits.release("a")
    assert "a" not in limits.counts
    # An IPv6 host's /64 is one address; an IPv4-mapped one is its IPv4 address.
    assert limits.acquire("2001:db8:1:2::1") and limits.acquire("2001:db8:1:2:ffff::9")
    assert not limits.acquire("2001:db8:1:2::77")
    assert limits.acquire("2001:db8:1:3::1")
    assert limits.acquire("::ffff:192.0.2.1") and limits.acquire("192.0.2.1")
    assert not limits.acquire("192.0.2.1")
    assert address_key("unknown") == "unknown"
    unlimited = ConnectionLimits(10, 10, per_address=0)
    assert all(unlimited.acquire("a") for _ in range(1000))
    assert not unlimited.counts


def test_grip_control_port_is_not_limited_per_address(hub_factory: HubFactory,
                                                      tmp_path: Any) -> None:
    from tests.conftest import free_port

    routes = tmp_path / "routes"
    routes.write_text(f"* 127.0.0.1:{free_port()}\n")
    grip_port, control_port = free_port(), free_port()
    hub = hub_factory("max_connections_per_address = 1\n", "--grip-routes", str(routes),
                      "--grip-port", str(grip_port), "--control-port", str(control_port))
    del hub

    def request(port: int) -> tuple[socket.socket, int]:
        sock = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
        sock.settimeout(BOUND)
        sock.sendall(b"GET /publish/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, _ = _read_response(sock)
        # Still open after its answer, so still counted when the next one arrives.
        assert status == 429 or headers.get("connection") != "close", (status, headers)
        return sock, status

    # An origin's pool of publishing connections, all from one address, is not refused.
    control = [request(control_port) for _ in range(3)]
    assert all(status != 429 for _, status in control), control
    # The GRIP client port is a public one: limited like the hub's own.
    first, _ = request(grip_port)
    second, status = request(grip_port)
    assert status == 429
    for sock in [first, second, *(s for s, _ in control)]:
        sock.close()


@pytest.mark.parametrize(("trusted", "proto"), [(True, "https"), (False, "http")])
def test_grip_origin_gets_the_scheme_only_a_trusted_proxy_vouches_for(
        hub_factory: HubFactory, tmp_path: Any, trusted: bool, proto: str) -> None:
    from tests.conftest import free_port
    from tests.grip_origin import Origin, Reply

    with Origin() as origin:
        origin.on("/page", Reply(200, [("Content-Type", "text/plain")], "ok"))
        routes = tmp_path / "routes"
        routes.write_text(f"* 127.0.0.1:{origin.port}\n")
        grip_port = free_port()
        hub_factory('trusted_proxies = ["127.0.0.1"]\n' if trusted else "",
                    "--grip-routes", str(routes), "--grip-port", str(grip_port),
                    "--control-port", str(free_port()))
        resp = httpx.get(f"http://127.0.0.1:{grip_port}/page", timeout=BOUND, headers={
            "X-Forwarded-For": "192.0.2.7", "X-Forwarded-Proto": "https"})
        assert resp.status_code == 200
        (req,) = origin.to("/page")
        assert req.header("X-Forwarded-Proto") == proto
        # The chain is passed on with this hop's peer appended, for the origin to read.
        assert req.header("X-Forwarded-For") == "192.0.2.7, 127.0.0.1"


async def test_origin_check_compares_scheme_host_and_port(hub_factory: HubFactory) -> None:
    """An allowed https:// origin does not let the http:// page on the same host in, nor
    another port; default ports and case do not matter; patterns match the whole origin. The
    same origin is the scheme the hub sees (its own, or a trusted proxy's X-Forwarded-Proto)
    with the host: real WebSocket handshakes with the Origin a browser would send."""
    # The environment wins over the test configuration's own allowed_origins.
    listed = hub_factory(env={"CLARION_ALLOWED_ORIGINS": "https://app.example,http://localhost:*"})
    proxied = hub_factory('trusted_proxies = ["127.0.0.1"]\n',
                          env={"CLARION_ALLOWED_ORIGINS": "https://unrelated.example"})

    async def status(hub: Hub, origin: str, **headers: str) -> int:
        try:
            async with websockets.connect(hub.ws_url, origin=websockets.Origin(origin),
                                          additional_headers=headers, open_timeout=BOUND):
                return 101
        except websockets.InvalidStatus as exc:
            return exc.response.status_code

    def forwarded(proto: str, host: str) -> dict[str, str]:
        return {"X-Forwarded-For": "192.0.2.7", "X-Forwarded-Proto": proto,
                "X-Forwarded-Host": host}

    here = listed.url.removeprefix("http://")  # 127.0.0.1:PORT, the Host header
    cases: list[tuple[Hub, str, dict[str, str], int]] = [
        (listed, "https://app.example", {}, 101),
        (listed, "http://app.example", {}, 403),  # the scheme counts
        (listed, "https://app.example:443", {}, 101),  # the default port is no difference
        (listed, "HTTPS://App.Example", {}, 101),
        (listed, "https://app.example:8443", {}, 403),
        (listed, "https://evil.app.example", {}, 403),
        (listed, "http://localhost:5173", {}, 101),  # a pattern
        (listed, "https://localhost:5173", {}, 403),
        (listed, f"http://{here}", {}, 101),  # same origin
        (listed, f"https://{here}", {}, 403),  # same host, but this hub speaks plain HTTP
        (listed, "null", {}, 403),
        # Behind a trusted proxy that terminated TLS for https://chat.example (nginx sends
        # -Proto and -Host with X-Forwarded-For, without which they are not read).
        (proxied, "https://chat.example", forwarded("https", "chat.example"), 101),
        (proxied, "https://chat.example:443", forwarded("https", "chat.example:443"), 101),
        (proxied, "http://chat.example", forwarded("https", "chat.example"), 403),
        (proxied, "https://chat.example", forwarded("http", "chat.example"), 403),
        (proxied, "https://chat.example:8443", forwarded("https", "chat.example"), 403),
    ]
    for hub, origin, headers, expected in cases:
        assert await status(hub, origin, **headers) == expected, (hub.url, origin, headers)
