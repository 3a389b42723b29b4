"""clarion.outbound: the keep-alive HTTP/1.1 client the hub calls the app's backend with.

Against real sockets: uvicorn (Starlette) for a well-behaved server, over TCP and TLS, and a
scripted asyncio server for what well-behaved servers do not do on demand (close an idle
connection as it is reused, answer close-delimited, chunked or oversized, never answer, send
garbage). Last, a hub process whose connect proxy is an https backend with a private CA.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httptools
import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from clarion import outbound
from conftest import HubFactory, free_port
from connect_servers import Tls, make_tls

T = 10.0  # a generous bound on anything that should happen at once


# -- a real server: Starlette under uvicorn, in a thread --------------------------------------


class Uvicorn:
    """Echoes each request (method, path, headers, body, the client's port: one port per
    connection) as JSON; /stream answers chunked; /connect answers a proxy connect."""

    def __init__(self, tls: Tls | None = None, keep_alive: int = 5) -> None:
        self.port = free_port()
        self.tls = tls
        app = Starlette(routes=[Route("/echo", self._echo, methods=["GET", "POST"]),
                                Route("/stream", self._stream),
                                Route("/connect", self._connect, methods=["POST"])])
        options: dict[str, Any] = {}
        if tls is not None:
            cert = tls.ca_file.parent / "server.pem"
            options = {"ssl_certfile": str(cert)}
        self.server = uvicorn.Server(uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off",
            timeout_keep_alive=keep_alive, timeout_graceful_shutdown=1, **options))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    async def _echo(self, request: Request) -> JSONResponse:
        assert request.client is not None
        return JSONResponse({"method": request.method, "path": request.url.path,
                             "query": request.url.query,
                             "headers": [[k, v] for k, v in request.headers.items()],
                             "body": (await request.body()).decode(),
                             "client_port": request.client.port})

    async def _stream(self, request: Request) -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for i in range(5):
                yield b"part%d;" % i
        return StreamingResponse(parts(), media_type="text/plain")

    async def _connect(self, request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        return JSONResponse({"result": {"user": "tls-user",
                                        "data": {"transport": body["transport"]}}})

    def __enter__(self) -> Uvicorn:
        self.thread.start()
        deadline = time.monotonic() + T
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(T)


@pytest.fixture
def server() -> Iterator[Uvicorn]:
    with Uvicorn() as s:
        yield s


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("outbound-tls"), "localhost")


# -- a scripted server -------------------------------------------------------------------------


class _RequestReader:
    """httptools' request parser over one connection: whole requests, one after another."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.done: list[tuple[bytes, dict[str, str], bytes]] = []
        self._headers: dict[str, str] = {}
        self._body = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_method(), self._headers, self._body))
        self._headers, self._body = {}, b""


Script = Callable[[int, int, asyncio.StreamWriter], Awaitable[bool]]


class Scripted:
    """Calls ``script(connection_no, request_no_on_it, writer)`` per request; the script
    writes what it likes and returns False to close the connection."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[tuple[bytes, dict[str, str], bytes]] = []
        self._server: asyncio.Server | None = None
        self._arrived = asyncio.Condition()
        self.port = 0

    async def received(self, count: int) -> None:
        """Wait until ``count`` requests have arrived."""
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(self.requests) >= count), T)

    async def __aenter__(self) -> Scripted:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    def endpoint(self, path: str = "/x") -> outbound.Endpoint:
        return outbound.Endpoint.parse(f"http://127.0.0.1:{self.port}{path}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        parsed = _RequestReader()
        served = 0
        try:
            while data := await reader.read(65536):
                parsed.parser.feed_data(data)
                while len(parsed.done) > served:
                    self.requests.append(parsed.done[served])
                    served += 1
                    async with self._arrived:
                        self._arrived.notify_all()
                    if not await self.script(number, served, writer):
                        return
        finally:
            writer.close()


def answer(body: bytes, *extra: str, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def ok(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
    writer.write(answer(b'{"ok": true}', "Content-Type: application/json"))
    return True


async def closed(client: outbound.Client) -> None:
    """Wait for the client's sockets to be gone (a transport closes in the next loop turns)."""
    deadline = time.monotonic() + T
    while client.open_connections:
        assert time.monotonic() < deadline, "a connection stayed open"
        await asyncio.sleep(0.01)


