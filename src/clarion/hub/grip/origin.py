"""HTTP/1.1 to origins: a keep-alive connection pool, responses read with httptools.

A request resolves ``head`` when the status line and headers are in; the body then either
collects in memory up to a bound (instructions, WebSocket-over-HTTP events) or streams to a
sink (a plain response passing through). A connection goes back to the pool only after a
complete response that allows keep-alive.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools

from clarion.errors import GripError
from clarion.protocol.grip.routes import Target

POOL_SIZE_PER_ORIGIN = 64
IDLE_TIMEOUT = 30.0


class OriginError(GripError):
    """The origin could not be reached, timed out, or answered with broken HTTP."""


class OriginUnreachable(OriginError):
    """No connection could be made: the request never left, so another target may take it."""


@dataclass(slots=True)
class Head:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    chunked: bool
    length: int | None

    def get(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


@dataclass(slots=True)
class _Exchange:
    head: asyncio.Future[Head]
    done: asyncio.Future[None]
    limit: int = 0
    body: list[bytes] = field(default_factory=list)
    size: int = 0
    sink: Callable[[bytes], None] | None = None
    status: int = 0
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)


class OriginConnection(asyncio.Protocol):
    def __init__(self, pool: OriginPool, key: tuple[str, int, bool]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Exchange | None = None
        self.reusable = False
        self.idle_since = 0.0
        self._name = b""

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:
            self.close()  # bytes nobody asked for: the connection is not usable
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(OriginError(f"origin sent malformed HTTP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self.pool.forget(self)
        ex = self.exchange
        if ex is None:
            return
        if not ex.head.done():
            ex.head.set_exception(OriginError("origin closed the connection before answering"))
        elif not ex.done.done():
            head = ex.head.result()
            if head.length is None and not head.chunked:
                ex.done.set_result(None)  # a response without length ends when the origin closes
            else:
                ex.done.set_exception(OriginError("origin closed the connection mid-response"))
        self.exchange = None

    def pause_writing(self) -> None:
        return None

    def resume_writing(self) -> None:
        return None

    # httptools callbacks
    def on_status(self, status: bytes) -> None:
        ex = self.exchange
        assert ex is not None
        ex.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.exchange
        assert ex is not None
        ex.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        ex = self.exchange
        assert ex is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            ex.headers = []  # an interim response: the real one follows
            ex.reason = ""
            return
        length = None
        chunked = False
        for k, v in ex.headers:
            lk = k.lower()
            if lk == "content-length" and v.strip().isdigit():
                length = int(v)
            elif lk == "transfer-encoding" and "chunked" in v.lower():
                chunked = True
        if not ex.head.done():
            ex.head.set_result(Head(status, ex.reason, ex.headers, chunked, length))

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        assert ex is not None
        if ex.sink is not None:
            ex.sink(body)
            return
        ex.size += len(body)
        if ex.limit and ex.size > ex.limit:
            self._fail(OriginError(f"origin response body larger than {ex.limit} bytes"))
            return
        ex.body.append(body)

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is None or (ex.head.done() is False):
            return
        self.exchange = None
        self.reusable = self.parser.should_keep_alive()
        if not ex.done.done():
            ex.done.set_result(None)
        if self.reusable:
            self.pool.release(self)
        else:
            self.close()

    # ---

    def _fail(self, exc: Exception) -> None:
        ex = self.exchange
        self.exchange = None
        if ex is not None:
            if not ex.head.done():
                ex.head.set_exception(exc)
            elif not ex.done.done():
                ex.done.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class Response:
    """An origin's answer in progress. ``head`` is there when ``start`` returns."""

    def __init__(self, conn: OriginConnection, ex: _Exchange, head: Head) -> None:
        self._conn = conn
        self._ex = ex
        self.head = head

    async def read(self, limit: int, timeout: float) -> bytes:
        ex = self._ex
        ex.limit = limit
        if ex.size > limit:
            self._conn.close()
            raise OriginError(f"origin response body larger than {limit} bytes")
        try:
            await asyncio.wait_for(asyncio.shield(ex.done), timeout)
        except TimeoutError:
            self._conn.close()
            raise OriginError(f"origin did not finish its response within {timeout:g} s") from None
        return b"".join(ex.body)

    def stream(self, sink: Callable[[bytes], None]) -> asyncio.Future[None]:
        """Send the rest of the body to ``sink`` as it arrives; the future ends with it."""
        ex = self._ex
        if ex.body:
            sink(b"".join(ex.body))
            ex.body.clear()
        ex.sink = sink
        return ex.done

    def pause(self) -> None:
        if self._conn.transport is not None:
            self._conn.transport.pause_reading()

    def resume(self) -> None:
        if self._conn.transport is not None:
            self._conn.transport.resume_reading()

    def abort(self) -> None:
        self._conn.close()


