"""The server API: ``POST /api/<method>`` in Centrifugo's request and response shapes.

Errors of the call itself (unknown channel, not available) answer 200 with ``{"error": …}`` as
Centrifugo does, so the ``cent`` client raises its usual exception. A body that is not JSON is a
400; a body of the wrong shape is a 422 that names the field and the problem. A broker that
cannot be reached (Redis away) is a 503 with Centrifugo's internal error (code 100) in the body,
within the broker's command timeout; in a batch, each command that met it carries that error.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from clarion.errors import BrokerError, ReplyError
from clarion.hub.control import DisconnectCmd, RefreshCmd, SubscribeCmd, UnsubscribeCmd
from clarion.hub.http import HttpProtocol, Request, Response
from clarion.hub.publishing import PublishRun, result_json
from clarion.protocol import client as proto
from clarion.protocol import codes, tickets

if TYPE_CHECKING:
    from clarion.hub.app import Hub

class _Req(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class StreamPositionModel(_Req):
    offset: int = 0
    epoch: str = ""


class DisconnectModel(_Req):
    code: int = 3503
    reason: str = "force disconnect"


class PublishReq(_Req):
    channel: str
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    b64data: str = ""
    skip_history: bool = False
    tags: dict[str, str] = {}
    idempotency_key: str = ""


class BroadcastReq(_Req):
    channels: list[str]
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    b64data: str = ""
    skip_history: bool = False
    tags: dict[str, str] = {}
    idempotency_key: str = ""


class SubscribeReq(_Req):
    user: str
    channel: str
    info: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    b64info: str = ""
    client: str = ""
    session: str = ""
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    b64data: str = ""
    recover_since: StreamPositionModel | None = None
    override: dict[str, Any] = {}


class UnsubscribeReq(_Req):
    user: str
    channel: str
    client: str = ""
    session: str = ""


class DisconnectReq(_Req):
    user: str
    client: str = ""
    session: str = ""
    whitelist: list[str] = []
    disconnect: DisconnectModel | None = None


class RefreshReq(_Req):
    user: str
    client: str = ""
    session: str = ""
    expired: bool = False
    expire_at: int = 0


class ChannelReq(_Req):
    channel: str


class HistoryReq(_Req):
    channel: str
    limit: int = 0
    since: StreamPositionModel | None = None
    reverse: bool = False


class ChannelsReq(_Req):
    pattern: str = ""


class InfoReq(_Req):
    pass


class TicketReq(_Req):
    """Issue a one-time ticket: a connection credential for ``user``, valid once, briefly."""

    user: str
    info: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    channels: list[str] = []
    ttl: float = 0.0


class EventReq(_Req):
    """One event to the webhook listeners of ``type`` and, with a channel, published there."""

    type: str
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    channel: str = ""
    idempotency_key: str = ""


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    id: str  # the webhook-id, and the publication's idempotency key
    deliveries: int
    payload: bytes  # the webhook body, published as it is
    channel: str  # "" for none
    relayed: bool = False  # published already (a repeated request)


class EventSink(Protocol):
    """Where ``POST /api/event`` writes events: the webhook outbox, given to the hub by
    whoever runs it with webhooks (``clarion serve --webhooks-db``); the hub imports no
    Django. ``record`` raises ReplyError for bad input; nothing is written then."""

    async def record(self, type: str, data: bytes, channel: str,
                     idempotency_key: str) -> RecordedEvent: ...

    async def relayed(self, event_id: str) -> None: ...


class BatchReq(_Req):
    commands: list[dict[str, msgspec.Raw]]
    parallel: bool = False  # accepted for cent; commands always run in order


# What a command that met an unreachable broker answers (Centrifugo's internal error).
BROKER_ERROR = b'{"error":{"code":100,"message":"internal server error: broker unavailable"}}'


def broker_unavailable(exc: BrokerError) -> Response:
    """503 for a request that needed the broker while it is away; the client may retry."""
    resp = Response(503, BROKER_ERROR)
    resp.headers.append(("retry-after", "1"))
    return resp


def _raw_or_none(raw: msgspec.Raw) -> bytes | None:
    data = bytes(raw)
    return data or None


class ServerApi:
    """Every method takes its validated request and returns a result object or raises."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.events: EventSink | None = None  # set when the hub runs the webhook app
        self.methods: dict[str, tuple[type[_Req], Callable[[Any], Awaitable[Any]]]] = {
            "publish": (PublishReq, self.publish),
            "broadcast": (BroadcastReq, self.broadcast),
            "subscribe": (SubscribeReq, self.subscribe),
            "unsubscribe": (UnsubscribeReq, self.unsubscribe),
            "disconnect": (DisconnectReq, self.disconnect),
            "refresh": (RefreshReq, self.refresh),
            "presence": (ChannelReq, self.presence),
            "presence_stats": (ChannelReq, self.presence_stats),
            "history": (HistoryReq, self.history),
            "history_remove": (ChannelReq, self.history_remove),
            "channels": (ChannelsReq, self.channels),
            "info": (InfoReq, self.info),
            "ticket": (TicketReq, self.ticket),
            "event": (EventReq, self.event),
        }

    # -- HTTP edge --------------------------------------------------------------------------

    def authorized(self, request: Request) -> bool:
        config = self.hub.config
        if config.api_insecure:
            return True
        if not config.api_key:
            return False
        given = request.headers.get("x-api-key", "")
        if not given:
            scheme, _, value = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "apikey":
                given = value.strip()
        return hmac.compare_digest(given.encode(), config.api_key.encode())

    async def handle(self, request: Request, http: HttpProtocol) -> Response:
        method = request.path[len("/api/"):].strip("/")
        if request.method != "POST":
            resp = Response.error(405, "server API methods are called with POST")
            resp.headers.append(("allow", "POST"))
            return resp
        if not self.authorized(request):
            message = ("no api_key is configured (set CLARION_API_KEY)" if not
                       self.hub.config.api_key else "missing or wrong API key")
            return Response.error(401, message)
        if not request.body.isascii():
            try:
                request.body.decode("utf-8")
            except UnicodeDecodeError:
                return Response.error(400, "body is not valid UTF-8")
        if method == "batch":
            try:
                batch = msgspec.json.decode(request.body or b"{}", type=BatchReq)
            except msgspec.ValidationError as exc:
                return _invalid(exc, request.body or b"{}")
            except msgspec.DecodeError as exc:
                return Response.error(400, f"body is not valid JSON: {exc}")
            except RecursionError:
                return _too_deep()
            self.hub.metrics.api_calls["batch"] += 1  # and each command by its own method
            return Response(200, await self.batch(batch))
        entry = self.methods.get(method)
        if entry is None:
            return Response.json({"error": {"code": 104, "message": "method not found"}}, 404)
        kind, func = entry
        try:
            req = msgspec.json.decode(request.body or b"{}", type=kind)
        except msgspec.ValidationError as exc:
            return _invalid(exc, request.body or b"{}")
        except msgspec.DecodeError as exc:
            return Response.error(400, f"body is not valid JSON: {exc}")
        except RecursionError:
            return _too_deep()
        self.hub.metrics.api_calls[method] += 1
        try:
            return Response(200, await self._call(func, req))
        except BrokerError as exc:
            self.hub.log.warning("API call failed: broker unavailable", method=method,
                                 error=str(exc))
            return broker_unavailable(exc)

    async def handle_publishes(self, requests: list[Request],
                               http: HttpProtocol) -> list[Response]:
        """``POST /api/publish`` requests pipelined on one connection and read together,
        published in one broker call (``publish_many``): through Redis one round trip and one
        flush to the subscribers for the whole run, where one request at a time paid both for
        each. Every request gets the answer ``handle`` would give it, in order."""
        responses: list[Response | None] = [None] * len(requests)
        run = PublishRun(self.hub)
        for place, request in enumerate(requests):
            req = self._well_formed_publish(request)
            if req is None:
                # Refused before it could take effect (key, encoding, shape): ``handle``
                # words the refusal, and nothing needs ordering against the run.
                responses[place] = await self.handle(request, http)
                continue
            self.hub.metrics.api_calls["publish"] += 1
            try:
                run.add(place, req.channel, self._data(req.data, req.b64data),
                        tags=req.tags or None, skip_history=req.skip_history,
                        idempotency_key=req.idempotency_key)
            except ReplyError as err:
                responses[place] = Response(200, proto.encode(
                    {"error": {"code": err.code, "message": err.message}}))
        for place, result in await run.results():
            responses[place] = (broker_unavailable(result) if isinstance(result, BrokerError)
                                else Response(200, b'{"result":' + result_json(result) + b"}"))
        return [r if r is not None else Response.error(500, "internal server error")
                for r in responses]

    def _well_formed_publish(self, request: Request) -> PublishReq | None:
        if not self.authorized(request) or not request.body.isascii():
            return None  # non-ASCII bodies are rare: handle() checks their UTF-8
        try:
            return msgspec.json.decode(request.body or b"{}", type=PublishReq)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
            return None

    async def _call(self, func: Callable[[Any], Awaitable[Any]], req: Any) -> bytes:
        try:
            result = await func(req)
        except ReplyError as err:
            return proto.encode({"error": {"code": err.code, "message": err.message}})
        return b'{"result":' + proto.encode(result) + b"}"

    async def batch(self, batch: BatchReq) -> bytes:
        replies: list[bytes] = []
        run = PublishRun(self.hub)  # consecutive publishes: one broker call (publish_many)
        for command in batch.commands:
            if len(command) != 1:
                replies.append(b'{"error":{"code":107,"message":"bad request: a command '
                               b'holds exactly one method"}}')
                continue
            ((method, params),) = command.items()
            entry = self.methods.get(method)
            if entry is None:
                replies.append(b'{"error":{"code":104,"message":"method not found"}}')
                continue
            kind, func = entry
            try:
                req = msgspec.json.decode(params, type=kind)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                replies.append(proto.encode({"error": {"code": 107,
                                                       "message": f"bad request: {exc}"}}))
                continue
            except RecursionError:
                replies.append(b'{"error":{"code":107,"message":"bad request: nested too '
                               b'deeply"}}')
                continue
            self.hub.metrics.api_calls[method] += 1
            try:
                if isinstance(req, PublishReq):
                    run.add(len(replies), req.channel, self._data(req.data, req.b64data),
                            tags=req.tags or None, skip_history=req.skip_history,
                            idempotency_key=req.idempotency_key)
                    replies.append(b"")  # the run's reply goes here
                    continue
                await run.send(replies, BROKER_ERROR)
                result = await func(req)
            except ReplyError as err:
                replies.append(proto.encode({"error": {"code": err.code,
                                                       "message": err.message}}))
                continue
            except BrokerError as exc:
                # One command's failure; the others of the batch still run (Redis may be
                # back for the next one), as Centrifugo reports errors per command.
                self.hub.log.warning("API call failed: broker unavailable", method=method,
                                     error=str(exc))
                replies.append(BROKER_ERROR)
                continue
            replies.append(b'{"' + method.encode() + b'":' + proto.encode(result) + b"}")
        await run.send(replies, BROKER_ERROR)
        return b'{"replies":[' + b",".join(replies) + b"]}"

    # -- methods ----------------------------------------------------------------------------

    async def publish(self, req: PublishReq) -> Any:
        data = self._data(req.data, req.b64data)
        result = await self.hub.publish(
            req.channel, data, tags=req.tags or None, skip_history=req.skip_history,
            idempotency_key=req.idempotency_key)
        return {"offset": result.position.offset, "epoch": result.position.epoch} if (
            result.position.epoch) else {}

    async def broadcast(self, req: BroadcastReq) -> Any:
        data = self._data(req.data, req.b64data)
        responses: list[Any] = []
        for channel in req.channels:
            try:
                result = await self.hub.publish(
                    channel, data, tags=req.tags or None, skip_history=req.skip_history,
                    idempotency_key=req.idempotency_key)
            except ReplyError as err:
                responses.append({"error": {"code": err.code, "message": err.message}})
                continue
            except BrokerError as exc:
                self.hub.log.warning("broadcast to a channel failed: broker unavailable",
                                     channel=channel, error=str(exc))
                responses.append(msgspec.Raw(BROKER_ERROR))
                continue
            pos = result.position
            responses.append({"result": {"offset": pos.offset, "epoch": pos.epoch}
                              if pos.epoch else {}})
        return {"responses": responses}

    def _data(self, data: msgspec.Raw, b64data: str) -> bytes:
        raw = bytes(data)
        if b64data:
            # The JSON protocol carries no binary: base64 data is delivered as a JSON string.
            raw = proto.encode_str(b64data)
        if not raw:
            raise ReplyError(107, "bad request: data is required")
        return raw

    # subscribe, unsubscribe, disconnect and refresh act on the user's connections on every
    # node: checked here, then sent to the other nodes and applied here (clarion.hub.control).

    async def subscribe(self, req: SubscribeReq) -> Any:
        self.hub.rules.options(req.channel)  # an unknown namespace is this call's error
        since = None
        if req.recover_since is not None:
            since = (req.recover_since.offset, req.recover_since.epoch)
        await self.hub.control.run(SubscribeCmd(
            req.user, req.channel, req.client, _raw_or_none(req.info), _raw_or_none(req.data),
            since))
        return {}

    async def unsubscribe(self, req: UnsubscribeReq) -> Any:
        await self.hub.control.run(UnsubscribeCmd(req.user, req.channel, req.client))
        return {}

    async def disconnect(self, req: DisconnectReq) -> Any:
        model = req.disconnect or DisconnectModel()
        if not 3000 <= model.code <= 4999:
            raise ReplyError(107, "bad request: disconnect.code must be within 3000-4999")
        await self.hub.control.run(DisconnectCmd(req.user, model.code, model.reason, req.client,
                                                 req.whitelist))
        return {}

    async def refresh(self, req: RefreshReq) -> Any:
        await self.hub.control.run(RefreshCmd(req.user, req.client, req.expired, req.expire_at))
        return {}

    async def presence(self, req: ChannelReq) -> Any:
        options = self.hub.rules.options(req.channel)
        if not options.presence:
            raise codes.not_available()
        members = await self.hub.broker.presence(req.channel)
        return {"presence": {cid: msgspec.Raw(proto.client_info_json(
            i.client, i.user, i.conn_info, i.chan_info)) for cid, i in members.items()}}

    async def presence_stats(self, req: ChannelReq) -> Any:
        options = self.hub.rules.options(req.channel)
        if not options.presence:
            raise codes.not_available()
        clients, users = await self.hub.broker.presence_stats(req.channel)
        return {"num_clients": clients, "num_users": users}

    async def history(self, req: HistoryReq) -> Any:
        options = self.hub.rules.options(req.channel)
        return await self.hub.history_result(req.channel, options, req.limit, req.since,
                                             req.reverse)

    async def history_remove(self, req: ChannelReq) -> Any:
        options = self.hub.rules.options(req.channel)
        if not options.history_enabled:
            raise codes.not_available()
        await self.hub.broker.remove_history(req.channel)
        return {}

    async def channels(self, req: ChannelsReq) -> Any:
        """Channels with subscribers on any node, as Centrifugo sums them over its nodes."""
        counts = await self.hub.control.survey_channels(req.pattern)
        return {"channels": {ch: {"num_clients": n} for ch, n in counts.items()}}

    async def info(self, req: InfoReq) -> Any:
        """Every node that answered within survey_timeout, the answering node first (only it
        when the broker is away)."""
        return {"nodes": [node.as_api() for node in await self.hub.control.survey_info()]}

    async def ticket(self, req: TicketReq) -> Any:
        config = self.hub.config
        ttl = req.ttl or config.seconds("ticket_ttl")
        if not 0 < ttl <= config.seconds("ticket_max_ttl"):
            raise ReplyError(107, f"bad request: ttl must be within 0-"
                                  f"{config.seconds('ticket_max_ttl'):g} seconds")
        ticket = tickets.new_ticket()
        info = _raw_or_none(req.info)
        for channel in req.channels or ():
            self.hub.rules.options(channel)
        payload = tickets.encode_payload(
            req.user, info=None if info is None else msgspec.Raw(info),
            channels=req.channels or ())
        await self.hub.broker.store_ticket(ticket, payload, ttl)
        self.hub.metrics.tickets_issued += 1
        return {"ticket": ticket, "expires_in": ttl}


    async def event(self, req: EventReq) -> Any:
        """Write the event to the webhook outbox (committed before this answers), then publish
        its body to the channel with the event's id as idempotency key. A broker that is away
        leaves the publication to the webhook worker, which retries it: ``publication`` is
        null then, and the event is not lost."""
        sink = self.events
        if sink is None:
            raise ReplyError(108, "not available: events need the webhook store "
                                  "(clarion serve --webhooks-db FILE)")
        if req.channel:
            self.hub.rules.options(req.channel)  # a channel the hub refuses: nothing written
        data = bytes(req.data)
        if not data:
            raise ReplyError(107, "bad request: data is required")
        recorded = await sink.record(req.type, data, req.channel, req.idempotency_key)
        publication = None
        if recorded.channel:
            try:
                result = await self.hub.publish(recorded.channel, recorded.payload,
                                                idempotency_key=recorded.id)
            except BrokerError as exc:
                self.hub.log.warning("event published later: broker unavailable",
                                     event_id=recorded.id, error=str(exc))
            except ReplyError as exc:
                # The hook's own channel, refused: the event stands for its webhooks; the
                # worker records the refusal.
                self.hub.log.warning("event not published: the channel is refused",
                                     event_id=recorded.id, channel=recorded.channel,
                                     error=exc.message)
            else:
                pos = result.position
                publication = {"offset": pos.offset, "epoch": pos.epoch}
                if not recorded.relayed:
                    await sink.relayed(recorded.id)
        return {"id": recorded.id, "deliveries": recorded.deliveries,
                "publication": publication}


def _too_deep() -> Response:
    # msgspec raises RecursionError for JSON nested deeper than the interpreter's stack allows
    # (a few hundred "[" do it, well within api_max_body_size): the client's fault, not a 500.
    return Response.error(400, "body is not valid JSON: nested too deeply")


def _invalid(exc: msgspec.ValidationError, body: bytes) -> Response:
    try:
        msgspec.json.decode(body)
    except msgspec.DecodeError as syntax:
        # msgspec checks the shape as it parses; broken JSON must still read as broken JSON.
        return Response.error(400, f"body is not valid JSON: {syntax}")
    except RecursionError:
        return _too_deep()
    message = str(exc)
    field = ""
    if " - at `$." in message:
        message, _, where = message.partition(" - at `$.")
        field = where.rstrip("`")
    elif "unknown field `" in message or "missing required field `" in message:
        field = message.split("`")[1]
    return Response.json({"error": {"code": 422, "message": f"invalid request: {exc}",
                                    "fields": [{"field": field, "problem": message}]}}, 422)


