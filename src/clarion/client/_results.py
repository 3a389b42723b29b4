"""What the server API's calls return, as immutable typed values.

The shapes are Centrifugo's (``docs/topics/server-api.md``); fields the hub leaves out of its
JSON (zero offsets, empty epochs of channels without history) take their zero values here.
Message data (``data``, ``info``) is whatever JSON the publisher sent, decoded as Python values.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "ClientInfo",
    "EventResult",
    "HistoryResult",
    "NodeInfo",
    "PresenceStats",
    "Publication",
    "PublishResult",
    "StreamPosition",
    "Ticket",
]


# Every result is a frozen, keyword-only Struct. Unknown fields are ignored when decoding: a
# newer hub may add some without breaking older clients.


class StreamPosition(msgspec.Struct, frozen=True, kw_only=True):
    """A place in a channel's history: ``offset`` within the stream whose id is ``epoch``."""

    offset: int = 0
    epoch: str = ""


class PublishResult(msgspec.Struct, frozen=True, kw_only=True):
    """Where a publication went in its channel's history. A channel without history answers
    ``offset=0, epoch=""``."""

    offset: int = 0
    epoch: str = ""


class ClientInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One connection in a channel's presence (or a publication's ``info``): its client id,
    its user id and the JSON its credential gave (``conn_info``) and its subscription gave
    (``chan_info``), None when absent."""

    client: str
    user: str = ""
    conn_info: Any = None
    chan_info: Any = None


class PresenceStats(msgspec.Struct, frozen=True, kw_only=True):
    num_clients: int = 0
    num_users: int = 0


class Publication(msgspec.Struct, frozen=True, kw_only=True):
    """One message of a channel's history."""

    data: Any = None
    offset: int = 0
    info: ClientInfo | None = None
    tags: dict[str, str] = msgspec.field(default_factory=dict)


class HistoryResult(msgspec.Struct, frozen=True, kw_only=True):
    """A page of history and the stream's current position (``offset`` is the latest
    publication's, ``epoch`` the stream's id; pass them back as ``since`` to continue)."""

    publications: list[Publication] = msgspec.field(default_factory=list)
    offset: int = 0
    epoch: str = ""


class NodeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One hub process, as ``info`` reports it."""

    uid: str
    name: str = ""
    version: str = ""
    num_clients: int = 0
    num_users: int = 0
    num_channels: int = 0
    num_subs: int = 0
    uptime: int = 0


class Ticket(msgspec.Struct, frozen=True, kw_only=True):
    """A one-time connection credential (``tkt_…``): hand it to one browser, which connects
    with it once within ``expires_in`` seconds."""

    ticket: str
    expires_in: float


class EventResult(msgspec.Struct, frozen=True, kw_only=True):
    """An event sent to webhook listeners: its id (``msg_…``, the receivers' ``webhook-id``),
    the deliveries it created, and where it went in the channel when one was given."""

    id: str
    deliveries: int = 0
    publication: PublishResult | None = None
