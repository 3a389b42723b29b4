"""One-time tickets: the one definition the hub and the Django tickets app share.

A ticket is ``tkt_`` followed by 43 URL-safe characters (32 random bytes). Its payload is
compact JSON, ``{"user": "<id>", "info": <any JSON>?, "channels": ["…"]?}``: the user id the
connection gets, the ``info`` presence shows (Centrifugo's connection info), and channels the
connection is subscribed to server-side. With the Redis broker the payload is stored under
``<prefix>:ticket:<ticket>`` (prefix ``clarion`` by default) with ``SET … NX PX`` and read once
with ``GETDEL``; anything that writes that key in this format issues a ticket the hub accepts.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any

import msgspec

PREFIX = "tkt_"
_ENTROPY = 32  # bytes: as many as a session key, far beyond guessing within a ticket's seconds


def new_ticket() -> str:
    """A fresh ticket string (``tkt_…``)."""
    return PREFIX + secrets.token_urlsafe(_ENTROPY)


def is_ticket(token: str) -> bool:
    """Whether a connection credential is a ticket (rather than a JWT or a resume token)."""
    return token.startswith(PREFIX)


def ticket_key(ticket: str, prefix: str = "clarion") -> str:
    """The Redis key the hub's Redis broker keeps ``ticket`` under (its ``key_prefix``)."""
    return f"{prefix}:ticket:{ticket}"


def encode_payload(user: str, *, info: Any = None, channels: Iterable[str] = ()) -> bytes:
    """The stored value: ``info`` is any JSON value (or pre-encoded JSON as ``msgspec.Raw``);
    it is left out when None, as ``channels`` is when empty."""
    payload: dict[str, Any] = {"user": str(user)}
    if info is not None:
        payload["info"] = info
    channel_list = list(channels)
    if channel_list:
        payload["channels"] = channel_list
    return msgspec.json.encode(payload)


class TicketPayload(msgspec.Struct, frozen=True):
    user: str = ""
    # Raw keeps the app's JSON byte for byte; msgspec cannot put Raw in a union with None,
    # so an absent (or null) info is an empty Raw, read through ``info_json``.
    info: msgspec.Raw = msgspec.Raw(b"")
    channels: tuple[str, ...] = ()

    @property
    def info_json(self) -> bytes | None:
        """The connection info as JSON bytes, or None when the ticket carries none."""
        raw = bytes(self.info)
        return None if raw in (b"", b"null") else raw


def decode_payload(data: bytes) -> TicketPayload:
    """Read a stored value; a payload that is not this shape raises ``msgspec.DecodeError``
    or ``msgspec.ValidationError`` (the hub refuses the ticket)."""
    return msgspec.json.decode(data, type=TicketPayload)
