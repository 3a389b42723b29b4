"""HTTP/1.1 on asyncio: httptools (llhttp) parses, this module routes and writes.

One protocol object per TCP connection. A request goes to an async handler; the handler
returns a Response, or takes the connection over (WebSocket, SSE, stream) via ``Takeover``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import httptools
import msgspec

if TYPE_CHECKING:
    from clarion.hub.app import Hub

MAX_HEADER_BYTES = 64 * 1024
MAX_PIPELINED = 16


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query_string: str
    headers: dict[str, str]
    body: bytes
    client: str
    raw_headers: list[tuple[str, str]] = field(default_factory=list)  # as sent, for proxying
    keep_alive: bool = True
    _query: dict[str, list[str]] | None = None

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
    the GRIP proxy and its control API bring their own); ``max_body`` bounds request bodies."""

    __slots__ = ("_body", "_body_size", "_client", "_dispatch", "_header_bytes", "_headers",
                 "_held", "_keep_alive", "_max_body", "_parser", "_queue", "_raw_headers",
                 "_running", "_url", "hub", "takeover", "transport")

    def __init__(self, hub: Hub, dispatch: Handler | None = None,
                 max_body: int | None = None) -> None:
        self.hub = hub
        self._dispatch: Handler = dispatch or hub.router.dispatch
        self._max_body = max_body or hub.config.api_max_body_size
        self._raw_headers: list[tuple[str, str]] = []
        self._held = b""
        self.transport: asyncio.Transport | None = None
        self.takeover: Takeover | None = None
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._queue: list[Request] = []
        self._running = False
        self._keep_alive = True
        self._client = ""

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._client = peer[0] if peer else ""
        self.hub.http_connection_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.http_connection_lost(self)
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
            # The request is complete (on_message_complete ran); the handler takes over.
            pass
        except httptools.HttpParserCallbackError as exc:
            too_large = exc.__context__
            if isinstance(too_large, _TooLarge):
                self._fail(too_large.status, str(too_large))
            else:
                self.hub.log.error("HTTP parser callback failed", error=repr(too_large))
                self._fail(500, "internal server error")
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}")

    def pause_writing(self) -> None:
        if self.takeover is not None:
            self.takeover.pause_writing()

    def resume_writing(self) -> None:
        if self.takeover is not None:
            self.takeover.resume_writing()

    # -- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._raw_headers = []
        self._header_bytes = 0
        self._body = []
        self._body_size = 0

    def on_headers_complete(self) -> None:
        if self._headers.get("expect", "").lower() != "100-continue":
            return
        length = self._headers.get("content-length", "")
        if length.isdigit() and int(length) > self._max_body:
            raise _TooLarge(413, f"request body larger than {self._max_body} bytes")
        # The client waits for this before it sends the body.
        if self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        self._headers[key.lower()] = text
        self._raw_headers.append((key, text))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._count_body(len(body))

    def on_message_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        parsed = httptools.parse_url(self._url)
        request = Request(
            method=parser.get_method().decode("ascii"),
            path=parsed.path.decode("latin-1"),
            query_string=(parsed.query or b"").decode("latin-1"),
            headers=self._headers,
            body=b"".join(self._body),
            client=self._client,
            raw_headers=self._raw_headers,
            keep_alive=parser.should_keep_alive(),
        )
        self._queue.append(request)
        if len(self._queue) > MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()
        if not self._running:
            self._running = True
            self.hub.spawn(self._serve())

    # -- limits ---------------------------------------------------------------------------

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _TooLarge(431, f"request headers larger than {MAX_HEADER_BYTES} bytes")

    def _count_body(self, n: int) -> None:
        limit = self._max_body
        self._body_size += n
        if self._body_size > limit:
            raise _TooLarge(413, f"request body larger than {limit} bytes")

    # -- serving --------------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while self._queue and self.transport is not None and self.takeover is None:
                request = self._queue.pop(0)
                # Pipelined requests each say whether the connection stays open after them.
                self._keep_alive = request.keep_alive
                if len(self._queue) <= MAX_PIPELINED:
                    self.transport.resume_reading()
                try:
                    result = await self._dispatch(request, self)
                except Exception:
                    self.hub.log.exception("handler failed", path=request.path)
                    result = Response.error(500, "internal server error")
                if isinstance(result, Takeover):
                    # Requests pipelined behind it wait: a takeover that answers with plain
                    # HTTP (a long-poll) gives the connection back through release().
                    self.takeover = result
                    return
                self.write_response(result, request)
        finally:
            self._running = False

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
        if self._queue and not self._running and self.takeover is None:
            self._running = True
            self.hub.spawn(self._serve())

    def write_response(self, response: Response, request: Request | None = None) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        headers = list(response.headers)
        if not any(k.lower() == "content-length" for k, _ in headers):
            headers.insert(0, ("content-length", str(len(response.body))))
        if response.content_type:
            headers.insert(0, ("content-type", response.content_type))
        if not self._keep_alive:
            headers.append(("connection", "close"))
        transport.write(encode_head(response.status, headers, response.reason) + response.body)
        if not self._keep_alive:
            transport.close()

    def _fail(self, status: int, message: str) -> None:
        self._keep_alive = False
        self._queue.clear()
        self.write_response(Response.error(status, message))
        self._parser = None


class _TooLarge(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
