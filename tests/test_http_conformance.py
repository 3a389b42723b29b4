"""HTTP/1.1 conformance of the hub's own server, judged by a second, strict implementation.

``h11`` is the client: every answer must parse under its rules, and it must find each answer
where the one before it ended, so a stray body byte (a HEAD answered with a body) fails the next
answer. A raw-socket suite sends malformed and smuggling-shaped requests and checks each is
refused with its status and ``Connection: close``, that the connection ends, and that nothing
sent after it is answered. Hubs are real subprocesses (``python -m clarion serve``), as in
conftest: one plain hub for the module, one with ``--webhooks-db`` (the Django WSGI mount), and a
GRIP proxy in front of tests/grip_origin.py. Nothing waits for "nothing to arrive": every
exchange reads to EOF under a deadline.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import h11
import httpx
import pytest

from conftest import API_KEY, BASE_CONFIG, HubFactory, free_port, token
from grip_origin import Origin, Reply
from webhook_support import embedded_server

T = 15.0  # deadline for any one exchange to finish (a loaded 2-core machine)
MAX_BODY = 64 * 1024  # api_max_body_size of the module's hub
SMUGGLED_NAMESPACE = """
[namespaces.smuggled]
history_size = 10
history_ttl = 300
"""


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


def _start(cmd: list[str], port: int, log: Path, timeout: float) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server did not become healthy:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The port of a hub started as conftest's ``hub_factory`` starts one, shared by the module
    (every test here leaves it as it found it)."""
    tmp = tmp_path_factory.mktemp("hub")
    port = free_port()
    cfg = tmp / "hub.toml"
    cfg.write_text(BASE_CONFIG + f"api_max_body_size = {MAX_BODY}\n" + SMUGGLED_NAMESPACE)
    proc = _start([sys.executable, "-m", "clarion", "serve", "--host", "127.0.0.1",
                   "--port", str(port), "--config", str(cfg)], port, tmp / "hub.log", 15)
    yield port
    _stop(proc)


@pytest.fixture(scope="module")
def webhooks_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``clarion serve --webhooks-db``: Django's webhook dashboard mounted at /webhooks/."""
    with embedded_server(tmp_path_factory.mktemp("webhooks")) as (url, _, _):
        yield int(url.rsplit(":", 1)[1])


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------


@dataclass
class Req:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated name keeps its last value
    names: list[str]  # every header name, lower-case, in order (repeats kept)
    body: bytes
    interim: list[int]  # the 1xx statuses before it


def req(method: str, target: str, *headers: tuple[str, str], body: bytes = b"",
        close: bool = False) -> Req:
    hs = [("Host", "127.0.0.1"), *headers]
    if body or method in ("POST", "PUT"):
        hs.append(("Content-Length", str(len(body))))
    if close:
        hs.append(("Connection", "close"))
    return Req(method, target, hs, body)


def encode(r: Req) -> bytes:
    """The request as h11 writes it (h11 refuses to write a malformed one)."""
    conn = h11.Connection(h11.CLIENT)
    data = conn.send(h11.Request(method=r.method, target=r.target, headers=r.headers))
    if r.body:
        data += conn.send(h11.Data(data=r.body))
    return data + conn.send(h11.EndOfMessage())


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything until the server closes; a deadline instead of EOF fails the test."""
    out = b""
    sock.settimeout(T)
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"connection still open after {T} s; got {out!r}") from None
        except ConnectionResetError:
            raise AssertionError(f"connection reset; got {out!r}") from None
        if not chunk:
            return out
        out += chunk


def parse(requests: list[Req], data: bytes) -> list[Answer]:
    """The answers to ``requests`` in ``data``, in order, parsed by h11 (which raises on
    anything non-conforming). Bytes left after the last answer fail the test."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    conn.receive_data(b"")  # EOF: the server closed
    answers = []
    for i, r in enumerate(requests):
        if i:
            conn.start_next_cycle()
        # Only the method matters to how an answer is framed; h11 is told the request was
        # HTTP/1.1 so it can read the answers an HTTP/1.0 client keeps alive too.
        conn.send(h11.Request(method=r.method, target=r.target, headers=[("Host", "h")]))
        conn.send(h11.EndOfMessage())
        interim: list[int] = []
        body = b""
        head: h11.Response | None = None
        while True:
            event = conn.next_event()
            if isinstance(event, h11.InformationalResponse):
                interim.append(event.status_code)
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"answer {i} ({r.method} {r.target}) cut short: {event!r}"
                                     f" in {data!r}")
        assert head is not None
        pairs = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in head.headers]
        answers.append(Answer(head.status_code, dict(pairs), [k for k, _ in pairs], body,
                              interim))
    assert conn.trailing_data[0] == b"", f"bytes after the last answer: {conn.trailing_data!r}"
    return answers