# -- keep-alive --------------------------------------------------------------------------------


async def test_keep_alive_reuses_one_connection(server: Uvicorn) -> None:
    client = outbound.Client()
    endpoint = outbound.Endpoint.parse(server.url("/echo?x=1"))
    try:
        ports = set()
        for i in range(5):
            resp = await client.request("POST", endpoint, body=b"n=%d" % i, timeout=T,
                                        headers=[("Content-Type", "text/plain")])
            assert resp.status == 200
            echo = json.loads(resp.body)
            assert (echo["method"], echo["path"], echo["query"], echo["body"]) == (
                "POST", "/echo", "x=1", f"n={i}")
            ports.add(echo["client_port"])
        assert len(ports) == 1  # one connection for all five
        assert client.open_connections == 1 and client.idle_connections == 1
    finally:
        await client.aclose()
    assert client.open_connections == 0


async def test_at_most_max_connections_at_once() -> None:
    release = asyncio.Event()

    async def held(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        await release.wait()
        writer.write(answer(b"{}"))
        return True

    async with Scripted(held) as srv:
        client = outbound.Client(max_connections=3, max_keepalive=2)
        try:
            calls = [asyncio.create_task(client.request("GET", srv.endpoint(), timeout=T))
                     for _ in range(5)]
            await srv.received(3)
            assert client.open_connections == 3  # the other two wait for a free one
            release.set()
            assert [(await c).status for c in calls] == [200] * 5
            # The two that waited went out on connections kept alive: no fourth one.
            assert srv.connections == 3 and len(srv.requests) == 5
            assert client.idle_connections == 2  # max_keepalive: the third was closed
        finally:
            await client.aclose()


async def test_a_server_that_closes_idle_connections() -> None:
    async def close_after_answer(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b"{}"))
        await writer.drain()
        return False  # the server closes the idle connection right after answering

    async with Scripted(close_after_answer) as srv:
        client = outbound.Client()
        try:
            for _ in range(3):
                resp = await client.request("POST", srv.endpoint(), body=b"{}", timeout=T)
                assert resp.status == 200
            assert srv.connections == 3 and len(srv.requests) == 3  # each sent once
        finally:
            await client.aclose()


async def test_a_reused_connection_closed_before_the_answer() -> None:
    # The race a keep-alive client cannot avoid: the server drops the connection as the next
    # request goes out on it. Nothing was answered, so the request may be sent again, once.
    async def drop_second(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        if n == 2:
            return False
        writer.write(answer(b"{}"))
        return True

    async with Scripted(drop_second) as srv:
        client = outbound.Client()
        try:
            await client.request("POST", srv.endpoint(), body=b"1", timeout=T)
            resp = await client.request("POST", srv.endpoint(), body=b"2", timeout=T)
            assert resp.status == 200
            assert [r[2] for r in srv.requests] == [b"1", b"2", b"2"]
            assert srv.connections == 2
            # Not for a request that must not run twice: the caller hears of it.
            with pytest.raises(outbound.ClosedBeforeAnswer):
                await client.request("POST", srv.endpoint(), body=b"3", timeout=T,
                                     retry_stale=False)
            assert [r[2] for r in srv.requests][3:] == [b"3"]
        finally:
            await client.aclose()


async def test_an_answer_with_connection_close_is_not_reused() -> None:
    async def close_header(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b"{}", "Connection: close"))
        return True  # the server would keep it: the client must not, it was told so

    async with Scripted(close_header) as srv:
        client = outbound.Client()
        try:
            for _ in range(2):
                assert (await client.request("GET", srv.endpoint(), timeout=T)).status == 200
            assert srv.connections == 2
        finally:
            await client.aclose()


