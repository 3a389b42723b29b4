"""The GRIP proxy: client requests in on ``grip_port``, forwarded to origins by the routes file,
answers read for instructions.

A request is forwarded with client ``Grip-*`` headers removed, ``Grip-Sig`` and
``Grip-Feature`` added, ``X-Forwarded-For``/``-Proto`` set. An answer without instructions
passes through (streamed when large or of unknown length); an instruction becomes a hold
(``hold.GripHold``); a WebSocket on an ``over_http`` route becomes a WebSocket-over-HTTP
session (``wsover``), on any other route a plain tunnel to the origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from clarion.errors import ConfigError, Disconnect, GripError
from clarion.hub.grip.control import ControlApi
from clarion.hub.grip.hold import GripHold, bodiless, response_bytes
from clarion.hub.grip.origin import Head, OriginError, OriginPool, OriginUnreachable
from clarion.hub.grip.origin import Response as OriginResponse
from clarion.hub.grip.recent import Recent
from clarion.hub.grip.tunnel import Tunnel, open_tunnel
from clarion.hub.grip.wsover import WsOverHttp, open_ws_over_http
from clarion.hub.http import HttpProtocol, Request, Response, Takeover
from clarion.protocol.grip import instruct as grip_instruct
from clarion.protocol.grip import sig as grip_sig
from clarion.protocol.grip.routes import Route, RouteTable, Target, parse_routes

if TYPE_CHECKING:
    from clarion.hub.app import Hub

FEATURES = ("status, session, link:next, link:gone, filter:skip-self, filter:skip-users, "
            "filter:require-sub, filter:build-id, filter:var-subst")
# Request headers that never go to an origin: hop-by-hop ones, and Accept-Encoding because the
# proxy must be able to read an instruction body.
STRIP_REQUEST = frozenset({"connection", "keep-alive", "accept-encoding", "transfer-encoding",
                           "expect", "content-length", "te", "trailer", "upgrade",
                           "proxy-connection", "host", "x-forwarded-proto"})
PASS_BUFFER = 256 * 1024  # answers up to this size are read whole and keep the connection


def read_key_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"GRIP key file {path}: {exc.strerror}") from None


@dataclass(slots=True)
class Forward:
    """A request as it went to the origin: enough to ask again (recovery, next links)."""

    route: Route
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    client: str
    host: str  # the Host the origin is sent, kept for the requests made later
    signed: bool  # Grip-Sig goes on every request, signed fresh (connections outlive tokens)


class GripProxy:
    def __init__(self, hub: Hub) -> None:
        config = hub.config
        self.hub = hub
        self.routes_path = config.grip_routes
        self.table, self._routes_mtime = self._load_routes()
        self.signer = grip_sig.Signer(config.grip_sig_iss, self._key(config.grip_sig_key))
        self._route_signers: dict[tuple[str, str], grip_sig.Signer] = {}
        self.upstream_key = self._key(config.grip_upstream_key) if config.grip_upstream_key \
            else None
        self.recent = Recent()
        self.holds: set[GripHold] = set()
        self.websockets: set[WsOverHttp] = set()
        self.tunnels: set[Tunnel] = set()
        self.control = ControlApi(self)
        self.max_channels = config.grip_connection_subscription_max
        self.pool: OriginPool
        self._servers: list[asyncio.Server] = []
        self._last_sweep = 0.0

    def _key(self, spec: str) -> bytes:
        try:
            return grip_sig.decode_key(spec, read_key_file)
        except GripError as exc:
            raise ConfigError(f"GRIP key: {exc}") from None

    def _load_routes(self) -> tuple[RouteTable, float]:
        path = self.routes_path
        try:
            text = Path(path).read_text()
            mtime = os.stat(path).st_mtime
        except OSError as exc:
            raise ConfigError(f"grip_routes {path}: {exc.strerror}") from None
        try:
            table = parse_routes(text, source=path)
        except GripError as exc:
            raise ConfigError(str(exc)) from None
        for warning in table.warnings:
            self.hub.log.warning("GRIP routes", detail=warning)
        for route in table.routes:
            if route.sig_key is not None:
                try:
                    self._key(route.sig_key)  # a bad key is a bad routes file, found now
                except ConfigError as exc:
                    raise ConfigError(f"{path}:{route.line}: sig_key: {exc}") from None
        if not table.routes:
            self.hub.log.warning("GRIP routes file has no routes", path=path)
        return table, mtime

    def _maybe_reload(self) -> None:
        try:
            mtime = os.stat(self.routes_path).st_mtime
        except OSError:
            return  # being replaced: look again next second
        if mtime == self._routes_mtime:
            return
        try:
            self.table, self._routes_mtime = self._load_routes()
        except ConfigError as exc:
            self._routes_mtime = mtime
            self.hub.log.error("GRIP routes not reloaded: keeping the previous ones",
                               error=str(exc))
            return
        self.hub.log.info("GRIP routes reloaded", routes=len(self.table.routes))

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        hub = self.hub
        config = hub.config
        loop = hub.loop
        self.pool = OriginPool(loop, config.seconds("grip_connect_timeout"),
                               config.seconds("grip_response_timeout"))
        hub.fanout.observer = self.recent.add
        grip_host = config.grip_host or config.host
        self._servers.append(await loop.create_server(
            lambda: HttpProtocol(hub, self.handle, config.grip_max_request_body),
            grip_host, config.grip_port, backlog=4096, reuse_address=True,
            reuse_port=hub.reuse_port, **hub.tls_options()))
        self._servers.append(await loop.create_server(
            lambda: HttpProtocol(hub, self.control.handle, config.control_max_body_size,
                                 per_address=False),
            config.control_host, config.control_port, backlog=1024, reuse_address=True,
            reuse_port=hub.reuse_port))
        if config.grip_sig_key == "changeme":
            hub.log.warning("GRIP: Grip-Sig is signed with Pushpin's default key 'changeme'; "
                            "set grip_sig_key to a secret shared with your origins")
        hub.log.info("GRIP proxy listening", address=self.address,
                     control=self.control_address, routes=len(self.table.routes))

    @property
    def address(self) -> str:
        host, port = self._servers[0].sockets[0].getsockname()[:2]
        return f"{self.hub.scheme}://{host}:{port}"

    @property
    def control_address(self) -> str:
        host, port = self._servers[1].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def connection_count(self) -> int:
        return len(self.holds) + len(self.websockets) + len(self.tunnels)

    def begin_shutdown(self, bye: Disconnect) -> None:
        for server in self._servers:
            server.close()
        for hold in list(self.holds):
            hold.disconnect(bye)
        for ws in list(self.websockets):
            ws.disconnect(bye)
        for tunnel in list(self.tunnels):
            tunnel.close()

    async def finish_shutdown(self) -> None:
        for hold in list(self.holds):
            hold.transport.abort()
        for ws in list(self.websockets):
            ws.transport.abort()
        self.pool.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    def tick(self, now: float) -> None:
        for hold in list(self.holds):
            hold.tick(now)
        for ws in list(self.websockets):
            ws.tick(now)
        if now - self._last_sweep >= 5.0:
            self._last_sweep = now
            self.recent.sweep()
            self.pool.sweep()
        self._maybe_reload()

    # -- forwarding ---------------------------------------------------------------------------

    def signer_for(self, route: Route) -> grip_sig.Signer:
        if route.sig_iss is None and route.sig_key is None:
            return self.signer
        key = (route.sig_iss or self.signer.iss, route.sig_key or "")
        signer = self._route_signers.get(key)
        if signer is None:
            signer = grip_sig.Signer(key[0], self._key(route.sig_key) if route.sig_key
                                     else self.signer.key)
            self._route_signers[key] = signer
        return signer

    def _trusted(self, request: Request) -> bool:
        """A request from an upstream GRIP proxy we trust keeps its Grip-* headers."""
        if self.upstream_key is None:
            return False
        token = request.headers.get("grip-sig")
        if not token:
            return False
        try:
            grip_sig.verify(token, self.upstream_key)
        except GripError:
            return False
        return True

    def upstream_headers(self, request: Request, route: Route,
                         trusted: bool) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        forwarded_for = ""
        for name, value in request.raw_headers:
            lname = name.lower()
            if lname in STRIP_REQUEST:
                continue
            if lname == "x-forwarded-for":
                forwarded_for = value
                continue
            if (lname.startswith(("grip-", "meta-")) or lname == "connection-id") \
                    and not trusted:
                continue
            out.append((name, value))
        # Appended as nginx's $proxy_add_x_forwarded_for does: the origin reads the chain from
        # the right and believes it only as far as its own trusted proxies go.
        peer = request.peer or request.client
        out.append(("X-Forwarded-For", f"{forwarded_for}, {peer}" if forwarded_for
                    else peer))
        # The scheme the client used: this listener's own TLS, or what a trusted proxy in
        # front said (trusted_proxies); an upstream GRIP proxy's word when its Grip-Sig holds.
        out.append(("X-Forwarded-Proto", request.headers.get("x-forwarded-proto",
                                                             request.scheme)
                    if trusted else request.scheme))
        return out

    def sig_headers(self, route: Route) -> list[tuple[str, str]]:
        return [("Grip-Sig", self.signer_for(route).token()), ("Grip-Feature", FEATURES)]

    def host_header(self, request: Request, route: Route, target: Target) -> str:
        return (route.as_host or target.host_header or request.headers.get("host")
                or target.address)

    async def send(self, fwd: Forward, host: str, extra: list[tuple[str, str]] | None = None,
                   method: str | None = None, path: str | None = None,
                   body: bytes | None = None, headers: list[tuple[str, str]] | None = None,
                   ) -> tuple[OriginResponse, Target]:
        """Send to the route's targets in order until one answers."""
        errors = []
        sig = self.sig_headers(fwd.route) if fwd.signed else []
        for target in fwd.route.targets:
            signed = sig if not target.untrusted else []
            headers = [("Host", host or target.host_header or target.address),
                       *(fwd.headers if headers is None else headers), *signed, *(extra or [])]
            try:
                resp = await self.pool.start(target, method or fwd.method, path or fwd.path,
                                             headers, fwd.body if body is None else body)
            except OriginUnreachable as exc:
                # Only a request that never reached a target may go to the next one: a
                # timed-out POST may have been acted on.
                errors.append(str(exc))
                continue
            return resp, target
        raise OriginError("; ".join(errors) or "no targets")

    async def handle(self, request: Request, http: HttpProtocol) -> Response | Takeover:
        self.hub.metrics.grip_requests += 1
        host = request.headers.get("host", "")
        # A WebSocket handshake is a GET (RFC 6455 §4.1); any other method is plain HTTP.
        websocket = request.method == "GET" and \
            request.headers.get("upgrade", "").lower() == "websocket"
        route = self.table.match(host, request.path, websocket,
                                 tls=request.scheme == "https")  # routes with ssl=yes
        if route is None:
            return _text(502, f"no route for host {host or '(none)'} and path {request.path}\n")
        over_http = route.targets[0].over_http
        if over_http and not websocket and request.headers.get("content-type", "").split(
                ";")[0].strip().lower() == "application/websocket-events":
            # Only the proxy speaks WebSocket-over-HTTP to the origin: a client posting events
            # itself would have them signed as if they came from a real connection.
            return _text(403, "clients may not send application/websocket-events\n")
        path = route.rewrite_path(request.path)
        if request.query_string:
            path += "?" + request.query_string
        host_header = self.host_header(request, route, route.targets[0])
        trusted = self._trusted(request)
        fwd = Forward(route, request.method, path, self.upstream_headers(request, route, trusted),
                      request.body, request.client, host_header,
                      signed=not route.no_grip and not trusted)
        if websocket:
            if over_http:
                return await open_ws_over_http(self, request, http, fwd, host_header)
            return await open_tunnel(self, request, http, fwd)
        seq = self.recent.seq
        try:
            resp, target = await self.send(fwd, host_header)
        except OriginError as exc:
            self.hub.log.warning("GRIP origin unavailable", path=request.path, error=str(exc))
            return _text(502, f"origin unavailable: {exc}\n")
        head = resp.head
        # A trusted upstream proxy does the holding itself: its answers pass through.
        if route.no_grip or target.untrusted or trusted \
                or not grip_instruct.is_instruct(head.headers):
            return await self.pass_through(resp, http, request)
        head_only = request.method == "HEAD"
        try:
            if head_only:
                resp.abort()  # an answer to HEAD has no body: the parser would wait for one
                body = b""
            else:
                body = await resp.read(self.hub.config.grip_max_instruct_body,
                                       self.pool.response_timeout)
            inst = grip_instruct.parse(head.status, head.reason, head.headers, body)
        except GripError as exc:
            self.hub.metrics.grip_errors += 1
            self.hub.log.warning("GRIP bad instruction from origin", path=request.path,
                                 error=str(exc))
            return _text(502, f"bad GRIP instruction from origin: {exc}\n")
        if head_only:
            # A HEAD is never held: it gets the head a GET would start with.
            r = inst.response
            headers = list(r.headers)
            if bodiless(r.code):
                pass
            elif inst.hold == "stream" or (inst.hold is None and inst.next_link is not None):
                headers.append(("Transfer-Encoding", "chunked"))
            elif head.length is not None:
                headers.append(("Content-Length", str(head.length)))
            return Response(r.code, b"", "", headers, r.reason)
        return self.begin(inst, fwd, http, seq)

    def begin(self, inst: grip_instruct.Instruct, fwd: Forward, http: HttpProtocol,
              seq: int) -> Response | Takeover:
        r = inst.response
        if inst.hold is None and inst.next_link is not None:
            # No hold but a next link: the answer is the first page of a stream whose next
            # pages the proxy fetches (Pushpin does the same).
            inst.hold = "stream"
        if inst.hold is None or http.transport is None:
            return Response(r.code, r.body, "", r.headers, r.reason)
        if inst.hold == "stream" and bodiless(r.code):
            # An answer that ends at its head cannot carry a stream.
            return Response(r.code, b"", "", r.headers, r.reason)
        if self.hub.connection_count >= self.hub.config.max_connections:
            return _text(503, "too many connections\n")
        hold = GripHold(self, http, fwd, inst)
        self.hub.metrics.grip_holds[inst.hold] += 1
        hold.start(inst, seq)
        return hold

    async def pass_through(self, resp: OriginResponse, http: HttpProtocol,
                           request: Request) -> Response | Takeover:
        head = resp.head
        headers = [(k, v) for k, v in head.headers
                   if k.lower() not in grip_instruct.HOP_BY_HOP]
        bounded = head.length is not None and head.length <= PASS_BUFFER
        if bounded or request.method == "HEAD" or head.status in (204, 304):
            try:
                body = b"" if request.method == "HEAD" else await resp.read(
                    PASS_BUFFER, self.pool.response_timeout)
            except OriginError as exc:
                return _text(502, f"origin failed: {exc}\n")
            if request.method == "HEAD":
                resp.abort()  # the parser would wait for a body that never comes
                if head.length is not None:
                    headers.append(("Content-Length", str(head.length)))
                elif not bodiless(head.status):
                    # What the GET gets: a body of unknown length passes through chunked.
                    headers.append(("Transfer-Encoding", "chunked"))
            return Response(head.status, body, "", headers, head.reason)
        return PassThrough(self, http, resp, head, headers)

    # -- asking the origin again --------------------------------------------------------------

    def spawn_recover(self, hold: GripHold) -> None:
        if hold.mode is not None and not hold.recovering:
            hold.recovering = True
            self.hub.spawn(self._recover(hold))

    async def _recover(self, hold: GripHold) -> None:
        fwd = hold.forward
        last = [("Grip-Last", f"{name}; last-id={last_id}")
                for name, last_id in hold.last_ids.items() if last_id is not None]
        host = self.host_header_for(fwd)
        try:
            if hold.next_link is not None:
                link = urljoin(hold.link_base, hold.next_link.uri)
                hold.link_base = link
                seq = self.recent.seq
                resp, _ = await self.send(fwd, host, last, "GET", _path_of(link), b"")
            elif hold.mode == "response":
                seq = self.recent.seq
                resp, _ = await self.send(fwd, host, last)
            else:
                return
            body = await resp.read(self.hub.config.grip_max_instruct_body,
                                   self.pool.response_timeout)
            inst = grip_instruct.parse(resp.head.status, resp.head.reason, resp.head.headers,
                                       body)
        except GripError as exc:
            self.hub.log.warning("GRIP recovery failed", path=fwd.path, error=str(exc))
            if hold.mode == "stream" and hold.next_link is not None:
                hold.next_at = time.monotonic() + 5.0  # try again soon
            return
        finally:
            hold.recovering = False
        if hold.mode is None:
            return
        if hold.mode == "stream":
            if inst.hold is None and inst.response.code >= 400:
                # An error page is no part of the stream: keep the client, ask again later.
                self.hub.log.warning("GRIP next link answered an error; will retry",
                                     path=fwd.path, status=inst.response.code)
                if hold.next_link is not None:
                    hold.next_at = time.monotonic() + hold.next_link.timeout
                return
            if inst.response.body:
                hold.out.queue(inst.response.body)
                hold.sent = True
            if inst.hold is None and inst.next_link is not None:
                hold.next_link = inst.next_link  # another page to come
                hold.next_at = time.monotonic() + inst.next_link.timeout
            elif inst.hold == "stream":
                hold.apply(inst)
                hold.replay(seq, {c.name: c.prev_id for c in inst.channels})
            else:
                hold.finish_stream()
        elif inst.hold == "response":
            hold.original = inst.response
            hold.apply(inst)
            hold.replay(seq, {c.name: c.prev_id for c in inst.channels})
        else:
            r = inst.response
            hold.respond(r.code, r.reason, r.headers, r.body)

    def host_header_for(self, fwd: Forward) -> str:
        return fwd.host

    def spawn_gone(self, fwd: Forward, uri: str) -> None:
        self.hub.spawn(self._gone(fwd, uri))

    async def _gone(self, fwd: Forward, uri: str) -> None:
        """Tell the origin a held client left (``Grip-Link: <uri>; rel=gone``); best effort."""
        link = urljoin(fwd.path, uri)
        try:
            resp, _ = await self.send(fwd, self.host_header_for(fwd), None, "POST",
                                      _path_of(link), b"")
            await resp.read(64 * 1024, self.pool.response_timeout)
        except GripError as exc:
            self.hub.log.info("GRIP gone link failed", link=link, error=str(exc))


