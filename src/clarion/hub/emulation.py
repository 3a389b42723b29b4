"""Centrifugo's bidirectional emulation: ``/connection/http_stream``, bidirectional
``/connection/sse`` and ``/emulation``, as the official SDKs speak them (JSON protocol).

The client opens a stream whose request carries its connect command (the POST body for HTTP
streaming, the ``cf_connect`` query parameter for SSE); replies and pushes come down that
stream, one JSON document per line (HTTP streaming) or per ``data:`` event (SSE). The connect
reply names the session and the node holding it, and every later command is posted to
``/emulation`` as ``{"session": …, "node": …, "data": "<commands>"}``. The node that receives
the post runs the commands itself when it holds the session, and otherwise sends them to that
node over the broker's control channel (``clarion.hub.control.EmulationCmd``). Either way
they go through the session's one command loop (``clarion.hub.commands``), as a WebSocket's
frames do.

The emulation session id is the client id and a secret: client ids are public (presence shows
them), and whoever holds the session can send commands as its user.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from typing import TYPE_CHECKING, Any

import msgspec

from clarion.errors import BrokerError, Disconnect
from clarion.hub import origins
from clarion.hub.commands import PAUSE_ABOVE, CommandConnection
from clarion.hub.control import EmulationCmd
from clarion.hub.http import HttpProtocol, Request, Response, Takeover, encode_head
from clarion.hub.push import EncodedPush
from clarion.hub.session import Session
from clarion.hub.uni import ChunkedOutbound
from clarion.protocol import client as proto
from clarion.protocol import codes

if TYPE_CHECKING:
    from clarion.hub.app import Hub

HTTP_STREAM = "http_stream"
SSE = "bidi_sse"  # the session's transport name: Clarion's own SSE is "sse"
CONNECT_PARAM = "cf_connect"
# The request body carries the commands JSON-escaped inside a string: room for the escaping.
_ENVELOPE_SLACK = 1024


class EmulationRequest(msgspec.Struct, forbid_unknown_fields=False):
    session: str
    data: str  # the commands as the SDK's JSON codec wrote them, newline-separated
    node: str = ""


_request_decoder = msgspec.json.Decoder(EmulationRequest)


class EmulatedSession(Session):
    """A session whose connect reply also names the emulation session and its node."""

    __slots__ = ("secret",)

    def __init__(self, hub: Hub, target: EmulatedConnection, transport: str,
                 request: Request) -> None:
        super().__init__(hub, target, transport, request, bidirectional=True)
        self.secret = secrets.token_urlsafe(24)

    @property
    def emulation_id(self) -> str:
        return f"{self.id}.{self.secret}"

    def connect_result(self, bidirectional: bool = True) -> dict[str, Any]:
        result = super().connect_result(bidirectional)
        result["session"] = self.emulation_id
        result["node"] = self.hub.node_id
        return result


class _Framed:
    """One push's bytes on each emulated transport, built once for all its subscribers: a
    fan-out hands the same push to every subscriber in a row."""

    __slots__ = ("enc", "event", "line")

    def __init__(self) -> None:
        self.enc: EncodedPush | None = None
        self.line = b""
        self.event = b""

    def get(self, enc: EncodedPush, sse: bool) -> bytes:
        if enc is not self.enc:
            body = proto.push_frame(enc.channel_json, enc.kind, enc.body)
            self.enc = enc
            self.line = body + b"\n"
            self.event = b"data: " + body + b"\n\n"
        return self.event if sse else self.line


_framed = _Framed()


class EmulatedConnection(CommandConnection):
    """An HTTP stream or an SSE response carrying one bidirectional session's frames."""

    __slots__ = ("http", "sse")

    def __init__(self, hub: Hub, http: HttpProtocol, transport: asyncio.Transport,
                 request: Request, sse: bool) -> None:
        self.hub = hub
        self.http = http
        self.transport = transport
        self.sse = sse
        self.out = ChunkedOutbound(transport, hub.flusher, hub.config.client_queue_max_size,
                                   self._slow)
        self.session = EmulatedSession(hub, self, SSE if sse else HTTP_STREAM, request)
        self._start_inbox()
        hub.websockets.add(self)
        hub.metrics.connections_total[SSE if sse else HTTP_STREAM] += 1

    def push(self, enc: EncodedPush) -> None:
        self.out.queue(_framed.get(enc, self.sse))

    def _frame_of(self, body: bytes) -> bytes:
        return b"data: " + body + b"\n\n" if self.sse else body + b"\n"

    def send(self, body: bytes) -> None:
        self.out.queue(self._frame_of(body))

    def ping(self) -> None:
        self.send(proto.EMPTY_REPLY)

    def farewell(self, exc: Disconnect) -> None:
        # No close frame on these transports: Centrifugo says goodbye with a disconnect push,
        # and the SDK reconnects or not by its code as it does after a WebSocket close.
        # Written past the queue (a slow client's backlog is dropped), then the last chunk.
        body = proto.encode({"push": {"disconnect": {"code": exc.code, "reason": exc.reason}}})
        self.out.write_now(self.out.frame([self._frame_of(body)]) + b"0\r\n\r\n")

    def data_received(self, data: bytes) -> None:
        return None  # commands come by /emulation; nothing more is read here

    def connection_lost(self, exc: Exception | None) -> None:
        self.out.closing = True
        self._drop_inbox()
        self.hub.websockets.discard(self)
        session = self.session
        self.hub.fanout.unregister(session)
        if session.subs:
            self.hub.spawn(session.detach_all())


