"""HTTP/1.1 on asyncio: httptools (llhttp) parses, this module routes and writes.

One protocol object per TCP connection. A request goes to an async handler; the handler
returns a Response, or takes the connection over (WebSocket, SSE, stream) via ``Takeover``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import httptools
import msgspec

if TYPE_CHECKING:
    from clarion.hub.app import Hub

MAX_HEADER_BYTES = 64 * 1024  # the header section as sent, a CRLF and ": " counted per line
MAX_HEADER_COUNT = 128
MAX_URL_BYTES = 16 * 1024  # room for a JWT with a long channels claim in ?token=
MAX_PIPELINED = 16
LINGER_SECONDS = 2.0  # how long a refused request's connection drains before it closes
# How long a stopping hub keeps an idle keep-alive connection open for a request already on
# its way (answered, with Connection: close) before closing it: a proxy in front sends its
# next request on the connection it used last, and one closed under it is a 502.
DRAIN_IDLE_GRACE = 1.0
# The fields that frame a body; an answer that has none must not carry them either.
_FRAMING = ("content-length", "transfer-encoding")


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query_string: str
    headers: dict[str, str]
    body: bytes
    # The client's address: the socket's peer, or, when that peer is a trusted proxy, the
    # client it forwarded for (clarion.hub.proxies). ``peer`` is always the socket's.
    client: str
    raw_headers: list[tuple[str, str]] = field(default_factory=list)  # as sent, for proxying
    keep_alive: bool = True
    http10: bool = False  # an HTTP/1.0 client must be told a connection stays open
    peer: str = ""
    scheme: str = "http"  # "https" over the hub's own TLS, or as a trusted proxy says
    forwarded_host: str = ""  # the host a trusted proxy says the client asked for
    _query: dict[str, list[str]] | None = None

    @property
    def host(self) -> str:
        """The host the client asked for: a trusted proxy's word, else the Host header."""
        return self.forwarded_host or self.headers.get("host", "")

    @property
    def query(self) -> dict[str, list[str]]:
        if self._query is None:
            self._query = parse_qs(self.query_string, keep_blank_values=True)
        return self._query

    def param(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[-1] if values else default


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"  # "" sends none (a proxied answer has its own)
    headers: list[tuple[str, str]] = field(default_factory=list)
    reason: str = ""

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> Response:
        return cls(status, msgspec.json.encode(obj))

    @classmethod
    def error(cls, status: int, message: str, **extra: Any) -> Response:
        return cls.json({"error": {"code": status, "message": message, **extra}}, status)


class Takeover:
    """Returned by a handler that keeps the connection (a WebSocket, an event stream)."""

    __slots__ = ()  # subclasses keep slots too: tens of thousands of these stay idle

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        raise NotImplementedError

    def pause_writing(self) -> None:
        return None

    def resume_writing(self) -> None:
        return None


Handler = Callable[[Request, "HttpProtocol"], Awaitable["Response | Takeover"]]
# Answers consecutive requests for one path together (requests pipelined on one connection),
# one response each, in order.
RunHandler = Callable[[list[Request], "HttpProtocol"], Awaitable[list["Response"]]]


def encode_head(status: int, headers: list[tuple[str, str]], reason: str = "") -> bytes:
    phrase = reason
    if not phrase:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
    lines = [f"HTTP/1.1 {status} {phrase}"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HttpProtocol(asyncio.Protocol):
    """One client connection. ``dispatch`` answers each request (the hub's router unless given:
    the GRIP proxy and its control API bring their own); ``max_body`` bounds request bodies.

    llhttp refuses most malformed framing itself (duplicate or invalid Content-Length, both
    Content-Length and Transfer-Encoding, bare CR/LF, obsolete line folding, control characters,
    bad chunk sizes); ``on_headers_complete`` refuses what it lets through. A refused request is
    answered, after the requests ahead of it, with ``Connection: close``, and nothing the client
    sent after it is read.
    """

    __slots__ = ("_body", "_body_size", "_client", "_counted", "_dispatch", "_draining", "_failure",
                 "_forwarded_host", "_header_bytes", "_headers", "_held", "_http10", "_in_body",
                 "_in_head", "_in_message", "_keep_alive", "_max_body", "_parser", "_peer",
                 "_per_address", "_queue", "_raw_headers", "_run_handler", "_running",
                 "_scheme", "_tls", "_trusted", "_url", "hub", "takeover", "transport")

    def __init__(self, hub: Hub, dispatch: Handler | None = None,
                 max_body: int | None = None, per_address: bool = True) -> None:
        self.hub = hub
        self._dispatch: Handler = dispatch or hub.router.dispatch
        # Which requests may be answered together when pipelined: the hub's router knows;
        # a protocol with a handler of its own answers one request at a time.
        self._run_handler: Callable[[Request], RunHandler | None] | None = (
            None if dispatch else hub.router.run_handler)
        self._max_body = max_body or hub.config.api_max_body_size
        self._raw_headers: list[tuple[str, str]] = []
        self._held = b""
        self.transport: asyncio.Transport | None = None
        self.takeover: Takeover | None = None
        # None once no more requests are read: after a refused one, a Connection: close or an
        # upgrade (RFC 9112 §9.6).
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._in_body = False
        self._http10 = False
        self._body: list[bytes] = []
        self._body_size = 0
        self._queue: list[Request] = []
        self._running = False
        self._keep_alive = True
        self._failure: Response | None = None
        self._client = ""
        self._peer = ""
        self._scheme = "http"
        self._tls = False
        self._forwarded_host = ""
        self._trusted = False  # the peer is a trusted proxy: its forwarding headers count
        self._counted = ""  # the address this connection counts against (per-address limit)
        # False on a listener for trusted publishers only (the GRIP control port), where one
        # origin's pool of connections is not a client hoarding them.
        self._per_address = per_address
        self._in_head = False  # waiting for a request head (since the first byte, or open)
        self._in_message = False  # between a request's first byte and its last
        self._draining = False  # the hub is stopping: close once what was received is answered

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        hub = self.hub
        self._peer = self._client = peer[0] if isinstance(peer, tuple) and peer else ""
        if transport.get_extra_info("sslcontext") is not None:
            self._tls = True
            self._scheme = "https"
        hub.http_connection_made(self)
        self._trusted = hub.proxies.trusted(self._peer)
        limits = hub.limits
        if not self._trusted and self._peer and self._per_address:
            # Refused at accept, before anything is read: an address over its limit costs one
            # short answer, not a parser and a request. The answer goes first (a client reads
            # it where it expects its response); the connection then lingers and closes.
            if not limits.acquire(self._peer):
                hub.refused("address_limit", client=self._peer)
                self._parser = None
                self.write_response(Response.error(429, _too_many(limits.per_address)))
                return
            self._counted = self._peer
        self._in_head = True
        limits.wait_head(self, time.monotonic())

    def connection_lost(self, exc: Exception | None) -> None:
        hub = self.hub
        hub.http_connection_lost(self)
        hub.limits.busy(self)
        if self._counted:
            hub.limits.release(self._counted)
            self._counted = ""
        if self.takeover is not None:
            self.takeover.connection_lost(exc)
            # Takeovers point back at this protocol: without the cycle both go at once,
            # not at the next full garbage collection.
            self.takeover = None
        self._parser = None

    def data_received(self, data: bytes) -> None:
        if self.takeover is not None:
            self.takeover.data_received(data)
            return
        parser = self._parser
        if parser is None:
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request is complete (on_message_complete ran); the handler takes over, or
            # the connection closes after its answer.
            pass
        except httptools.HttpParserCallbackError as exc:
            if self._parser is None:
                return  # the bytes after a request that ended the connection: not read
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._fail(refused.status, str(refused))
            else:
                self.hub.failed("http_parser", refused or exc)
                self._fail(500, "internal server error")
        except httptools.HttpParserError as exc:
            if self._parser is not None:
                self._fail(400, f"malformed HTTP request: {exc}")

    def pause_writing(self) -> None:
        if self.takeover is not None:
            self.takeover.pause_writing()

    def resume_writing(self) -> None:
        if self.takeover is not None:
            self.takeover.resume_writing()

    # -- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._parser is None:
            # A request pipelined behind one that ends the connection: stop parsing here.
            raise _Refused(400, "request after the connection's last one")
        self._in_message = True
        if not self._in_head:
            self._in_head = True
            self.hub.limits.wait_head(self, time.monotonic())
        self._url = b""
        self._headers = {}
        self._raw_headers = []
        self._header_bytes = 0
        self._in_body = False
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_URL_BYTES:
            raise _Refused(414, f"request target longer than {MAX_URL_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        if self._in_body:
            # A chunked body's trailer fields: never merged into the header section (RFC 9110
            # §6.5.1), or a trailer could add a Host or an API key no proxy in front has seen.
            return
        if len(self._raw_headers) >= MAX_HEADER_COUNT:
            raise _Refused(431, f"more than {MAX_HEADER_COUNT} header fields")
        key = name.decode("latin-1")
        # llhttp keeps trailing whitespace, which is no part of a field value (RFC 9110 §5.5).
        text = value.decode("latin-1").rstrip(" \t")
        lower = key.lower()
        if lower == "host" and "host" in self._headers:
            raise _Refused(400, "more than one Host header")
        self._headers[lower] = text
        self._raw_headers.append((key, text))

    def on_headers_complete(self) -> None:
        parser = self._parser
        if parser is None:
            return
        self._in_head = False
        limits = self.hub.limits
        limits.busy(self)
        self._in_body = True
        version = parser.get_http_version()
        self._http10 = version == "1.0"
        if version != "1.1" and not self._http10:
            raise _Refused(505, f"HTTP/{version} is not supported: use HTTP/1.1")
        headers = self._headers
        if not self._http10 and "host" not in headers:
            raise _Refused(400, "missing Host header")  # RFC 9112 §3.2
        coding = headers.get("transfer-encoding")
        if coding is not None:
            _check_transfer_coding(coding, self._http10)
        length = headers.get("content-length")
        if self._trusted:
            self._forwarded()
        if length is not None and int(length) > self._max_body:
            # Refused before the body is read, and before any 100 Continue.
            raise _Refused(413, f"request body larger than {self._max_body} bytes")
        if coding is not None or (length is not None and length != "0"):
            # A body follows: it must keep arriving (a gap of http_header_timeout is a stall),
            # or a client could hold the connection by trickling a large one.
            limits.touch(self, time.monotonic())
        expect = headers.get("expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                raise _Refused(417, f"unsupported expectation: {expect}")  # RFC 9110 §10.1.1
            # Only to an HTTP/1.1 client about to send a body, and only when no earlier answer
            # is still owed: an interim answer must not overtake them (a client that does not
            # get one sends its body after a short wait).
            if (not self._http10 and (coding is not None or (length is not None and length != "0"))
                    and not self._running and not self._queue and self.transport is not None):
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._count_body(len(body))
        self.hub.limits.touch(self, time.monotonic())

    def on_message_complete(self) -> None:
        parser = self._parser
        if parser is None:
            return
        self._in_message = False
        self.hub.limits.busy(self)
        try:
            parsed = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            raise _Refused(400, "malformed request target") from None
        # A refused upgrade continues in HTTP/1.1 only in theory: what a client sends after it
        # may be in the new protocol, so the connection closes after the answer.
        keep_alive = parser.should_keep_alive() and not parser.should_upgrade()
        request = Request(
            method=parser.get_method().decode("ascii"),
            path=parsed.path.decode("latin-1"),
            query_string=(parsed.query or b"").decode("latin-1"),
            headers=self._headers,
            body=b"".join(self._body),
            client=self._client,
            raw_headers=self._raw_headers,
            keep_alive=keep_alive,
            http10=self._http10,
            peer=self._peer,
            scheme=self._scheme,
            forwarded_host=self._forwarded_host,
        )
        if not keep_alive:
            self._parser = None  # nothing after this request is read (RFC 9112 §9.6)
        self._queue.append(request)
        if len(self._queue) > MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()
        if not self._running:
            self._running = True
            self.hub.spawn(self._serve())

    # -- limits ---------------------------------------------------------------------------

    def _forwarded(self) -> None:
        """A trusted proxy's request: the client it names is the client, and it counts
        against that client's limit from now on (a proxy reuses one connection for many)."""
        hub = self.hub
        forwarded = hub.proxies.resolve(self._peer, self._headers,
                                        "https" if self._tls else "http")
        client = forwarded.client
        self._scheme = forwarded.scheme
        self._forwarded_host = forwarded.host
        if client == self._client:
            return
        self._client = client
        if self._counted:
            hub.limits.release(self._counted)
            self._counted = ""
        if client == self._peer or not self._per_address:
            return  # the proxy's own request (a health check): not a client to limit
        if not hub.limits.acquire(client):
            hub.refused("address_limit", client=client, proxy=self._peer)
            raise _Refused(429, _too_many(hub.limits.per_address))
        self._counted = client

    def header_timed_out(self) -> None:
        """No complete request head within ``http_header_timeout`` (clarion.hub.limits)."""
        if self._parser is None or self.transport is None or self.takeover is not None:
            return
        seconds = self.hub.limits.header_timeout
        if self._in_head:
            self.hub.refused("header_timeout", client=self._client)
            self._fail(408, f"request head not complete within {seconds:g} seconds")
        else:
            self.hub.refused("body_timeout", client=self._client)
            self._fail(408, f"request body stalled: nothing received for {seconds:g} seconds")

    def idle_timed_out(self) -> None:
        """No request within ``http_keepalive_timeout`` of the last answer."""
        transport = self.transport
        if transport is None or self.takeover is not None or self._running or self._queue:
            return
        self.hub.metrics.http_idle_closed += 1
        transport.close()

    def drain(self) -> bool:
        """The hub is stopping. A connection with a request in hand (received, being answered
        or still arriving) answers it, the last answer saying ``Connection: close``, and
        closes after it. An idle one stays open for ``DRAIN_IDLE_GRACE`` in case a request is
        already on its way, which is answered the same way, and is closed when the grace ends
        idle. Closing it at once would fail a request a proxy in front has just sent on it and
        cannot retry (a publish: nginx answers its client 502). True while the connection is
        open."""
        transport = self.transport
        if transport is None or self.takeover is not None:
            return False  # a taken-over connection (a stream, a hold) has its own goodbye
        self._draining = True
        if not (self._running or self._queue or self._in_message):
            self.hub.loop.call_later(DRAIN_IDLE_GRACE, self._close_if_idle)
        return True

    def _close_if_idle(self) -> None:
        transport = self.transport
        if (transport is not None and self.takeover is None and not self._running
                and not self._queue and not self._in_message):
            transport.close()

    def _waiting(self) -> None:
        """Everything asked has been answered: the connection waits for its next request."""
        if (self._parser is not None and not self._in_message and self.takeover is None
                and not self._running and not self._queue and self._failure is None
                and self.transport is not None):
            self.hub.limits.wait_request(self, time.monotonic())

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _Refused(431, f"request headers larger than {MAX_HEADER_BYTES} bytes")

    def _count_body(self, n: int) -> None:
        limit = self._max_body
        self._body_size += n
        if self._body_size > limit:
            raise _Refused(413, f"request body larger than {limit} bytes")

    # -- serving --------------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while self._queue and self.transport is not None and self.takeover is None:
                request = self._queue.pop(0)
                # Pipelined requests each say whether the connection stays open after them.
                self._keep_alive = request.keep_alive
                if len(self._queue) <= MAX_PIPELINED:
                    self.transport.resume_reading()
                if self._queue and self._run_handler is not None:
                    handler = self._run_handler(request)
                    if handler is not None and self._run_handler(self._queue[0]) == handler:
                        await self._serve_run(handler, request)
                        continue
                try:
                    result = await self._dispatch(request, self)
                except Exception as exc:  # noqa: BLE001 - logged with traceback in failed()
                    # This request's failure: logged with its traceback and counted; the
                    # connection and the process go on.
                    self.hub.failed("handler", exc, path=request.path)
                    if self.takeover is not None:
                        # It had taken the connection over (a stream's head is out): an HTTP
                        # answer now would land inside that stream's body. The stream ends
                        # unfinished, which its client reads as a reason to reconnect.
                        self.takeover.connection_lost(exc)
                        self.takeover = None
                        self.transport.close()
                        return
                    result = Response.error(500, "internal server error")
                if isinstance(result, Takeover):
                    # Requests pipelined behind it wait: a takeover that answers with plain
                    # HTTP (a long-poll) gives the connection back through release().
                    self.takeover = result
                    return
                self.write_response(result, request)
            failure = self._failure
            if failure is not None and self.takeover is None:
                self._failure = None
                self.write_response(failure)
        finally:
            self._running = False
            self._waiting()

    async def _serve_run(self, handler: RunHandler, first: Request) -> None:
        # Every request of the run was read before the first is answered, so answering them
        # together changes no answer a client could see, only how many broker round trips
        # and fan-out flushes they cost (one, not one each).
        run = [first]
        while self._queue and self._run_handler is not None \
                and self._run_handler(self._queue[0]) == handler:
            run.append(self._queue.pop(0))
        self._keep_alive = run[-1].keep_alive
        if self.transport is not None and len(self._queue) <= MAX_PIPELINED:
            self.transport.resume_reading()
        try:
            responses = await handler(run, self)
        except Exception as exc:  # noqa: BLE001 - logged with traceback in failed()
            self.hub.failed("handler", exc, path=first.path)
            responses = [Response.error(500, "internal server error")] * len(run)
        last = len(run) - 1
        for i, (request, response) in enumerate(zip(run, responses, strict=True)):
            self.write_response(response, request, more=i < last)

    def hold(self, data: bytes) -> None:
        """Keep bytes a client sent while its connection was taken over (a pipelined request
        behind a long-poll), for ``release``."""
        self._held += data

    def release(self) -> None:
        """End a takeover that answered with plain HTTP (a long-poll): the connection goes
        back to serving requests, starting with any it received meanwhile."""
        self.takeover = None
        held, self._held = self._held, b""
        if not self._keep_alive and self.transport is not None:
            self.transport.close()
            return
        if held:
            self.data_received(held)
        if (self._queue or self._failure is not None) and not self._running \
                and self.takeover is None:
            self._running = True
            self.hub.spawn(self._serve())
        else:
            self._waiting()

    def write_response(self, response: Response, request: Request | None = None, *,
                       more: bool = False) -> None:
        """Write a complete answer. Without ``request`` (a refused one) the connection closes
        after it. A HEAD gets the GET's head, Content-Length included, and no body."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        status = response.status
        body = response.body
        headers = list(response.headers)
        if status < 200 or status == 204 or status == 304:
            # These end at their header section (RFC 9110 §8.6, RFC 9112 §6.3): a length or
            # a body would be read as the start of the next answer.
            headers = [h for h in headers if h[0].lower() not in _FRAMING]
            body = b""
        else:
            if not any(k.lower() in _FRAMING for k, _ in headers):
                headers.insert(0, ("content-length", str(len(body))))
            if request is not None and request.method == "HEAD":
                body = b""
        if response.content_type:
            headers.insert(0, ("content-type", response.content_type))
        # Draining: the answer to the last request in hand (``more``: answers of the same
        # pipelined run follow) closes the connection.
        keep_alive = request is not None and request.keep_alive and not (
            self._draining and not more and not self._queue and not self._in_message)
        if not keep_alive:
            headers.append(("connection", "close"))
        elif request is not None and request.http10:
            headers.append(("connection", "keep-alive"))  # HTTP/1.0 closes unless told
        transport.write(encode_head(status, headers, response.reason) + body)
        if not keep_alive:
            if request is None and transport.can_write_eof():
                # A refused request may still be arriving: closing with unread bytes sends a
                # reset, which can destroy this answer before the client reads it. Half-close
                # and drop what comes until the client closes too (RFC 9112 §9.6).
                transport.write_eof()
                self.hub.loop.call_later(LINGER_SECONDS, transport.close)
            else:
                transport.close()

    def _fail(self, status: int, message: str) -> None:
        self._parser = None
        response = Response.error(status, message)
        if self._running or self._queue:
            self._failure = response  # answered after the requests ahead of it, in order
        else:
            self.write_response(response)


def _too_many(limit: int) -> str:
    return (f"too many connections from this address (max_connections_per_address is "
            f"{limit}): close one, or retry later")


def _check_transfer_coding(value: str, http10: bool) -> None:
    """llhttp frames a body only by a final ``chunked`` but lets other codings before it
    through, and takes Transfer-Encoding from HTTP/1.0 clients."""
    if http10:
        # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
        raise _Refused(400, "Transfer-Encoding in an HTTP/1.0 request")
    lowered = value.lower()
    if lowered == "chunked":
        return
    if lowered.rsplit(",", 1)[-1].strip(" \t") != "chunked":
        raise _Refused(400, "Transfer-Encoding must end with chunked")  # RFC 9112 §6.3
    raise _Refused(501, f"transfer coding not implemented: {value}")


class _Refused(Exception):
    """A request answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
