"""A WebSocket on a route without ``over_http``: the handshake is forwarded to the origin and,
once it answers 101, bytes flow both ways untouched (the origin speaks WebSocket itself)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from clarion.hub.http import HttpProtocol, Request, Response, Takeover

if TYPE_CHECKING:
    from clarion.hub.grip.proxy import GripProxy
    from clarion.protocol.grip.routes import Route

HANDSHAKE_LIMIT = 64 * 1024


class _Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.answered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.client: Tunnel | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.client is not None:
            self.client.transport.write(data)
            return
        self.head += data
        if b"\r\n\r\n" in self.head and not self.answered.done():
            self.answered.set_result(self.head)
        elif len(self.head) > HANDSHAKE_LIMIT and not self.answered.done():
            self.answered.set_exception(ConnectionError("origin handshake answer too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            self.answered.set_exception(ConnectionError("origin closed during the handshake"))
        if self.client is not None:
            self.client.transport.close()

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.transport.resume_reading()


class Tunnel(Takeover):
    __slots__ = ("transport", "upstream")

    def __init__(self, transport: asyncio.Transport, upstream: _Upstream) -> None:
        self.transport = transport
        self.upstream = upstream

    def data_received(self, data: bytes) -> None:
        if self.upstream.transport is not None:
            self.upstream.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream.transport is not None:
            self.upstream.transport.close()

    def pause_writing(self) -> None:
        if self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream.transport is not None:
            self.upstream.transport.resume_reading()


async def open_tunnel(proxy: GripProxy, request: Request, http: HttpProtocol,
                      route: Route) -> Response | Takeover:
    loop = proxy.hub.loop
    errors = []
    for target in route.targets:
        try:
            _, upstream = await asyncio.wait_for(loop.create_connection(
                _Upstream, target.host, target.port), proxy.pool.connect_timeout)
        except (OSError, TimeoutError) as exc:
            errors.append(f"{target.address}: {exc}")
            continue
        break
    else:
        return Response(502, f"origin unavailable: {'; '.join(errors)}\n".encode(),
                        "text/plain; charset=utf-8")
    assert upstream.transport is not None
    path = route.rewrite_path(request.path)
    if request.query_string:
        path += "?" + request.query_string
    headers = [("Host", proxy.host_header(request, route, target)),
               *proxy.upstream_headers(request, route),
               *(proxy.sig_headers(route) if not route.no_grip else []),
               ("Upgrade", "websocket"), ("Connection", "Upgrade")]
    lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers)]
    upstream.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    try:
        answer = await asyncio.wait_for(upstream.answered, proxy.pool.response_timeout)
    except (ConnectionError, TimeoutError) as exc:
        upstream.transport.close()
        return Response(502, f"origin WebSocket handshake failed: {exc}\n".encode(),
                        "text/plain; charset=utf-8")
    transport = http.transport
    if transport is None:
        upstream.transport.close()
        return Response(400, b"", "")
    transport.write(answer)
    tunnel = Tunnel(transport, upstream)
    if answer.startswith((b"HTTP/1.1 101", b"HTTP/1.0 101")):
        upstream.client = tunnel
    else:
        # Refused: the origin's answer is all the client gets.
        upstream.transport.close()
        transport.close()
    return tunnel