# -- the streams -------------------------------------------------------------------------------


def _cors(hub: Hub, request: Request) -> list[tuple[str, str]]:
    origin = request.headers.get("origin")
    if origin is None:
        return []
    headers = [("access-control-allow-origin", origin), ("vary", "Origin")]
    # Credentials (the user's cookies) only for origins the operator named: allowed_origins
    # ["*"] lets any page in, but not as the user (any site could then act with their cookies).
    if _named_origin(hub, request, origin):
        headers.append(("access-control-allow-credentials", "true"))
    return headers


def _named_origin(hub: Hub, request: Request, origin: str) -> bool:
    patterns = hub.config.allowed_origins
    if "*" not in patterns:
        return True  # the origin passed the check: this origin or a listed pattern
    return origins.same_origin(origin, request) or origins.matches(
        origin, (p for p in patterns if p != "*"))


def preflight(request: Request, http: HttpProtocol, methods: str) -> Response:
    """The answer to a browser's CORS preflight (a cross-origin POST of JSON needs one)."""
    if not http.hub.origin_allowed(request):
        return Response.error(403, "origin not allowed")
    resp = Response(204, b"", "")
    resp.headers.extend(_cors(http.hub, request))
    resp.headers.append(("access-control-allow-methods", methods))
    asked = request.headers.get("access-control-request-headers", "")
    if asked and asked != "null":
        resp.headers.append(("access-control-allow-headers", asked))
    resp.headers.append(("access-control-max-age", "600"))
    return resp


def _connect_frame(raw: bytes) -> bytes | Response:
    """The stream request's commands: one or more, the first a connect with an id."""
    if not raw.strip():
        return Response.error(400, "the stream request carries the connect command")
    try:
        commands = proto.decode_commands(raw)
    except Disconnect:
        return Response.error(400, "malformed connect command (JSON client protocol expected)")
    if not commands or commands[0].method() != "connect" or not commands[0].id:
        return Response.error(400, "the first command must be a connect command with an id")
    return raw


