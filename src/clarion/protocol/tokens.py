"""Connection and subscription JWTs, checked the way Centrifugo documents them.

Connection token claims: ``sub`` (user id, "" for anonymous), ``exp``, ``info`` or ``b64info``,
``channels`` (server-side subscriptions), ``aud``/``iss`` when configured.
Subscription token claims: ``sub`` (must equal the connection's user), ``channel``, ``exp``,
``info``/``b64info``.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any

import jwt

from clarion.errors import TokenError

_HMAC_ALGS = ("HS256", "HS384", "HS512")
_RSA_ALGS = ("RS256", "RS384", "RS512")
_EC_ALGS = ("ES256", "ES384", "ES512")


@dataclass(frozen=True, slots=True)
class TokenKeys:
    hmac_secret: str = ""
    rsa_public_key: str = ""
    ecdsa_public_key: str = ""
    audience: str = ""
    issuer: str = ""

    @property
    def configured(self) -> bool:
        return bool(self.hmac_secret or self.rsa_public_key or self.ecdsa_public_key)


@dataclass(frozen=True, slots=True)
class ConnectClaims:
    user: str
    expire_at: int  # 0: never
    info: bytes | None  # raw JSON
    channels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SubscribeClaims:
    user: str
    channel: str
    expire_at: int
    info: bytes | None


def _key_for(alg: str, keys: TokenKeys) -> str:
    if alg in _HMAC_ALGS and keys.hmac_secret:
        return keys.hmac_secret
    if alg in _RSA_ALGS and keys.rsa_public_key:
        return keys.rsa_public_key
    if alg in _EC_ALGS and keys.ecdsa_public_key:
        return keys.ecdsa_public_key
    raise TokenError(f"no key configured for algorithm {alg!r}")


def _decode(token: str, keys: TokenKeys) -> dict[str, Any]:
    if not keys.configured:
        raise TokenError("token verification is not configured")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenError(f"malformed token: {exc}") from None
    alg = str(header.get("alg", ""))
    key = _key_for(alg, keys)
    options = {"require": [], "verify_aud": bool(keys.audience), "verify_iss": bool(keys.issuer)}
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=keys.audience or None,
            issuer=keys.issuer or None,
            options=options,  # type: ignore[arg-type]
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired", expired=True) from None
    except jwt.PyJWTError as exc:
        raise TokenError(f"invalid token: {exc}") from None
    return claims


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _info(claims: dict[str, Any]) -> bytes | None:
    # The info is inserted into JSON pushes as it is, so it must be JSON a browser can read:
    # Python's json module would take and write NaN and Infinity, which no other parser does.
    if "b64info" in claims:
        b64info = claims["b64info"]
        if not isinstance(b64info, str):
            raise TokenError("b64info must be a base64 string")
        try:
            value = json.loads(base64.b64decode(b64info, validate=True),
                               parse_constant=_refuse_constant)
            return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        except (ValueError, RecursionError):
            raise TokenError("b64info is not base64 of a JSON value") from None
    if "info" in claims:
        try:
            return json.dumps(claims["info"], separators=(",", ":"), allow_nan=False).encode()
        except (ValueError, RecursionError):
            raise TokenError("info must be a JSON value (no NaN or Infinity)") from None
    return None


def _expire_at(claims: dict[str, Any]) -> int:
    exp = claims.get("expire_at", claims.get("exp", 0))
    # PyJWT reads Infinity and NaN as floats; int() of them raises OverflowError/ValueError.
    if not isinstance(exp, int | float) or not math.isfinite(exp):
        raise TokenError("exp must be a number")
    return int(exp)


def verify_connect_token(token: str, keys: TokenKeys) -> ConnectClaims:
    claims = _decode(token, keys)
    sub = claims.get("sub", "")
    if not isinstance(sub, str):
        raise TokenError("sub must be a string")
    channels = claims.get("channels", [])
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise TokenError("channels must be a list of strings")
    return ConnectClaims(sub, _expire_at(claims), _info(claims), tuple(channels))


def verify_subscribe_token(token: str, keys: TokenKeys) -> SubscribeClaims:
    claims = _decode(token, keys)
    sub = claims.get("sub", "")
    channel = claims.get("channel", "")
    if not isinstance(sub, str) or not isinstance(channel, str) or not channel:
        raise TokenError("subscription token needs string sub and channel claims")
    return SubscribeClaims(sub, channel, _expire_at(claims), _info(claims))


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2
