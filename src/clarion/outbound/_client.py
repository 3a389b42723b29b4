"""A keep-alive HTTP/1.1 client for the hub's calls to the app's backend.

One ``Client`` per process holds a pool of connections per origin (scheme, host, port):
at most ``max_connections`` open at once over all origins (a caller waits for a free one, and
the wait counts against its timeout), at most ``max_keepalive`` of them kept idle, each for at
most ``keepalive_expiry`` seconds. What it does not do, on purpose: follow redirects (a 3xx is
an answer like any other), read proxies or certificates from the environment beyond OpenSSL's
own default paths, decompress, or send anything the caller did not ask for but ``Host``,
``Content-Length`` and a ``User-Agent``.

How a connection is made is the ``Dialer``'s business (by default ``loop.create_connection``
to the endpoint's host; a dialer that vets and pins addresses, like the webhook engine's, fits
the same seam).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from clarion import __version__
from clarion.outbound._connection import Answer, Connection
from clarion.outbound._endpoint import Endpoint
from clarion.outbound._errors import (
    ClientClosed,
    ClosedBeforeAnswer,
    ConnectError,
    OutboundError,
)

USER_AGENT = f"Clarion/{__version__}"
MAX_BODY = 1024 * 1024
MAX_CONNECTIONS = 100
MAX_KEEPALIVE = 20
KEEPALIVE_EXPIRY = 30.0
CLOSE_WAIT = 1.0  # seconds aclose waits for sockets to finish closing (TLS close_notify)
# At most this often (and never more often than keepalive_expiry) a request first closes the
# expired idle connections of every host: a host not called again would otherwise keep its
# sockets (and the receiver's) open for ever.
SWEEP_INTERVAL = 1.0

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\r\n\0]")
# Framing and hop-by-hop headers are the client's own: a caller's copy (say, a client header
# forwarded by name) would contradict how this request is framed on this connection.
_OWN = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                  "upgrade", "te", "trailer", "proxy-connection"})


class InvalidHeader(OutboundError, ValueError):
    """A header name that is not a token, or a value with a line break or NUL: sending it
    would split the request."""


class RequestTimeout(OutboundError, TimeoutError):
    """No whole answer within the request's timeout (connecting and waiting for a free
    connection included)."""


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]]  # as received: names in the server's case, in order
    body: bytes
    truncated: bool = False  # with ``capture``: the body had more than was kept
    address: str = ""  # the IP address the answer came from

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class Dialer(Protocol):
    """Opens a connection to ``endpoint`` running ``protocol_factory``'s protocol. Raises
    OSError (ssl.SSLError included) or ConnectError when it cannot."""

    def __call__(self, endpoint: Endpoint,
                 protocol_factory: Callable[[], asyncio.Protocol],
                 ssl_context: ssl.SSLContext | None
                 ) -> Coroutine[Any, Any, tuple[asyncio.BaseTransport, asyncio.Protocol]]: ...


async def dial(endpoint: Endpoint, protocol_factory: Callable[[], asyncio.Protocol],
               ssl_context: ssl.SSLContext | None
               ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
    """The default dialer: the endpoint's host as it is (resolved by the loop), TLS with
    the endpoint's host name checked against the certificate."""
    loop = asyncio.get_running_loop()
    return await loop.create_connection(
        protocol_factory, endpoint.host, endpoint.port, ssl=ssl_context,
        server_hostname=endpoint.host if ssl_context is not None else None)


def default_ssl_context() -> ssl.SSLContext:
    """Certificates and host names checked against the system's trust store (OpenSSL's default
    paths, so ``SSL_CERT_FILE``/``SSL_CERT_DIR`` add a private CA) and certifi's Mozilla bundle
    when it is installed (it comes with httpx, a Clarion dependency): what httpx trusted before
    this client replaced it, and what the operating system trusts."""
    context = ssl.create_default_context()
    try:
        import certifi
    except ImportError:  # pragma: no cover - installed with httpx
        return context
    context.load_verify_locations(certifi.where())
    return context


