"""A fast webhook receiver for the delivery benchmark: uvloop + httptools, HTTP/1.1 keep-alive.

Every ``POST`` (any path but the control ones) is answered at once (``204 No Content`` by
default) and recorded: arrival time (``time.time()`` when the first bytes of the request were
read), ``sent_at`` from the JSON body and a key that identifies the event:

* Clarion (Standard Webhooks): body ``{"type", "timestamp", "data": {"n", "sent_at"}}``, key =
  the ``webhook-id`` header (stable across attempts of one event);
* django-webhook: body ``{"object": {"id", "n", "sent_at"}, "topic", ...}``; its only ID header
  (``Django-Webhook-UUID``) names the *webhook*, not the event, so the key is ``object.id``.

Control endpoints (not recorded):

* ``GET /health`` -> ``ok``
* ``GET /stats`` -> JSON counters: requests, unique keys, first/last arrival, connections,
  requests without a body ``sent_at`` / without a signature header, own CPU seconds;
* ``GET /stats?samples=1`` -> also ``samples``: ``[[arrival, sent_at, key], ...]`` per request;
* ``POST /reset`` -> forget everything recorded.

Run on its own process so it does not compete with the measuring script::

    python bench/webhooks/receiver.py --port 8911
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from typing import Any

import httptools
import msgspec


class _Inner(msgspec.Struct):
    sent_at: float | None = None
    id: int | None = None
    n: int | None = None


class _Body(msgspec.Struct):
    data: _Inner | None = None  # Clarion / Standard Webhooks
    object: _Inner | None = None  # django-webhook (model_to_dict of the saved row)


_decode = msgspec.json.Decoder(_Body).decode
_encode = msgspec.json.encode

CONTROL = {b"/health", b"/stats", b"/reset"}


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.first = 0.0
        self.last = 0.0
        self.arrival: list[float] = []
        self.sent: list[float | None] = []
        self.keys: list[str | None] = []
        self.seen: set[str] = set()
        self.no_sent_at = 0
        self.no_signature = 0
        self.bad_body = 0
        self.paths: dict[str, int] = {}
        self.connections = 0

    def record(self, t: float, body: bytes, key: str | None, signed: bool, path: bytes) -> None:
        self.requests += 1
        if not self.first:
            self.first = t
        self.last = t
        sent = None
        try:
            b = _decode(body)
            inner = b.data if b.data is not None else b.object
            if inner is not None:
                sent = inner.sent_at
                if key is None and inner.id is not None:
                    key = str(inner.id)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.bad_body += 1
        if sent is None:
            self.no_sent_at += 1
        if not signed:
            self.no_signature += 1
        if key is not None:
            self.seen.add(key)
        self.arrival.append(t)
        self.sent.append(sent)
        self.keys.append(key)
        if len(self.paths) < 50:
            p = path.decode("latin-1")
            self.paths[p] = self.paths.get(p, 0) + 1

    def summary(self, samples: bool) -> dict[str, Any]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out: dict[str, Any] = {
            "requests": self.requests,
            "unique": len(self.seen),
            "first": self.first,
            "last": self.last,
            "connections": self.connections,
            "no_sent_at": self.no_sent_at,
            "no_signature": self.no_signature,
            "bad_body": self.bad_body,
            "paths": self.paths,
            "cpu_s": ru.ru_utime + ru.ru_stime,
            "now": time.time(),
        }
        if samples:
            out["samples"] = list(zip(self.arrival, self.sent, self.keys, strict=True))
        return out


STATS = Stats()


class Conn(asyncio.Protocol):
    """One client connection; requests are parsed with httptools' callback parser."""

    __slots__ = (
        "body",
        "key",
        "now",
        "parser",
        "signed",
        "status_line",
        "t0",
        "transport",
        "url"
    )  # fmt: skip

    def __init__(self, response: bytes) -> None:
        self.status_line = response
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.now = 0.0
        self.t0 = 0.0
        self.url = b""
        self.body: list[bytes] = []
        self.key: str | None = None
        self.signed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        STATS.connections += 1

    def data_received(self, data: bytes) -> None:
        self.now = time.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._close()
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.t0 = self.now
        self.url = b""
        self.body = []
        self.key = None
        self.signed = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        n = name.lower()
        if n == b"webhook-id":
            self.key = value.decode("latin-1")
        elif n in (b"webhook-signature", b"django-webhook-signature-v1"):
            self.signed = bool(value)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        t = self.transport
        if t is None:
            return
        path, _, query = self.url.partition(b"?")
        method = self.parser.get_method()
        if path in CONTROL:
            t.write(self._control(method, path, query))
        else:
            t.write(self.status_line)
            STATS.record(self.t0, b"".join(self.body), self.key, self.signed, path)
        if not self.parser.should_keep_alive():
            self._close()

    def _control(self, method: bytes, path: bytes, query: bytes) -> bytes:
        if path == b"/stats":
            body = _encode(STATS.summary(samples=b"samples=1" in query))
        elif path == b"/reset" and method == b"POST":
            STATS.reset()
            body = b'{"ok":true}'
        else:
            body = b"ok"
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        return head % len(body) + body


async def serve(host: str, port: int, status: int) -> None:
    reason = {200: b"OK", 202: b"Accepted", 204: b"No Content"}.get(status, b"OK")
    line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
    response = line + (b"\r\n" if status == 204 else b"Content-Length: 0\r\n\r\n")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Conn(response), host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--status", type=int, default=204, help="status of every webhook answer")
    a = ap.parse_args()
    try:
        import uvloop

        uvloop.run(serve(a.host, a.port, a.status))
    except ImportError:
        asyncio.run(serve(a.host, a.port, a.status))


if __name__ == "__main__":
    main()