def exchange(port: int, requests: list[Req], raw: bytes | None = None) -> list[Answer]:
    """Send ``requests`` pipelined in one write (or ``raw`` in their place), read to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=T) as sock:
        sock.sendall(raw if raw is not None else b"".join(encode(r) for r in requests))
        data = read_to_eof(sock)
    return parse(requests, data)


def one_by_one(port: int, requests: list[Req]) -> list[Answer]:
    """Send each request only after the answer to the one before it is in, on one connection
    (h11 drives both sides); the last must carry ``Connection: close``."""
    conn = h11.Connection(h11.CLIENT)
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=T) as sock:
        for i, r in enumerate(requests):
            if i:
                conn.start_next_cycle()
            out = conn.send(h11.Request(method=r.method, target=r.target, headers=r.headers))
            if r.body:
                out += conn.send(h11.Data(data=r.body))
            sock.sendall(out + conn.send(h11.EndOfMessage()))
            head: h11.Response | None = None
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                    continue
                if isinstance(event, h11.Response):
                    head = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif not isinstance(event, h11.InformationalResponse):
                    raise AssertionError(f"{r.method} {r.target}: {event!r}")
            assert head is not None
            pairs = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in head.headers]
            answers.append(Answer(head.status_code, dict(pairs), [k for k, _ in pairs], body,
                                  []))
        rest = conn.trailing_data[0] + read_to_eof(sock)
    assert rest == b"", f"bytes after the last answer: {rest!r}"
    return answers


# --------------------------------------------------------------------------------------------
# (a) every route, every method, through a strict client
# --------------------------------------------------------------------------------------------

KEY = ("X-API-Key", API_KEY)
ROUTES = [
    pytest.param("/", (), id="root-404"),
    pytest.param("/health", (), id="health"),
    pytest.param("/metrics", (), id="metrics"),
    pytest.param("/openapi.json", (), id="openapi"),
    pytest.param("/docs", (), id="docs"),
    pytest.param("/static/clarion.js", (), id="static"),
    pytest.param("/static/nothing.js", (), id="static-404"),
    pytest.param("/api/info", (), id="api-info-no-key"),
    pytest.param("/api/info", (KEY,), id="api-info-key"),
    pytest.param("/no/such/endpoint", (), id="404"),
    pytest.param("/connection/sse", (), id="sse-405-for-non-get"),
]
METHODS = ("GET", "HEAD", "POST", "OPTIONS")


@pytest.mark.parametrize(("path", "headers"), ROUTES)
def test_every_method_answers_h11_clean_and_head_is_get_without_body(
        port: int, path: str, headers: tuple[tuple[str, str], ...]) -> None:  # fmt: skip
    """GET, HEAD, POST and OPTIONS one after another on one kept-alive connection: each answer
    parses, the connection stays usable, and HEAD's head is GET's, Content-Length included."""
    if path == "/connection/sse":
        methods: tuple[str, ...] = ("HEAD", "POST", "OPTIONS")  # a GET would hold the stream
    else:
        methods = METHODS
    requests = [req(m, path, *headers, body=b"{}" if m == "POST" else b"")
                for m in methods]  # fmt: skip
    requests.append(req("GET", "/health", close=True))
    answers = one_by_one(port, requests)
    by_method = dict(zip(methods, answers, strict=False))
    head = by_method["HEAD"]
    assert head.body == b""
    for a in answers[:-1]:
        assert a.status >= 200
        assert "connection" not in a.headers  # kept alive
        assert "content-length" in a.headers or a.status in (204, 304)
        assert int(a.headers.get("content-length", "0")) == len(a.body) or a is head
    assert answers[-1].headers["connection"] == "close"
    if "GET" in by_method:
        get = by_method["GET"]
        assert head.status == get.status
        assert head.names == get.names
        variable = {"content-length"} if path == "/metrics" else set()  # counters move
        assert {k: v for k, v in head.headers.items() if k not in variable} == \
            {k: v for k, v in get.headers.items() if k not in variable}
        assert int(head.headers["content-length"]) > 0
    else:
        assert head.status == 405
        assert int(head.headers["content-length"]) > 0


def test_405_from_static_names_the_allowed_methods(port: int) -> None:
    (answer,) = exchange(port, [req("DELETE", "/static/clarion.js", close=True)])
    assert answer.status == 405
    assert answer.headers["allow"] == "GET, HEAD"


def test_pipelined_requests_are_answered_in_order(port: int) -> None:
    """Ten requests in one write, HEADs among them: h11 finds each answer where the one before
    ended, and each is the answer to its own request."""
    requests = []
    for i in range(5):
        requests.append(req("GET", f"/static/nothing-{i}.js"))
        requests.append(req("HEAD", f"/static/nothing-{i}.js"))
    requests.append(req("GET", "/health", close=True))
    answers = exchange(port, requests)
    for i in range(5):
        get, head = answers[2 * i], answers[2 * i + 1]
        assert get.status == head.status == 404
        assert f"nothing-{i}.js".encode() in get.body
        assert head.body == b""
        assert head.headers["content-length"] == get.headers["content-length"]
    assert answers[-1].status == 200


def test_a_pipelined_request_waits_for_a_slow_one_ahead(port: int) -> None:
    """A long-poll that waits (a second: its own timeout) is answered before the quick requests
    pipelined behind it, which the hub had in hand all along."""
    poll = f"/connection/poll?channel=slow&cursor=&timeout=1&token={token('u', channels=['slow'])}"
    answers = exchange(port, [req("GET", poll), req("HEAD", "/health"),
                              req("GET", "/openapi.json", close=True)])
    assert [a.status for a in answers] == [200, 200, 200], [a.body for a in answers]
    assert b'"pushes":[]' in answers[0].body
    assert answers[1].body == b""
    assert answers[2].body.startswith(b"{")


def test_connection_close_is_honoured_and_nothing_after_it_is_read(port: int) -> None:
    data = (encode(req("GET", "/health", close=True))
            + encode(req("POST", "/api/publish", KEY, body=b'{"channel":"x","data":1}')))
    (answer,) = exchange(port, [req("GET", "/health", close=True)], raw=data)
    assert answer.status == 200
    assert answer.headers["connection"] == "close"


def test_http10_closes_unless_kept_alive(port: int) -> None:
    r10 = Req("GET", "/health", [])  # as parse() needs it: the method
    with socket.create_connection(("127.0.0.1", port), timeout=T) as sock:
        sock.sendall(b"GET /health HTTP/1.0\r\n\r\nGET /health HTTP/1.0\r\n\r\n")
        data = read_to_eof(sock)
    (answer,) = parse([r10], data)  # one answer: the second request is never read
    assert answer.status == 200
    assert answer.headers["connection"] == "close"
    with socket.create_connection(("127.0.0.1", port), timeout=T) as sock:
        sock.sendall(b"HEAD /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                     b"GET /health HTTP/1.0\r\n\r\n")  # fmt: skip
        data = read_to_eof(sock)
    head, get = parse([Req("HEAD", "/health", []), r10], data)
    assert head.headers["connection"] == "keep-alive"
    assert head.body == b"" and head.headers["content-length"] == get.headers["content-length"]
    assert get.headers["connection"] == "close"


# --------------------------------------------------------------------------------------------
# Expect: 100-continue
# --------------------------------------------------------------------------------------------


def test_100_continue_comes_before_the_body_is_sent(port: int) -> None:
    body = b'{"channel":"c100","data":{"x":1}}'
    with socket.create_connection(("127.0.0.1", port), timeout=T) as sock:
        sock.sendall(b"POST /api/publish HTTP/1.1\r\nHost: h\r\nX-API-Key: " + API_KEY.encode()
                     + b"\r\nExpect: 100-continue\r\nConnection: close\r\n"
                     + b"Content-Length: %d\r\n\r\n" % len(body))
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = sock.recv(1)
            assert chunk, interim
            interim += chunk
        # Exactly the interim answer: no length, no body (RFC 9110 §15.2).
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        data = read_to_eof(sock)
    (answer,) = parse([req("POST", "/api/publish", body=body)], data)
    assert answer.status == 200, answer.body


def test_no_100_continue_without_a_body(port: int) -> None:
    raw = b"GET /health HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    (answer,) = exchange(port, [req("GET", "/health")], raw=raw)
    assert answer.interim == [] and answer.status == 200


def test_too_large_a_body_gets_413_instead_of_100(port: int) -> None:
    raw = (b"POST /api/publish HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
           b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1))
    (answer,) = exchange(port, [req("POST", "/api/publish")], raw=raw)
    assert answer.interim == []
    assert answer.status == 413
    assert answer.headers["connection"] == "close"


# --------------------------------------------------------------------------------------------
# (b) malformed and smuggling-shaped requests
# --------------------------------------------------------------------------------------------

H = b"POST /api/info HTTP/1.1\r\nHost: h\r\n"
G = b"GET /health HTTP/1.1\r\nHost: h\r\n"
MALFORMED = [
    ("duplicate-content-length", H + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}", 400),
    ("conflicting-content-length", H + b"Content-Length: 2\r\nContent-Length: 5\r\n\r\n{}", 400),
    ("content-length-list", H + b"Content-Length: 2, 2\r\n\r\n{}", 400),
    ("content-length-sign", H + b"Content-Length: +2\r\n\r\n{}", 400),
    ("content-length-negative", H + b"Content-Length: -1\r\n\r\n", 400),
    ("content-length-and-chunked",
     H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("chunked-and-content-length",
     H + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    ("te-not-chunked", H + b"Transfer-Encoding: gzip\r\n\r\n", 400),
    ("te-chunked-not-last", H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    ("te-unknown-coding-before-chunked",
     H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("te-twice", H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", 400),
    ("te-lookalike", H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    ("te-in-http10", b"POST /api/info HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     400),
    ("obs-fold", G + b"X-A: b\r\n c\r\n\r\n", 400),
    ("obs-fold-tab", G + b"X-A: b\r\n\tc\r\n\r\n", 400),
    ("bare-lf-request-line", b"GET /health HTTP/1.1\nHost: h\r\n\r\n", 400),
    ("bare-lf-header", G + b"X-A: b\nX-B: c\r\n\r\n", 400),
    ("bare-lf-only", b"GET /health HTTP/1.1\nHost: h\n\n", 400),
    ("bare-cr-request-line", b"GET /health HTTP/1.1\rHost: h\r\n\r\n", 400),
    ("bare-cr-header-value", G + b"X-A: b\rc\r\n\r\n", 400),
    ("nul-in-header-value", G + b"X-A: b\x00c\r\n\r\n", 400),
    ("control-in-header-value", G + b"X-A: b\x01c\r\n\r\n", 400),
    ("del-in-header-value", G + b"X-A: b\x7fc\r\n\r\n", 400),
    ("space-before-colon", G + b"X-A : b\r\n\r\n", 400),
    ("tab-before-colon", G + b"X-A\t: b\r\n\r\n", 400),
    ("empty-header-name", G + b": b\r\n\r\n", 400),
    ("header-without-colon", G + b"X-A b\r\n\r\n", 400),
    ("chunk-size-not-hex", H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400),
    ("chunk-size-0x", H + b"Transfer-Encoding: chunked\r\n\r\n0x2\r\n{}\r\n0\r\n\r\n", 400),
    ("chunk-size-negative", H + b"Transfer-Encoding: chunked\r\n\r\n-2\r\n{}\r\n0\r\n\r\n", 400),
    ("chunk-size-overflow",
     H + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n{}\r\n0\r\n\r\n", 400),
    ("chunk-longer-than-size",
     H + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}xx\r\n0\r\n\r\n", 400),
    ("chunk-bare-lf", H + b"Transfer-Encoding: chunked\r\n\r\n2\n{}\n0\n\n", 400),
    ("missing-host", b"GET /health HTTP/1.1\r\n\r\n", 400),
    ("two-hosts", G + b"Host: other\r\n\r\n", 400),
    ("http-2-over-http1", b"GET /health HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    ("http-0.9", b"GET /health\r\n\r\n", 505),
    ("bad-version", b"GET /health HTTP/1.2\r\nHost: h\r\n\r\n", 400),
    ("bad-method-token", b"G@T /health HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("control-in-target", b"GET /he\x01alth HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("space-in-target", b"GET /he alth HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("connect-authority", b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 400),
    ("request-line-too-long", b"GET /" + b"a" * (17 * 1024) + b" HTTP/1.1\r\nHost: h\r\n\r\n",
     414),
    ("header-section-too-large", G + b"X-A: " + b"a" * (65 * 1024) + b"\r\n\r\n", 431),
    ("too-many-header-fields", G + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
     431),
    ("body-too-large", H + b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1) + b"x" * 1024, 413),
    ("chunked-body-too-large", H + b"Transfer-Encoding: chunked\r\n\r\n"
     + b"%x\r\n" % (MAX_BODY + 1) + b"x" * (MAX_BODY + 1) + b"\r\n0\r\n\r\n", 413),
    ("unknown-expectation", H + b"Expect: 200-ok\r\nContent-Length: 2\r\n\r\n{}", 417),
]


@pytest.mark.parametrize(("case", "raw", "status"),
                         [pytest.param(i, r, s, id=i) for i, r, s in MALFORMED])
def test_malformed_request_is_refused_and_the_connection_closes(port: int, case: str,
                                                                raw: bytes, status: int) -> None:
    """Refused with a JSON error, ``Connection: close``, then EOF: the publish sent right
    behind it on the same connection (a smuggled request, had framing gone wrong) is neither
    answered nor acted on."""
    channel = f"smuggled:{case}"
    behind = encode(req("POST", "/api/publish", KEY,
                        body=b'{"channel":"%s","data":1}' % channel.encode()))
    (answer,) = exchange(port, [req("GET", "/")], raw=raw + behind)
    assert answer.status == status, answer.body
    assert answer.headers["connection"] == "close"
    assert answer.headers["content-type"] == "application/json"
    assert b'"message"' in answer.body
    history = httpx.post(f"http://127.0.0.1:{port}/api/history",
                         json={"channel": channel, "limit": 10},
                         headers=[KEY], timeout=T).json()  # fmt: skip
    assert history["result"]["publications"] == [], history


def test_a_refused_request_behind_good_ones_is_answered_after_them(port: int) -> None:
    good = [req("GET", "/health"), req("HEAD", "/openapi.json")]
    raw = b"".join(encode(r) for r in good) + G + b"X-A: b\x00c\r\n\r\n" + encode(good[0])
    answers = exchange(port, [*good, req("GET", "/")], raw=raw)
    assert [a.status for a in answers] == [200, 200, 400]
    assert answers[1].body == b""
    assert answers[2].headers["connection"] == "close"


def test_trailer_fields_do_not_become_headers(port: int) -> None:
    """An API key sent as a chunked body's trailer is not a header: no proxy in front of the
    hub has seen it as one."""
    raw = (b"POST /api/info HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
           b"Connection: close\r\n\r\n2\r\n{}\r\n0\r\nX-API-Key: " + API_KEY.encode()
           + b"\r\n\r\n")
    (answer,) = exchange(port, [req("POST", "/api/info", body=b"{}")], raw=raw)
    assert answer.status == 401, answer.body


def test_trailing_whitespace_is_no_part_of_a_header_value(port: int) -> None:
    raw = (b"POST /api/info HTTP/1.1\r\nHost: h\r\nX-API-Key: " + API_KEY.encode()
           + b" \t\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    (answer,) = exchange(port, [req("POST", "/api/info", body=b"{}")], raw=raw)
    assert answer.status == 200, answer.body


def test_an_unanswered_upgrade_closes_the_connection(port: int) -> None:
    """The client may already speak the protocol it asked for: the hub, staying in HTTP/1.1,
    answers and closes rather than read those bytes as requests."""
    raw = (b"GET /health HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
           + encode(req("GET", "/health")))
    (answer,) = exchange(port, [req("GET", "/health")], raw=raw)
    assert answer.status == 200
    assert answer.headers["connection"] == "close"


# --------------------------------------------------------------------------------------------
# (c) response splitting through HEAD
# --------------------------------------------------------------------------------------------

FORGED = "\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 6\r\n\r\nforged"


def test_head_to_the_webhooks_sign_in_page_cannot_forge_the_next_answer(
        webhooks_port: int) -> None:  # fmt: skip
    """The sign-in page echoes ``next``. Were HEAD answered with that page's body, the bytes
    of a forged answer would be read as the answer to the GET behind it."""
    target = "/webhooks/login/?next=" + quote("/webhooks/" + FORGED, safe="/")
    (page,) = exchange(webhooks_port, [req("GET", target, close=True)])
    assert page.status == 200
    assert b"forged" in page.body  # the payload is really there to smuggle
    head, after = exchange(webhooks_port, [req("HEAD", target), req("GET", "/health",
                                                                      close=True)])
    assert head.status == 200
    assert head.body == b""
    assert head.headers["content-length"] == page.headers["content-length"]
    assert head.headers["content-type"] == page.headers["content-type"]
    assert after.status == 200
    assert after.body.startswith(b'{"status"'), after.body


def test_head_on_the_wsgi_mount_matches_get(webhooks_port: int) -> None:
    for path in ("/webhooks/login/", "/webhooks/static/nothing.css", "/webhooks/"):
        get, head = one_by_one(webhooks_port, [req("GET", path), req("HEAD", path, close=True)])
        assert head.status == get.status, path
        assert head.body == b""
        assert set(head.names) - {"connection"} == set(get.names), path
        assert head.headers.get("content-length") == get.headers.get("content-length"), path


def test_head_to_a_static_file_then_get_on_one_connection(port: int) -> None:
    head, get = exchange(port, [req("HEAD", "/static/clarion.js"),
                                req("GET", "/static/clarion.js", close=True)])
    assert head.body == b""
    assert int(head.headers["content-length"]) == len(get.body) > 0


# --------------------------------------------------------------------------------------------
# The GRIP proxy's client port: pass-through, holds, statuses without a body
# --------------------------------------------------------------------------------------------


@dataclass
class Grip:
    port: int  # the proxy's client port
    hub_port: int
    control_port: int
    origin: Origin

    def held(self) -> int:
        for line in httpx.get(f"http://127.0.0.1:{self.hub_port}/metrics", timeout=T).text \
                .splitlines():
            if line.startswith("clarion_grip_held "):
                return int(float(line.split()[1]))
        raise AssertionError("no clarion_grip_held in /metrics")


@pytest.fixture
def grip(hub_factory: HubFactory, tmp_path: Path) -> Iterator[Grip]:
    with Origin() as origin:
        routes = tmp_path / "routes"
        routes.write_text(f"* 127.0.0.1:{origin.port}\n")
        grip_port, control_port = free_port(), free_port()
        hub = hub_factory("", "--grip-routes", str(routes), "--grip-port", str(grip_port),
                          "--control-port", str(control_port))
        deadline = time.monotonic() + T
        while True:
            try:
                socket.create_connection(("127.0.0.1", grip_port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "GRIP port not listening"
                time.sleep(0.05)
        yield Grip(grip_port, hub.port, control_port, origin)


def test_grip_head_passes_the_get_head_through(grip: Grip) -> None:
    grip.origin.on("/sized", Reply(200, [("Content-Type", "text/plain")], "twelve bytes"))
    grip.origin.on("/chunked", Reply(200, [("Content-Type", "text/plain")],
                                     chunks=[b"a", b"bc"]))  # fmt: skip
    get, head = exchange(grip.port, [req("GET", "/sized"), req("HEAD", "/sized", close=True)])
    assert get.body == b"twelve bytes" and head.body == b""
    assert head.headers["content-length"] == "12"
    cget, chead = exchange(grip.port, [req("GET", "/chunked"),
                                       req("HEAD", "/chunked", close=True)])
    assert cget.body == b"abc" and chead.body == b""
    # The GET of unknown length went out chunked; its HEAD says so, with no length.
    assert cget.headers["transfer-encoding"] == chead.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in chead.headers


def test_grip_head_to_a_hold_answers_at_once_without_a_body(grip: Grip) -> None:
    grip.origin.on("/hold", Reply(200, [("Content-Type", "text/plain"), ("Grip-Hold", "response"),
                                        ("Grip-Channel", "held")], "timed out\n"))
    grip.origin.on("/stream", Reply(200, [("Content-Type", "text/plain"),
                                          ("Grip-Hold", "stream"), ("Grip-Channel", "held")],
                                    "start\n"))  # fmt: skip
    head, shead = exchange(grip.port, [req("HEAD", "/hold"),
                                       req("HEAD", "/stream", close=True)])
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == str(len("timed out\n"))
    assert "grip-hold" not in head.headers
    assert shead.body == b"" and shead.headers["transfer-encoding"] == "chunked"


@pytest.mark.parametrize("status", [204, 304])
def test_statuses_without_a_body_carry_no_length(grip: Grip, status: int) -> None:
    """204 and 304 end at their header section: no Content-Length (RFC 9110 §8.6) even when
    the origin sent one, no body even when one was published, and the next answer on the
    connection starts right after."""
    grip.origin.on("/empty", Reply(status, [("Content-Length", "0"), ("ETag", '"v1"')]))
    answers = exchange(grip.port, [req("GET", "/empty"), req("HEAD", "/empty", close=True)])
    for a in answers:
        assert a.status == status
        assert "content-length" not in a.headers and "transfer-encoding" not in a.headers
    # A long-poll answered by a publish with this status and a body: the body is dropped.
    grip.origin.on("/empty-hold", Reply(200, [("Grip-Hold", "response"),
                                              ("Grip-Channel", "empty-hold")], "timed out"))
    requests = [req("GET", "/empty-hold"), req("GET", "/after", close=True)]
    with socket.create_connection(("127.0.0.1", grip.port), timeout=T) as sock:
        sock.sendall(b"".join(encode(r) for r in requests))  # the second waits, held
        deadline = time.monotonic() + T
        while grip.held() < 1:
            assert time.monotonic() < deadline, "the long-poll was not held"
            time.sleep(0.05)
        item = {"channel": "empty-hold",
                "formats": {"http-response": {"code": status, "body": "must not be sent"}}}
        published = httpx.post(f"http://127.0.0.1:{grip.control_port}/publish/",
                               json={"items": [item]}, timeout=T)  # fmt: skip
        assert published.status_code == 200, published.text
        data = read_to_eof(sock)
    held, after = parse(requests, data)
    assert held.status == status, data
    assert "content-length" not in held.headers and held.body == b""
    assert after.status == 404 and b"no route /after" in after.body