class Client:
    """Pooled keep-alive HTTP/1.1 requests; see the module's docstring."""

    def __init__(self, *, max_connections: int | None = MAX_CONNECTIONS,
                 max_keepalive: int | None = MAX_KEEPALIVE,
                 keepalive_expiry: float = KEEPALIVE_EXPIRY, max_body: int = MAX_BODY,
                 capture: int | None = None,
                 ssl_context: ssl.SSLContext | None = None, dialer: Dialer = dial,
                 user_agent: str = USER_AGENT) -> None:
        """``max_connections``/``max_keepalive`` None: no bound (the caller bounds its
        concurrency itself). ``capture`` None: an answer over ``max_body`` fails with
        ResponseTooLarge; ``capture`` N: the first N bytes of a body are kept, and an answer
        over ``max_body`` is cut there (``truncated``) instead of failing."""
        if ((max_connections is not None and max_connections < 1)
                or (max_keepalive is not None and max_keepalive < 0)
                or keepalive_expiry < 0 or max_body < 0 or (capture is not None and capture < 0)):
            raise ValueError("max_connections must be at least 1; max_keepalive, "
                             "keepalive_expiry, max_body and capture at least 0")
        self.max_keepalive = max_keepalive
        self.keepalive_expiry = keepalive_expiry
        self.max_body = max_body
        self.capture = capture
        self.user_agent = user_agent
        self._ssl_context = ssl_context
        self._dialer = dialer
        self._slots: asyncio.Semaphore | None = None  # made in the loop that uses it
        self._max_connections = max_connections
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._idle_count = 0
        self._open: set[Connection] = set()
        self._closed = False
        self._sweep_every = min(SWEEP_INTERVAL, keepalive_expiry)
        self._swept = time.monotonic()

    @property
    def ssl_context(self) -> ssl.SSLContext:
        # Made at the first https request: loading the trust store costs milliseconds that an
        # http-only hub need not pay.
        if self._ssl_context is None:
            self._ssl_context = default_ssl_context()
        return self._ssl_context

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        return self._idle_count

    async def request(self, method: str, endpoint: Endpoint, *,
                      headers: Sequence[tuple[str, str]] = (), body: bytes = b"",
                      timeout: float, retry_stale: bool = True) -> Response:
        """The whole answer to one request within ``timeout`` seconds, or an OutboundError
        (RequestTimeout, ConnectError, ExchangeError, ResponseTooLarge, InvalidHeader,
        ClientClosed). Any status is an answer.

        ``retry_stale``: when a reused keep-alive connection turns out to have been closed by
        the server before a byte of the answer came back, send the request once more on a new
        connection. Leave it on for requests that may run twice (RFC 9110 §9.2.2); off, that
        case raises ClosedBeforeAnswer and the caller decides.
        """
        if self._closed:
            raise ClientClosed("the HTTP client is closed")
        if method == "HEAD":
            # Its answer announces a body it does not send: the parser would wait for it.
            raise ValueError("HEAD requests are not supported")
        head = self._head(method, endpoint, headers, body)
        if self._idle and time.monotonic() - self._swept >= self._sweep_every:
            self._sweep()
        try:
            async with asyncio.timeout(timeout):
                if self._max_connections is None:
                    return await self._send(endpoint, head, body, retry_stale)
                slots = self._slots
                if slots is None:
                    slots = self._slots = asyncio.Semaphore(self._max_connections)
                async with slots:
                    return await self._send(endpoint, head, body, retry_stale)
        except TimeoutError:
            raise RequestTimeout(f"no answer within {timeout:g} s") from None

    async def _send(self, endpoint: Endpoint, head: bytes, body: bytes,
                    retry_stale: bool) -> Response:
        conn = self._take_idle(endpoint.origin)
        if conn is not None:
            try:
                answer = await conn.exchange(head, body)
            except ClosedBeforeAnswer:
                if not retry_stale:
                    raise
            else:
                return self._finish(endpoint, conn, answer)
        conn = await self._connect(endpoint)
        return self._finish(endpoint, conn, await conn.exchange(head, body))

    def _head(self, method: str, endpoint: Endpoint, headers: Sequence[tuple[str, str]],
              body: bytes) -> bytes:
        lines = [f"{method} {endpoint.target} HTTP/1.1\r\nHost: {endpoint.host_header}\r\n"
                 f"Content-Length: {len(body)}\r\n"]
        agent = bool(self.user_agent)
        authorization = bool(endpoint.authorization)
        for name, value in headers:
            if not _TOKEN.fullmatch(name):
                raise InvalidHeader(f"{name!r} is not a header name")
            if _BAD_VALUE.search(value):
                raise InvalidHeader(f"the value of {name} has a line break or NUL")
            key = name.lower()
            if key in _OWN:
                continue
            if key == "user-agent":
                agent = False
            elif key == "authorization":
                authorization = False
            lines.append(f"{name}: {value}\r\n")
        if agent:
            lines.append(f"User-Agent: {self.user_agent}\r\n")
        if authorization:
            lines.append(f"Authorization: {endpoint.authorization}\r\n")
        lines.append("\r\n")
        # UTF-8, not Latin-1: a forwarded header is text the hub decoded as UTF-8, and this
        # sends its original bytes back.
        return "".join(lines).encode()

    def _sweep(self) -> None:
        """Close the idle connections of every host that expired or that the server closed,
        and forget the hosts left without any."""
        now = self._swept = time.monotonic()
        expiry = self.keepalive_expiry
        for origin, idle in list(self._idle.items()):
            kept = []
            for conn in idle:
                if conn.closed or now - conn.idle_since > expiry:
                    conn.close()
                else:
                    kept.append(conn)
            if len(kept) == len(idle):
                continue
            self._idle_count -= len(idle) - len(kept)
            if kept:
                self._idle[origin] = kept
            else:
                del self._idle[origin]

    def _take_idle(self, origin: tuple[str, str, int]) -> Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed
            self._idle_count -= 1
            if conn.closed or now - conn.idle_since > self.keepalive_expiry:
                conn.close()
                continue
            return conn
        return None

    def _finish(self, endpoint: Endpoint, conn: Connection, answer: Answer) -> Response:
        if conn.reusable and not self._closed and (
                self.max_keepalive is None or self._idle_count < self.max_keepalive):
            conn.idle_since = time.monotonic()
            self._idle.setdefault(endpoint.origin, []).append(conn)
            self._idle_count += 1
        else:
            conn.close()
        status, headers, body, truncated = answer
        return Response(status, headers, body, truncated, conn.address)

    async def _connect(self, endpoint: Endpoint) -> Connection:
        loop = asyncio.get_running_loop()
        max_body, capture = self.max_body, self.capture
        lost: asyncio.Future[None] = loop.create_future()
        context = self.ssl_context if endpoint.scheme == "https" else None
        try:
            transport, protocol = await self._dialer(
                endpoint, lambda: Connection(max_body, lost, capture), context)
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            raise ConnectError(f"cannot connect to {endpoint.host}:{endpoint.port}: "
                               f"{exc or type(exc).__name__}") from None
        assert isinstance(protocol, Connection)
        peer = transport.get_extra_info("peername")
        protocol.address = str(peer[0]) if peer else ""
        self._open.add(protocol)
        lost.add_done_callback(lambda _: self._open.discard(protocol))
        if self._closed:  # closed while this one was connecting
            protocol.close()
            raise ClientClosed("the HTTP client is closed")
        return protocol

    async def aclose(self) -> None:
        """Close every connection, idle or busy (a busy one's request fails with
        ClientClosed), and wait a little for the sockets to be gone."""
        self._closed = True
        self._idle.clear()
        self._idle_count = 0
        conns = list(self._open)
        for conn in conns:
            conn.abort("the HTTP client is closed")
        pending = [conn.lost for conn in conns if not conn.lost.done()]
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_WAIT)