def _refuse(request: Request, http: HttpProtocol, sse: bool) -> Response | None:
    hub = http.hub
    if not hub.origin_allowed(request):
        hub.log.info("emulation stream origin refused", origin=request.headers.get("origin", ""))
        return Response.error(403, "origin not allowed")
    if request.headers.get("content-type", "").startswith("application/octet-stream"):
        return Response.error(415, "only the JSON protocol is served (no protobuf)")
    if len(request.body) > hub.config.client_max_message_size:
        return Response.error(413, "connect command over client_max_message_size "
                                   f"({hub.config.client_max_message_size} bytes)")
    return None


async def _open(request: Request, http: HttpProtocol, raw: bytes,
                sse: bool) -> Response | Takeover:
    hub = http.hub
    frame = _connect_frame(raw)
    if isinstance(frame, Response):
        return frame
    transport = http.transport
    assert transport is not None
    headers = [
        ("content-type", "text/event-stream; charset=utf-8" if sse
         else "application/x-ndjson; charset=utf-8"),
        ("cache-control", "private, no-cache, no-store, must-revalidate, max-age=0"),
        ("pragma", "no-cache"),
        ("x-accel-buffering", "no"),  # nginx: do not buffer the stream
        ("transfer-encoding", "chunked"),
        *_cors(hub, request),
    ]
    conn = EmulatedConnection(hub, http, transport, request, sse)
    http.takeover = conn  # from here on the connection is a stream
    transport.write(encode_head(200, headers))
    if sse:
        conn.out.queue(b"\r\n")  # as Centrifugo: the event stream opens at once
    if hub.connection_count > hub.config.max_connections:
        conn.disconnect(Disconnect(*codes.CONNECTION_LIMIT))
        return conn
    conn.feed(frame)
    return conn


async def handle_http_stream(request: Request, http: HttpProtocol) -> Response | Takeover:
    """``/connection/http_stream``: POST with the connect command as its body."""
    if request.method == "OPTIONS":
        return preflight(request, http, "POST, OPTIONS")
    if request.method != "POST":
        resp = Response.error(405, "the HTTP stream opens with a POST of the connect command")
        resp.headers.append(("allow", "POST, OPTIONS"))
        return resp
    refused = _refuse(request, http, sse=False)
    if refused is not None:
        return refused
    return await _open(request, http, request.body, sse=False)


def is_bidirectional_sse(request: Request) -> bool:
    """How ``/connection/sse`` tells Centrifugo's bidirectional SSE from Clarion's own: the
    SDK's connect command in ``cf_connect`` (GET), a POST with it as the body, or a CORS
    preflight (Clarion's SSE is a plain GET, which needs none)."""
    return CONNECT_PARAM in request.query or request.method in ("POST", "OPTIONS")


async def handle_sse(request: Request, http: HttpProtocol) -> Response | Takeover:
    """Bidirectional ``/connection/sse`` (``is_bidirectional_sse`` said so)."""
    if request.method == "OPTIONS":
        return preflight(request, http, "GET, POST, OPTIONS")
    if request.method not in ("GET", "POST"):
        return Response.error(405, "use GET (with cf_connect) or POST")
    refused = _refuse(request, http, sse=True)
    if refused is not None:
        return refused
    if request.method == "GET":
        raw = request.param(CONNECT_PARAM).encode()
        if len(raw) > http.hub.config.client_max_message_size:
            return Response.error(413, "cf_connect over client_max_message_size")
    else:
        raw = request.body
    return await _open(request, http, raw, sse=True)


# -- /emulation ----------------------------------------------------------------------------------


def _find(hub: Hub, session_id: str) -> EmulatedConnection | None:
    client, _, secret = session_id.partition(".")
    session = hub.fanout.sessions.get(client)
    if not isinstance(session, EmulatedSession) or not secret:
        return None
    if not hmac.compare_digest(session.secret.encode(), secret.encode()):
        return None
    conn = session.target
    assert isinstance(conn, EmulatedConnection)
    return None if conn.out.closing else conn


