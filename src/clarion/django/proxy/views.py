"""The six proxy views: ``POST`` with Centrifugo's proxy request body, answered with its
response body (docs/topics/django-proxy.md has every answer).

HTTP status codes are about the call itself, the JSON about the client:

* 200: a protocol answer (``result``, ``error`` or ``disconnect``), also a refusal;
* 400 ``{"detail": …}``: the body is not JSON or not the proxy request's shape;
* 403 ``{"detail": …}``: the caller is not the hub (secret or address), or nothing can be
  (neither configured: the views fail closed);
* 405: not a POST; 413: a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE``;
* 500 with ``{"error": {"code": 100, …, "temporary": true}}``: the project's code raised;
  logged with the traceback on ``clarion.django.proxy`` (and Django's
  ``got_request_exception`` is sent, so error reporters see it). The hub answers the client
  with its internal error either way.

Nothing here logs a header value: the hub forwards the user's cookies.

The views are plain synchronous functions: they run in gunicorn's sync and threaded workers,
and under ASGI Django runs them in its thread pool (the ORM and sessions are synchronous).
They are CSRF-exempt because the caller is a server, not a browser; the hub is authenticated
instead (see :func:`_refusal`).
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import wraps
from typing import Any, cast

from django.core import signals
from django.core.exceptions import RequestDataTooBig
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from clarion.errors import Disconnect, ReplyError

from . import permissions, publishing, rpc
from ._wire import (
    BadRequest,
    ConnectRequest,
    PublishRequest,
    RefreshRequest,
    RPCRequest,
    SubRefreshRequest,
    SubscribeRequest,
    decode,
    disconnect,
    error,
    payload,
)
from .calls import Call, hub_user, session_user
from .conf import ProxySettings, imported, proxy_settings

__all__ = ["connect", "publish", "refresh", "rpc_call", "sub_refresh", "subscribe"]

log = logging.getLogger("clarion.django.proxy")

# Centrifugo's advice for a connection that is not authenticated: a terminal disconnect
# (4500-4999), so the SDK does not reconnect in a loop; the page reloads after a login anyway.
UNAUTHORIZED = (4501, "unauthorized")
PERMISSION_DENIED = (103, "permission denied")
METHOD_NOT_FOUND = (104, "method not found")
# A refresh answer needs a new expiry; without CONNECT_TTL/SUBSCRIBE_TTL this one is used.
DEFAULT_REFRESH_TTL = 3600.0
CONNECT_HOOK_KEYS = frozenset({"info", "data", "channels", "subs", "meta", "expire_at"})

Handler = Callable[[HttpRequest, Any, ProxySettings], dict[str, Any]]


def _detail(status: int, message: str) -> JsonResponse:
    response = JsonResponse({"detail": message}, status=status)
    response["Cache-Control"] = "no-store"
    return response


def _refusal(request: HttpRequest, conf: ProxySettings) -> JsonResponse | None:
    """None when the caller is the hub; else the 403 to send.

    The user is authenticated by the session cookie in the request; the *caller* must be the
    hub, or anyone could name any user id to the other proxies (and call RPC methods as that
    user). Two checks, each optional, both applied when both are set: a shared secret in a
    header the hub adds to every proxy request, and the caller's address (``REMOTE_ADDR``,
    never a forwarded header, which the caller writes)."""
    if not conf.guarded:
        log.error("proxy call to %s refused: CLARION['PROXY'] sets neither SECRET nor "
                  "ALLOWED_NETWORKS, so the hub cannot be told from anyone else", request.path)
        return _detail(403, "the proxy views are not configured: set CLARION['PROXY']"
                            "['SECRET'] or ['ALLOWED_NETWORKS']")
    address = request.META.get("REMOTE_ADDR", "")
    if conf.ALLOWED_NETWORKS and not _address_allowed(address, conf):
        log.warning("proxy call to %s refused: %s is not in CLARION['PROXY']"
                    "['ALLOWED_NETWORKS']", request.path, address)
        return _detail(403, "this address may not call the proxy views")
    if conf.SECRET is not None:
        given = request.headers.get(conf.SECRET_HEADER)
        if given is None or not hmac.compare_digest(given.encode(), conf.SECRET.encode()):
            log.warning("proxy call to %s from %s refused: the %s header is %s", request.path,
                        address, conf.SECRET_HEADER, "missing" if given is None else "wrong")
            return _detail(403, f"missing or wrong {conf.SECRET_HEADER} header")
    return None


def _address_allowed(address: str, conf: ProxySettings) -> bool:
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return False  # a Unix socket or no address: not a network the setting names
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in conf.ALLOWED_NETWORKS)


def _endpoint(kind: str, shape: type[Any]) -> Callable[[Handler], Callable[..., HttpResponse]]:
    def decorate(handler: Handler) -> Callable[..., HttpResponse]:
        @wraps(handler)
        def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method != "POST":
                response = _detail(405, f"method {request.method} not allowed; the hub POSTs")
                response["Allow"] = "POST"
                return response
            conf = proxy_settings()
            refused = _refusal(request, conf)
            if refused is not None:
                return refused
            try:
                body = request.body
            except RequestDataTooBig:
                return _detail(413, "the request body is over DATA_UPLOAD_MAX_MEMORY_SIZE")
            proxied: Any = None
            try:
                proxied = decode(body, shape)
                try:
                    answer = handler(request, proxied, conf)
                except ReplyError as exc:
                    answer = error(exc.code, exc.message, exc.temporary)
                except Disconnect as exc:
                    answer = disconnect(exc.code, exc.reason)
                # Encoded here, so a value JSON cannot carry (an RPC method returning a model
                # instance) is the project's failure like any other, logged below.
                response = JsonResponse(answer, encoder=DjangoJSONEncoder)
            except BadRequest as exc:
                return _detail(400, str(exc))
            except Exception:
                # Only ids in the message: the request's headers carry the user's cookies.
                log.exception("%s proxy failed (client %s, user %r)", kind,
                              getattr(proxied, "client", "?"), getattr(proxied, "user", "?"))
                signals.got_request_exception.send(sender=None, request=request)
                response = JsonResponse(error(100, "internal server error", temporary=True),
                                        status=500)
            response["Cache-Control"] = "no-store"
            return response
        # A server calls, not a browser: the hub is authenticated by _refusal instead.
        return cast(Callable[..., HttpResponse], csrf_exempt(view))
    return decorate


def _expiry(ttl: float | None, default: float | None = None) -> int | None:
    seconds = ttl if ttl is not None else default
    return None if seconds is None else int(time.time() + seconds)


def _known(request: HttpRequest, user_id: str, conf: ProxySettings) -> Any | None:
    """The hub's user, or None when refused (gone, inactive, logged out, or anonymous while
    anonymous connections are not allowed)."""
    user = hub_user(request, user_id)
    if user is None or (not user.is_authenticated and not conf.ALLOW_ANONYMOUS):
        return None
    return user


@_endpoint("connect", ConnectRequest)
def connect(request: HttpRequest, proxied: ConnectRequest, conf: ProxySettings
            ) -> dict[str, Any]:
    user = session_user(request)
    result: dict[str, Any]
    if user.is_authenticated:
        result = {"user": str(user.pk), "info": {"username": user.get_username()}}
    elif conf.ALLOW_ANONYMOUS:
        result = {"user": ""}
    else:
        log.debug("connect of client %s refused: no logged-in session", proxied.client)
        return disconnect(*UNAUTHORIZED)
    expire_at = _expiry(conf.CONNECT_TTL)
    if expire_at is not None:
        result["expire_at"] = expire_at
    call = Call("connect", request, user, proxied.client, proxied.transport,
                data=payload(proxied), meta=proxied.meta)
    channels: list[str] = []
    subs: dict[str, Any] = {}
    for channel in dict.fromkeys(proxied.channels):  # once each, in the client's order
        granted = permissions.allowed(replace(call, kind="subscribe", channel=channel,
                                              data=None))
        if granted is None:
            continue
        options = {k: v for k, v in granted.items() if k in ("info", "b64info", "data",
                                                              "b64data", "override")}
        if options:
            subs[channel] = options
        else:
            channels.append(channel)
    if channels:
        result["channels"] = channels
    if subs:
        result["subs"] = subs
    if conf.CONNECT_INFO is not None:
        hook = imported(conf.CONNECT_INFO, "CLARION['PROXY']['CONNECT_INFO']")
        _merge_connect_hook(result, hook(call), conf.CONNECT_INFO)
    return {"result": result}


def _merge_connect_hook(result: dict[str, Any], extra: Any, where: str) -> None:
    if extra is None:
        return
    if not isinstance(extra, Mapping):
        raise TypeError(f"CONNECT_INFO {where} returned {type(extra).__name__}; expected a "
                        f"dict with some of {sorted(CONNECT_HOOK_KEYS)} or None")
    unknown = set(extra) - CONNECT_HOOK_KEYS
    if unknown:
        raise TypeError(f"CONNECT_INFO {where} returned unknown keys {sorted(unknown)}; "
                        f"known: {sorted(CONNECT_HOOK_KEYS)}")
    for key, value in extra.items():
        if key == "info" and isinstance(value, Mapping) and isinstance(result.get("info"), dict):
            result["info"] = {**result["info"], **value}  # the hook's keys win
        elif key == "channels":
            result["channels"] = list(dict.fromkeys([*result.get("channels", []), *value]))
        elif key == "subs":
            result["subs"] = {**result.get("subs", {}), **value}
        elif key == "expire_at" and value is None:
            result.pop("expire_at", None)
        else:
            result[key] = value


@_endpoint("refresh", RefreshRequest)
def refresh(request: HttpRequest, proxied: RefreshRequest, conf: ProxySettings
            ) -> dict[str, Any]:
    if _known(request, proxied.user, conf) is None:
        log.info("connection of client %s (user %r) not extended: the user is gone, "
                 "inactive or logged out", proxied.client, proxied.user)
        return {"result": {"expired": True}}
    return {"result": {"expire_at": _expiry(conf.CONNECT_TTL, DEFAULT_REFRESH_TTL)}}


@_endpoint("subscribe", SubscribeRequest)
def subscribe(request: HttpRequest, proxied: SubscribeRequest, conf: ProxySettings
              ) -> dict[str, Any]:
    user = _known(request, proxied.user, conf)
    if user is None:
        return error(*PERMISSION_DENIED)
    call = Call("subscribe", request, user, proxied.client, proxied.transport,
                channel=proxied.channel, data=payload(proxied), meta=proxied.meta)
    result = permissions.allowed(call)
    if result is None:
        return error(*PERMISSION_DENIED)
    if "expire_at" not in result:
        expire_at = _expiry(conf.SUBSCRIBE_TTL)
        if expire_at is not None:
            result["expire_at"] = expire_at
    return {"result": result}


@_endpoint("sub_refresh", SubRefreshRequest)
def sub_refresh(request: HttpRequest, proxied: SubRefreshRequest, conf: ProxySettings
                ) -> dict[str, Any]:
    user = _known(request, proxied.user, conf)
    granted: dict[str, Any] | None = None
    if user is not None:
        call = Call("sub_refresh", request, user, proxied.client, proxied.transport,
                    channel=proxied.channel, meta=proxied.meta)
        try:
            granted = permissions.allowed(call)
        except (ReplyError, Disconnect):
            granted = None  # the protocol has no error answer for sub_refresh: it ends
    if granted is None:
        log.info("subscription of client %s (user %r) to %s not extended", proxied.client,
                 proxied.user, proxied.channel)
        return {"result": {"expired": True}}
    result = {k: v for k, v in granted.items() if k in ("info", "b64info", "expire_at")}
    result.setdefault("expire_at", _expiry(conf.SUBSCRIBE_TTL, DEFAULT_REFRESH_TTL))
    return {"result": result}


@_endpoint("publish", PublishRequest)
def publish(request: HttpRequest, proxied: PublishRequest, conf: ProxySettings
            ) -> dict[str, Any]:
    user = _known(request, proxied.user, conf)
    if user is None:
        return error(*PERMISSION_DENIED)
    call = Call("publish", request, user, proxied.client, proxied.transport,
                channel=proxied.channel, data=payload(proxied), meta=proxied.meta)
    result = publishing.outcome(call)
    if result is None:
        return error(*PERMISSION_DENIED)
    return {"result": result}


@_endpoint("rpc", RPCRequest)
def rpc_call(request: HttpRequest, proxied: RPCRequest, conf: ProxySettings
             ) -> dict[str, Any]:
    user = _known(request, proxied.user, conf)
    if user is None:
        return error(*PERMISSION_DENIED)
    found = rpc.find(proxied.method)
    if found is None:
        return error(*METHOD_NOT_FOUND)
    if found.login_required and not user.is_authenticated:
        return error(*PERMISSION_DENIED)
    call = Call("rpc", request, user, proxied.client, proxied.transport,
                method=proxied.method, data=payload(proxied), meta=proxied.meta)
    data = found.function(call)
    if isinstance(data, bytes | bytearray):
        return {"result": {"b64data": base64.b64encode(data).decode()}}
    return {"result": {"data": data}}
