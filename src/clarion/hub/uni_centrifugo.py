"""Centrifugo's unidirectional transports, by Centrifugo's names and wire format.

``/connection/uni_websocket``, ``/connection/uni_sse`` and ``/connection/uni_http_stream``
take one Centrifugo ConnectRequest (``token``, ``data``, ``name``, ``version``, ``subs``) and
then only send: a ``connect`` push, then pushes (``{"channel":…,"pub":{…}}``, join, leave,
``disconnect``) and ``{}`` pings, exactly as Centrifugo v6 frames them. Code written for
Centrifugo's unidirectional protocol works unchanged; Clarion's own ``/connection/sse``,
``/connection/stream`` and ``/connection/poll`` (channels in the URL, a resumable cursor) are
separate paths (clarion.hub.uni). Centrifugo has no unidirectional long-poll.

Every channel is a server-side subscription: the token's ``channels`` claim, plus each channel
named in the request's ``subs`` that the client may subscribe to by itself (one it may not is
ignored, as Centrifugo does). ``subs[channel]`` with ``recover``/``offset``/``epoch`` recovers
what the client missed; the missed publications come inside the connect push.
"""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from clarion.broker.base import StreamPosition
from clarion.errors import BrokerError, Disconnect, FrameError, ReplyError
from clarion.hub.config import ChannelOptions
from clarion.hub.http import HttpProtocol, Request, Response, Takeover, encode_head
from clarion.hub.outbound import Outbound
from clarion.hub.push import EncodedPush
from clarion.hub.session import Attached, Session, Subscription
from clarion.hub.uni import ChunkedOutbound, UniConnection
from clarion.hub.ws import answer_close, handshake_refusal, switching_protocols
from clarion.protocol import client as proto
from clarion.protocol import codes, sse
from clarion.protocol import websocket as wsp

if TYPE_CHECKING:
    from clarion.hub.app import Hub

# Centrifugo's defaults for uni_websocket.message_size_limit and
# uni_http_stream / uni_sse .max_request_body_size.
MAX_CONNECT_REQUEST = 64 * 1024
CONNECT_PARAM = "cf_connect"  # the connect request in the URL (uni_sse; uni_websocket ≥ 6.3)

UNI_WEBSOCKET = "uni_websocket"
UNI_SSE = "uni_sse"
UNI_HTTP_STREAM = "uni_http_stream"

PING = proto.EMPTY_REPLY  # a push with no field: Centrifugo's unidirectional ping

# A failed connect is told as Centrifugo tells it: an error reply becomes a disconnect
# (centrifuge's defaultUniErrorCodeToDisconnect; anything else is an internal error).
_ERROR_TO_DISCONNECT = {
    102: codes.BAD_REQUEST,  # a channel of no namespace
    103: codes.PERMISSION_DENIED,
    106: codes.CHANNEL_LIMIT,
    107: codes.BAD_REQUEST,
    109: codes.EXPIRED,
    110: codes.EXPIRED,
    111: codes.TOO_MANY_REQUESTS,
}


class SubscribeRequest(msgspec.Struct, omit_defaults=True):
    recover: bool = False
    offset: int = 0
    epoch: str = ""


class ConnectRequest(msgspec.Struct, omit_defaults=True):
    token: str = ""
    data: msgspec.Raw = msgspec.Raw(b"")  # raw JSON as sent, for the connect proxy
    name: str = ""
    version: str = ""
    subs: dict[str, SubscribeRequest] = msgspec.field(default_factory=dict)
    headers: dict[str, str] = msgspec.field(default_factory=dict)


_decoder = msgspec.json.Decoder(ConnectRequest)


class ConnectRequestError(ValueError):
    """The connect request is not one: not JSON, not an object, or too large."""


def parse_connect(raw: bytes | str) -> ConnectRequest:
    """A ConnectRequest from JSON; an empty one is the anonymous ``{}``."""
    data = raw.encode() if isinstance(raw, str) else raw
    if len(data) > MAX_CONNECT_REQUEST:
        raise ConnectRequestError(f"connect request larger than {MAX_CONNECT_REQUEST} bytes")
    if not data.strip():
        return ConnectRequest()
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ConnectRequestError(f"malformed connect request: {exc}") from None


def disconnect_push(code: int, reason: str) -> bytes:
    return proto.encode({"disconnect": {"code": code, "reason": reason}})


