"""WebSocket-over-HTTP: a client's WebSocket, held by the proxy, driven by plain HTTP requests.

Each batch of client activity becomes ``POST <uri>`` to the origin with
``application/websocket-events``; the answer's events go back to the client. One request is in
flight per connection, so events keep their order. With the ``grip`` extension the origin may
subscribe the connection to channels (``c:`` control messages); publications in ``ws-message``
format then reach it directly, without the origin. A failing origin is retried (at most
``RETRIES`` times, backing off ``1 s * 2^n`` plus up to 1 s) before the client is closed with 1011.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
import uuid
from typing import TYPE_CHECKING

from clarion.errors import Disconnect, FrameError, GripError
from clarion.hub.grip.hold import Sub
from clarion.hub.grip.origin import Head
from clarion.hub.held import HeldConnection
from clarion.hub.http import HttpProtocol, Request, Response, Takeover, encode_head
from clarion.hub.outbound import Outbound
from clarion.hub.push import EncodedPush, grip_ws_opcode
from clarion.protocol import codes
from clarion.protocol import websocket as wsp
from clarion.protocol.grip import wsevents
from clarion.protocol.grip.instruct import FILTERS, Channel
from clarion.protocol.grip.wsevents import Event

if TYPE_CHECKING:
    from clarion.hub.grip.proxy import Forward, GripProxy

RETRIES = 5
MAX_RESPONSE_BODY = 1_000_000  # Pushpin's limit for an origin's events answer
MAX_REQUEST_EVENTS = 200_000  # bytes of client events sent in one request
MIN_KEEP_ALIVE_INTERVAL = 20
# Client headers that describe the client's handshake, not what the origin is sent.
_DROP = frozenset({"accept", "content-type", "connection-id", "sec-websocket-extensions",
                   "grip-session-id"})


def _forwarded(name: str) -> bool:
    if name in ("sec-websocket-protocol", "sec-websocket-version"):
        return True
    return name not in _DROP and not name.startswith(("meta-", "sec-websocket-"))


def _reject(status: int, message: str) -> Response:
    return Response(status, message.encode(), "text/plain; charset=utf-8")


async def open_ws_over_http(proxy: GripProxy, request: Request, http: HttpProtocol,
                            fwd: Forward, host: str) -> Response | Takeover:
    headers = request.headers
    if request.method != "GET":
        return _reject(405, "WebSocket handshake must be a GET\n")
    if headers.get("sec-websocket-version") != "13":
        resp = _reject(426, "unsupported WebSocket version (13 is required)\n")
        resp.headers.append(("Sec-WebSocket-Version", "13"))
        return resp
    key = headers.get("sec-websocket-key", "")
    if not wsp.valid_client_key(key):
        return _reject(400, "missing or malformed Sec-WebSocket-Key\n")
    if http.transport is None:
        return _reject(400, "client went away\n")
    if proxy.hub.connection_count >= proxy.hub.config.max_connections:
        return _reject(503, "too many connections\n")
    conn = WsOverHttp(proxy, http, fwd, host)
    try:
        head, events = await conn.exchange([Event("OPEN")])
    except _Refused as exc:
        if exc.head is not None:
            h = exc.head
            return Response(h.status, exc.body, "", [
                (k, v) for k, v in h.headers
                if k.lower() not in ("content-length", "transfer-encoding", "connection")],
                h.reason)
        proxy.hub.log.warning("WebSocket-over-HTTP open failed", path=fwd.path, error=str(exc))
        return _reject(502, f"origin did not accept the WebSocket: {exc}\n")
    if not events or events[0].type != "OPEN":
        return _reject(502, "origin did not accept the WebSocket (its answer has no OPEN)\n")
    answer = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
              ("Sec-WebSocket-Accept", wsp.accept_key(key))]
    for k, v in head.headers:
        if k.lower() == "sec-websocket-protocol":
            answer.append((k, v))
    http.transport.write(encode_head(101, answer))
    conn.opened()
    for channel in fwd.route.targets[0].subscribe:  # the route's sub= channels
        conn.subscribe(channel, (), conn.seq_at_send)
    conn.process(head.headers, events[1:], conn.seq_at_send)
    return conn


class _Refused(GripError):
    def __init__(self, message: str, head: Head | None = None, body: bytes = b"") -> None:
        super().__init__(message)
        self.head = head
        self.body = body


class WsOverHttp(HeldConnection):
    __slots__ = (
        "activity",
        "busy",
        "channels",
        "cid",
        "client_closed",
        "delayed",
        "detached",
        "forward",
        "host",
        "http",
        "id",
        "interval",
        "ka",
        "ka_at",
        "last_ids",
        "last_request",
        "meta",
        "pending",
        "prefix",
        "proxy",
        "reader",
        "sent",
        "seq_at_send",
        "session_id",
    )

    is_grip = True

    def __init__(self, proxy: GripProxy, http: HttpProtocol, fwd: Forward, host: str) -> None:
        hub = proxy.hub
        self.hub = hub
        self.proxy = proxy
        self.http = http
        assert http.transport is not None
        self.transport = http.transport
        self.out = Outbound(self.transport, hub.flusher, hub.config.client_queue_max_size,
                            self._slow)
        self.out.closing = True  # nothing goes to the client before the handshake answer
        self.forward = fwd
        self.host = host
        self.cid = uuid.uuid4().hex
        self.id = "gws" + self.cid
        self.reader = wsp.FrameReader(hub.config.client_max_message_size)
        self.meta: dict[str, str] = {}
        self.prefix: str | None = None
        self.channels: dict[str, Sub] = {}
        self.sent = False
        self.last_ids: dict[str, str | None] = {}
        self.pending: list[Event] = []
        self.busy = False
        self.detached = False
        self.client_closed = False
        self.session_id: str | None = None
        self.interval = 0
        now = time.monotonic()
        self.last_request = now
        self.activity = now
        self.ka: tuple[bytes, int, int, str] | None = None  # frame, opcode, timeout, mode
        self.ka_at = now
        self.delayed: tuple[bytes, float] | None = None
        self.seq_at_send = 0

    def opened(self) -> None:
        self.out.closing = False
        self.proxy.websockets.add(self)
        self.hub.metrics.grip_websockets += 1

    # -- talking to the origin ----------------------------------------------------------------

    def _headers(self) -> list[tuple[str, str]]:
        out = [(k, v) for k, v in self.forward.headers if _forwarded(k.lower())]
        out += [("Accept", wsevents.CONTENT_TYPE), ("Content-Type", wsevents.CONTENT_TYPE),
                ("Connection-Id", self.cid), ("Sec-WebSocket-Extensions", "grip")]
        if self.session_id:
            out.append(("Grip-Session-Id", self.session_id))
        out += [(f"Meta-{k}", v) for k, v in self.meta.items()]
        return out

    async def exchange(self, events: list[Event]) -> tuple[Head, list[Event]]:
        """One request with ``events``; the origin's answer, or _Refused."""
        self.seq_at_send = self.proxy.recent.seq
        self.last_request = time.monotonic()
        body = wsevents.encode(events)
        try:
            resp, _ = await self.proxy.send(self.forward, self.host, None, "POST",
                                            self.forward.path, body, self._headers())
            data = await resp.read(MAX_RESPONSE_BODY, self.proxy.pool.response_timeout)
        except GripError as exc:
            raise _Refused(str(exc)) from None
        head = resp.head
        content_type = (head.get("content-type") or "").split(";")[0].strip()
        if head.status != 200 or content_type != wsevents.CONTENT_TYPE:
            raise _Refused(f"origin answered {head.status} {content_type or '(no type)'}",
                           head, data)
        try:
            return head, wsevents.decode(data)
        except GripError as exc:
            raise _Refused(str(exc)) from None

    def kick(self) -> None:
        if not self.busy and self.pending and not self.detached:
            self.busy = True
            self.hub.spawn(self._pump())

    async def _pump(self) -> None:
        try:
            while self.pending and not self.detached:
                batch: list[Event] = []
                size = 0
                while self.pending and size < MAX_REQUEST_EVENTS:
                    event = self.pending.pop(0)
                    batch.append(event)
                    size += len(event.content or b"")
                if not await self._deliver(batch):
                    return
        finally:
            self.busy = False
        if self.client_closed:
            self._close_client(wsp.CLOSE_NORMAL, "")

    async def _deliver(self, batch: list[Event]) -> bool:
        for attempt in range(RETRIES + 1):
            try:
                head, events = await self.exchange(batch)
            except _Refused as exc:
                if self.out.closing and not self.client_closed:
                    return False
                if attempt == RETRIES:
                    self.hub.log.warning("WebSocket-over-HTTP origin failed; closing client",
                                         path=self.forward.path, error=str(exc))
                    self._close_client(1011, "origin unavailable")
                    return False
                await asyncio.sleep(2 ** attempt + random.random())
                continue
            self.process(head.headers, events, self.seq_at_send)
            return True
        return False

    # -- the origin's answer ------------------------------------------------------------------

    def process(self, headers: list[tuple[str, str]], events: list[Event], seq: int) -> None:
        for name, value in headers:
            lname = name.lower()
            if lname.startswith("set-meta-"):
                key = lname[9:]
                if value:
                    self.meta[key] = value
                else:
                    self.meta.pop(key, None)
            elif lname == "keep-alive-interval":
                try:
                    self.interval = max(MIN_KEEP_ALIVE_INTERVAL, int(value))
                except ValueError:
                    self.hub.log.info("bad Keep-Alive-Interval from origin", value=value)
            elif lname == "sec-websocket-extensions":
                prefix = wsevents.grip_extension(value)
                if prefix is not None:
                    self.prefix = prefix
        for event in events:
            kind = event.type
            content = event.content or b""
            if kind in ("TEXT", "BINARY"):
                self._from_origin(kind, content, seq)
            elif kind == "PING":
                self.out.queue(wsp.encode_frame(wsp.PING, content))
            elif kind == "PONG":
                self.out.queue(wsp.encode_frame(wsp.PONG, content))
            elif kind == "CLOSE":
                code, reason = wsevents.parse_close(content)
                self._close_client(code or wsp.CLOSE_NORMAL, reason)
                return
            elif kind == "DISCONNECT":
                self.out.closing = True
                self.transport.abort()
                return

    def _from_origin(self, kind: str, content: bytes, seq: int) -> None:
        prefix = self.prefix
        if prefix is not None:
            if kind == "TEXT" and content.startswith(wsevents.CONTROL_PREFIX):
                try:
                    self._control(wsevents.parse_control(content[2:]), seq)
                except GripError as exc:
                    self.hub.log.info("bad GRIP control message", error=str(exc))
                return
            raw_prefix = prefix.encode()
            if not content.startswith(raw_prefix):
                self.hub.log.debug("dropping unprefixed message from origin",
                                   path=self.forward.path)
                return
            content = content[len(raw_prefix):]
        opcode = wsp.TEXT if kind == "TEXT" else wsp.BINARY
        self.out.queue(wsp.encode_frame(opcode, content))
        self.sent = True

    def _control(self, ctl: wsevents.Control, seq: int) -> None:
        prefix = self.forward.route.prefix
        if ctl.type == "subscribe":
            assert ctl.channel is not None
            unknown = [f for f in ctl.filters if f not in FILTERS]
            if unknown:
                raise GripError(f"subscribe {ctl.channel!r}: unknown filter {unknown[0]!r}")
            self.subscribe(ctl.channel, tuple(ctl.filters), seq)
        elif ctl.type == "unsubscribe":
            assert ctl.channel is not None
            full = prefix + ctl.channel
            if self.channels.pop(full, None) is not None:
                self.last_ids.pop(ctl.channel, None)
                self.hub.fanout.remove_key(full, self.id)
        elif ctl.type == "detach":
            self.detached = True
            self.pending.clear()
        elif ctl.type == "session":
            self.session_id = ctl.id
        elif ctl.type == "set-meta":
            if ctl.name:
                if ctl.value:
                    self.meta[ctl.name.lower()] = ctl.value
                else:
                    self.meta.pop(ctl.name.lower(), None)
        elif ctl.type == "keep-alive":
            frame = self._frame(ctl)
            if frame is None:
                self.ka = None
            else:
                self.ka = (frame, 0, max(1, ctl.timeout or 55), ctl.mode)
                self.ka_at = time.monotonic()
        elif ctl.type == "send-delayed":
            frame = self._frame(ctl)
            if frame is not None:
                self.delayed = (frame, time.monotonic() + max(0, ctl.timeout or 0))
        elif ctl.type == "flush-delayed" and self.delayed is not None:
            self.out.queue(self.delayed[0])
            self.delayed = None

    def subscribe(self, channel: str, filters: tuple[str, ...], seq: int) -> None:
        if len(self.channels) >= self.proxy.max_channels:
            self.hub.log.info("GRIP subscription limit reached", channel=channel)
            return
        full = self.forward.route.prefix + channel
        self.channels[full] = Sub(Channel(channel, None, filters))
        self.last_ids.setdefault(channel, None)
        self.hub.fanout.add_target(full, self.id, self)
        self.hub.spawn(self.hub.fanout.ensure_broker_subscription(full))
        for _, enc in self.proxy.recent.since(full, seq, None):
            self.push(enc)

    @staticmethod
    def _frame(ctl: wsevents.Control) -> bytes | None:
        if ctl.content_bin is not None:
            try:
                content = base64.b64decode(ctl.content_bin, validate=True)
            except ValueError:
                raise GripError("control message: content-bin is not base64") from None
        elif ctl.content is not None:
            content = ctl.content.encode()
        else:
            return None
        opcode = {"text": wsp.TEXT, "binary": wsp.BINARY, "ping": wsp.PING,
                  "pong": wsp.PONG}.get(ctl.message_type)
        if opcode is None:
            raise GripError(f"control message: bad message-type {ctl.message_type!r}")
        return wsp.encode_frame(opcode, content)

    # -- publications -------------------------------------------------------------------------

    def push(self, enc: EncodedPush) -> None:
        sub = self.channels.get(enc.channel)
        if sub is None or self.out.closing:
            return
        if not sub.filters:
            frame = enc.grip_plain_ws
            if frame is not None:
                self.out.queue(frame)
                self.sent = True
                return
        item = enc.grip
        fmt = item.formats.ws_message if item.formats is not None else None
        if fmt is None:
            return
        if fmt.action == "close":
            self.hub.loop.call_soon(self._close_client, fmt.code or wsp.CLOSE_NORMAL,
                                    fmt.reason or "")
            return
        if fmt.action == "refresh":
            self.hub.loop.call_soon(self._refresh)
            return
        if fmt.action != "send" or fmt.content_filters != sub.content_filters:
            return
        if item.id is not None:
            self.last_ids[sub.name] = item.id
        content = sub.filtered(fmt.content_bytes, item, self.meta, self.last_ids, self.hub.log)
        if content is None:
            return
        self.out.queue(wsp.encode_frame(grip_ws_opcode(fmt), content))
        self.sent = True

    def _refresh(self) -> None:
        """``refresh``: ask the origin again, with no new events."""
        if not self.busy and not self.detached and not self.out.closing:
            self.busy = True
            self.hub.spawn(self._refresh_once())

    async def _refresh_once(self) -> None:
        try:
            await self._deliver([])
        finally:
            self.busy = False
        self.kick()

    # -- the client ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.out.closing:
            return
        try:
            frames = self.reader.feed(data)
        except FrameError as exc:
            self.out.write_now(wsp.close_frame(exc.close_code, str(exc)))
            self.out.closing = True
            self.transport.close()
            self.pending.append(Event("DISCONNECT"))
            self.kick()
            return
        for opcode, payload in frames:
            if opcode == wsp.TEXT:
                self.pending.append(Event("TEXT", payload))
            elif opcode == wsp.BINARY:
                self.pending.append(Event("BINARY", payload))
            elif opcode == wsp.PING:
                self.out.write_now(wsp.encode_frame(wsp.PONG, payload))
            elif opcode == wsp.CLOSE:
                try:
                    code, reason = wsp.parse_close(payload)
                except FrameError:
                    code, reason = wsp.CLOSE_PROTOCOL_ERROR, ""
                self.pending.append(Event("CLOSE", wsevents.close_content(code, reason)))
                self.client_closed = True
                self.transport.pause_reading()
                break
        self.activity = time.monotonic()
        if self.pending:
            if self.detached:
                self.pending.clear()
                if self.client_closed:
                    self._close_client(wsp.CLOSE_NORMAL, "")
            else:
                self.kick()

    def _close_client(self, code: int, reason: str) -> None:
        if self.out.closing:
            return
        self.out.write_now(wsp.close_frame(code, reason))
        self.out.closing = True
        self.transport.close()
        self.hub.loop.call_later(5.0, self._abort)

    def farewell(self, exc: Disconnect) -> None:
        code = {codes.SHUTDOWN[0]: wsp.CLOSE_GOING_AWAY, codes.SLOW[0]: 1008}.get(exc.code, 1011)
        self.out.write_now(wsp.close_frame(code, exc.reason))

    def connection_lost(self, exc: Exception | None) -> None:
        first = self in self.proxy.websockets
        self.out.closing = True
        self.proxy.websockets.discard(self)
        for full in self.channels:
            self.hub.fanout.remove_key(full, self.id)
        self.channels.clear()
        if first and not self.client_closed and not self.detached:
            # Gone without a close handshake: the origin hears DISCONNECT (best effort).
            self.pending.append(Event("DISCONNECT"))
            if not self.busy:
                self.hub.spawn(self._last_words())

    async def _last_words(self) -> None:
        try:
            await self.exchange(self.pending[:])
        except _Refused as exc:
            self.hub.log.info("DISCONNECT not delivered to origin", error=str(exc))

    def tick(self, now: float) -> None:
        if self.out.closing:
            return
        if self.sent:
            self.sent = False
            self.activity = now
        if self.delayed is not None and now >= self.delayed[1]:
            self.out.queue(self.delayed[0])
            self.delayed = None
        if self.ka is not None:
            frame, _, timeout, mode = self.ka
            since = self.ka_at if mode == "interval" else max(self.activity, self.ka_at)
            if now - since >= timeout:
                self.out.queue(frame)
                self.ka_at = now
        if self.interval and not self.busy and not self.detached \
                and now - self.last_request >= self.interval:
            self._refresh()

