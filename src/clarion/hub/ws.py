"""``/connection/websocket``: Centrifugo's JSON client protocol over RFC 6455."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from clarion.errors import Disconnect, FrameError
from clarion.hub.commands import CommandConnection
from clarion.hub.http import HttpProtocol, Request, Response, Takeover, encode_head
from clarion.hub.outbound import Outbound
from clarion.hub.push import EncodedPush
from clarion.hub.session import Session
from clarion.protocol import client as proto
from clarion.protocol import codes
from clarion.protocol import websocket as wsp

if TYPE_CHECKING:
    from clarion.hub.app import Hub

PING_FRAME = wsp.text_frame(proto.EMPTY_REPLY)


def handshake_refusal(request: Request, hub: Hub, kind: str) -> Response | None:
    """The answer refusing an RFC 6455 opening handshake (or its origin), or None when it may
    be accepted with ``switching_protocols``. ``kind`` names the endpoint in the log."""
    headers = request.headers
    if request.method != "GET":
        return Response.error(405, "WebSocket handshake must be a GET")
    if "upgrade" not in headers:
        return Response.error(426, "this endpoint speaks WebSocket: send Upgrade: websocket")
    if headers["upgrade"].lower() != "websocket":
        return Response.error(400, "Upgrade header must be websocket")
    if "upgrade" not in headers.get("connection", "").lower():
        return Response.error(400, "Connection header must include Upgrade")
    if headers.get("sec-websocket-version") != "13":
        resp = Response.error(426, "unsupported WebSocket version (13 is required)")
        resp.headers.append(("sec-websocket-version", "13"))
        return resp
    if not wsp.valid_client_key(headers.get("sec-websocket-key", "")):
        return Response.error(400, "missing or malformed Sec-WebSocket-Key")
    if not hub.origin_allowed(request):
        hub.log.info(f"{kind} origin refused", origin=headers.get("origin", ""))
        return Response.error(403, "origin not allowed")
    return None


def answer_close(out: Outbound, transport: asyncio.Transport, payload: bytes) -> None:
    """The client sent a close frame: answer it (normal closure, or the error a malformed
    close payload is) and close; nothing more is read or written."""
    try:
        wsp.parse_close(payload)
    except FrameError as exc:
        out.write_now(wsp.close_frame(exc.close_code, str(exc)))
    else:
        out.write_now(wsp.close_frame(wsp.CLOSE_NORMAL))
    out.closing = True
    transport.close()


def switching_protocols(request: Request) -> bytes:
    """The ``101`` answer to a handshake that ``handshake_refusal`` let through. No subprotocol
    is selected: Centrifugo's JSON transport is the default, and the official SDKs send an
    empty Sec-WebSocket-Protocol for it."""
    key = request.headers["sec-websocket-key"]
    return encode_head(101, [("upgrade", "websocket"), ("connection", "Upgrade"),
                             ("sec-websocket-accept", wsp.accept_key(key))])


async def handle_websocket(request: Request, http: HttpProtocol) -> Response | Takeover:
    hub = http.hub
    refused = handshake_refusal(request, hub, "websocket")
    if refused is not None:
        return refused
    transport = http.transport
    assert transport is not None
    transport.write(switching_protocols(request))
    conn = WebSocketConnection(hub, http, transport, request)
    if hub.connection_count > hub.config.max_connections:
        conn.disconnect(Disconnect(*codes.CONNECTION_LIMIT))
    return conn


class WebSocketConnection(CommandConnection):
    __slots__ = ("http", "reader")

    def __init__(self, hub: Hub, http: HttpProtocol, transport: asyncio.Transport,
                 request: Request | None = None) -> None:
        self.hub = hub
        self.http = http
        self.transport = transport
        self.out = Outbound(transport, hub.flusher, hub.config.client_queue_max_size,
                            self._slow)
        self.reader = wsp.FrameReader(hub.config.client_max_message_size)
        self.session = Session(hub, self, "websocket", request)
        self._start_inbox()
        hub.websockets.add(self)
        hub.metrics.connections_total["websocket"] += 1

    # -- outgoing ---------------------------------------------------------------------------

    def push(self, enc: EncodedPush) -> None:
        self.out.queue(enc.ws)

    def send(self, body: bytes) -> None:
        self.out.queue(wsp.text_frame(body))

    def ping(self) -> None:
        self.out.queue(PING_FRAME)

    def farewell(self, exc: Disconnect) -> None:
        self.out.write_now(wsp.close_frame(exc.code, exc.reason))

    # -- incoming ---------------------------------------------------------------------------

    def pause_input(self) -> None:
        self.transport.pause_reading()

    def resume_input(self) -> None:
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.out.closing:
            return
        try:
            messages = self.reader.feed(data)
        except FrameError as exc:
            self.hub.metrics.disconnects[exc.close_code] += 1
            self.out.write_now(wsp.close_frame(exc.close_code, str(exc)))
            self.out.closing = True
            self.transport.close()
            return
        for opcode, payload in messages:
            if opcode == wsp.TEXT or opcode == wsp.BINARY:
                self.feed(payload)
            elif opcode == wsp.PING:
                self.out.write_now(wsp.encode_frame(wsp.PONG, payload))
            elif opcode == wsp.CLOSE:
                answer_close(self.out, self.transport, payload)
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.out.closing = True
        self.hub.websockets.discard(self)
        session = self.session
        self.hub.fanout.unregister(session)
        if session.subs:
            self.hub.spawn(session.detach_all())