async def test_an_expired_idle_connection_is_not_reused() -> None:
    async with Scripted(ok) as srv:
        client = outbound.Client(keepalive_expiry=0)
        try:
            for _ in range(2):
                await client.request("GET", srv.endpoint(), timeout=T)
            assert srv.connections == 2
        finally:
            await client.aclose()


async def test_expired_idle_connections_of_other_hosts_are_closed() -> None:
    # Receivers that never close an idle connection: a host not called again must not keep
    # its socket for ever; a request to any host sweeps the expired idle connections of all.
    async with Scripted(ok) as a, Scripted(ok) as b:
        client = outbound.Client(keepalive_expiry=0)
        try:
            await client.request("GET", a.endpoint(), timeout=T)
            assert client.idle_connections == 1
            await client.request("GET", b.endpoint(), timeout=T)
            assert client.idle_connections == 1  # b's; a's was closed and its host forgotten
            deadline = time.monotonic() + T
            while client.open_connections > 1:
                assert time.monotonic() < deadline, "a's idle connection stayed open"
                await asyncio.sleep(0.01)
        finally:
            await client.aclose()


async def test_the_webhook_transport_forgets_hosts_it_is_done_with() -> None:
    from clarion.webhooks import transport as wt
    from clarion.webhooks.addresses import AddressPolicy

    async with Scripted(ok) as srv:
        policy = AddressPolicy(["127.0.0.0/8"])
        pinned = wt.PinnedTransport(policy, idle_timeout=0)
        try:
            for host in ("127.0.0.1", "localhost"):
                target = policy.parse_url(f"http://{host}:{srv.port}/hook")
                await asyncio.gather(*(pinned.send(wt.Request(target, [], b"{}", T))
                                       for _ in range(3)))
                assert not pinned._slots  # no semaphore kept for a host nobody waits for
            assert pinned._client.idle_connections == 3  # the first host's were swept
        finally:
            await pinned.aclose()


# -- answers: framing, size ------------------------------------------------------------------


async def test_chunked_answer_from_uvicorn(server: Uvicorn) -> None:
    client = outbound.Client()
    try:
        for _ in range(2):  # and the connection is reusable after it
            resp = await client.request("GET", outbound.Endpoint.parse(server.url("/stream")),
                                        timeout=T)
            assert resp.status == 200
            assert resp.header("transfer-encoding") == "chunked"
            assert resp.body == b"part0;part1;part2;part3;part4;"
        assert client.open_connections == 1
    finally:
        await client.aclose()


