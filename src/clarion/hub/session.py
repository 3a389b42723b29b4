"""One client's protocol state and commands, whatever transport carries it.

The WebSocket transport feeds it Centrifugo commands; the unidirectional transports (SSE,
stream, poll) use the same connect and subscribe steps with parameters from the URL.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import msgspec

from clarion.broker.base import ClientInfo, StreamPosition
from clarion.errors import BrokerError, Disconnect, ReplyError, TokenError
from clarion.hub.backend import BackendUnavailable
from clarion.hub.config import ChannelOptions
from clarion.hub.push import EncodedPush
from clarion.protocol import client as proto
from clarion.protocol import codes, tickets
from clarion.protocol import proxy as pp
from clarion.protocol.tokens import (
    ConnectClaims,
    SubscribeClaims,
    TokenKeys,
    looks_like_jwt,
    verify_connect_token,
    verify_subscribe_token,
)

if TYPE_CHECKING:
    from clarion.hub.app import Hub
    from clarion.hub.http import Request

_Claims = TypeVar("_Claims", ConnectClaims, SubscribeClaims)


class PushTarget(Protocol):
    """What fan-out needs of a subscriber (a connection, a subscribe buffer, a GRIP hold)."""

    def push(self, enc: EncodedPush) -> None: ...


class SessionTarget(PushTarget, Protocol):
    """What any transport does for its session: deliver a push, end the connection."""

    def disconnect(self, exc: Disconnect) -> None: ...


class FrameTarget(SessionTarget, Protocol):
    """A bidirectional transport (WebSocket, the emulated HTTP stream and SSE) also carries
    replies and push frames of the client protocol."""

    def send(self, body: bytes) -> None: ...


@dataclass(slots=True)
class Subscription:
    options: ChannelOptions
    recoverable: bool
    push_join_leave: bool
    expire_at: int = 0
    chan_info: bytes | None = None
    present: bool = False  # counted in presence (and so announced by join/leave)
    # The client was given a stream position: it must get every publication after it, once,
    # or be told that the position is gone (insufficient state).
    positioned: bool = False
    # Made by the server (connect token channels, server API), not by a subscribe command:
    # such a subscription cannot be resubscribed on its own, so a lost position disconnects.
    server_side: bool = False


# How long a refresh or sub_refresh that got no answer waits before asking again.
PROXY_REFRESH_RETRY = 10.0


class ProxyState:
    """What the proxies need of a session, kept only when the hub has a proxy configured:
    the forwarded headers of the opening request (not the whole request: ~1-2 KB per idle
    connection), the connection's meta, and the refresh calls in flight."""

    __slots__ = ("connect_data", "headers", "meta", "refresh_at", "sub_refresh_at", "subs")

    def __init__(self, headers: tuple[tuple[str, str], ...]) -> None:
        self.headers = headers
        self.meta: pp.Payload = msgspec.UNSET
        self.connect_data: bytes | None = None  # the connect result's data, for the reply
        self.subs: dict[str, pp.SubscribeOptions] = {}  # the connect result's, until used
        # wall time before which no refresh is asked (one in flight, or one failed recently)
        self.refresh_at = 0.0
        self.sub_refresh_at: dict[str, float] = {}


def forwarded_headers(request: Request | None, names: list[str]) -> tuple[tuple[str, str], ...]:
    """The listed headers of the client's request, as the proxies send them. X-Forwarded-For
    is the client address the hub determined (trusted_proxies), never the client's header."""
    if request is None:
        return ()
    wanted = {n.lower() for n in names}
    out = [(k, v) for k, v in request.raw_headers
           if k.lower() in wanted and k.lower() != "x-forwarded-for"]
    if "x-forwarded-for" in wanted and request.client:
        out.append(("X-Forwarded-For", request.client))
    return tuple(out)


@dataclass(slots=True)
class Attached:
    """What subscribing found; ``activate`` switches the channel from buffering to live."""

    result: dict[str, Any]
    recovered_pubs: list[EncodedPush]
    activate: Callable[[], None]
    unrecoverable: bool = False


