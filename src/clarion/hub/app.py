"""The hub process: lifecycle, wiring and the operations every transport shares.

Lifecycle: ``start()`` starts the broker and binds the socket; ``serve_until_stopped()`` runs
until SIGINT/SIGTERM; ``shutdown()`` stops accepting, tells every client to reconnect (3001)
and waits at most ``shutdown_timeout`` seconds for sockets to drain before closing the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import msgspec

from clarion import __version__
from clarion.broker import Broker, PublishResult, create_broker
from clarion.broker.base import ClientInfo, StreamPosition
from clarion.broker.urls import redact
from clarion.errors import BrokerError, Disconnect
from clarion.hub import emulation, origins
from clarion.hub.api import ServerApi, broker_unavailable
from clarion.hub.backend import Backend
from clarion.hub.channels import ChannelRules
from clarion.hub.commands import CommandConnection
from clarion.hub.config import ChannelOptions, Config
from clarion.hub.control import Control
from clarion.hub.fanout import Fanout
from clarion.hub.http import HttpProtocol, Request, Response
from clarion.hub.limits import ConnectionLimits
from clarion.hub.logs import Logger
from clarion.hub.metrics import HubMetrics
from clarion.hub.openapi import docs_page, openapi_document
from clarion.hub.outbound import Flusher
from clarion.hub.proxies import TrustedProxies, parse_networks
from clarion.hub.publishing import broker_request, publish_many
from clarion.hub.resume import ResumeSigner
from clarion.hub.router import Router
from clarion.hub.static import file_response, handle_static
from clarion.hub.tls import server_context
from clarion.hub.uni import UniConnection, handle_http_stream, handle_poll, handle_sse
from clarion.hub.uni_centrifugo import (
    handle_uni_http_stream,
    handle_uni_sse,
    handle_uni_websocket,
)
from clarion.hub.ws import handle_websocket
from clarion.protocol import client as proto
from clarion.protocol import codes
from clarion.protocol.tokens import TokenKeys

if TYPE_CHECKING:
    from clarion.hub.grip.proxy import GripProxy

HOUSEKEEPING_INTERVAL = 1.0

class Hub:
    def __init__(self, config: Config, broker: Broker | None = None,
                 logger: Logger | None = None) -> None:
        self.config = config
        self.version = __version__
        self.node_name = socket.gethostname()
        self.broker = broker or _create_broker(config)
        # The broker's id is the node's address for control messages (replies to info and
        # channels questions), so the API's uid is that same id.
        self.node_id = self.broker.node_id
        self.log = logger or Logger(fmt=config.log_format, level=config.log_level)
        self.rules = ChannelRules(config)
        self.token_keys = TokenKeys(config.token_hmac_secret, config.token_rsa_public_key,
                                    config.token_ecdsa_public_key, config.token_audience,
                                    config.token_issuer)
        self.resume = ResumeSigner(config.token_hmac_secret or config.api_key,
                                   config.seconds("session_ttl"))
        self.metrics = HubMetrics()
        # The app's backend proxies (connect, rpc, ...): one pooled HTTP client, None if unused.
        self.backend = Backend.from_config(config, self.metrics, self.log)
        self.proxies = TrustedProxies(parse_networks(config.trusted_proxies),
                                      config.proxy_header)
        self.limits = ConnectionLimits(config.seconds("http_header_timeout"),
                                       config.seconds("http_keepalive_timeout"),
                                       config.max_connections_per_address)
        # Loaded here, before anything listens: a bad certificate stops the start.
        self.ssl = server_context(config.certfile, config.keyfile)
        self.fanout = Fanout(self)
        self.control = Control(self)
        self.grip: GripProxy | None = None
        if config.grip_routes:
            from clarion.hub.grip.proxy import GripProxy

            self.grip = GripProxy(self)
        self.api = ServerApi(self)
        self.router = Router(self)
        self.websockets: set[CommandConnection] = set()  # WebSocket and emulated
        self.streams: set[UniConnection] = set()
        self.http_connections: set[HttpProtocol] = set()
        self.started_at = time.monotonic()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None
        self._last_ping = 0.0
        self._last_presence = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set by clarion.hub.workers: each worker process binds its own listeners on the shared
        # ports, and the kernel spreads connections over them.
        self.reuse_port = False
        self.flusher: Flusher
        self.metrics.attach(self)
        self._routes()

    # -- wiring -----------------------------------------------------------------------------

    def _routes(self) -> None:
        r = self.router
        r.add("/connection/websocket", handle_websocket)
        r.add("/connection/sse", handle_sse)
        r.add("/connection/stream", handle_http_stream)
        r.add("/connection/poll", handle_poll)
        r.add("/connection/uni_websocket", handle_uni_websocket)
        r.add("/connection/uni_sse", handle_uni_sse)
        r.add("/connection/uni_http_stream", handle_uni_http_stream)
        r.add("/connection/http_stream", emulation.handle_http_stream)
        r.add("/emulation", emulation.handle_emulation)
        r.add_prefix("/api/", self.api.handle)
        r.add_run("/api/publish", self.api.handle_publishes)
        r.add_prefix("/static/", handle_static)
        r.add("/health", self._health)
        r.add("/metrics", self._metrics)
        r.add("/openapi.json", self._openapi)
        r.add("/docs", self._docs)
        if self.config.demo:
            r.add("/", self._demo_page)
            r.add("/demo/ticket", self._demo_ticket)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "hub is not started"
        return self._loop

    @property
    def connection_count(self) -> int:
        count = len(self.websockets) + len(self.streams)
        return count + self.grip.connection_count if self.grip is not None else count

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.failed("task", exc, task=task.get_coro().__qualname__)  # type: ignore[union-attr]

    def failed(self, part: str, exc: BaseException, **fields: Any) -> None:
        """A failure contained to one part: logged with its traceback, counted in
        ``clarion_failures_total{part}``; the caller goes on or restarts the part."""
        self.metrics.failures[part] += 1
        self.log.failure(f"{part} failed", exc, **fields)

    def http_connection_made(self, http: HttpProtocol) -> None:
        self.http_connections.add(http)

    def http_connection_lost(self, http: HttpProtocol) -> None:
        self.http_connections.discard(http)

    def refused(self, reason: str, **fields: Any) -> None:
        """A connection or request refused by a production limit (clarion.hub.limits):
        counted in ``clarion_http_refused_total{reason}`` and logged at debug, as a flood of
        them must not become a flood of log lines."""
        self.metrics.refusals[reason] += 1
        self.log.debug("connection refused", reason=reason, **fields)

    # -- shared operations --------------------------------------------------------------------

    def origin_allowed(self, request: Request) -> bool:
        """Browsers send Origin; it must be this origin (scheme, host and port) or match
        ``allowed_origins``."""
        origin = request.headers.get("origin")
        if origin is None:
            return True  # not a browser: nothing to hijack
        patterns = self.config.allowed_origins
        if "*" in patterns:
            return True
        # Behind a proxy the page's host and scheme are the ones the browser asked for: a
        # trusted proxy says so in X-Forwarded-Host/-Proto (or Forwarded's host= and proto=).
        return origins.same_origin(origin, request) or origins.matches(origin, patterns)

    async def publish(self, channel: str, data: bytes, *, info: ClientInfo | None = None,
                      tags: dict[str, str] | None = None, skip_history: bool = False,
                      idempotency_key: str = "",
                      options: ChannelOptions | None = None) -> PublishResult:
        data, publish_options = broker_request(
            self.config, options or self.rules.options(channel), data, tags=tags,
            skip_history=skip_history, idempotency_key=idempotency_key, info=info)
        # The hub's one way to the broker (publishing.publish_many): it also keeps the GRIP
        # proxy's recent-publications buffer complete with a broker like Redis.
        (result,) = await publish_many(self, [(channel, data, publish_options)])
        if isinstance(result, BrokerError):
            raise result
        return result

    async def history_result(self, channel: str, options: ChannelOptions, limit: int,
                             since: Any, reverse: bool) -> dict[str, Any]:
        if not options.history_enabled:
            raise codes.not_available()
        position = StreamPosition(since.offset, since.epoch) if since is not None else None
        hist = await self.broker.history(channel, since=position, limit=limit, reverse=reverse,
                                         meta_ttl=self.config.seconds("history_meta_ttl"))
        if position is not None and position.epoch != hist.position.epoch:
            raise codes.unrecoverable_position()
        from clarion.hub.push import info_json, visible_tags

        pubs = [msgspec.Raw(proto.publication_json(p.data, p.offset, info_json(p.info),
                                                   visible_tags(p.tags)))
                for p in hist.publications]
        return {"publications": pubs, "offset": hist.position.offset,
                "epoch": hist.position.epoch}

    # -- plain endpoints ----------------------------------------------------------------------

    async def _health(self, request: Request, http: HttpProtocol) -> Response:
        """``ok`` or ``degraded`` (the broker's fan-out link is down: this node serves its
        connected clients but gets no publications from other nodes), always 200 so that a
        liveness probe does not restart every node of a deployment for Redis being away;
        ``?strict=1`` (for readiness probes) answers 503 when degraded."""
        if self._stopping is not None and self._stopping.is_set():
            return Response.json({"status": "stopping"}, 503)
        broker = self.broker
        connected = bool(getattr(broker, "connected", True))
        body = {
            "status": "ok" if connected else "degraded",
            "version": self.version,
            "broker": {"connected": connected,
                       "reconnects": int(getattr(broker, "reconnects", 0))},
            "streams": {"catch_ups": self.fanout.catch_ups,
                        "positions_lost": self.fanout.positions_lost},
        }
        strict = request.param("strict") not in ("", "0", "false")
        return Response.json(body, 503 if strict and not connected else 200)

    async def _metrics(self, request: Request, http: HttpProtocol) -> Response:
        return Response(200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")

    async def _openapi(self, request: Request, http: HttpProtocol) -> Response:
        return Response(200, openapi_document(self.api))

    async def _docs(self, request: Request, http: HttpProtocol) -> Response:
        return Response(200, docs_page(), "text/html; charset=utf-8")

    async def _demo_page(self, request: Request, http: HttpProtocol) -> Response:
        return file_response("demo.html")

    async def _demo_ticket(self, request: Request, http: HttpProtocol) -> Response:
        """Demo only: a ticket for whatever name the page asks for. A real app issues tickets
        from its own login-protected view through the server API."""
        if request.method != "POST":
            return Response.error(405, "use POST")
        try:
            body = msgspec.json.decode(request.body or b"{}")
            name = str(body.get("name", "")).strip()[:32]
        except (msgspec.DecodeError, AttributeError):
            return Response.error(400, "body must be JSON like {\"name\": \"ada\"}")
        if not name:
            return Response.error(422, "name is required")
        try:
            result = await self.api.ticket(_ticket_request(name))
        except BrokerError as exc:
            return broker_unavailable(exc)
        return Response.json(result)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, sock: socket.socket | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self.flusher = Flusher(self._loop, after=self.metrics.observe_flush)
        self._stopping = asyncio.Event()
        await self.broker.start(self.fanout)
        # Hello: the other nodes answer it directly, so an info question asked of this node
        # right after it started already waits for them.
        self.spawn(self.control.announce(hello=True))
        tls = self.tls_options()
        if sock is not None:
            self._server = await self._loop.create_server(
                lambda: HttpProtocol(self), sock=sock, backlog=4096, **tls)
        else:
            self._server = await self._loop.create_server(
                lambda: HttpProtocol(self), self.config.host, self.config.port, backlog=4096,
                reuse_address=True, reuse_port=self.reuse_port, **tls)
        if self.grip is not None:
            await self.grip.start()
        self._housekeeper = self._loop.create_task(self._housekeeping())
        self.log.info("hub listening", address=self.address,
                      broker=redact(self.config.broker), version=self.version)

    def tls_options(self) -> dict[str, Any]:
        """``create_server`` options for a client listener: TLS when configured, with the
        handshake bounded like a request head (a stalled handshake is a slowloris too)."""
        if self.ssl is None:
            return {}
        return {"ssl": self.ssl, "ssl_handshake_timeout": self.limits.header_timeout}

    @property
    def scheme(self) -> str:
        return "https" if self.ssl is not None else "http"

    @property
    def address(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{self.scheme}://{host}:{port}"

    async def serve_until_stopped(self) -> None:
        assert self._stopping is not None
        loop = self.loop
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stopping.set)
        await self._stopping.wait()
        await self.shutdown()

    def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def shutdown(self) -> None:
        """Stop accepting, ask clients to reconnect elsewhere, drain within the bound."""
        if self._stopping is not None:
            self._stopping.set()
        self.log.info("hub stopping", connections=self.connection_count)
        if self._server is not None:
            self._server.close()
        bye = Disconnect(*codes.SHUTDOWN)
        told: set[object] = set()

        def goodbye() -> None:
            # Again while draining: a request in hand when the stop began may have become a
            # WebSocket or a stream since, and it too is told to reconnect elsewhere.
            for conn in (*self.websockets, *self.streams):
                if conn not in told:
                    told.add(conn)
                    conn.disconnect(bye)

        goodbye()
        if self.grip is not None:
            self.grip.begin_shutdown(bye)
        # Idle keep-alive connections close now; one with a request in hand answers it first
        # (a publish cut mid-way is a 502 a proxy cannot retry).
        busy = [http for http in list(self.http_connections) if http.drain()]
        deadline = time.monotonic() + self.config.seconds("shutdown_timeout")
        # Poll rather than wait on an event: connections leave from transport callbacks.
        def open_() -> bool:
            return bool(self.connection_count) or any(h in self.http_connections for h in busy)

        while open_() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            goodbye()
        for conn in list(self.websockets):
            conn.transport.abort()
        for stream in list(self.streams):
            stream.transport.abort()
        for http in busy:
            if http in self.http_connections and http.transport is not None:
                http.transport.abort()
        if self.grip is not None:
            await self.grip.finish_shutdown()
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeper
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=max(0.1, deadline - time.monotonic()))
        await self.control.leave()
        if self.backend is not None:
            await self.backend.close()
        await self.broker.close()
        if self._server is not None:
            await self._server.wait_closed()
        self.log.info("hub stopped")

    async def _housekeeping(self) -> None:
        """Once a second: pings, pong and stale checks, token expiry. One timer for all
        connections keeps idle ones cheap."""
        config = self.config
        interval = config.seconds("ping_interval")
        pong_timeout = config.seconds("pong_timeout")
        stale = config.seconds("client_stale_close_delay")
        presence_ttl = config.seconds("presence_ttl")
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            now = time.monotonic()
            wall = time.time()
            ping_now = interval > 0 and now - self._last_ping >= interval
            for conn in list(self.websockets):
                # One connection's failure is that connection's: it is dropped, and the round
                # goes on for every other one (a try costs nothing in 3.11 until it raises).
                try:
                    self._tend(conn, now, wall, ping_now, stale, pong_timeout)
                except Exception as exc:  # noqa: BLE001 - logged with traceback in failed()
                    self.failed("housekeeping", exc, client=conn.session.id)
                    conn.transport.abort()
            for stream in list(self.streams):
                try:
                    owner = stream.session
                    expired = owner.check_expiry(wall) if owner is not None else None
                    if expired is not None:
                        stream.disconnect(expired)
                    elif ping_now:
                        stream.ping()
                except Exception as exc:  # noqa: BLE001 - logged with traceback in failed()
                    self.failed("housekeeping", exc)
                    stream.transport.abort()
            if ping_now:
                self._last_ping = now
            if self.grip is not None:
                try:
                    self.grip.tick(now)
                except Exception as exc:  # noqa: BLE001 - logged with traceback in failed()
                    self.failed("housekeeping", exc, of="grip")
            self.control.tick(now)
            self.limits.sweep(now, self._sweep_failed)
            if now - self._last_presence >= presence_ttl / 3:
                self._last_presence = now
                self.spawn(self._refresh_presence(presence_ttl))

    def _sweep_failed(self, exc: BaseException) -> None:
        self.failed("housekeeping", exc, of="http_deadlines")

    @staticmethod
    def _tend(conn: Any, now: float, wall: float, ping_now: bool, stale: float,
              pong_timeout: float) -> None:
        session = conn.session
        if not session.connected:
            if now - session.created > stale:
                conn.disconnect(Disconnect(*codes.STALE))
            return
        expired = session.check_expiry(wall)
        if expired is not None:
            conn.disconnect(expired)
            return
        # Only a ping this session was actually sent counts (not one that went out before it
        # had connected).
        if session.ping_sent and now - session.ping_sent > pong_timeout:
            conn.disconnect(Disconnect(*codes.NO_PONG))
            return
        if ping_now:
            conn.ping()
            if not session.ping_sent:
                session.ping_sent = now

    async def _refresh_presence(self, ttl: float) -> None:
        """Presence entries expire unless refreshed: a crashed node's clients disappear."""
        entries = [(session, channel, sub)
                   for session in list(self.fanout.sessions.values())
                   for channel, sub in list(session.subs.items())
                   if sub.present and sub.options.presence]
        for session, channel, sub in entries:
            if session.subs.get(channel) is sub:  # still there: it may have left meanwhile
                # One failed refresh must not leave every later entry to expire.
                try:
                    await self.broker.add_presence(channel, session.info(sub.chan_info), ttl)
                except Exception as exc:  # noqa: BLE001 - logged with traceback in failed()
                    self.failed("presence_refresh", exc, channel=channel)


def _create_broker(config: Config) -> Broker:
    # A list (shards) goes to create_broker as it is: sharding is the broker's business.
    return create_broker(config.broker, **config.broker_options())




def _ticket_request(name: str) -> Any:
    from clarion.hub.api import TicketReq

    return TicketReq(user=name, info=msgspec.Raw(msgspec.json.encode({"name": name})))