def _path_of(link: str) -> str:
    """Links are relative to the origin, or absolute URLs whose path the route's target gets."""
    if "://" in link:
        rest = link.split("://", 1)[1]
        slash = rest.find("/")
        return rest[slash:] if slash >= 0 else "/"
    return link if link.startswith("/") else "/" + link


def _text(status: int, message: str) -> Response:
    return Response(status, message.encode(), "text/plain; charset=utf-8")


class PassThrough(Takeover):
    """An origin's answer streamed to the client as it arrives, with back-pressure both ways."""

    __slots__ = ("done", "http", "proxy", "resp", "transport")

    def __init__(self, proxy: GripProxy, http: HttpProtocol, resp: OriginResponse, head: Head,
                 headers: list[tuple[str, str]]) -> None:
        self.proxy = proxy
        self.http = http
        self.resp = resp
        assert http.transport is not None
        self.transport = http.transport
        self.transport.write(response_bytes(head.status, head.reason, headers, b"",
                                            chunked=True))
        self.done = resp.stream(self._chunk)
        self.done.add_done_callback(self._finished)

    def _chunk(self, data: bytes) -> None:
        if data and not self.transport.is_closing():
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def _finished(self, fut: asyncio.Future[None]) -> None:
        if self.transport.is_closing():
            return
        if fut.cancelled() or fut.exception() is not None:
            # The origin broke off: the client must not take a truncated body for whole.
            self.transport.abort()
            return
        self.transport.write(b"0\r\n\r\n")
        self.http.release()

    def data_received(self, data: bytes) -> None:
        self.http.hold(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.resp.abort()

    def pause_writing(self) -> None:
        self.resp.pause()

    def resume_writing(self) -> None:
        self.resp.resume()