class Session:
    __slots__ = ("_allowance", "_stamp", "bidirectional", "conn_info", "connected", "created",
                 "expire_at", "hub", "id", "last_pong", "name", "ping_sent", "post_reply",
                 "proxy", "subs", "target", "transport", "user")

    def __init__(self, hub: Hub, target: SessionTarget, transport: str,
                 request: Request | None = None, *, bidirectional: bool | None = None) -> None:
        self.hub = hub
        # Speaks the client protocol both ways (commands in, replies and push frames out):
        # ``target`` is then a FrameTarget.
        self.bidirectional = transport == "websocket" if bidirectional is None else bidirectional
        # From the request that opened the connection (the WebSocket handshake, the stream's
        # GET): the headers and cookies the proxies forward to the app's backend. None when no
        # proxy is configured, so an idle connection keeps nothing of its request.
        self.proxy = ProxyState(forwarded_headers(request, hub.config.proxy_http_headers)
                                ) if hub.backend is not None else None
        self.target = target
        self.transport = transport
        self.id = secrets.token_hex(16)
        self.user = ""
        self.conn_info: bytes | None = None
        self.connected = False
        self.expire_at = 0
        self.name = ""
        self.subs: dict[str, Subscription] = {}
        # Work that must follow the reply being written (going live after a subscribe).
        self.post_reply: list[Callable[[], Awaitable[None] | None]] = []
        now = time.monotonic()
        self.created = now
        self.last_pong = now
        self.ping_sent = 0.0  # when the oldest unanswered ping went out; 0: none pending
        self._allowance = float(hub.config.client_command_burst)
        self._stamp = now

    # -- authentication -------------------------------------------------------------------

    async def authenticate(self, token: str, *, version: str = "",
                           data: bytes = b"") -> tuple[str, ...]:
        """Set the user from a connection JWT, a one-time ticket, a resume token, or (without
        a token) the connect proxy's answer; returns the server-side channels."""
        hub = self.hub
        if not token and self.proxy is not None and self.backend_has("connect"):
            return await self._connect_proxy(version, data)
        if not token:
            if hub.config.allow_anonymous_connect_without_token:
                return ()
            raise Disconnect(*codes.INVALID_TOKEN)
        if tickets.is_ticket(token):
            payload = await hub.broker.consume_ticket(token)
            if payload is None:
                raise Disconnect(*codes.INVALID_TOKEN)
            try:
                ticket = tickets.decode_payload(payload)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                # Written by something other than the hub (the Django app, a script): refuse
                # it as a bad credential, and say why in the log, not to the client.
                hub.log.warning("ticket payload rejected", reason=str(exc))
                raise Disconnect(*codes.INVALID_TOKEN) from None
            self.user = ticket.user
            self.conn_info = ticket.info_json
            hub.metrics.tickets_consumed += 1
            return ticket.channels
        if token.startswith("ses_"):
            if self.bidirectional:
                raise Disconnect(*codes.INVALID_TOKEN)  # resume tokens are for uni transports
            resumed = hub.resume.verify(token[4:])
            self.user = resumed.user
            self.conn_info = resumed.info
            self.expire_at = resumed.expire_at
            return resumed.channels
        if not looks_like_jwt(token):
            raise Disconnect(*codes.INVALID_TOKEN)
        try:
            claims = verify_connect_token(token, hub.token_keys)
        except TokenError as exc:
            if exc.expired:
                raise codes.token_expired() from None
            hub.log.info("connect token rejected", reason=str(exc), transport=self.transport)
            raise Disconnect(*codes.INVALID_TOKEN) from None
        if claims.expire_at and claims.expire_at < time.time():
            raise codes.token_expired()
        self.user = claims.user
        self.conn_info = claims.info
        self.expire_at = claims.expire_at
        return claims.channels

    # -- proxies to the app's backend --------------------------------------------------------

    def backend_has(self, kind: str) -> bool:
        backend = self.hub.backend
        return backend is not None and backend.has(kind)

    def gone(self) -> bool:
        """The client's connection ended while this session awaited something (a proxy call
        can take seconds): its cleanup has run, so nothing may be registered for it now."""
        out = getattr(self.target, "out", None)  # every held connection has one
        return out is not None and bool(out.closing)

    def _proxy_base(self) -> dict[str, Any]:
        return {"client": self.id, "transport": _PROXY_TRANSPORT.get(self.transport,
                                                                     self.transport),
                "protocol": "json",
                "encoding": "json"}

    def _user_base(self) -> dict[str, Any]:
        assert self.proxy is not None
        return {**self._proxy_base(), "user": self.user, "meta": self.proxy.meta}

    async def _answer(self, kind: str, request: pp.ProxyRequest) -> pp.Answer:
        backend = self.hub.backend
        assert backend is not None and self.proxy is not None
        return await backend.call(kind, request, self.proxy.headers)

    async def _ask(self, kind: str, request: pp.ProxyRequest) -> Any:
        """The backend's result; its error or disconnect is raised as the protocol's, and no
        valid answer at all is error 100 (temporary: the client tries again)."""
        try:
            answer = await self._answer(kind, request)
        except BackendUnavailable:
            raise codes.internal() from None
        if answer.error is not None:
            err = answer.error
            raise ReplyError(err.code, err.message, err.temporary)
        if answer.disconnect is not None:
            raise Disconnect(answer.disconnect.code, answer.disconnect.reason)
        return answer.result

    async def _connect_proxy(self, version: str, data: bytes) -> tuple[str, ...]:
        state = self.proxy
        assert state is not None
        result: pp.ConnectResult = await self._ask("connect", pp.ConnectRequest(
            **self._proxy_base(), name=self.name, version=version, data=pp.payload(data)))
        self.user = result.user
        self.conn_info = pp.json_payload(result, "info")
        self.expire_at = result.expire_at
        if result.meta and bytes(result.meta) != b"null":
            state.meta = result.meta
        state.connect_data = pp.json_payload(result, "data")
        state.subs = dict(result.subs)
        channels = dict.fromkeys(result.channels)
        channels.update(dict.fromkeys(result.subs))
        return tuple(channels)

    def server_sub(self, channel: str, options: ChannelOptions) -> tuple[
            ChannelOptions, bytes | None, bytes | None]:
        """A server-side subscription's options, channel info and data, as the connect
        proxy's ``subs`` set them (the channel's own options otherwise)."""
        given = self.proxy.subs.pop(channel, None) if self.proxy is not None else None
        if given is None:
            return options, None, None
        if given.override is not None:
            options = msgspec.structs.replace(options, **given.override.changes())
        return options, pp.json_payload(given, "info"), pp.json_payload(given, "data")

    def _refresh_by_proxy(self) -> bool:
        return self.proxy is not None and self.backend_has("refresh")

    def _sub_refresh_by_proxy(self, sub: Subscription) -> bool:
        return (sub.options.proxy_sub_refresh and self.proxy is not None
                and self.backend_has("sub_refresh"))

    async def _proxy_refresh(self) -> None:
        """The connection passed its expiry: the backend says whether and how long it lives."""
        state = self.proxy
        assert state is not None
        try:
            try:
                answer = await self._answer("refresh", pp.RefreshRequest(**self._user_base()))
            except BackendUnavailable:
                state.refresh_at = time.time() + PROXY_REFRESH_RETRY  # the connection stays
                return
            state.refresh_at = 0.0
            result: pp.RefreshResult | None = answer.result
            # An error or disconnect answer has no meaning here (Centrifugo's rule): expired.
            # So is an expiry already past: asking again every second would change nothing.
            if result is None or result.expired or 0 < result.expire_at <= time.time():
                self.target.disconnect(Disconnect(*codes.EXPIRED))
                return
            self.expire_at = result.expire_at
            info = pp.json_payload(result, "info")
            if info is not None:
                self.conn_info = info
        finally:
            if state.refresh_at == float("inf"):
                # Failed in an unexpected way (logged by the task): asked again later, not
                # left "in flight" forever, neither refreshed nor expired.
                state.refresh_at = time.time() + PROXY_REFRESH_RETRY

    async def _proxy_sub_refresh(self, channel: str, sub: Subscription) -> None:
        state = self.proxy
        assert state is not None
        try:
            try:
                answer = await self._answer("sub_refresh", pp.SubRefreshRequest(
                    **self._user_base(), channel=channel))
            except BackendUnavailable:
                state.sub_refresh_at[channel] = time.time() + PROXY_REFRESH_RETRY
                return
            state.sub_refresh_at.pop(channel, None)
            if self.subs.get(channel) is not sub:
                return  # unsubscribed meanwhile
            result: pp.RefreshResult | None = answer.result
            if result is None or result.expired or 0 < result.expire_at <= time.time():
                self.target.disconnect(Disconnect(*codes.SUB_EXPIRED))
                return
            sub.expire_at = result.expire_at
            info = pp.json_payload(result, "info")
            if info is not None:
                sub.chan_info = info
        finally:
            if state.sub_refresh_at.get(channel) == float("inf"):
                # As in _proxy_refresh: an unexpected failure is not an endless call in flight.
                state.sub_refresh_at[channel] = time.time() + PROXY_REFRESH_RETRY

    def send(self, body: bytes) -> None:
        """A reply or push frame to a bidirectional client."""
        assert self.bidirectional, "only bidirectional transports carry frames"
        cast(FrameTarget, self.target).send(body)

    def connect_result(self, bidirectional: bool = True) -> dict[str, Any]:
        result: dict[str, Any] = {"client": self.id, "version": self.hub.version}
        # With a refresh proxy the hub asks the backend itself: the client is not told to.
        if self.expire_at and not self._refresh_by_proxy():
            result["expires"] = True
            result["ttl"] = max(0, self.expire_at - int(time.time()))
        interval = int(self.hub.config.seconds("ping_interval"))
        if interval:
            result["ping"] = interval
            if bidirectional:
                result["pong"] = True
        return result

    def info(self, chan_info: bytes | None = None) -> ClientInfo:
        return ClientInfo(self.id, self.user, self.conn_info, chan_info)

    def rate_allowed(self) -> bool:
        rate = self.hub.config.client_command_rate_limit
        if rate <= 0:
            return True
        now = time.monotonic()
        burst = float(self.hub.config.client_command_burst)
        self._allowance = min(burst, self._allowance + (now - self._stamp) * rate)
        self._stamp = now
        if self._allowance < 1.0:
            return False
        self._allowance -= 1.0
        return True

    # -- subscriptions ---------------------------------------------------------------------

    def check_channel_limit(self) -> None:
        if len(self.subs) >= self.hub.config.client_channel_limit:
            raise codes.limit_exceeded()

    def subscribe_options(self, channel: str, token: str) -> tuple[ChannelOptions, Subscription]:
        """Permission checks of a client-side subscription; raises the protocol's error."""
        if channel in self.subs:
            raise codes.already_subscribed()
        self.check_channel_limit()
        expire_at = 0
        chan_info = None
        if token:
            claims = _checked(verify_subscribe_token, token, self.hub.token_keys)
            if claims.channel != channel or claims.user != self.user:
                raise codes.permission_denied()
            expire_at = claims.expire_at
            chan_info = claims.info
        options = self.hub.rules.check_subscribe(channel, self.user, bool(token))
        sub = Subscription(options, options.force_recovery, False, expire_at, chan_info)
        return options, sub

    async def attach(self, channel: str, sub: Subscription, recover: StreamPosition | None,
                     positioned: bool, presence: bool = True) -> Attached:
        """Subscribe this session to ``channel``: buffer live publications, read the stream
        position (and missed publications when recovering), then go live without a gap."""
        hub = self.hub
        options = sub.options
        buffer = hub.fanout.add_buffering(channel, self)
        self.subs[channel] = sub
        try:
            await hub.fanout.ensure_broker_subscription(channel)
            result: dict[str, Any] = {}
            recovered_pubs: list[EncodedPush] = []
            unrecoverable = False
            top = 0
            epoch: str | None = None
            if options.history_enabled and (sub.recoverable or positioned or recover):
                meta_ttl = hub.config.seconds("history_meta_ttl")
                if recover is not None:
                    hist = await hub.broker.history(
                        channel, since=recover, limit=-1, meta_ttl=meta_ttl)
                    pos = hist.position
                    pubs = hist.publications
                    recovered = pos.epoch == recover.epoch and (
                        recover.offset == pos.offset
                        or bool(pubs and pubs[0].offset == recover.offset + 1)
                    )
                    if recovered:
                        recovered_pubs = [EncodedPush.publication(channel, p, pos.epoch)
                                          for p in pubs]
                    unrecoverable = not recovered
                    result["recovered"] = recovered
                    result["was_recovering"] = True
                    hub.metrics.recoveries[recovered] += 1
                else:
                    pos = (await hub.broker.history(channel, limit=0, meta_ttl=meta_ttl)).position
                top = pos.offset
                epoch = pos.epoch
                sub.positioned = True
                result["epoch"] = pos.epoch
                result["offset"] = pos.offset
                result["positioned"] = True
                if sub.recoverable:
                    result["recoverable"] = True
                if recovered_pubs:
                    result["publications"] = [
                        msgspec.Raw(p.body) for p in recovered_pubs]
                    top = recovered_pubs[-1].offset
            sub.present = presence
            if options.presence and presence:
                await hub.broker.add_presence(channel, self.info(sub.chan_info),
                                              hub.config.seconds("presence_ttl"))
        except BaseException:
            self.subs.pop(channel, None)
            hub.fanout.remove(channel, self)
            # No stale broker subscription when this was the channel's only subscriber.
            hub.spawn(hub.fanout.release_broker_subscription(channel))
            raise
        if sub.push_join_leave:
            result["join_leave"] = True

        def activate() -> None:
            if self.subs.get(channel) is not sub:
                return
            hub.fanout.activate(channel, self, buffer, top, epoch)

        return Attached(result, recovered_pubs, activate, unrecoverable)

    async def run_post_reply(self) -> None:
        work, self.post_reply = self.post_reply, []
        for step in work:
            result = step()
            if result is not None:
                await result

    async def announce_join(self, channel: str, sub: Subscription) -> None:
        if sub.options.join_leave and sub.present:
            try:
                await self.hub.broker.publish_join(channel, self.info(sub.chan_info))
            except BrokerError as exc:
                # The subscription itself stands; only the announcement is lost.
                self.hub.log.warning("join not announced", channel=channel, error=str(exc))

    async def detach(self, channel: str) -> None:
        sub = self.subs.pop(channel, None)
        if sub is None:
            return
        self.hub.fanout.remove(channel, self)
        await self._release(channel, sub)

    async def _release(self, channel: str, sub: Subscription) -> None:
        """The broker side of leaving a channel; local state is gone already."""
        hub = self.hub
        await hub.fanout.release_broker_subscription(channel)
        if not sub.present:
            return
        try:
            if sub.options.presence:
                await hub.broker.remove_presence(channel, self.id)
            if sub.options.join_leave:
                await hub.broker.publish_leave(channel, self.info(sub.chan_info))
        except BrokerError as exc:
            # The client has left here either way; its presence entry expires by its ttl.
            hub.log.warning("leave not announced", channel=channel, error=str(exc))

    def lose_position(self, channel: str) -> None:
        """This node could not deliver every publication after the client's position:
        Centrifugo's insufficient state. A client-side subscription is unsubscribed with
        2500 (the SDK resubscribes and recovers from its last offset); anything else is
        disconnected with 3010 (the client reconnects and resumes from its cursor)."""
        sub = self.subs.get(channel)
        if sub is None:
            return
        hub = self.hub
        if self.bidirectional and not sub.server_side:
            # Gone at once, so that the client's resubscribe is not "already subscribed".
            del self.subs[channel]
            hub.fanout.remove(channel, self)
            code, reason = codes.UNSUBSCRIBE_INSUFFICIENT_STATE
            self.send(proto.push_frame(proto.encode_str(channel), b"unsubscribe",
                                       proto.encode({"code": code, "reason": reason})))
            hub.spawn(self._release(channel, sub))
        else:
            hub.fanout.remove(channel, self)
            self.target.disconnect(Disconnect(*codes.INSUFFICIENT_STATE))

    async def detach_all(self) -> None:
        for channel in list(self.subs):
            try:
                await self.detach(channel)
            except Exception:  # one failed broker call must not leave other channels attached
                self.hub.log.exception("detach failed", channel=channel, client=self.id)

    # -- bidirectional commands -------------------------------------------------------------

    async def command(self, cmd: proto.Command) -> bytes | None:
        """Run one command; returns the reply frame body (None for commands without one)."""
        method = cmd.method()
        if not self.connected and method != "connect":
            raise Disconnect(*codes.BAD_REQUEST)
        if self.connected and method == "connect":
            raise Disconnect(*codes.BAD_REQUEST)
        if not self.rate_allowed():
            err = codes.too_many_requests()
            return proto.error_reply(cmd.id, err.code, err.message, err.temporary)
        handler = _HANDLERS.get(method)
        if handler is None:
            err = codes.method_not_found()
            return proto.error_reply(cmd.id, err.code, err.message)
        try:
            result = await handler(self, cmd)
        except ReplyError as err:
            return proto.error_reply(cmd.id, err.code, err.message, err.temporary)
        except BrokerError as exc:
            # The broker is away: the client keeps its connection and retries (temporary),
            # as Centrifugo answers with its internal error.
            self.hub.log.warning("command failed: broker unavailable", method=method,
                                 client=self.id, error=str(exc))
            internal = codes.internal()
            return proto.error_reply(cmd.id, internal.code, internal.message,
                                     internal.temporary)
        if method == "send":
            return None
        return proto.reply(cmd.id, method, result)

    async def _connect(self, cmd: proto.Command) -> Any:
        assert cmd.connect is not None
        self.name = cmd.connect.name
        channels = await self.authenticate(cmd.connect.token, version=cmd.connect.version,
                                           data=bytes(cmd.connect.data))
        if self.gone():
            raise Disconnect(*codes.CONNECTION_CLOSED)
        if len(channels) > self.hub.config.client_channel_limit:
            raise codes.limit_exceeded()
        # Every server-side channel must exist before the session counts as connected.
        resolved = [(channel, self.hub.rules.options(channel)) for channel in channels]
        self.connected = True
        self.hub.fanout.register(self)
        result = self.connect_result()
        if self.proxy is not None and self.proxy.connect_data is not None:
            result["data"] = msgspec.Raw(self.proxy.connect_data)
            self.proxy.connect_data = None
        if resolved:
            subs: dict[str, Any] = {}
            left_at = cmd.connect.subs
            try:
                for channel, channel_options in resolved:
                    options, chan_info, sub_data = self.server_sub(channel, channel_options)
                    sub = Subscription(options, options.force_recovery,
                                       options.join_leave and options.force_push_join_leave,
                                       chan_info=chan_info, server_side=True)
                    # A reconnecting client names where it left each recoverable server-side
                    # subscription; it gets what it missed in this reply, as with subscribe.
                    was = left_at.get(channel)
                    recover = StreamPosition(was.offset, was.epoch) if (
                        was is not None and was.recover and sub.recoverable) else None
                    attached = await self.attach(channel, sub, recover,
                                                 options.force_positioning)
                    self.post_reply.append(attached.activate)
                    self.post_reply.append(functools.partial(self.announce_join, channel, sub))
                    if sub_data is not None:
                        attached.result["data"] = msgspec.Raw(sub_data)
                    subs[channel] = attached.result
            except BaseException:
                # Not connected after all: the client retries its connect from scratch.
                self.connected = False
                self.post_reply.clear()
                self.hub.fanout.unregister(self)
                await self.detach_all()
                raise
            result["subs"] = subs
        return result

    async def _subscribe(self, cmd: proto.Command) -> Any:
        req = cmd.subscribe
        assert req is not None
        sub_data: bytes | None = None
        if self._subscribe_by_proxy(req.channel, req.token):
            options, sub, sub_data = await self._proxy_subscribe(req)
        else:
            options, sub = self.subscribe_options(req.channel, req.token)
        sub.recoverable = options.force_recovery or (options.allow_recovery and req.recoverable)
        sub.push_join_leave = options.join_leave and (
            options.force_push_join_leave or req.join_leave)
        positioned = sub.recoverable or options.force_positioning or (
            options.allow_positioning and req.positioned)
        recover = StreamPosition(req.offset, req.epoch) if (
            req.recover and sub.recoverable) else None
        attached = await self.attach(req.channel, sub, recover, positioned)
        # The reply (with recovered publications) must reach the client before live ones.
        self.post_reply.append(attached.activate)
        self.post_reply.append(lambda: self.announce_join(req.channel, sub))
        if sub.expire_at and not self._sub_refresh_by_proxy(sub):
            attached.result["expires"] = True
            attached.result["ttl"] = max(0, sub.expire_at - int(time.time()))
        if sub_data is not None:
            attached.result["data"] = msgspec.Raw(sub_data)
        return attached.result

    def _subscribe_by_proxy(self, channel: str, token: str) -> bool:
        """Centrifugo's rule: the subscribe proxy decides for a namespace that asks for it,
        except for a subscription with a token or to a user-limited channel (those carry
        their own permission)."""
        if token or self.proxy is None or not self.backend_has("subscribe"):
            return False
        if not self.hub.rules.options(channel).proxy_subscribe:
            return False
        return self.hub.rules.limited_users(channel) is None

    async def _proxy_subscribe(self, req: proto.SubscribeRequest) -> tuple[
            ChannelOptions, Subscription, bytes | None]:
        channel = req.channel
        if channel in self.subs:
            raise codes.already_subscribed()
        self.check_channel_limit()
        options = self.hub.rules.options(channel)
        result: pp.SubscribeResult = await self._ask("subscribe", pp.SubscribeRequest(
            **self._user_base(), channel=channel, data=pp.payload(req.data)))
        if self.gone():
            raise Disconnect(*codes.CONNECTION_CLOSED)
        if channel in self.subs:  # a second subscribe overtook this one while it waited
            raise codes.already_subscribed()
        if result.override is not None:
            options = msgspec.structs.replace(options, **result.override.changes())
        sub = Subscription(options, options.force_recovery, False, result.expire_at,
                           pp.json_payload(result, "info"))
        return options, sub, pp.json_payload(result, "data")

    async def _unsubscribe(self, cmd: proto.Command) -> Any:
        assert cmd.unsubscribe is not None
        await self.detach(cmd.unsubscribe.channel)
        return {}

    async def _publish(self, cmd: proto.Command) -> Any:
        req = cmd.publish
        assert req is not None
        options = self.hub.rules.options(req.channel)
        data = bytes(req.data) or b"null"
        tags: dict[str, str] | None = None
        skip_history = False
        idempotency_key = ""
        if options.proxy_publish and self.proxy is not None and self.backend_has("publish"):
            # The backend decides instead of the allow_publish_* flags, and may rewrite.
            result: pp.PublishResult = await self._ask("publish", pp.PublishRequest(
                **self._user_base(), channel=req.channel, data=pp.payload(data)))
            data = pp.json_payload(result, "data") or data
            tags = result.tags or None
            skip_history = result.skip_history
            idempotency_key = result.idempotency_key
        else:
            self.hub.rules.check_action(options, "publish", self.user, req.channel in self.subs)
        sub = self.subs.get(req.channel)
        await self.hub.publish(req.channel, data,
                               info=self.info(sub.chan_info if sub else None), tags=tags,
                               skip_history=skip_history, idempotency_key=idempotency_key,
                               options=options)
        return {}

    async def _presence(self, cmd: proto.Command) -> Any:
        assert cmd.presence is not None
        channel = cmd.presence.channel
        options = self.hub.rules.options(channel)
        self.hub.rules.check_action(options, "presence", self.user, channel in self.subs)
        if not options.presence:
            raise codes.not_available()
        members = await self.hub.broker.presence(channel)
        return {"presence": {cid: _info_obj(i) for cid, i in members.items()}}

    async def _presence_stats(self, cmd: proto.Command) -> Any:
        assert cmd.presence_stats is not None
        channel = cmd.presence_stats.channel
        options = self.hub.rules.options(channel)
        self.hub.rules.check_action(options, "presence", self.user, channel in self.subs)
        if not options.presence:
            raise codes.not_available()
        clients, users = await self.hub.broker.presence_stats(channel)
        return {"num_clients": clients, "num_users": users}

    async def _history(self, cmd: proto.Command) -> Any:
        req = cmd.history
        assert req is not None
        options = self.hub.rules.options(req.channel)
        self.hub.rules.check_action(options, "history", self.user, req.channel in self.subs)
        return await self.hub.history_result(req.channel, options, req.limit, req.since,
                                             req.reverse)

    async def _refresh(self, cmd: proto.Command) -> Any:
        assert cmd.refresh is not None
        claims = _checked(verify_connect_token, cmd.refresh.token, self.hub.token_keys)
        if claims.user != self.user:
            raise Disconnect(*codes.INVALID_TOKEN)
        if claims.expire_at and claims.expire_at < time.time():
            raise codes.token_expired()
        self.expire_at = claims.expire_at
        if claims.info is not None:
            self.conn_info = claims.info
        return self.connect_result()

    async def _sub_refresh(self, cmd: proto.Command) -> Any:
        req = cmd.sub_refresh
        assert req is not None
        sub = self.subs.get(req.channel)
        if sub is None:
            raise codes.permission_denied()
        claims = _checked(verify_subscribe_token, req.token, self.hub.token_keys)
        if claims.channel != req.channel or claims.user != self.user:
            raise codes.permission_denied()
        sub.expire_at = claims.expire_at
        result: dict[str, Any] = {}
        if sub.expire_at:
            result = {"expires": True, "ttl": max(0, sub.expire_at - int(time.time()))}
        return result

    async def _ping(self, cmd: proto.Command) -> Any:
        return {}

    async def _send(self, cmd: proto.Command) -> Any:
        # No application handler runs inside the hub; asynchronous messages are dropped.
        return None

    async def _rpc(self, cmd: proto.Command) -> Any:
        req = cmd.rpc
        assert req is not None
        if self.proxy is None or not self.backend_has("rpc"):
            raise codes.not_available()  # Centrifugo's answer when nothing handles RPC
        result: pp.RPCResult = await self._ask("rpc", pp.RPCRequest(
            **self._user_base(), method=req.method, data=pp.payload(req.data)))
        data = pp.json_payload(result, "data")
        return {"data": msgspec.Raw(data)} if data is not None else {}

    def check_expiry(self, now: float) -> Disconnect | None:
        """Called about once a second with the wall time: the disconnect an expired
        connection or subscription gets, or None. Where a refresh proxy decides, it is asked
        (in a task of its own) and the answer ends or prolongs the connection."""
        config = self.hub.config
        state = self.proxy
        if self.expire_at and state is not None and self._refresh_by_proxy():
            if now >= self.expire_at and now >= state.refresh_at:
                state.refresh_at = float("inf")  # one call in flight
                self.hub.spawn(self._proxy_refresh())
        elif self.expire_at and now > self.expire_at + config.seconds(
                "client_expired_close_delay"):
            return Disconnect(*codes.EXPIRED)
        sub_delay = config.seconds("client_expired_sub_close_delay")
        for channel, sub in self.subs.items():
            if not sub.expire_at:
                continue
            if state is not None and self._sub_refresh_by_proxy(sub):
                if now >= sub.expire_at and now >= state.sub_refresh_at.get(channel, 0.0):
                    state.sub_refresh_at[channel] = float("inf")
                    self.hub.spawn(self._proxy_sub_refresh(channel, sub))
            elif now > sub.expire_at + sub_delay:
                return Disconnect(*codes.SUB_EXPIRED)
        return None


