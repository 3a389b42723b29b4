"""Connection and subscription JWTs for the hub, signed with
``CLARION["HUB"]["TOKEN_HMAC_SECRET"]``.

The claims are the ones :mod:`clarion.protocol.tokens` verifies (Centrifugo's): ``sub``,
``exp``, ``info``, ``channels`` for a connection; ``sub``, ``channel``, ``exp``, ``info`` for a
subscription. Pure computation: no I/O, so no async twins.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import jwt
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
