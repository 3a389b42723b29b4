"""``GripMiddleware`` and the view helpers that ask the proxy to hold a request.

Request side: ``request.grip`` (``proxied``, ``signed``, ``features``, ``last``,
``instruct``), ``request.grip_proxied``, ``request.grip_signed`` and ``request.wscontext``.
Response side: the header form of GRIP instructions, or the WebSocket-over-HTTP reply.
Both follow django-grip 3.5.2; the header values come from ``clarion.protocol.grip``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import wraps
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpResponse, HttpResponseBadRequest
from django.http.response import HttpResponseBase

from clarion.django.grip import config
from clarion.django.grip.formats import wire_channels
from clarion.django.grip.wscontext import WebSocketContext
from clarion.errors import GripError
from clarion.protocol.grip import instruct as wire
from clarion.protocol.grip import sig, wsevents
from clarion.protocol.grip.headers import parse_list

logger = logging.getLogger("clarion.django.grip")

# Where the old call style (set_hold_stream(response, ...)) keeps its instruction.
_RESPONSE_ATTR = "grip_instruct"


class GripInstruct:
    """What the view asks of the proxy; django-grip's ``GripInstruct``. Channel names are kept
    as given; ``GRIP_PREFIX`` is applied when the headers are written."""

    def __init__(self) -> None:
        self.hold = ""
        self.channels: list[Any] = []
        self.timeout = 0
        self.keep_alive: str | bytes = ""
        self.keep_alive_timeout = 0
        self.keep_alive_mode = "idle"
        self.next_link = ""
        self.next_link_timeout = 0
        self.meta: dict[str, str] = {}  # modify directly

    def add_channel(self, channel: Any) -> None:
        wire_channels(channel)  # refuse a bad channel here, in the view
        self.channels.append(channel)

    def add_channels(self, channels: Any) -> None:
        if isinstance(channels, str) or hasattr(channels, "name"):
            channels = [channels]
        for c in channels:
            self.add_channel(c)

    def set_hold_longpoll(self, timeout: int | None = None) -> None:
        self.hold = "response"
        if timeout:
            self.timeout = int(timeout)

    def set_hold_stream(self) -> None:
        self.hold = "stream"

    def set_keep_alive(self, data: str | bytes, timeout: int, mode: str = "idle") -> None:
        if mode not in ("idle", "interval"):
            raise ValueError(f"keep-alive mode must be 'idle' or 'interval', not {mode!r}")
        if int(timeout) < 1:
            raise ValueError("keep-alive timeout must be at least 1 second")
        self.keep_alive = data
        self.keep_alive_timeout = int(timeout)
        self.keep_alive_mode = mode

    def set_next_link(self, uri: str, timeout: int | None = None) -> None:
        self.next_link = uri
        if timeout:
            self.next_link_timeout = int(timeout)

    def headers(self, prefix: str) -> list[tuple[str, str]]:
        """The ``Grip-*`` headers of this instruction (without ``Grip-Status``)."""
        out: list[tuple[str, str]] = []
        if self.hold:
            out.append(("Grip-Hold", self.hold))
        if self.channels:
            out.append(("Grip-Channel", wire.channel_header(
                wire_channels(self.channels, prefix))))
        if self.hold:
            if self.timeout > 0:
                out.append(("Grip-Timeout", str(self.timeout)))
            if self.keep_alive:
                data = (self.keep_alive.encode() if isinstance(self.keep_alive, str)
                        else self.keep_alive)
                out.append(("Grip-Keep-Alive", wire.keep_alive_header(
                    data, self.keep_alive_timeout, self.keep_alive_mode)))
        if self.meta:
            out.append(("Grip-Set-Meta", wire.set_meta_header(self.meta)))
        if self.next_link:
            out.append(("Grip-Link", wire.link_header(
                self.next_link, "next", self.next_link_timeout or None)))
        return out


class GripData:
    """``request.grip``."""

    def __init__(self) -> None:
        self.proxied = False
        self.signed = False
        self.features: set[str] = set()
        self.last: dict[str, str] = {}
        self.instruct: GripInstruct | None = None

    def start_instruct(self) -> GripInstruct:
        if self.instruct is not None:
            raise ValueError("GRIP instruct already started")
        self.instruct = GripInstruct()
        return self.instruct


# -- view helpers: both call styles ------------------------------------------------------------

def _instruct_for(target: Any, *, hold: bool) -> GripInstruct:
    """The instruction a helper writes into. ``target`` is the request (django-grip 3) or the
    response (the old style of django-grip's first README). A second hold on the same request
    is an error, as in django-grip; the non-hold helpers share whatever instruction exists."""
    if isinstance(target, HttpResponseBase):
        existing = getattr(target, _RESPONSE_ATTR, None)
        if isinstance(existing, GripInstruct):
            if hold and existing.hold:
                raise ValueError("GRIP hold already set on this response")
            return existing
        inst = GripInstruct()
        setattr(target, _RESPONSE_ATTR, inst)
        return inst
    grip = getattr(target, "grip", None)
    if not isinstance(grip, GripData):
        raise TypeError("expected a request that went through clarion.django.grip."
                        "GripMiddleware (add it to MIDDLEWARE) or an HttpResponse, got "
                        f"{type(target).__name__}")
    if grip.instruct is None:
        return grip.start_instruct()
    if hold and grip.instruct.hold:
        raise ValueError("GRIP instruct already started")
    return grip.instruct


def _write_now(target: Any) -> None:
    """Old style: the headers go on the response at once (with ``GRIP_PREFIX``), so the response
    is right even without the middleware; the middleware writes them again, identically."""
    if isinstance(target, HttpResponseBase):
        inst = getattr(target, _RESPONSE_ATTR)
        for name, value in inst.headers(config.prefix()):
            target[name] = value


def set_hold_longpoll(target: Any, channels: Any, timeout: int | None = None) -> None:
    """Hold the request as a long-poll on ``channels`` (a name, a ``Channel`` or a list): the
    proxy answers it with the first ``http-response`` published, or with this response after
    ``timeout`` seconds (the proxy's default is 55). ``target`` is the request or the
    response."""
    inst = _instruct_for(target, hold=True)
    inst.add_channels(channels)
    inst.set_hold_longpoll(timeout=timeout)
    _write_now(target)


def set_hold_stream(target: Any, channels: Any, keep_alive_data: str | bytes | None = None,
                    keep_alive_timeout: int | None = None) -> None:
    """Hold the request as a stream on ``channels``: the proxy sends this response's body, then
    every ``http-stream`` content published. ``keep_alive_data`` is sent after
    ``keep_alive_timeout`` idle seconds. ``target`` is the request or the response."""
    if keep_alive_data and not keep_alive_timeout:
        raise ValueError("if keep_alive_data is set, then keep_alive_timeout must also be set")
    inst = _instruct_for(target, hold=True)
    inst.add_channels(channels)
    inst.set_hold_stream()
    if keep_alive_data:
        assert keep_alive_timeout is not None
        inst.set_keep_alive(keep_alive_data, timeout=keep_alive_timeout)
    _write_now(target)


def set_hold_keep_alive(target: Any, data: str | bytes, timeout: int,
                        mode: str = "idle") -> None:
    """Keep-alive data for a held stream (``request.grip.instruct.set_keep_alive`` in
    django-grip); ``mode="interval"`` sends it every ``timeout`` seconds regardless."""
    _instruct_for(target, hold=False).set_keep_alive(data, timeout, mode)
    _write_now(target)


def set_next_link(target: Any, uri: str, timeout: int | None = None) -> None:
    """``Grip-Link: <uri>; rel=next``: the proxy fetches ``uri`` next (django-grip's
    ``instruct.set_next_link``)."""
    _instruct_for(target, hold=False).set_next_link(uri, timeout)
    _write_now(target)


def set_meta(target: Any, meta: Mapping[str, str]) -> None:
    """Subscription meta for the proxy's filters (``Grip-Set-Meta``; django-grip's
    ``instruct.meta``)."""
    _instruct_for(target, hold=False).meta.update(meta)
    _write_now(target)


def websocket_only(view_func: Callable[..., Any]) -> Callable[..., Any]:
    """The view is only for WebSocket-over-HTTP requests: others get 400, and the view may
    return None (the middleware builds the reply from ``request.wscontext``). Works on sync
    and async views."""

    def bad_request() -> HttpResponse:
        return HttpResponseBadRequest("Request must contain WebSocket events.\n")

    wrapped: Any
    if iscoroutinefunction(view_func):
        @wraps(view_func)
        async def async_wrapped(request: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(request, "wscontext", None) is None:
                return bad_request()
            response = await view_func(request, *args, **kwargs)
            return HttpResponse() if response is None else response

        wrapped = async_wrapped
    else:
        @wraps(view_func)
        def sync_wrapped(request: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(request, "wscontext", None) is None:
                return bad_request()
            response = view_func(request, *args, **kwargs)
            return HttpResponse() if response is None else response

        wrapped = sync_wrapped
    wrapped.websocket_only = True  # django-grip's marker
    result: Callable[..., Any] = wrapped
    return result


# -- the middleware ------------------------------------------------------------------------------

def is_proxied(grip_sig: str | None, proxies: Iterable[config.Proxy]) -> tuple[bool, bool]:
    """(proxied, signed) for a request's ``Grip-Sig``: when every configured proxy has a key,
    the request is proxied only if one of them signed it; when any proxy has no key, the header
    being there is enough (it is never trusted as signed then)."""
    if not grip_sig:
        return False, False
    proxies = list(proxies)
    if any(p.sig_key is None for p in proxies):
        return True, False
    for proxy in proxies:
        assert proxy.sig_key is not None
        try:
            sig.verify(grip_sig, proxy.sig_key, iss=proxy.verify_iss)
        except GripError:
            continue
        return True, True
    return False, False


def parse_last(value: str | None) -> dict[str, str]:
    """``Grip-Last: chan; last-id=ID, chan2; last-id=ID2`` as ``{chan: id}``."""
    if not value:
        return {}
    try:
        items = parse_list([value])
    except GripError as exc:
        logger.warning("ignoring a malformed Grip-Last header %r: %s", value, exc)
        return {}
    return {params[0][0]: dict(params[1:]).get("last-id") or "" for params in items
            if params[0][0]}


def _meta_name(meta_key: str) -> str:
    """``HTTP_META_USER_ID`` → ``user-id``."""
    return meta_key[len("HTTP_META_"):].replace("_", "-").lower()


def _content_type(request: Any) -> str:
    value = getattr(request, "content_type", None)
    if value is None:
        value = request.META.get("CONTENT_TYPE", "")
    return str(value).split(";")[0].strip().lower()


class GripMiddleware:
    """Put ``GRIP`` first (or early) in ``MIDDLEWARE``. Works with sync and async views, under
    WSGI and ASGI."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        early = self.process_request(request)
        response = early if early is not None else self.get_response(request)
        return self.process_response(request, response)

    async def __acall__(self, request: Any) -> Any:
        early = self.process_request(request)
        if early is not None:
            response = early
        else:
            get_response: Callable[[Any], Awaitable[Any]] = self.get_response
            response = await get_response(request)
        return self.process_response(request, response)

    def process_request(self, request: Any) -> HttpResponse | None:
        grip = GripData()
        request.grip = grip
        request.wscontext = None
        request.grip_proxied = False
        request.grip_signed = False

        grip.proxied, grip.signed = is_proxied(request.META.get("HTTP_GRIP_SIG"),
                                               config.proxies())
        feature = request.META.get("HTTP_GRIP_FEATURE")
        if feature:
            grip.features = {f.strip() for f in feature.split(",") if f.strip()}
        grip.last = parse_last(request.META.get("HTTP_GRIP_LAST"))

        if request.method == "POST" and _content_type(request) == wsevents.CONTENT_TYPE:
            meta = {_meta_name(k): v for k, v in request.META.items()
                    if k.startswith("HTTP_META_")}
            try:
                events = wsevents.decode(request.body)
            except GripError as exc:
                logger.warning("bad WebSocket-over-HTTP request body: %s", exc)
                return HttpResponseBadRequest("Error parsing WebSocket events.\n")
            request.wscontext = WebSocketContext(request.META.get("HTTP_CONNECTION_ID"), meta,
                                                 events, grip_prefix=config.prefix())
        request.grip_proxied = grip.proxied
        request.grip_signed = grip.signed
        return None

    def process_response(self, request: Any, response: Any) -> Any:
        wscontext = getattr(request, "wscontext", None)
        if (isinstance(wscontext, WebSocketContext) and response.status_code == 200
                and not response.streaming and len(response.content) == 0):
            return self._websocket_reply(wscontext)
        grip = getattr(request, "grip", None)
        inst = grip.instruct if isinstance(grip, GripData) else None
        if inst is None:
            inst = getattr(response, _RESPONSE_ATTR, None)
        if not isinstance(inst, GripInstruct):
            return response
        if config.proxy_required() and not (isinstance(grip, GripData) and grip.proxied):
            return HttpResponse("Not Implemented\n", status=501)
        if inst.hold and response.status_code == 304:
            # 304 allows only some headers and no body; some servers enforce that, so the
            # proxy is told the intended status instead.
            response.status_code = 200
            response.reason_phrase = "OK"
            response["Grip-Status"] = "304"
        for name, value in inst.headers(config.prefix()):
            response[name] = value
        return response

    @staticmethod
    def _websocket_reply(ws: WebSocketContext) -> HttpResponse:
        response = HttpResponse(ws.reply_body(), content_type=wsevents.CONTENT_TYPE)
        if ws.accepted:
            response["Sec-WebSocket-Extensions"] = "grip"
        for name, value in ws.meta_changes().items():
            response["Set-Meta-" + name] = value
        return response