def _checked(verify: Callable[[str, TokenKeys], _Claims], token: str,
             keys: TokenKeys) -> _Claims:
    """A token's claims; an expired token is error 109 (the client refreshes), any other
    failure is disconnect 3500."""
    try:
        return verify(token, keys)
    except TokenError as exc:
        if exc.expired:
            raise codes.token_expired() from None
        raise Disconnect(*codes.INVALID_TOKEN) from None


def _info_obj(info: ClientInfo) -> msgspec.Raw:
    return msgspec.Raw(proto.client_info_json(info.client, info.user, info.conn_info,
                                              info.chan_info))


# The transport as Centrifugo names it to the backend: the emulated SSE is "sse" there (our
# session name tells it from Clarion's own unidirectional SSE).
_PROXY_TRANSPORT = {"bidi_sse": "sse"}

_HANDLERS = {
    "connect": Session._connect,
    "subscribe": Session._subscribe,
    "unsubscribe": Session._unsubscribe,
    "publish": Session._publish,
    "presence": Session._presence,
    "presence_stats": Session._presence_stats,
    "history": Session._history,
    "refresh": Session._refresh,
    "sub_refresh": Session._sub_refresh,
    "ping": Session._ping,
    "send": Session._send,
    "rpc": Session._rpc,
}