@pytest.mark.parametrize(("raw", "body", "reused"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n", b"hello", True),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b"", True),
    (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
     b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello", True),
    # No length and no chunking: the body is whatever comes before the server closes.
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello", b"hello", False),
    (b"HTTP/1.0 200 OK\r\n\r\nhello", b"hello", False),
])
async def test_answer_framing(raw: bytes, body: bytes, reused: bool) -> None:
    async def scripted(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(raw)
        return reused

    async with Scripted(scripted) as srv:
        client = outbound.Client()
        try:
            for _ in range(2):
                resp = await client.request("GET", srv.endpoint(), timeout=T)
                assert resp.body == body
            assert srv.connections == (1 if reused else 2)
        finally:
            await client.aclose()


@pytest.mark.parametrize("chunked", [False, True])
async def test_answer_size_limit(chunked: bool) -> None:
    limit = 1000

    async def sized(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        size = limit if n == 1 else limit + 1  # the edge, then one byte over it
        if chunked:
            half = size // 2
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + b"%x\r\n" % half + b"a" * half + b"\r\n"
                         + b"%x\r\n" % (size - half) + b"a" * (size - half)
                         + b"\r\n0\r\n\r\n")
        else:
            writer.write(answer(b"a" * size))
        return True

    async with Scripted(sized) as srv:
        client = outbound.Client(max_body=limit)
        try:
            resp = await client.request("GET", srv.endpoint(), timeout=T)
            assert len(resp.body) == limit
            with pytest.raises(outbound.ResponseTooLarge, match="larger than 1000 bytes"):
                await client.request("GET", srv.endpoint(), timeout=T)
            await closed(client)  # dropped, not read to the end and kept
        finally:
            await client.aclose()


async def test_capture_keeps_the_start_and_cuts_what_is_too_large() -> None:
    sizes = [50, 300, 5000]

    async def sized(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b"b" * sizes[len(srv.requests) - 1]))
        return True

    async with Scripted(sized) as srv:
        client = outbound.Client(max_body=1000, capture=100)
        try:
            small = await client.request("GET", srv.endpoint(), timeout=T)
            assert (len(small.body), small.truncated, small.address) == (50, False, "127.0.0.1")
            kept = await client.request("GET", srv.endpoint(), timeout=T)
            assert (kept.body, kept.truncated) == (b"b" * 100, True)
            assert srv.connections == 1  # read to the end (under max_body): reusable
            cut = await client.request("GET", srv.endpoint(), timeout=T)
            assert (cut.status, cut.body, cut.truncated) == (200, b"b" * 100, True)
            await closed(client)  # over max_body: not read to the end, so not reused
        finally:
            await client.aclose()


async def test_webhook_transport_on_the_outbound_layer() -> None:
    # clarion.webhooks.transport keeps its names and behaviour on top of clarion.outbound:
    # vetted addresses, the first CAPTURE bytes, a body over MAX_READ cut, its own errors.
    from clarion.errors import AddressRejected
    from clarion.webhooks import transport as wt
    from clarion.webhooks.addresses import AddressPolicy

    bodies = [b"x" * 10, b"y" * (wt.CAPTURE + 5), b"z" * (wt.MAX_READ + 10)]

    async def receiver(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(bodies[len(srv.requests) - 1], "Retry-After: 40"))
        return True

    async with Scripted(receiver) as srv:
        policy = AddressPolicy(["127.0.0.0/8"])
        pinned = wt.PinnedTransport(policy)
        target = policy.parse_url(f"http://localhost:{srv.port}/hook?a=1")
        try:
            first = await pinned.send(wt.Request(target, [("X-Id", "1")], b"{}", T))
            assert (first.status, first.body, first.truncated) == (200, b"x" * 10, False)
            assert first.address == "127.0.0.1" and first.header("retry-after") == "40"
            method, headers, body = srv.requests[0]
            assert (method, body, headers["x-id"]) == (b"POST", b"{}", "1")
            assert headers["user-agent"] == wt.USER_AGENT
            assert headers["host"] == f"localhost:{srv.port}"
            second = await pinned.send(wt.Request(target, [], b"{}", T))
            assert (len(second.body), second.truncated) == (wt.CAPTURE, True)
            third = await pinned.send(wt.Request(target, [], b"{}", T))
            assert (len(third.body), third.truncated) == (wt.CAPTURE, True)
            assert srv.connections == 1
        finally:
            await pinned.aclose()
        # Without loopback allowed the policy refuses before any connection is made.
        strict = wt.PinnedTransport(AddressPolicy())
        with pytest.raises(AddressRejected):
            await strict.send(wt.Request(target, [], b"{}", T))
        await strict.aclose()
        assert srv.connections == 1
    refused = wt.PinnedTransport(AddressPolicy(["127.0.0.0/8"]))
    down = AddressPolicy(["127.0.0.0/8"]).parse_url(f"http://127.0.0.1:{free_port()}/")
    with pytest.raises(wt.ConnectError, match=r"cannot connect to 127\.0\.0\.1"):
        await refused.send(wt.Request(down, [], b"{}", T))
    await refused.aclose()


async def test_an_endless_head_is_cut() -> None:
    async def endless(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(2000):
            writer.write(b"X-Filler-%d: %s\r\n" % (i, b"x" * 100))
        return True

    async with Scripted(endless) as srv:
        client = outbound.Client(max_body=1000)
        try:
            with pytest.raises(outbound.ResponseTooLarge, match="answer head larger than 65536"):
                await client.request("GET", srv.endpoint(), timeout=T)
        finally:
            await client.aclose()


@pytest.mark.parametrize("endless", [False, True])
async def test_trailers_are_dropped_and_bounded(endless: bool) -> None:
    # The trailers of a chunked answer come after the head's bound was checked: a receiver
    # that sends them without end must not grow the client's memory.
    async def trailers(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n")
        if n == 1:
            writer.write(b"X-Sum: 1\r\n\r\n")  # a reasonable trailer: dropped, answer kept
            return True
        if endless:  # one trailer value that never ends
            writer.write(b"X-Sum: ")
            for _ in range(400):
                writer.write(b"x" * 1000)
                await writer.drain()
        else:  # many trailers
            for i in range(4000):
                writer.write(b"X-Filler-%d: %s\r\n" % (i, b"x" * 100))
                await writer.drain()
        return True

    async with Scripted(trailers) as srv:
        client = outbound.Client(max_body=1000)
        try:
            resp = await client.request("GET", srv.endpoint(), timeout=T)
            assert (resp.status, resp.body) == (200, b"ok")
            assert resp.headers == [("Transfer-Encoding", "chunked")]
            with pytest.raises(outbound.ResponseTooLarge, match="larger than"):
                await client.request("GET", srv.endpoint(), timeout=T)
        finally:
            await client.aclose()


async def test_a_second_answer_to_one_request() -> None:
    async def twice(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b"first", "X-N: 1") + answer(b"second", "X-N: 2", status="500 No"))
        return True

    async with Scripted(twice) as srv:
        client = outbound.Client()
        try:
            for _ in range(2):
                resp = await client.request("GET", srv.endpoint(), timeout=T)
                assert (resp.status, resp.body) == (200, b"first")
                assert resp.headers == [("Content-Length", "5"), ("X-N", "1")]
            assert srv.connections == 2  # the first connection's framing was not trusted
        finally:
            await client.aclose()


async def test_malformed_and_cut_answers() -> None:
    async def garbage(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        if conn == 1:
            writer.write(b"SMTP ready\r\n\r\n")
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await writer.drain()
        return False  # closes with 6 bytes of the body missing

    async with Scripted(garbage) as srv:
        client = outbound.Client()
        try:
            with pytest.raises(outbound.ExchangeError, match="malformed HTTP answer"):
                await client.request("GET", srv.endpoint(), timeout=T)
            with pytest.raises(outbound.ExchangeError, match="in the middle of the answer"):
                await client.request("GET", srv.endpoint(), timeout=T)
        finally:
            await client.aclose()


# -- failures: timeout, refused, closed client ----------------------------------------------------


async def test_timeout_and_the_connection_is_not_reused() -> None:
    async def silent_first(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        if conn == 1:
            return True  # never answers on the first connection
        writer.write(answer(b"late but fine"))
        return True

    async with Scripted(silent_first) as srv:
        client = outbound.Client()
        try:
            with pytest.raises(outbound.RequestTimeout, match=r"no answer within 0\.2 s"):
                await client.request("GET", srv.endpoint(), timeout=0.2)
            resp = await client.request("GET", srv.endpoint(), timeout=T)
            assert resp.body == b"late but fine" and srv.connections == 2
        finally:
            await client.aclose()


async def test_a_wait_for_a_free_connection_counts_against_the_timeout() -> None:
    release = asyncio.Event()

    async def held(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        await release.wait()
        writer.write(answer(b"{}"))
        return True

    async with Scripted(held) as srv:
        client = outbound.Client(max_connections=1)
        try:
            first = asyncio.create_task(client.request("GET", srv.endpoint(), timeout=T))
            await srv.received(1)
            with pytest.raises(outbound.RequestTimeout):
                await client.request("GET", srv.endpoint(), timeout=0.2)
            assert len(srv.requests) == 1  # the second never got a connection
            release.set()
            assert (await first).status == 200
        finally:
            await client.aclose()


async def test_connection_refused() -> None:
    client = outbound.Client()
    endpoint = outbound.Endpoint.parse(f"http://127.0.0.1:{free_port()}/x")
    with pytest.raises(outbound.ConnectError, match=r"cannot connect to 127\.0\.0\.1:\d+"):
        await client.request("POST", endpoint, body=b"{}", timeout=T)
    await client.aclose()


async def test_closing_the_client_fails_a_busy_request_and_refuses_new_ones() -> None:
    async def never(conn: int, n: int, writer: asyncio.StreamWriter) -> bool:
        return True

    async with Scripted(never) as srv:
        client = outbound.Client()
        busy = asyncio.create_task(client.request("GET", srv.endpoint(), timeout=T))
        await srv.received(1)
        await client.aclose()
        with pytest.raises(outbound.ClientClosed):
            await busy
        assert client.open_connections == 0
        with pytest.raises(outbound.ClientClosed):
            await client.request("GET", srv.endpoint(), timeout=T)


# -- the request: headers, URL ----------------------------------------------------------------


async def test_request_headers(server: Uvicorn) -> None:
    client = outbound.Client()
    try:
        url = server.url("/echo").replace("://", "://user%40x:p%3Ass@")
        resp = await client.request("POST", outbound.Endpoint.parse(url), body=b"{}", headers=[
            ("Cookie", "sessionid=abc"), ("X-Secret", "s"),
            # framing and hop-by-hop headers are the client's: a caller's copy is dropped
            ("Host", "evil.example"), ("Content-Length", "999"), ("Connection", "close"),
            ("Transfer-Encoding", "chunked")], timeout=T)
        sent = dict(json.loads(resp.body)["headers"])
        assert sent["host"] == f"127.0.0.1:{server.port}"
        assert sent["content-length"] == "2" and "transfer-encoding" not in sent
        assert sent["cookie"] == "sessionid=abc" and sent["x-secret"] == "s"
        assert sent["user-agent"] == outbound.USER_AGENT
        assert sent["authorization"] == "Basic dXNlckB4OnA6c3M="  # user@x:p:ss
        assert "connection" not in sent and "accept-encoding" not in sent
        # a forwarded User-Agent replaces the client's own
        resp = await client.request("GET", outbound.Endpoint.parse(server.url("/echo")),
                                    headers=[("User-Agent", "Firefox/1")], timeout=T)
        assert dict(json.loads(resp.body)["headers"])["user-agent"] == "Firefox/1"
    finally:
        await client.aclose()


@pytest.mark.parametrize("header", [("X-A", "a\r\nX-Injected: 1"), ("X-A", "a\nb"),
                                    ("X-A", "a\0b"), ("Bad Name", "v"), ("X:A", "v"), ("", "v")])
async def test_a_header_that_would_split_the_request_is_refused(
        header: tuple[str, str]) -> None:
    async with Scripted(ok) as srv:
        client = outbound.Client()
        with pytest.raises(outbound.InvalidHeader):
            await client.request("GET", srv.endpoint(), headers=[header], timeout=T)
        assert srv.connections == 0  # refused before anything was sent
        await client.aclose()


async def test_head_is_refused() -> None:
    client = outbound.Client()
    with pytest.raises(ValueError, match="HEAD requests are not supported"):
        await client.request("HEAD", outbound.Endpoint.parse("http://127.0.0.1:9/"), timeout=T)
    await client.aclose()


@pytest.mark.parametrize(("url", "origin", "target", "host_header"), [
    ("http://h/p", ("http", "h", 80), "/p", "h"),
    ("http://h", ("http", "h", 80), "/", "h"),
    ("HTTPS://H.example:8443/a/b?c=d#frag", ("https", "h.example", 8443), "/a/b?c=d",
     "h.example:8443"),
    ("https://h:443/", ("https", "h", 443), "/", "h"),
    ("http://[::1]:8000/x", ("http", "::1", 8000), "/x", "[::1]:8000"),
])
def test_endpoint_parse(url: str, origin: tuple[str, str, int], target: str,
                        host_header: str) -> None:
    e = outbound.Endpoint.parse(url)
    assert (e.origin, e.target, e.host_header, e.authorization) == (
        origin, target, host_header, "")


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://h/", "must be an http:// or https:// URL"),
    ("localhost:3000", "must be an http:// or https:// URL"),
    ("http:///x", "has no host"),
    ("http://h:99999/", "the port is not a number"),
    ("http://h:0/", "the port is not a number from 1"),  # not the default port
    ("http://h/a b", "space or a control character"),
    ("http://user:s3cret@h:99999/?token=s3cret", "'http://h:99999/': the port"),
    ("ftp://user:s3cret@h/", "'ftp://h/': must be"),
    ("user:s3cret@h", "must be"),
])
def test_endpoint_errors(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        outbound.Endpoint.parse(url)
    assert "s3cret" not in str(info.value)  # the operator's password is not in the message


def test_endpoint_repr_hides_the_password() -> None:
    e = outbound.Endpoint.parse("http://user:s3cret@h/p")
    assert e.authorization.startswith("Basic ")
    assert "authorization" not in repr(e)
    assert "s3cret" not in repr(e) and "czNjcmV0" not in repr(e)


# -- TLS -------------------------------------------------------------------------------------


async def test_tls(tls: Tls) -> None:
    with Uvicorn(tls=tls) as srv:
        endpoint = outbound.Endpoint.parse(srv.url("/echo", host="localhost"))
        trusting = outbound.Client(ssl_context=ssl.create_default_context(
            cafile=str(tls.ca_file)))
        try:
            ports = set()
            for _ in range(3):
                resp = await trusting.request("POST", endpoint, body=b"over tls", timeout=T)
                echo = json.loads(resp.body)
                assert echo["body"] == "over tls"
                ports.add(echo["client_port"])
            assert len(ports) == 1  # kept alive over TLS too
        finally:
            await trusting.aclose()
        # The default context does not know the private CA: no connection, no request.
        default = outbound.Client()
        with pytest.raises(outbound.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await default.request("GET", endpoint, timeout=T)
        await default.aclose()
        # The certificate is for localhost: by address it does not match.
        by_address = outbound.Client(ssl_context=ssl.create_default_context(
            cafile=str(tls.ca_file)))
        with pytest.raises(outbound.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await by_address.request("GET", outbound.Endpoint.parse(srv.url("/echo")),
                                     timeout=T)
        await by_address.aclose()


async def test_hub_connect_proxy_over_tls(hub_factory: HubFactory, tls: Tls) -> None:
    # The hub trusts what OpenSSL's default paths say; SSL_CERT_FILE adds a private CA.
    with Uvicorn(tls=tls) as srv:
        hub = hub_factory(f'proxy_connect_endpoint = "{srv.url("/connect", "localhost")}"\n'
                          'proxy_retries = 0\n', env={"SSL_CERT_FILE": str(tls.ca_file)})
        async with websockets.connect(hub.ws_url, open_timeout=T) as ws:
            await ws.send(json.dumps({"id": 1, "connect": {}}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), T))
        assert reply["connect"]["data"] == {"transport": "websocket"}
        assert "proxy request failed" not in hub.output()


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/x", "http://127.0.0.1/a b",
                                 "http://u:s3cret@127.0.0.1:0/x", "ftp://u:s3cret@127.0.0.1/x"])
def test_hub_refuses_an_endpoint_it_cannot_call(hub_factory: HubFactory, url: str) -> None:
    with pytest.raises(RuntimeError,
                       match=r"proxy_connect_endpoint: .*(the port is not|space|must be)") as info:
        hub_factory(f'proxy_connect_endpoint = "{url}"\n')
    assert "s3cret" not in str(info.value)  # nor in the log it quotes


def test_the_client_module_is_light() -> None:
    # The hub imports clarion.outbound whenever a proxy is configured: it must not pull in a
    # general-purpose HTTP stack.
    import subprocess
    import sys

    code = ("import sys, clarion.outbound; "
            "print(sorted(m for m in ('httpx', 'httpcore', 'anyio', 'h11') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "[]"