def as_disconnect(exc: ReplyError | Disconnect | BrokerError) -> Disconnect:
    if isinstance(exc, Disconnect):
        return exc
    if isinstance(exc, BrokerError):
        return Disconnect(codes.SERVER_ERROR[0], "internal server error: broker unavailable")
    return Disconnect(*_ERROR_TO_DISCONNECT.get(exc.code, codes.SERVER_ERROR))


class CentrifugoUniConnection(UniConnection):
    """One connection on a Centrifugo unidirectional endpoint. It is one of ``hub.streams``:
    the hub's housekeeping pings it and ends it when its credentials expire, and shutdown
    and the connection limit count it like Clarion's own streams."""

    __slots__ = ("_awaiting_pong", "_encoding", "_reader", "_stale_timer", "request")

    def __init__(self, hub: Hub, transport: asyncio.Transport, kind: str,
                 request: Request) -> None:
        self.hub = hub
        self.transport = transport
        self.kind = kind
        # Until the session is made from it (its proxy headers): not kept for the connection's
        # whole life, as tens of thousands of these stay open.
        self.request: Request | None = request
        self.positions: dict[str, tuple[int, str]] = {}
        self.single = False
        self.session: Session | None = None
        self._awaiting_pong = False
        self._stale_timer: asyncio.TimerHandle | None = None
        self._reader: wsp.FrameReader | None = None
        self.out: Outbound
        if kind == UNI_WEBSOCKET:
            self.out = Outbound(transport, hub.flusher, hub.config.client_queue_max_size,
                                self._slow)
            self._reader = wsp.FrameReader(MAX_CONNECT_REQUEST)
            self._encoding: Callable[[EncodedPush], bytes] = operator.attrgetter("uni_ws")
        else:
            self.out = ChunkedOutbound(transport, hub.flusher,
                                       hub.config.client_queue_max_size, self._slow)
            self._encoding = operator.attrgetter("uni_sse" if kind == UNI_SSE else "uni_line")

    # -- outgoing ---------------------------------------------------------------------------

    def push(self, enc: EncodedPush) -> None:
        self.out.queue(self._encoding(enc))

    def send_push(self, body: bytes) -> None:
        """One push (its JSON) framed for this transport."""
        if self.kind == UNI_WEBSOCKET:
            self.out.queue(wsp.text_frame(body))
        elif self.kind == UNI_SSE:
            self.out.queue(sse.event(body))
        else:
            self.out.queue(body + b"\n")

    def ping(self) -> None:
        session = self.session
        if session is None or not session.connected:
            return  # Centrifugo pings only a connected client
        if self.kind == UNI_WEBSOCKET:
            # Centrifugo's uni WebSocket also pings at the protocol level and drops a client
            # whose pong does not come back before the next ping.
            if self._awaiting_pong:
                self.disconnect(Disconnect(*codes.NO_PONG))
                return
            self._awaiting_pong = True
            self.out.queue(wsp.encode_frame(wsp.PING, b""))
        self.send_push(PING)

    def farewell(self, exc: Disconnect) -> None:
        self.send_push(disconnect_push(exc.code, exc.reason))
        self.out.flush()
        if self.kind == UNI_WEBSOCKET:
            self.out.write_now(wsp.close_frame(exc.code, exc.reason))
        else:
            self.out.write_now(b"0\r\n\r\n")

    # -- incoming (the WebSocket's connect request, pongs and its close) --------------------

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is None or self.out.closing:
            return  # nothing more is read on an HTTP stream
        try:
            messages = reader.feed(data)
        except FrameError as exc:
            # Too large a connect request (1009) or a broken frame: said in the close frame.
            self.hub.metrics.disconnects[exc.close_code] += 1
            self.out.write_now(wsp.close_frame(exc.close_code, str(exc)))
            self.out.closing = True
            self.transport.close()
            return
        for opcode, payload in messages:
            if opcode in (wsp.TEXT, wsp.BINARY):
                if self.session is None:
                    self._first_message(payload)
                # Anything after the connect request is read and ignored, as Centrifugo does.
            elif opcode == wsp.PONG:
                self._awaiting_pong = False
            elif opcode == wsp.PING:
                self.out.write_now(wsp.encode_frame(wsp.PONG, payload))
            elif opcode == wsp.CLOSE:
                answer_close(self.out, self.transport, payload)
                return

    def _first_message(self, payload: bytes) -> None:
        try:
            req = parse_connect(payload)
        except ConnectRequestError as exc:
            self.hub.log.info("uni_websocket connect request refused", error=str(exc))
            self.disconnect(Disconnect(codes.BAD_REQUEST[0], f"bad request: {exc}"))
            return
        self.start(req)

    def open_session(self) -> Session:
        session = self.session = Session(self.hub, self, self.kind, self.request,
                                         bidirectional=False)
        self.request = None
        return session

    def start(self, req: ConnectRequest) -> None:
        if self._stale_timer is not None:
            self._stale_timer.cancel()
            self._stale_timer = None
        self.open_session()
        self.hub.spawn(self.run_connect(req))

    def wait_for_connect(self) -> None:
        """A WebSocket that sends no connect request is closed as stale, as Centrifugo does."""
        delay = self.hub.config.seconds("client_stale_close_delay")
        self._stale_timer = self.hub.loop.call_later(delay, self._stale)

    def _stale(self) -> None:
        self._stale_timer = None
        if self.session is None:
            self.disconnect(Disconnect(*codes.STALE))

    async def run_connect(self, req: ConnectRequest) -> None:
        """Connect, or end the connection with the disconnect that says why not."""
        try:
            await establish(self, req)
        except (ReplyError, Disconnect, BrokerError) as exc:
            if isinstance(exc, BrokerError):
                self.hub.log.warning(f"{self.kind} connect failed: broker unavailable",
                                     error=str(exc))
            self.disconnect(as_disconnect(exc))
        except Exception as exc:  # noqa: BLE001 - logged with traceback in failed()
            self.hub.failed(self.kind, exc)
            self.disconnect(Disconnect(*codes.SERVER_ERROR))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stale_timer is not None:
            self._stale_timer.cancel()
            self._stale_timer = None
        super().connection_lost(exc)


async def establish(conn: CentrifugoUniConnection, req: ConnectRequest) -> None:
    """Authenticate, subscribe every channel, send the connect push, go live."""
    session = conn.session
    assert session is not None
    hub = conn.hub
    session.name = req.name
    by_proxy = not req.token and session.proxy is not None and session.backend_has("connect")
    server_channels = await session.authenticate(req.token, version=req.version,
                                                 data=bytes(req.data))
    channels: dict[str, tuple[Subscription, bytes | None]] = {}
    for channel in server_channels:
        options, chan_info, sub_data = session.server_sub(channel, hub.rules.options(channel))
        channels[channel] = (_server_side(options, chan_info), sub_data)
    # Centrifugo takes the channels of the request's subs from a client that connected with a
    # token or anonymously; the connect proxy's answer alone says a proxied client's channels.
    for channel in () if by_proxy else req.subs:
        if channel in channels:
            continue
        try:
            options = hub.rules.check_subscribe(channel, session.user, False)
        except ReplyError as exc:
            if exc.code != codes.permission_denied().code:
                raise
            # Only where a client-side subscription would be allowed; the rest is ignored.
            hub.log.debug("uni connect: channel not allowed", channel=channel,
                          user=session.user)
            continue
        channels[channel] = (_server_side(options, None), None)
    if len(channels) > hub.config.client_channel_limit:
        raise Disconnect(*codes.CHANNEL_LIMIT)
    if conn.out.closing:
        return
    session.connected = True
    hub.metrics.connections_total[conn.kind] += 1
    result = session.connect_result(bidirectional=False)
    if session.proxy is not None and session.proxy.connect_data is not None:
        result["data"] = msgspec.Raw(session.proxy.connect_data)
        session.proxy.connect_data = None
    attached: list[tuple[str, Subscription, Attached]] = []
    for channel, (sub, sub_data) in channels.items():
        was = req.subs.get(channel)
        recover = StreamPosition(was.offset, was.epoch) if (
            was is not None and was.recover and sub.recoverable) else None
        a = await session.attach(channel, sub, recover, sub.options.force_positioning)
        if sub_data is not None:
            a.result["data"] = msgspec.Raw(sub_data)
        attached.append((channel, sub, a))
        if conn.out.closing:
            # Gone while subscribing: connection_lost has detached what was attached before.
            await session.detach_all()
            return
    result["subs"] = {channel: a.result for channel, _, a in attached}
    # The connect push first; live publications were buffered meanwhile and follow it.
    conn.send_push(proto.encode({"connect": result}))
    # Only now do the server API's per-user commands find the session: a subscribe push must
    # not come before the connect push, nor attach a channel the loop above is attaching.
    hub.fanout.register(session)
    for _, _, a in attached:
        a.activate()
    for channel, sub, _ in attached:
        await session.announce_join(channel, sub)


def _server_side(options: ChannelOptions, chan_info: bytes | None) -> Subscription:
    """Every channel of a unidirectional connection is a server-side subscription."""
    return Subscription(options, options.force_recovery,
                        options.join_leave and options.force_push_join_leave,
                        chan_info=chan_info, server_side=True)


# -- HTTP endpoints ---------------------------------------------------------------------------


def _refusal(request: Request, hub: Hub) -> Response | None:
    if not hub.origin_allowed(request):
        return Response.error(403, "origin not allowed")
    if hub.connection_count >= hub.config.max_connections:
        return Response.error(503, "connection limit reached")
    return None


def _preflight(request: Request, hub: Hub) -> Response:
    """CORS preflight of a browser's ``fetch`` POST with a JSON body."""
    if not hub.origin_allowed(request):
        return Response.error(403, "origin not allowed")
    resp = Response(204, b"", "")
    resp.headers.extend([
        ("access-control-allow-origin", request.headers.get("origin", "*")),
        ("access-control-allow-methods", "GET, POST, OPTIONS"),
        ("access-control-allow-headers",
         request.headers.get("access-control-request-headers", "content-type")),
        ("access-control-max-age", "600"),
    ])
    return resp


async def _serve_stream(request: Request, http: HttpProtocol, kind: str,
                        raw: bytes | str) -> Response | Takeover:
    hub = http.hub
    refused = _refusal(request, hub)
    if refused is not None:
        return refused
    try:
        req = parse_connect(raw)
    except ConnectRequestError as exc:
        status = 413 if len(raw) > MAX_CONNECT_REQUEST else 400
        return Response.error(status, str(exc))
    transport = http.transport
    assert transport is not None
    conn = CentrifugoUniConnection(hub, transport, kind, request)
    content_type = "text/event-stream" if kind == UNI_SSE else "application/json"
    head = encode_head(200, [
        ("content-type", f"{content_type}; charset=utf-8"),
        ("cache-control", "private, no-cache, no-store, must-revalidate, max-age=0"),
        ("x-accel-buffering", "no"),  # nginx: do not buffer the stream
        ("transfer-encoding", "chunked"),
        ("access-control-allow-origin", request.headers.get("origin", "*")),
    ])
    # As Centrifugo does, the stream opens before the connect is checked: a refused connect
    # is a disconnect push that ends it (code and reason say why).
    http.takeover = conn
    transport.write(head)
    hub.streams.add(conn)
    conn.open_session()
    await conn.run_connect(req)
    return conn


async def handle_uni_sse(request: Request, http: HttpProtocol) -> Response | Takeover:
    """``GET ?cf_connect=<JSON>`` (what EventSource can do) or ``POST`` with the JSON body."""
    if request.method == "GET":
        return await _serve_stream(request, http, UNI_SSE, request.param(CONNECT_PARAM))
    if request.method == "POST":
        return await _serve_stream(request, http, UNI_SSE, request.body)
    if request.method == "OPTIONS":
        return _preflight(request, http.hub)
    return Response.error(405, "use GET with ?cf_connect= or POST a connect request")


async def handle_uni_http_stream(request: Request, http: HttpProtocol) -> Response | Takeover:
    """``POST`` with the JSON connect request as the body."""
    if request.method == "POST":
        return await _serve_stream(request, http, UNI_HTTP_STREAM, request.body)
    if request.method == "OPTIONS":
        return _preflight(request, http.hub)
    return Response.error(405, "POST a connect request")


async def handle_uni_websocket(request: Request, http: HttpProtocol) -> Response | Takeover:
    """RFC 6455 handshake; the connect request is the first message, or ``?cf_connect=``."""
    hub = http.hub
    refused = handshake_refusal(request, hub, UNI_WEBSOCKET)
    if refused is not None:
        return refused
    in_url: ConnectRequest | None = None
    if CONNECT_PARAM in request.query:
        try:
            in_url = parse_connect(request.param(CONNECT_PARAM))
        except ConnectRequestError as exc:
            return Response.error(400, str(exc))
    transport = http.transport
    assert transport is not None
    transport.write(switching_protocols(request))
    conn = CentrifugoUniConnection(hub, transport, UNI_WEBSOCKET, request)
    over_limit = hub.connection_count >= hub.config.max_connections
    hub.streams.add(conn)
    if over_limit:
        conn.disconnect(Disconnect(*codes.CONNECTION_LIMIT))
    elif in_url is not None:
        conn.start(in_url)
    else:
        conn.wait_for_connect()
    return conn
