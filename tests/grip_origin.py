"""A small scriptable HTTP origin for GRIP proxy tests: a real server on a real socket.

``Origin`` is a threaded ``http.server`` (HTTP/1.1, keep-alive) in the test process.  A test
scripts it per path with ``origin.on(path, handler)``; a handler gets the request (``Req``:
method, path, query, headers as sent, body, the peer address) and returns a ``Reply`` (status,
headers, body; or ``chunks`` sent chunked as the iterable yields them; ``delay`` before
answering; ``close_after=N`` to send the head and N body bytes of a longer declared body and
then close; ``length=False`` to send no Content-Length and close after the body).  A handler
may also do anything first (publish to the proxy, sleep, wait on an event): it runs in the
origin's request thread.  Every request is recorded (``requests``,
``wait_for``).

``events()`` / ``encode_events()`` are the ``application/websocket-events`` codec (hex
lengths), written here independently of the proxy's own so the tests do not check the proxy
against itself.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

WS_EVENTS = "application/websocket-events"


@dataclass
class Req:
    method: str
    target: str  # path and query, as the request line had it
    headers: list[tuple[str, str]]
    body: bytes
    peer: tuple[str, int]
    at: float = field(default_factory=time.monotonic)

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def events(self) -> list[tuple[str, bytes | None]]:
        return events(self.body)


@dataclass
class Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | str = b""
    chunks: Iterable[bytes] | None = None  # sent with Transfer-Encoding: chunked
    delay: float = 0.0
    close_after: int | None = None  # declare len(body), send this many bytes, close
    length: bool = True  # False: no Content-Length, the body ends when the origin closes
    reason: str = ""

    @property
    def data(self) -> bytes:
        return self.body.encode() if isinstance(self.body, str) else self.body


Handler = Callable[[Req], Reply]


def encode_events(evs: Iterable[tuple[str, bytes | str | None]]) -> bytes:
    out = b""
    for kind, content in evs:
        if content is None:
            out += kind.encode() + b"\r\n"
        else:
            data = content.encode() if isinstance(content, str) else content
            out += b"%s %x\r\n%s\r\n" % (kind.encode(), len(data), data)
    return out


def events(body: bytes) -> list[tuple[str, bytes | None]]:
    out: list[tuple[str, bytes | None]] = []
    pos = 0
    while pos < len(body):
        eol = body.index(b"\r\n", pos)
        kind, _, size = body[pos:eol].partition(b" ")
        pos = eol + 2
        if not size:
            out.append((kind.decode(), None))
            continue
        n = int(size, 16)
        out.append((kind.decode(), body[pos:pos + n]))
        assert body[pos + n:pos + n + 2] == b"\r\n", body
        pos += n + 2
    return out


def ws_reply(evs: Iterable[tuple[str, bytes | str | None]],
             headers: Iterable[tuple[str, str]] = (), grip: str | None = "grip") -> Reply:
    """A WebSocket-over-HTTP answer; ``grip`` is the Sec-WebSocket-Extensions value (None:
    the extension stays off)."""
    hdrs = [("Content-Type", WS_EVENTS), *headers]
    if grip is not None:
        hdrs.append(("Sec-WebSocket-Extensions", grip))
    return Reply(200, hdrs, encode_events(evs))


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: tests that open dozens of connections at once (60
    # long-polls through the proxy) overflow it, and dropped SYNs come back only after the
    # kernel's 1, 3, 7, 15 s retransmits, which on a loaded machine outlasts the test's wait.
    request_queue_size = 1024
    daemon_threads = True
    allow_reuse_address = True
    origin: Origin
    open_sockets: set[socket.socket]

    def get_request(self) -> tuple[socket.socket, object]:
        sock, addr = super().get_request()
        self.open_sockets.add(sock)
        return sock, addr

    def shutdown_request(self, request: object) -> None:
        self.open_sockets.discard(request)  # type: ignore[arg-type]
        super().shutdown_request(request)  # type: ignore[arg-type]


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        return None

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Req(self.command, self.path, list(self.headers.items()), body,
                  self.client_address[:2])  # fmt: skip
        origin = self.server.origin
        origin._record(req)
        try:
            reply = origin._handler(req.path)(req)
        except Exception as exc:  # noqa: BLE001 - a broken test handler: say so in the answer
            reply = Reply(599, [("Content-Type", "text/plain")], f"handler failed: {exc!r}")
        if reply.delay:
            time.sleep(reply.delay)
        self._write(reply)

    def _write(self, reply: Reply) -> None:
        head = f"HTTP/1.1 {reply.status} {reply.reason or 'Whatever'}\r\n"
        for k, v in reply.headers:
            head += f"{k}: {v}\r\n"
        names = {k.lower() for k, _ in reply.headers}
        if reply.chunks is not None:
            head += "Transfer-Encoding: chunked\r\n\r\n"
            self.wfile.write(head.encode("latin-1"))
            self.wfile.flush()
            for chunk in reply.chunks:
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return
        data = reply.data
        if "content-length" not in names and reply.length:
            head += f"Content-Length: {len(data)}\r\n"
        head += "\r\n"
        if reply.close_after is not None or not reply.length:
            data = data if reply.close_after is None else data[:reply.close_after]
            self.wfile.write(head.encode("latin-1") + data)
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(head.encode("latin-1") + (b"" if self.command == "HEAD" else data))
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _serve


class Origin:
    """``with Origin() as origin: origin.on("/x", lambda req: Reply(200, body="hi"))``."""

    def __init__(self, port: int = 0) -> None:
        self._lock = threading.Condition()
        self._routes: dict[str, Handler] = {}
        self.requests: list[Req] = []
        self._server = _Server(("127.0.0.1", port), _RequestHandler)
        self._server.origin = self
        self._server.open_sockets = set()
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)  # fmt: skip
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def on(self, path: str, handler: Handler | Reply) -> None:
        """Answer requests to ``path`` (exact; ``/prefix/*`` matches the prefix)."""
        self._routes[path] = handler if callable(handler) else (lambda _req: handler)

    def _handler(self, path: str) -> Handler:
        if path in self._routes:
            return self._routes[path]
        best = ""
        for p in self._routes:
            if p.endswith("*") and path.startswith(p[:-1]) and len(p) > len(best):
                best = p
        if best:
            return self._routes[best]
        return lambda req: Reply(404, [("Content-Type", "text/plain")], f"no route {req.path}")

    def _record(self, req: Req) -> None:
        with self._lock:
            self.requests.append(req)
            self._lock.notify_all()

    def to(self, path: str) -> list[Req]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, pred: Callable[[Req], bool], timeout: float = 15.0,
                 count: int = 1) -> list[Req]:
        """The first ``count`` recorded requests that match, waiting for them."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = [r for r in self.requests if pred(r)]
                if len(found) >= count:
                    return found[:count]
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(r.method, r.target) for r in self.requests]
                    raise AssertionError(f"origin: {count} matching request(s) not seen "
                                         f"within {timeout}s; got {seen}")
                self._lock.wait(left)

    def stop(self) -> None:
        """Stop listening and cut every open connection (kept-alive ones included)."""
        self._server.shutdown()
        self._server.server_close()
        for sock in list(self._server.open_sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Origin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
