"""HTTP/1.1 to receivers: keep-alive pools, pinned addresses, no redirects, bounded everything.

Each new connection resolves the host through the :class:`AddressPolicy` and connects to one of
the addresses it vetted, never to a name, so what is checked is what is dialled (a DNS answer
that changes to 127.0.0.1 between two connections is refused on the second). Responses are
parsed with httptools; only the first ``capture`` bytes of a body are kept, and a body larger
than ``max_read`` closes the connection instead of being read to the end. Nothing is followed:
a 3xx is handed back like any other status.

:class:`Transport` is the seam: the worker takes any object with ``send`` and ``aclose``.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Protocol

import httptools

from clarion import __version__
from clarion.errors import WebhookError
from clarion.webhooks.addresses import AddressPolicy, Target

USER_AGENT = f"Clarion-Webhooks/{__version__}"
CAPTURE = 20_000  # bytes of a response body kept per attempt (Svix keeps 20,000)
MAX_READ = 1 << 20  # bytes read before the connection is dropped instead
IDLE_TIMEOUT = 30.0


class ConnectError(WebhookError):
    """No connection could be made (refused, unreachable, TLS failed, name did not resolve)."""


class ExchangeError(WebhookError):
    """The connection broke or the receiver sent malformed HTTP."""


class ClosedBeforeAnswer(ExchangeError):
    """The receiver closed the connection before a status line arrived."""


@dataclass(slots=True)
class Request:
    target: Target
    headers: list[tuple[str, str]]
    body: bytes
    timeout: float


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    truncated: bool = False
    address: str = ""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


class Transport(Protocol):
    async def send(self, request: Request) -> Response: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class _Exchange:
    done: asyncio.Future[None]
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    read: int = 0
    truncated: bool = False
    complete: bool = False
    keep_alive: bool = False


class _Connection(asyncio.Protocol):
    def __init__(self, capture: int, max_read: int) -> None:
        self.capture = capture
        self.max_read = max_read
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Exchange | None = None
        self.closed = False
        self.idle_since = 0.0
        self.address = ""
        self.used = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:
            self.close()  # bytes nobody asked for: not safe to reuse
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ExchangeError(f"receiver sent malformed HTTP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ex = self.exchange
        if ex is not None and not ex.done.done():
            if ex.status and not ex.complete and ex.read and not self.parser.should_keep_alive():
                ex.complete = True  # a body without a length ends when the receiver closes
                ex.done.set_result(None)
            else:
                ex.done.set_exception(
                    ClosedBeforeAnswer("receiver closed the connection before answering")
                    if not ex.status
                    else ExchangeError("receiver closed the connection mid-response"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.exchange is not None
        self.exchange.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self.exchange is not None
        self.exchange.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        assert ex is not None
        ex.read += len(body)
        room = self.capture - len(ex.body)
        if room > 0:
            ex.body += body[:room]
        if len(body) > room:
            ex.truncated = True
        if ex.read > self.max_read:
            # Keep the status and the captured start; the rest is not worth reading.
            ex.complete = True
            if not ex.done.done():
                ex.done.set_result(None)
            self.close()

    def on_message_complete(self) -> None:
        ex = self.exchange
        assert ex is not None
        ex.complete = True
        ex.keep_alive = self.parser.should_keep_alive()
        if not ex.done.done():
            ex.done.set_result(None)

    def _fail(self, exc: Exception) -> None:
        ex = self.exchange
        if ex is not None and not ex.done.done():
            ex.done.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def exchange_once(self, head: bytes, body: bytes) -> _Exchange:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        ex = _Exchange(done=loop.create_future())
        self.exchange = ex
        self.used = True
        if len(body) < 16384:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))
        try:
            await ex.done
        except BaseException:
            self.close()  # timed out or broken mid-exchange: never reuse
            raise
        finally:
            self.exchange = None
        return ex


class PinnedTransport:
    """The default transport: one keep-alive pool per (scheme, host, port)."""

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        max_connections_per_host: int = 64,
        capture: int = CAPTURE,
        max_read: int = MAX_READ,
        ssl_context: ssl.SSLContext | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.policy = policy
        self.capture = capture
        self.max_read = max_read
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.idle_timeout = idle_timeout
        self.max_per_host = max_connections_per_host
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = defaultdict(deque)
        self._slots: dict[tuple[str, str, int], asyncio.Semaphore] = {}
        self._closed = False

    async def send(self, request: Request) -> Response:
        if self._closed:
            raise WebhookError("transport is closed")
        t = request.target
        key = (t.scheme, t.host, t.port)
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = asyncio.Semaphore(self.max_per_host)
        head = self._head(request)
        async with slots, asyncio.timeout(request.timeout):
            conn = self._take_idle(key)
            if conn is not None:
                try:
                    ex = await conn.exchange_once(head, request.body)
                except ClosedBeforeAnswer:
                    # The receiver closed an idle keep-alive connection as we reused it:
                    # nothing was answered, so one fresh connection may try again.
                    pass
                else:
                    return self._finish(key, conn, ex)
            conn = await self._connect(t)
            ex = await conn.exchange_once(head, request.body)
            return self._finish(key, conn, ex)

    def _finish(self, key: tuple[str, str, int], conn: _Connection, ex: _Exchange) -> Response:
        if ex.keep_alive and not conn.closed and ex.complete:
            conn.idle_since = time.monotonic()
            self._idle[key].append(conn)
        else:
            conn.close()
        return Response(ex.status, ex.headers, bytes(ex.body), ex.truncated, conn.address)

    def _take_idle(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # most recently used: the least likely to have been closed
            if conn.closed or now - conn.idle_since > self.idle_timeout:
                conn.close()
                continue
            return conn
        return None

    async def _connect(self, t: Target) -> _Connection:
        addresses = await self.policy.resolve(t)
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for address in addresses:
            try:
                _, conn = await loop.create_connection(
                    lambda: _Connection(self.capture, self.max_read),
                    host=address,
                    port=t.port,
                    ssl=self.ssl_context if t.scheme == "https" else None,
                    server_hostname=t.host if t.scheme == "https" and not t.literal else None,
                )
            except OSError as exc:  # ssl.SSLError is an OSError too
                last = exc
                continue
            conn.address = address
            return conn
        raise ConnectError(f"cannot connect to {t.host}:{t.port} ({', '.join(addresses)}): {last}")

    @staticmethod
    def _head(request: Request) -> bytes:
        t = request.target
        lines = [
            f"POST {t.target} HTTP/1.1",
            f"Host: {t.host_header}",
            f"User-Agent: {USER_AGENT}",
            f"Content-Length: {len(request.body)}",
        ]
        lines.extend(f"{k}: {v}" for k, v in request.headers)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()

