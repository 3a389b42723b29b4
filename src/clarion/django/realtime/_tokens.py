"""Connection and subscription JWTs for the hub, signed with
``CLARION["HUB"]["TOKEN_HMAC_SECRET"]``.

The claims are the ones :mod:`clarion.protocol.tokens` verifies (Centrifugo's): ``sub``,
``exp``, ``info``, ``channels`` for a connection; ``sub``, ``channel``, ``exp``, ``info`` for a
subscription. Signing is pure computation; the async twins exist because reading the user may
not be: ``request.user`` is a lazy object whose first use loads the session and the user from
the database, which Django refuses on the event loop (``SynchronousOnlyOperation``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import jwt
from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured

from clarion.django.conf import realtime_settings
from clarion.django.realtime._users import identity

DEFAULT_TTL = 3600.0
# A week: a credential that outlives that should be a refreshable session, not a token.
MAX_TTL = 7 * 86400.0


def connection_token(user: Any, *, ttl: float | None = None, channels: Iterable[str] = (),
                     info: Any = None) -> str:
    """A JWT that connects ``user`` (a Django user, ``AnonymousUser`` or a user id) to the hub,
    valid ``ttl`` seconds (default an hour), with ``channels`` subscribed server-side. The
    connection's info is ``{"username": …}`` merged with ``info`` (see :func:`issue_ticket`)."""
    sub, conn_info = identity(user, info)
    claims: dict[str, Any] = {"sub": sub, "exp": _expiry(ttl)}
    if conn_info is not None:
        claims["info"] = conn_info
    names = _channels(channels)
    if names:
        claims["channels"] = names
    return _sign(claims)


def subscription_token(user: Any, channel: str, *, ttl: float | None = None,
                       info: Any = None) -> str:
    """A JWT that lets ``user``'s connection subscribe to ``channel`` (one the hub's namespace
    keeps private: no ``allow_subscribe_for_client``), valid ``ttl`` seconds (default an
    hour). ``info`` (any JSON) is the subscription's info, shown in presence as ``chan_info``."""
    sub, _ = identity(user, None)
    if not isinstance(channel, str) or not channel:
        raise ValueError(f"subscription_token: channel must be a non-empty str, not {channel!r}")
    claims: dict[str, Any] = {"sub": sub, "channel": channel, "exp": _expiry(ttl)}
    if info is not None:
        claims["info"] = info
    return _sign(claims)


async def aconnection_token(user: Any, *, ttl: float | None = None,
                            channels: Iterable[str] = (), info: Any = None) -> str:
    """:func:`connection_token` for async views: ``request.user`` (or a queryset of channel
    names) is read in Django's sync thread, so a database read never blocks the loop."""
    if _plain(user, channels):
        return connection_token(user, ttl=ttl, channels=channels, info=info)
    return await sync_to_async(connection_token)(user, ttl=ttl, channels=channels, info=info)


async def asubscription_token(user: Any, channel: str, *, ttl: float | None = None,
                              info: Any = None) -> str:
    """:func:`subscription_token` for async views (see :func:`aconnection_token`)."""
    if _plain(user, ()):
        return subscription_token(user, channel, ttl=ttl, info=info)
    return await sync_to_async(subscription_token)(user, channel, ttl=ttl, info=info)


def _plain(user: Any, channels: Iterable[str]) -> bool:
    # A user id and a list of names cannot touch the database: no thread hop for them. type(),
    # not isinstance(): isinstance reads __class__, which evaluates a lazy request.user.
    return type(user) in (str, int) and type(channels) in (list, tuple)


def _expiry(ttl: float | None) -> int:
    if ttl is None:
        ttl = DEFAULT_TTL
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"ttl must be seconds (a number), not {type(ttl).__name__}")
    if not (math.isfinite(ttl) and 0 < ttl <= MAX_TTL):
        raise ValueError(f"ttl must be within (0, {MAX_TTL:g}] seconds, not {ttl}")
    # Rounded up: a ttl of 0.5 s must not produce a token that is already expired.
    return math.ceil(time.time() + ttl)


def _channels(channels: Iterable[str]) -> list[str]:
    if isinstance(channels, str):
        raise TypeError("channels must be a list of channel names, not one str")
    names = list(channels)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"channels must be non-empty strs, not {name!r}")
    return names


def _sign(claims: dict[str, Any]) -> str:
    secret = realtime_settings().HUB.TOKEN_HMAC_SECRET
    if secret is None:
        raise ImproperlyConfigured(
            "CLARION['HUB']['TOKEN_HMAC_SECRET'] is not set: tokens are signed with the "
            "hub's token_hmac_secret")
    try:
        return jwt.encode(claims, secret, algorithm="HS256")
    except TypeError as exc:
        raise TypeError(f"the token's info is not JSON: {exc}") from exc
