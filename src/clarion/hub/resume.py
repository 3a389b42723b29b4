"""Resume tokens (``ses_…``) for the unidirectional transports.

A one-time ticket cannot be presented twice, yet EventSource, streams and long-polls reconnect.
After the first authentication the hub hands out a short-lived token signed with its own key
that stands for the same user; it authenticates nothing but these transports' reconnects.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import msgspec

from clarion.errors import Disconnect
from clarion.protocol import codes


@dataclass(frozen=True, slots=True)
class ResumeClaims:
    user: str
    info: bytes | None
    channels: tuple[str, ...]
    expire_at: int  # the original credential's expiry, 0 for none


class _Payload(msgspec.Struct):
    u: str
    e: int
    i: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    c: list[str] = []
    x: int = 0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ResumeSigner:
    def __init__(self, secret: str, ttl: float) -> None:
        # Derived from the token secret when there is one, so every hub process of a
        # deployment accepts the others' resume tokens; random otherwise.
        base = secret.encode() if secret else secrets.token_bytes(32)
        self._key = hmac.new(base, b"clarion resume token v1", hashlib.sha256).digest()
        self.ttl = ttl

    def issue(self, user: str, info: bytes | None, channels: tuple[str, ...],
              expire_at: int = 0) -> str:
        payload: dict[str, object] = {"u": user, "e": int(time.time() + self.ttl),
                                      "c": list(channels), "x": expire_at}
        if info is not None:
            payload["i"] = msgspec.Raw(info)
        body = _b64(msgspec.json.encode(payload))
        sig = _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())
        return f"ses_{body}.{sig}"

    def verify(self, token: str) -> ResumeClaims:
        body, _, sig = token.partition(".")
        expected = _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())
        if not sig or not hmac.compare_digest(sig, expected):
            raise Disconnect(*codes.INVALID_TOKEN)
        try:
            payload = msgspec.json.decode(_unb64(body), type=_Payload)
        except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
            raise Disconnect(*codes.INVALID_TOKEN) from None
        if payload.e < time.time():
            raise Disconnect(*codes.EXPIRED)
        info = bytes(payload.i) or None
        if payload.x and payload.x < time.time():
            # A resume token never outlives the credential it stands for.
            raise Disconnect(*codes.EXPIRED)
        return ResumeClaims(payload.u, info, tuple(payload.c), payload.x)