class OriginPool:
    def __init__(self, loop: asyncio.AbstractEventLoop, connect_timeout: float,
                 response_timeout: float) -> None:
        self.loop = loop
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self._idle: dict[tuple[str, int, bool], list[OriginConnection]] = {}
        self._open: set[OriginConnection] = set()
        self._ssl: dict[bool, ssl.SSLContext] = {}

    def ssl_context(self, insecure: bool) -> ssl.SSLContext:
        ctx = self._ssl.get(insecure)
        if ctx is None:
            ctx = ssl.create_default_context()
            if insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl[insecure] = ctx
        return ctx

    async def _connect(self, target: Target) -> OriginConnection:
        key = (target.host, target.port, target.ssl)
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
        try:
            _, conn = await asyncio.wait_for(self.loop.create_connection(
                lambda: OriginConnection(self, key), target.host, target.port,
                ssl=self.ssl_context(target.insecure) if target.ssl else None),
                self.connect_timeout)
        except TimeoutError:
            raise OriginUnreachable(f"origin {target.address}: connect timed out after "
                              f"{self.connect_timeout:g} s") from None
        except OSError as exc:
            raise OriginUnreachable(f"origin {target.address}: {exc.strerror or exc}") from None
        self._open.add(conn)
        return conn

    def release(self, conn: OriginConnection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= POOL_SIZE_PER_ORIGIN:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        idle.append(conn)

    def forget(self, conn: OriginConnection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def sweep(self) -> None:
        """Close connections idle for longer than origins usually keep them."""
        cutoff = self.loop.time() - IDLE_TIMEOUT
        for idle in self._idle.values():
            for conn in [c for c in idle if c.idle_since < cutoff]:
                idle.remove(conn)
                conn.close()

    async def start(self, target: Target, method: str, path: str,
                    headers: list[tuple[str, str]], body: bytes,
                    timeout: float | None = None) -> Response:
        """Send a request; return once the origin's status and headers are in. A pooled
        connection the origin closed meanwhile is retried once on a fresh one."""
        for attempt in range(2):
            conn = await self._connect(target)
            fresh = conn.idle_since == 0.0
            ex = _Exchange(self.loop.create_future(), self.loop.create_future())
            # Exceptions on these futures are always retrieved by the caller or dropped here.
            ex.done.add_done_callback(_consume)
            conn.exchange = ex
            conn.parser = httptools.HttpResponseParser(conn)
            lines = [f"{method} {path} HTTP/1.1"]
            lines.extend(f"{k}: {v}" for k, v in headers)
            lines.append(f"Content-Length: {len(body)}")
            assert conn.transport is not None
            conn.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            try:
                head = await asyncio.wait_for(
                    asyncio.shield(ex.head), timeout or self.response_timeout)
            except TimeoutError:
                conn.close()
                raise OriginError(f"origin {target.address}: no response within "
                                  f"{timeout or self.response_timeout:g} s") from None
            except OriginError:
                if attempt == 0 and not fresh:
                    continue
                raise
            return Response(conn, ex, head)
        raise AssertionError("unreachable")

    async def request(self, target: Target, method: str, path: str,
                      headers: list[tuple[str, str]], body: bytes, limit: int,
                      timeout: float | None = None) -> tuple[Head, bytes]:
        resp = await self.start(target, method, path, headers, body, timeout)
        data = await resp.read(limit, timeout or self.response_timeout)
        return resp.head, data

    def close(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._idle.clear()


def _consume(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()
