"""One HTTP/1.1 connection: an asyncio protocol that writes a request and parses the answer
with httptools (llhttp), one exchange at a time.

Everything happens in the protocol's callbacks; the caller awaits one future per exchange. This
is what makes it cheap: no stream objects, no task per connection, no per-request locks (the
pool hands a connection to one caller at a time).
"""

from __future__ import annotations

import asyncio

import httptools

from clarion.outbound._errors import (
    ClientClosed,
    ClosedBeforeAnswer,
    ExchangeError,
    OutboundError,
    ResponseTooLarge,
)

# Bytes of status line and headers accepted per answer: llhttp has no bound of its own. The
# trailers of a chunked answer (dropped: nothing here reads them) have the same bound.
MAX_HEAD = 64 * 1024

# status, headers (as received), body, truncated (with capture: there was more than was kept)
Answer = tuple[int, list[tuple[str, str]], bytes, bool]


class Connection(asyncio.Protocol):
    __slots__ = ("_body", "_body_size", "_capture", "_chunked", "_headers", "_kept", "_length",
                 "_max_body", "_read", "_status", "_trailers", "_waiter", "address", "closed",
                 "complete", "got_bytes", "idle_since", "keep_alive", "lost", "parser", "transport",
                 "truncated")

    def __init__(self, max_body: int, lost: asyncio.Future[None],
                 capture: int | None = None) -> None:
        # capture None: an answer over max_body fails (ResponseTooLarge). capture N: the first
        # N bytes of the body are kept (truncated says whether there was more), and an answer
        # over max_body ends there: the connection is dropped, the answer is what was kept.
        self._max_body = max_body
        self._capture = capture
        self._kept = 0
        self.truncated = False
        self.address = ""  # the peer's IP address, set once connected
        self.lost = lost  # resolved when the socket is gone (a clean close waits for it)
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._status = 0
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._read = 0
        self._body_size = 0
        self._trailers = 0  # bytes of trailer names and values seen
        self._length = False  # the answer has a Content-Length
        self._chunked = False
        self.complete = False
        self.keep_alive = False
        self.got_bytes = False
        self.closed = False
        self.idle_since = 0.0

    # -- asyncio ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            self.close()  # bytes nobody asked for: the connection is not safe to reuse
            return
        self.got_bytes = True
        self._read += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ExchangeError(f"malformed HTTP answer: {exc}"))
            return
        if self.closed:
            return
        if not self._status:
            if self._read > MAX_HEAD:
                # llhttp bounds no head: a server that never ends its headers is cut here.
                self._fail(ResponseTooLarge(f"answer head larger than {MAX_HEAD} bytes"))
        elif self._read - self._body_size > (limit := 2 * MAX_HEAD + self._max_body):
            # Everything that is not body (head, chunk framing, trailers) is bounded too: a
            # trailer that never ends is buffered by httptools before on_header sees it.
            self._fail(ResponseTooLarge(
                f"answer head, chunk framing and trailers larger than {limit} bytes"))

    def eof_received(self) -> bool | None:
        self.closed = True  # an idle connection the server closed: never picked again
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._status and not self.complete and not (self._length or self._chunked):
            # An answer without Content-Length or chunked framing ends when the server closes.
            self._resolve()
        elif not self.got_bytes:
            waiter.set_exception(ClosedBeforeAnswer("connection closed before an answer"))
        else:
            waiter.set_exception(ExchangeError(
                "connection closed in the middle of the answer" + (f" ({exc})" if exc else "")))

    # -- httptools callbacks ---------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._status:
            # A trailer (after a chunked body): dropped, its bytes counted so that a hostile
            # server cannot grow the worker's memory with them.
            self._trailers += len(name) + len(value)
            if self._trailers > MAX_HEAD:
                self._fail(ResponseTooLarge(f"answer trailers larger than {MAX_HEAD} bytes"))
            return
        key = name.lower()
        if key == b"content-length":
            self._length = True
        elif key == b"transfer-encoding" and b"chunked" in value.lower():
            self._chunked = True
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        capture = self._capture
        if capture is None:
            if self._body_size > self._max_body:
                self._fail(ResponseTooLarge(f"answer larger than {self._max_body} bytes"))
                return
            self._body.append(body)
            return
        room = capture - self._kept
        if room > 0:
            part = body[:room]
            self._body.append(part)
            self._kept += len(part)
        if len(body) > room:
            self.truncated = True
        if self._body_size > self._max_body:
            # Keep the status and what was captured; the rest is not worth reading.
            self._resolve()
            self.close()

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:
            # An interim answer (103 Early Hints): the real one follows on the same connection
            # (on_message_begin starts it afresh).
            return
        self.keep_alive = self.parser.should_keep_alive()
        self._resolve()

    def on_message_begin(self) -> None:
        if self.complete:
            # A second answer to one request (in the same read as the first): the
            # connection's framing cannot be trusted, and the first answer is what counts.
            self.keep_alive = False
            self.close()
        # New lists: the caller's snapshot of an earlier answer keeps its own.
        self._status = 0
        self._headers = []
        self._body = []
        self._trailers = 0
        self._length = self._chunked = False

    def _resolve(self) -> None:
        """The answer is complete: hand a snapshot to the caller now (bytes that follow in the
        same read must not change what it gets)."""
        self.complete = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            waiter.set_result((self._status, self._headers, body, self.truncated))

    # -- the caller's side -----------------------------------------------------------------

    def _fail(self, exc: OutboundError) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self, why: str) -> None:
        """Close now, failing an exchange in progress (the client is shutting down)."""
        self._fail(ClientClosed(why))

    async def exchange(self, head: bytes, body: bytes) -> Answer:
        """Write one request and wait for its whole answer: status, headers, body, truncated.
        The connection stays usable only when ``reusable`` is true afterwards."""
        transport = self.transport
        if transport is None or self.closed:
            raise ClosedBeforeAnswer("the connection was closed before the request was sent")
        waiter: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._status = 0
        self._headers = []
        self._body = []
        self._read = self._body_size = self._kept = self._trailers = 0
        self._length = self._chunked = False
        self.complete = self.keep_alive = self.got_bytes = self.truncated = False
        if body and len(body) > 16384:
            transport.writelines((head, body))  # no copy of a large body
        else:
            transport.write(head + body)
        try:
            return await waiter
        except BaseException:
            self.close()  # timed out, cancelled or broken mid-exchange: never reused
            raise
        finally:
            self._waiter = None
            self._body = []

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed
