"""The unidirectional transports: SSE, NDJSON streaming and long-polling.

All three authenticate with ``?token=`` (JWT or ticket) or ``?session=`` (resume token), take
channels from ``?channel=`` plus the token's ``channels`` claim, and resume from a cursor
(``Last-Event-ID``, ``?cursor=``) by replaying missed publications from history.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from clarion.broker.base import StreamPosition
from clarion.errors import BrokerError, Disconnect, ReplyError
from clarion.hub.api import broker_unavailable
from clarion.hub.held import HeldConnection
from clarion.hub.http import HttpProtocol, Request, Response, Takeover, encode_head
from clarion.hub.outbound import Outbound
from clarion.hub.push import EncodedPush
from clarion.hub.session import Attached, Session, Subscription
from clarion.protocol import client as proto
from clarion.protocol import codes, sse
from clarion.protocol import cursor as cursors

if TYPE_CHECKING:
    from clarion.hub.app import Hub

class ChunkedOutbound(Outbound):
    __slots__ = ()

    def frame(self, chunks: list[bytes]) -> bytes:
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        # An empty chunk would end the response: nothing to send is sent as nothing.
        return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


@dataclass(slots=True)
class Opened:
    session: Session
    channels: list[str]
    subs: dict[str, Subscription]
    cursor: dict[str, tuple[int, str]]


def _error(exc: Exception) -> Response:
    if isinstance(exc, BrokerError):
        return broker_unavailable(exc)
    if isinstance(exc, ReplyError):
        status = {101: 401, 102: 404, 103: 403, 106: 400, 107: 400, 109: 401}.get(exc.code, 400)
        return Response.json({"error": {"code": exc.code, "message": exc.message}}, status)
    if isinstance(exc, Disconnect):
        status = 401 if exc.code in (3500, 3005) else 400
        return Response.json({"error": {"code": exc.code, "message": exc.reason}}, status)
    if isinstance(exc, cursors.CursorError):
        return Response.json({"error": {"code": 107, "message": str(exc)}}, 400)
    raise exc


async def _open(hub: Hub, request: Request, target: Any, kind: str) -> Opened:
    """Authenticate and check every channel before anything is written."""
    session = Session(hub, target, kind, request)
    token = request.param("session") or request.param("token")
    if request.param("session") and not token.startswith("ses_"):
        token = "ses_" + token
    token_channels = await session.authenticate(token)
    requested = [c for c in request.query.get("channel", []) if c]
    channels: list[str] = []
    subs: dict[str, Subscription] = {}
    for channel in [*requested, *token_channels]:
        if channel in subs:
            continue
        if len(subs) >= hub.config.client_channel_limit:
            raise codes.limit_exceeded()
        if channel in token_channels:
            options = hub.rules.options(channel)
        else:
            try:
                options, _ = session.subscribe_options(channel, "")
            except ReplyError as exc:
                raise ReplyError(exc.code, f"{exc.message}: {channel}") from None
        subs[channel] = Subscription(options, options.history_enabled, options.join_leave)
        channels.append(channel)
    if not channels:
        raise ReplyError(107, "bad request: no channel given (?channel=…)")
    raw_cursor = request.headers.get("last-event-id", "") or request.param("cursor")
    return Opened(session, channels, subs, cursors.decode(raw_cursor))


async def _attach_all(opened: Opened, presence: bool) -> list[tuple[str, Attached]]:
    session = opened.session
    out = []
    for channel in opened.channels:
        sub = opened.subs[channel]
        pos = opened.cursor.get(channel)
        recover = StreamPosition(*pos) if pos and sub.options.history_enabled else None
        attached = await session.attach(channel, sub, recover, positioned=True,
                                        presence=presence)
        out.append((channel, attached))
    return out


class UniConnection(HeldConnection):
    """An SSE or NDJSON stream held open until the client goes or the hub stops."""

    __slots__ = ("kind", "positions", "session", "single")

    def __init__(self, hub: Hub, transport: asyncio.Transport, kind: str) -> None:
        self.hub = hub
        self.transport = transport
        self.kind = kind  # "sse" | "stream"
        self.out = ChunkedOutbound(transport, hub.flusher, hub.config.client_queue_max_size,
                                   self._slow)
        self.positions: dict[str, tuple[int, str]] = {}
        self.single = True
        self.session: Session | None = None

    def push(self, enc: EncodedPush) -> None:
        if self.single:
            self.out.queue(enc.sse_single if self.kind == "sse" else enc.stream_single)
            return
        cursor = None
        if enc.offset:
            self.positions[enc.channel] = (enc.offset, enc.epoch)
            cursor = cursors.encode(self.positions)
        if self.kind == "sse":
            self.out.queue(sse.event(enc.uni_body, id=cursor))
        else:
            self.out.queue(enc.stream_line(cursor))

    def message(self, body: bytes, cursor: str | None = None, event: str | None = None) -> None:
        if self.kind == "sse":
            self.out.queue(sse.event(body, id=cursor, name=event))
        else:
            if cursor is not None:
                body = body[:-1] + b',"cursor":' + proto.encode_str(cursor) + b"}"
            self.out.queue(body + b"\n")

    def ping(self) -> None:
        self.out.queue(sse.KEEPALIVE if self.kind == "sse" else b"\n")

    def farewell(self, exc: Disconnect) -> None:
        self.message(proto.disconnect_body(exc.code, exc.reason, exc.reconnect))
        self.out.flush()
        self.out.write_now(b"0\r\n\r\n")

    def data_received(self, data: bytes) -> None:
        return None  # nothing more is read on a held stream

    def connection_lost(self, exc: Exception | None) -> None:
        self.out.closing = True
        self.hub.streams.discard(self)
        session = self.session
        if session is not None:
            self.hub.fanout.unregister(session)
            if session.subs:
                self.hub.spawn(session.detach_all())


def _unrecoverable_body(channel: str, pos: dict[str, Any], kind: str) -> bytes:
    body = {"channel": channel, "epoch": pos.get("epoch", ""), "offset": pos.get("offset", 0)}
    if kind == "sse":
        return proto.encode(body)  # the SSE event name says what it is
    return proto.encode({"unrecoverable": body})


async def _handle_stream(request: Request, http: HttpProtocol, kind: str) -> Response | Takeover:
    hub = http.hub
    if request.method != "GET":
        return Response.error(405, "use GET")
    if not hub.origin_allowed(request):
        return Response.error(403, "origin not allowed")
    if hub.connection_count >= hub.config.max_connections:
        return Response.error(503, "connection limit reached")
    transport = http.transport
    assert transport is not None
    conn = UniConnection(hub, transport, kind)
    try:
        opened = await _open(hub, request, conn, kind)
    except (ReplyError, Disconnect, cursors.CursorError, BrokerError) as exc:
        return _error(exc)
    session = conn.session = opened.session
    conn.single = len(opened.channels) == 1
    content_type = "text/event-stream" if kind == "sse" else "application/x-ndjson"
    head = encode_head(200, [
        ("content-type", f"{content_type}; charset=utf-8"),
        ("cache-control", "no-cache, no-store"),
        ("x-accel-buffering", "no"),  # nginx: do not buffer the stream
        ("transfer-encoding", "chunked"),
        ("access-control-allow-origin", request.headers.get("origin", "*")),
    ])
    http.takeover = conn  # from here on the connection is a stream
    transport.write(head)
    hub.streams.add(conn)
    hub.metrics.connections_total[kind] += 1
    hub.fanout.register(session)
    session.connected = True
    try:
        attached = await _attach_all(opened, presence=True)
    except BrokerError as exc:
        # The stream is open already: it ends with a disconnect that asks the client to
        # come back (3004 reconnects), rather than with an HTTP status.
        hub.log.warning("stream subscribe failed: broker unavailable", error=str(exc))
        conn.disconnect(Disconnect(codes.SERVER_ERROR[0],
                                   "internal server error: broker unavailable"))
        return conn
    except (ReplyError, Disconnect) as exc:
        code = exc.code
        conn.disconnect(exc if isinstance(exc, Disconnect) else Disconnect(3004, str(exc)))
        hub.log.info("stream subscribe failed", code=code)
        return conn
    result = session.connect_result(bidirectional=False)
    result["session"] = hub.resume.issue(session.user, session.conn_info,
                                         tuple(opened.channels), session.expire_at)
    # Recovered publications follow as their own events (with ids), not inside "connect".
    result["subs"] = {ch: msgspec.Raw(proto.encode(
        {k: v for k, v in a.result.items() if k != "publications"})) for ch, a in attached}
    if kind == "sse":
        conn.out.queue(sse.retry(2000))
    conn.message(proto.encode({"connect": result}))
    # Every channel's position first: the id of each replayed event must name all of them.
    for channel, a in attached:
        res = a.result
        if a.recovered_pubs:
            conn.positions[channel] = opened.cursor[channel]
        elif "epoch" in res:
            conn.positions[channel] = (int(res.get("offset", 0)), str(res["epoch"]))
    for channel, a in attached:
        res = a.result
        for enc in a.recovered_pubs:
            conn.positions[channel] = (enc.offset, enc.epoch)
            conn.message(enc.uni_body, cursor=cursors.encode(conn.positions))
        if a.unrecoverable:
            # Carries the new position as its id: a drop right after it resumes from here.
            conn.message(_unrecoverable_body(channel, res, conn.kind),
                         cursor=cursors.encode(conn.positions) or None, event="unrecoverable")
        a.activate()
    for channel, _ in attached:
        if opened.subs[channel].options.join_leave:
            await session.announce_join(channel, opened.subs[channel])
    return conn


async def handle_sse(request: Request, http: HttpProtocol) -> Response | Takeover:
    """Clarion's SSE (``?channel=``, ``?token=``), or, for the SDKs' connect command in
    ``cf_connect`` (or a POST body), Centrifugo's bidirectional SSE emulation."""
    # Imported here: the emulation builds on this module's ChunkedOutbound.
    from clarion.hub import emulation

    if emulation.is_bidirectional_sse(request):
        return await emulation.handle_sse(request, http)
    return await _handle_stream(request, http, "sse")


async def handle_http_stream(request: Request, http: HttpProtocol) -> Response | Takeover:
    return await _handle_stream(request, http, "stream")


class PollTarget:
    __slots__ = ("closed", "pushes", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.pushes: list[EncodedPush] = []
        self.waiter: asyncio.Future[None] = loop.create_future()
        self.closed: Disconnect | None = None

    def push(self, enc: EncodedPush) -> None:
        self.pushes.append(enc)
        if not self.waiter.done():
            self.waiter.set_result(None)

    def disconnect(self, exc: Disconnect) -> None:
        self.closed = exc
        if not self.waiter.done():
            self.waiter.set_result(None)


async def handle_poll(request: Request, http: HttpProtocol) -> Response:
    hub = http.hub
    if request.method not in ("GET", "POST"):
        return Response.error(405, "use GET")
    if not hub.origin_allowed(request):
        return Response.error(403, "origin not allowed")
    try:
        timeout = float(request.param("timeout") or hub.config.seconds("poll_timeout"))
    except ValueError:
        return Response.error(400, "timeout must be a number of seconds")
    timeout = max(0.0, min(timeout, hub.config.seconds("poll_timeout_max")))
    target = PollTarget(hub.loop)
    try:
        opened = await _open(hub, request, target, "poll")
    except (ReplyError, Disconnect, cursors.CursorError, BrokerError) as exc:
        return _error(exc)
    session = opened.session
    # A first poll (no cursor parameter at all) learns the position at once; channels
    # without history have an empty cursor, and a poll with it waits like any other.
    fresh = "cursor" not in request.query and not request.headers.get("last-event-id")
    hub.fanout.register(session)
    try:
        try:
            attached = await _attach_all(opened, presence=False)
        except BrokerError as exc:
            hub.log.warning("poll subscribe failed: broker unavailable", error=str(exc))
            return broker_unavailable(exc)
        positions: dict[str, tuple[int, str]] = {}
        pushes: list[bytes] = []
        unrecoverable: list[str] = []
        for channel, a in attached:
            if "epoch" in a.result:
                positions[channel] = (int(a.result.get("offset", 0)), str(a.result["epoch"]))
            for enc in a.recovered_pubs:
                pushes.append(enc.uni_body)
                positions[channel] = (enc.offset, enc.epoch)
            if a.unrecoverable:
                unrecoverable.append(channel)
            a.activate()
        if not fresh and not pushes and not unrecoverable and not target.pushes:
            try:
                await asyncio.wait_for(asyncio.shield(target.waiter), timeout)
            except TimeoutError:
                pass
            else:
                await asyncio.sleep(0)  # collect what the same broker batch delivered
        for enc in target.pushes:
            pushes.append(enc.uni_body)
            if enc.offset:
                positions[enc.channel] = (enc.offset, enc.epoch)
    finally:
        hub.fanout.unregister(session)
        await session.detach_all()
    hub.metrics.connections_total["poll"] += 1
    body: dict[str, Any] = {
        "cursor": cursors.encode(positions),
        "session": hub.resume.issue(session.user, session.conn_info, tuple(opened.channels),
                                   session.expire_at),
        "pushes": [msgspec.Raw(p) for p in pushes],
    }
    if unrecoverable:
        body["unrecoverable"] = unrecoverable
    if target.closed is not None:
        body["disconnect"] = {"code": target.closed.code, "reason": target.closed.reason,
                              "reconnect": target.closed.reconnect}
    resp = Response.json(body)
    resp.headers.append(("cache-control", "no-store"))
    if "origin" in request.headers:
        resp.headers.append(("access-control-allow-origin", request.headers["origin"]))
    return resp
