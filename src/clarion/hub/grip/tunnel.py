"""A WebSocket on a route without ``over_http``: the handshake is forwarded to the origin and,
once it answers 101, bytes flow both ways untouched (the origin speaks WebSocket itself)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from clarion.hub.http import HttpProtocol, Request, Response, Takeover

if TYPE_CHECKING:
    from clarion.hub.grip.proxy import Forward, GripProxy

HANDSHAKE_LIMIT = 64 * 1024


def _text(status: int, message: str) -> Response:
    return Response(status, message.encode(), "text/plain; charset=utf-8")


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
    __slots__ = ("proxy", "transport", "upstream")

    def __init__(self, proxy: GripProxy, transport: asyncio.Transport,
                 upstream: _Upstream) -> None:
        self.proxy = proxy
        self.transport = transport
        self.upstream = upstream

    def data_received(self, data: bytes) -> None:
        if self.upstream.transport is not None:
            self.upstream.transport.write(data)

    def close(self) -> None:
        self.transport.close()
        if self.upstream.transport is not None:
            self.upstream.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.tunnels.discard(self)
        if self.upstream.transport is not None:
            self.upstream.transport.close()

    def pause_writing(self) -> None:
        if self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream.transport is not None:
            self.upstream.transport.resume_reading()


async def open_tunnel(proxy: GripProxy, request: Request, http: HttpProtocol,
                      fwd: Forward) -> Response | Takeover:
    hub = proxy.hub
    if hub.connection_count >= hub.config.max_connections:
        return _text(503, "too many connections\n")
    errors = []
    for target in fwd.route.targets:
        ssl = proxy.pool.ssl_context(target.insecure) if target.ssl else None
        try:
            _, upstream = await asyncio.wait_for(hub.loop.create_connection(
                _Upstream, target.host, target.port, ssl=ssl), proxy.pool.connect_timeout)
        except (OSError, TimeoutError) as exc:
            errors.append(f"{target.address}: {exc}")
            continue
        break
    else:
        return _text(502, f"origin unavailable: {'; '.join(errors)}\n")
    assert upstream.transport is not None
    signed = fwd.signed and not target.untrusted
    headers = [("Host", fwd.host), *fwd.headers,
               *(proxy.sig_headers(fwd.route) if signed else []),
               ("Upgrade", "websocket"), ("Connection", "Upgrade")]
    lines = [f"GET {fwd.path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers)]
    upstream.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    try:
        await asyncio.wait_for(upstream.answered, proxy.pool.response_timeout)
    except (ConnectionError, TimeoutError) as exc:
        upstream.transport.close()
        return _text(502, f"origin WebSocket handshake failed: {exc}\n")
    transport = http.transport
    if transport is None:
        upstream.transport.close()
        return _text(400, "client went away\n")
    # Everything the origin sent so far: its answer and any frames right behind it (they may
    # have come in a later packet, after the answer was complete).
    answer, upstream.head = upstream.head, b""
    transport.write(answer)
    tunnel = Tunnel(proxy, transport, upstream)
    if answer.startswith((b"HTTP/1.1 101", b"HTTP/1.0 101")):
        upstream.client = tunnel
        proxy.tunnels.add(tunnel)
    else:
        # Refused: the origin's answer is all the client gets.
        upstream.transport.close()
        transport.close()
    return tunnel