def deliver(hub: Hub, session_id: str, data: bytes) -> None:
    """Commands forwarded by another node for a session held here (not waited for: the
    posting node has answered its client)."""
    conn = _find(hub, session_id)
    if conn is None:
        hub.metrics.emulation_commands["gone"] += 1
    elif _flooded(hub, conn):
        return
    else:
        hub.metrics.emulation_commands["local"] += 1
        conn.feed(data)


def _flooded(hub: Hub, conn: EmulatedConnection) -> bool:
    """A client posting faster than its commands run is told so (3013) and reconnects, as a
    WebSocket client is no longer read: its frames must not pile up in memory."""
    if conn.pending < PAUSE_ABOVE:
        return False
    hub.metrics.emulation_commands["refused"] += 1
    conn.disconnect(Disconnect(*codes.TOO_MANY_REQUESTS))
    return True


def _answer(hub: Hub, request: Request, status: int, message: str = "") -> Response:
    resp = Response.error(status, message) if message else Response(status, b"", "")
    resp.headers.extend(_cors(hub, request))
    return resp


async def handle_emulation(request: Request, http: HttpProtocol) -> Response:
    """``/emulation``: one batch of commands for an emulated session, on this node or
    another. 204 once the commands ran here (or were handed to the broker for their node);
    204 too for a session that is gone (its stream has ended, the SDK reconnects from there);
    404 for a node that is not known to be alive."""
    hub = http.hub
    metrics = hub.metrics
    if request.method == "OPTIONS":
        return preflight(request, http, "POST, OPTIONS")
    if request.method != "POST":
        resp = Response.error(405, "post commands as {\"session\", \"node\", \"data\"}")
        resp.headers.append(("allow", "POST, OPTIONS"))
        return resp
    if not hub.origin_allowed(request):
        metrics.emulation_commands["refused"] += 1
        return Response.error(403, "origin not allowed")
    limit = hub.config.client_max_message_size
    if request.headers.get("content-type", "").startswith("application/octet-stream"):
        metrics.emulation_commands["refused"] += 1
        return _answer(hub, request, 415, "only the JSON protocol is served (no protobuf)")
    if len(request.body) > 2 * limit + _ENVELOPE_SLACK:
        metrics.emulation_commands["refused"] += 1
        return _answer(hub, request, 413, f"request over twice client_max_message_size ({limit} "
                                     "bytes) plus 1 KiB")
    try:
        req = _request_decoder.decode(request.body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        metrics.emulation_commands["refused"] += 1
        return _answer(hub, request, 400, "body must be JSON {\"session\": str, \"node\": str, "
                                     f"\"data\": str}}: {exc}")
    data = req.data.encode()
    if len(data) > limit:
        metrics.emulation_commands["refused"] += 1
        return _answer(hub, request, 413, f"commands over client_max_message_size ({limit} bytes)")
    if not req.session or not data.strip():
        metrics.emulation_commands["refused"] += 1
        return _answer(hub, request, 400, "session and data must not be empty")
    if req.node and req.node != hub.node_id:
        if req.node not in hub.control.nodes:
            metrics.emulation_commands["gone"] += 1
            return _answer(hub, request, 404, "no such node: the session's node is gone")
        try:
            await hub.control.send(EmulationCmd(req.session, data), to=req.node)
        except BrokerError as exc:
            hub.log.warning("emulation command not forwarded: broker unavailable",
                            node=req.node, error=str(exc))
            return _answer(hub, request, 503, "broker unavailable")
        metrics.emulation_commands["forwarded"] += 1
        return _answer(hub, request, 204)
    conn = _find(hub, req.session)
    if conn is None:
        metrics.emulation_commands["gone"] += 1
        return _answer(hub, request, 204)
    if _flooded(hub, conn):
        return _answer(hub, request, 429, "too many command batches waiting for this session")
    metrics.emulation_commands["local"] += 1
    done: asyncio.Future[None] = hub.loop.create_future()
    conn.feed(data, done)
    await done
    return _answer(hub, request, 204)
