"""Django + GRIP interoperability (issue 3): the django-grip README's example views behind a
real GRIP proxy.

Every through-the-proxy case runs for proxy in {pushpin, clarion} x GRIP implementation in
{django_grip, clarion}: Pushpin with the real django-grip proves the tests themselves; the
other three prove Clarion's proxy and ``clarion.django.grip`` interoperate with them.  The
origin is tests/grip_apps under gunicorn; clients are httpx and ``websockets`` on the proxy's
client port.  Publishing is asynchronous (a proxy subscribes a held request a moment after it
answers), so a publish is repeated until the first delivery and only then are exact deliveries
asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect

from conftest import (
    GRIP_KEY,
    GripOrigin,
    GripOriginFactory,
    GripProxy,
    GripProxyFactory,
    free_port,
    grip_sig,
)

# Grip-Sig keys are Pushpin's default "changeme": PyJWT warns that it is short
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

PROXIES = ["pushpin", "clarion"]
IMPLS = ["django_grip", "clarion"]
WAIT = 30.0  # seconds for anything to arrive; generous, the machine is noisy


@dataclass
class GripStack:
    proxy: GripProxy
    origin: GripOrigin

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def ws_url(self) -> str:
        return self.proxy.ws_url


def start_stack(
    proxy_kind: str,
    impl: str,
    grip_proxy_factory: GripProxyFactory,
    grip_origin_factory: GripOriginFactory,
    server: str = "wsgi",
) -> GripStack:
    origin_port = free_port()
    proxy = grip_proxy_factory(proxy_kind, origin_port, over_http=True)
    origin = grip_origin_factory(proxy.control_uri, impl=impl, port=origin_port, server=server)
    return GripStack(proxy, origin)


def show_logs(*parts: tuple[str, Callable[[], str]], tail: int = 12000) -> None:
    """Printed at teardown: pytest shows it for a failed test only."""
    for name, output in parts:
        with contextlib.suppress(OSError):
            print(f"\n===== {name} (last {tail} chars)\n{output()[-tail:]}")


# clarion.django.grip also runs under ASGI (uvicorn); django-grip 3 is WSGI-only in practice.
STACKS = [(p, i, "wsgi") for p in PROXIES for i in IMPLS] + [(p, "clarion", "asgi")
                                                             for p in PROXIES]


@pytest.fixture(params=STACKS, ids=lambda s: f"{s[0]}-{s[1]}" + ("-asgi" if s[2] == "asgi" else ""))
def stack(
    request: pytest.FixtureRequest,
    grip_proxy_factory: GripProxyFactory,
    grip_origin_factory: GripOriginFactory,
) -> Iterator[GripStack]:
    """A proxy (param 0) in front of tests/grip_apps with GRIP_IMPL (param 1) under a WSGI or
    ASGI server (param 2)."""
    proxy_kind, impl, server = request.param
    s = start_stack(proxy_kind, impl, grip_proxy_factory, grip_origin_factory, server)
    yield s
    show_logs((f"{proxy_kind} proxy", s.proxy.output), (f"origin ({impl})", s.origin.output))


@pytest.fixture(params=PROXIES)
def clarion_impl_stack(
    request: pytest.FixtureRequest,
    grip_proxy_factory: GripProxyFactory,
    grip_origin_factory: GripOriginFactory,
) -> Iterator[GripStack]:
    """A proxy in front of tests/grip_apps with GRIP_IMPL=clarion (for the seed call style)."""
    s = start_stack(request.param, "clarion", grip_proxy_factory, grip_origin_factory)
    yield s
    show_logs((f"{request.param} proxy", s.proxy.output), ("origin (clarion)", s.origin.output))


@pytest.fixture(params=IMPLS)
def origin(
    request: pytest.FixtureRequest, grip_origin_factory: GripOriginFactory
) -> Iterator[GripOrigin]:
    """The origin alone (no proxy: nothing listens on its control URI; nothing publishes)."""
    o = grip_origin_factory(f"http://127.0.0.1:{free_port()}", impl=request.param)
    yield o
    show_logs((f"origin ({request.param})", o.output))


# --- helpers -------------------------------------------------------------------------------------


class LineReader:
    """Lines (with their ``\\n``) of a streamed response, pumped by a task so that a timed-out
    wait loses nothing."""

    def __init__(self, response: httpx.Response) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._task = asyncio.ensure_future(self._pump(response))

    async def _pump(self, response: httpx.Response) -> None:
        buf = b""
        try:
            async for chunk in response.aiter_raw():
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    await self._queue.put(line + b"\n")
        except (httpx.StreamClosed, httpx.ReadError, httpx.RemoteProtocolError):
            pass
        finally:
            if buf:
                await self._queue.put(buf)
            await self._queue.put(None)

    async def line(self, timeout: float = WAIT) -> bytes:
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if item is None:
            self._queue.put_nowait(None)
            raise EOFError("stream ended")
        return item

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def publish_until(
    publish: Callable[[int], Awaitable[None]],
    delivered: Awaitable[object],
    *,
    every: float = 1.0,
    timeout: float = WAIT,
) -> object:
    """Call ``publish(n)`` (n = 0, 1, ...) every ``every`` s until ``delivered`` completes: a
    proxy may subscribe a held request a moment after the client saw its response start."""
    task = asyncio.ensure_future(delivered)
    deadline = time.monotonic() + timeout
    n = 0
    try:
        while not task.done():
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing delivered after {n} publishes in {timeout}s")
            await publish(n)
            n += 1
            await asyncio.wait({task}, timeout=every)
        return task.result()
    finally:
        if not task.done():
            task.cancel()


async def post_form(client: httpx.AsyncClient, url: str, **data: str) -> None:
    r = await client.post(url, data=data)
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.text == "Ok\n"


def grip_headers(headers: httpx.Headers) -> list[str]:
    return [k for k in headers if k.lower().startswith("grip-")]


def decode_ws_events(body: bytes) -> list[tuple[str, bytes | None]]:
    """WebSocket-over-HTTP events: ``TYPE\\r\\n`` or ``TYPE <hex-len>\\r\\n<content>\\r\\n``."""
    out: list[tuple[str, bytes | None]] = []
    while body:
        head, _, body = body.partition(b"\r\n")
        typ, _, size = head.partition(b" ")
        if size:
            n = int(size, 16)
            content, body = body[:n], body[n:]
            assert body.startswith(b"\r\n"), body
            body = body[2:]
            out.append((typ.decode(), content))
        else:
            out.append((typ.decode(), None))
    return out


def encode_ws_events(*events: tuple[str, bytes | None]) -> bytes:
    out = b""
    for typ, content in events:
        if content is None:
            out += typ.encode() + b"\r\n"
        else:
            out += typ.encode() + b" %x\r\n" % len(content) + content + b"\r\n"
    return out


@contextlib.asynccontextmanager
async def ws_client(url: str) -> AsyncIterator[ClientConnection]:
    async with connect(url, open_timeout=WAIT, close_timeout=10, max_size=None) as ws:
        yield ws


# --- the origin directly: GRIP_PROXY_REQUIRED, Grip-Sig checks, the instructions it answers ------


async def test_direct_requests_are_refused_with_501(origin: GripOrigin) -> None:
    async with httpx.AsyncClient(base_url=origin.url, timeout=WAIT) as c:
        # the README view checks request.grip_proxied itself
        r = await c.get("/myendpoint")
        assert (r.status_code, r.text) == (501, "Not Implemented\n")
        # GRIP_PROXY_REQUIRED: the middleware answers 501 for any hold on a direct request
        for path in ("/required", "/longpoll?timeout=5"):
            r = await c.get(path)
            assert (r.status_code, r.text) == (501, "Not Implemented\n"), path
            assert not grip_headers(r.headers), path
        # a Grip-Sig that does not validate is a direct request too
        bad = {
            "wrong key": grip_sig(key="not-the-key"),
            "expired": grip_sig(exp_in=-60),
            "not a JWT": "garbage",
        }
        for why, sig in bad.items():
            r = await c.get("/required", headers={"Grip-Sig": sig})
            assert (r.status_code, r.text) == (501, "Not Implemented\n"), why
        # @websocket_only refuses a request without WebSocket events
        r = await c.get("/echo")
        assert r.status_code == 400, r.text
        assert r.text == "Request must contain WebSocket events.\n"


async def test_signed_requests_get_grip_instructions(origin: GripOrigin) -> None:
    """What the origin answers a request a proxy signed (the headers a GRIP proxy reads)."""
    signed = {"Grip-Sig": grip_sig()}
    async with httpx.AsyncClient(base_url=origin.url, timeout=WAIT) as c:
        r = await c.get("/myendpoint", headers=signed)
        assert r.status_code == 200
        assert r.text == "[stream open]\n"
        assert r.headers["Grip-Hold"] == "stream"
        assert r.headers["Grip-Channel"] == "test"
        assert "Grip-Timeout" not in r.headers

        r = await c.get("/longpoll", params={"timeout": "5", "channel": "lp-x"}, headers=signed)
        assert r.status_code == 200
        assert r.text == "[timeout]\n"
        assert r.headers["Grip-Hold"] == "response"
        assert r.headers["Grip-Channel"] == "lp-x"
        assert r.headers["Grip-Timeout"] == "5"
        assert r.headers["X-Origin"] == "initial"

        # a signature without iss is still valid (GRIP_PROXIES has no verify_iss)
        r = await c.get("/required", headers={"Grip-Sig": jwt.encode(
            {"exp": int(time.time()) + 60}, GRIP_KEY, algorithm="HS256")})  # fmt: skip
        assert r.status_code == 200
        assert (r.headers["Grip-Hold"], r.headers["Grip-Channel"]) == ("stream", "required")


async def test_websocket_over_http_requests_directly(origin: GripOrigin) -> None:
    """The echo view spoken to as Pushpin does (``over_http``): OPEN, TEXT, CLOSE."""
    cid = uuid.uuid4().hex
    headers = {
        "Grip-Sig": grip_sig(),
        "Content-Type": "application/websocket-events",
        "Accept": "application/websocket-events",
        "Connection-Id": cid,
        "Sec-WebSocket-Extensions": "grip",
    }
    async with httpx.AsyncClient(base_url=origin.url, timeout=WAIT) as c:
        r = await c.post("/echo", content=encode_ws_events(("OPEN", None)), headers=headers)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "application/websocket-events"
        assert r.headers["Sec-WebSocket-Extensions"] == "grip"
        events = decode_ws_events(r.content)
        assert events[0] == ("OPEN", None)
        assert [t for t, _ in events] == ["OPEN", "TEXT"], events
        control = events[1][1] or b""
        assert control.startswith(b"c:"), control
        assert json.loads(control[2:]) == {"type": "subscribe", "channel": "test"}

        body = encode_ws_events(("TEXT", b"hello"), ("TEXT", "h\u00e9".encode()))
        r = await c.post("/echo", content=body, headers=headers)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "application/websocket-events"
        assert decode_ws_events(r.content) == [("TEXT", b"m:hello"), ("TEXT", "m:h\u00e9".encode())]

        close = encode_ws_events(("CLOSE", (1000).to_bytes(2, "big")))
        r = await c.post("/echo", content=close, headers=headers)
        assert r.status_code == 200, r.text
        events = decode_ws_events(r.content)
        assert [t for t, _ in events] == ["CLOSE"], events  # django-grip: code 0 (none given)


# --- HTTP streaming through the proxy ------------------------------------------------------------


async def check_stream(stack: GripStack, path: str) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=WAIT) as c, c.stream(
        "GET", path
    ) as resp:
        assert resp.status_code == 200
        assert not grip_headers(resp.headers), resp.headers
        lines = LineReader(resp)
        try:
            assert await lines.line() == b"[stream open]\n"

            async def pub(n: int) -> None:
                await post_form(c, path, data=f"warm-{n}")

            first = await publish_until(pub, lines.line())
            assert isinstance(first, bytes) and first.startswith(b"warm-"), first
            for i in range(3):
                await post_form(c, path, data=f"data-{i}")
            got = []
            while len(got) < 3:
                line = await lines.line()
                if not line.startswith(b"warm-"):  # a warm-up still in flight
                    got.append(line)
            assert got == [b"data-0\n", b"data-1\n", b"data-2\n"]
        finally:
            await lines.aclose()


async def test_stream(stack: GripStack) -> None:
    """GET holds a stream on "test": the client sees ``[stream open]\\n``, then what a POST to
    the same endpoint publishes (``HttpStreamFormat(data + '\\n')``)."""
    await check_stream(stack, "/myendpoint")


async def test_stream_seed_call_style(clarion_impl_stack: GripStack) -> None:
    """The README's ``set_hold_stream(resp, 'test')`` (a response, not the request) works with
    clarion.django.grip."""
    await check_stream(clarion_impl_stack, "/seed/myendpoint")


async def test_stream_hold_without_proxied_check(stack: GripStack) -> None:
    """/required holds without looking at grip_proxied: through the proxy it streams."""
    async with httpx.AsyncClient(base_url=stack.url, timeout=WAIT) as c, c.stream(
        "GET", "/required"
    ) as resp:
        assert resp.status_code == 200
        lines = LineReader(resp)
        try:
            assert await lines.line() == b"[required open]\n"
        finally:
            await lines.aclose()


# --- long-poll through the proxy -----------------------------------------------------------------


async def test_longpoll_receives_publication(stack: GripStack) -> None:
    channel = f"lp-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=stack.url, timeout=90) as c:
        held = c.get("/longpoll", params={"channel": channel})  # Grip-Timeout 55

        async def pub(n: int) -> None:
            await post_form(c, f"/longpoll?channel={channel}", data="data")

        r = await publish_until(pub, held, every=1.5)
        assert isinstance(r, httpx.Response)
        assert r.status_code == 200
        assert r.text == "data\n"
        assert r.headers["X-Origin"] == "published"
        assert r.headers["Content-Type"] == "text/plain"
        assert not grip_headers(r.headers), r.headers


async def test_longpoll_timeout_returns_initial_response(stack: GripStack) -> None:
    channel = f"lp-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=stack.url, timeout=90) as c:
        t0 = time.monotonic()
        r = await c.get("/longpoll", params={"channel": channel, "timeout": "5"})
        held_for = time.monotonic() - t0
    assert r.status_code == 200
    assert r.text == "[timeout]\n"
    assert r.headers["X-Origin"] == "initial"
    assert r.headers["Content-Type"] == "text/plain"
    assert not grip_headers(r.headers), r.headers
    # held, not answered at once (a lower bound only: a slow machine makes it longer)
    assert held_for >= 4.5, held_for


# --- WebSocket (over HTTP) through the proxy -----------------------------------------------------


async def test_websocket_echo(stack: GripStack) -> None:
    async with ws_client(f"{stack.ws_url}/echo") as ws:
        for text in ("hello", "h\u00e9llo w\u00f6rld", "x" * 3000):
            await ws.send(text)
            assert await asyncio.wait_for(ws.recv(), WAIT) == text


async def test_websocket_broadcast(stack: GripStack) -> None:
    """POST /broadcast publishes ``WebSocketMessageFormat(data)`` on "test", to which the echo
    view subscribed every connection."""
    async with ws_client(f"{stack.ws_url}/echo") as a, ws_client(f"{stack.ws_url}/echo") as b, \
            httpx.AsyncClient(base_url=stack.url, timeout=WAIT) as c:  # fmt: skip
        # an echo round trip first: both connections are open at the origin
        for ws in (a, b):
            await ws.send("ping")
            assert await asyncio.wait_for(ws.recv(), WAIT) == "ping"

        async def pub(n: int) -> None:
            await post_form(c, "/broadcast", data=f"warm-{n}")

        async def both_warm() -> None:
            for ws in (a, b):
                msg = await ws.recv()
                assert isinstance(msg, str) and msg.startswith("warm-"), msg

        await publish_until(pub, both_warm())
        await post_form(c, "/broadcast", data="hello all")
        for ws in (a, b):
            while True:
                msg = await asyncio.wait_for(ws.recv(), WAIT)
                if not (isinstance(msg, str) and msg.startswith("warm-")):
                    break
            assert msg == "hello all"
