"""The server API's calls as values: what to send and how to read the answer, without I/O.

``Client`` and ``AsyncClient`` run one command per request; ``batch`` sends several in one
request (``POST /api/batch``), built with these same functions::

    from clarion.client import Client, commands

    with Client("http://127.0.0.1:8000", api_key="…") as hub:
        first, stats = hub.batch([commands.publish("news", {"n": 1}),
                                  commands.presence_stats("chat:lobby")])

Arguments are checked here, before anything is sent: a wrong type is a ``TypeError`` and a value
out of range a ``ValueError``, each naming the argument. The hub checks the rest (unknown
namespaces, sizes) and answers with an error the client raises as ``HubReplyError``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from clarion.client._results import (
    ClientInfo,
    EventResult,
    HistoryResult,
    NodeInfo,
    PresenceStats,
    PublishResult,
    StreamPosition,
    Ticket,
)
from clarion.errors import HubReplyError

__all__ = [
    "Command",
    "broadcast",
    "channels",
    "disconnect",
    "event",
    "history",
    "history_remove",
    "info",
    "presence",
    "presence_stats",
    "publish",
    "refresh",
    "subscribe",
    "ticket",
    "unsubscribe",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Command(Generic[T]):
    """One server API call: ``method`` (the path after ``/api/``), its JSON ``body`` and
    ``parse``, which turns the answer's result (raw JSON) into the typed value."""

    method: str
    body: bytes
    parse: Callable[[bytes], T]


class _Empty(msgspec.Struct):
    pass


class _Presence(msgspec.Struct):
    presence: dict[str, ClientInfo] = {}


class _ChannelInfo(msgspec.Struct):
    num_clients: int = 0


class _Channels(msgspec.Struct):
    channels: dict[str, _ChannelInfo] = {}


class _Nodes(msgspec.Struct):
    nodes: list[NodeInfo] = []


class _ApiError(msgspec.Struct):
    code: int = 0
    message: str = ""


class _BroadcastReply(msgspec.Struct):
    result: PublishResult | None = None
    error: _ApiError | None = None


class _Broadcast(msgspec.Struct):
    responses: list[_BroadcastReply] = []


_encoder = msgspec.json.Encoder()


def _parser(kind: type[Any]) -> Callable[[bytes], Any]:
    decoder = msgspec.json.Decoder(kind)
    return decoder.decode


def _none(raw: bytes) -> None:
    msgspec.json.decode(raw, type=_Empty)


def _body(method: str, fields: dict[str, Any]) -> bytes:
    try:
        return _encoder.encode({k: v for k, v in fields.items() if v is not None})
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(f"{method}: the arguments cannot be sent as JSON: {exc}") from exc


def _text(method: str, name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{method}: {name} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{method}: {name} must not be empty")
    return value


def _optional_text(method: str, name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{method}: {name} must be a str or None, not {type(value).__name__}")
    return value or None


def _texts(method: str, name: str, values: Iterable[str]) -> list[str]:
    # A bare string is iterable too, and would quietly become one channel per character.
    if isinstance(values, str | bytes):
        raise TypeError(f"{method}: {name} must be a list of str, not a single "
                        f"{type(values).__name__}")
    return [_text(method, f"each of {name}", value) for value in values]


def _position(method: str, name: str, value: StreamPosition | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, StreamPosition):
        raise TypeError(f"{method}: {name} must be a StreamPosition, not "
                        f"{type(value).__name__}")
    return {"offset": value.offset, "epoch": value.epoch}


def _tags(method: str, tags: Mapping[str, str] | None) -> dict[str, str] | None:
    if not tags:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise TypeError(f"{method}: tags must map str to str")
    return dict(tags)


# -- publishing ---------------------------------------------------------------------------------


def publish(channel: str, data: Any, *, idempotency_key: str | None = None,
            skip_history: bool = False,
            tags: Mapping[str, str] | None = None) -> Command[PublishResult]:
    """Publish ``data`` (any JSON value; ``msgspec.Raw`` for JSON already encoded) into
    ``channel``. With an ``idempotency_key`` the hub publishes a key into a channel once
    within 300 s and answers a repeat with the first result."""
    body = _body("publish", {
        "channel": _text("publish", "channel", channel), "data": data,
        "idempotency_key": _optional_text("publish", "idempotency_key", idempotency_key),
        "skip_history": skip_history or None, "tags": _tags("publish", tags)})
    return Command("publish", body, _parser(PublishResult))


def _broadcast_results(names: list[str], raw: bytes) -> list[PublishResult]:
    results: list[PublishResult] = []
    replies = msgspec.json.decode(raw, type=_Broadcast).responses
    for name, reply in zip(names, replies, strict=False):
        if reply.error is not None:
            raise HubReplyError(reply.error.code,
                                f"broadcast to {name!r} failed: {reply.error.message} (the "
                                f"other channels were still tried)")
        results.append(reply.result or PublishResult())
    if len(replies) != len(names):
        raise msgspec.ValidationError(f"{len(replies)} results for {len(names)} channels")
    return results


def broadcast(channels: Iterable[str], data: Any, *, idempotency_key: str | None = None,
              skip_history: bool = False,
              tags: Mapping[str, str] | None = None) -> Command[list[PublishResult]]:
    """Publish the same ``data`` into each of ``channels``, in order; one result per channel.
    A channel that fails raises ``HubReplyError`` naming it; the other channels were still
    tried, so repeat a broadcast only with an ``idempotency_key``."""
    names = _texts("broadcast", "channels", channels)
    if not names:
        raise ValueError("broadcast: channels must not be empty")
    body = _body("broadcast", {
        "channels": names, "data": data,
        "idempotency_key": _optional_text("broadcast", "idempotency_key", idempotency_key),
        "skip_history": skip_history or None, "tags": _tags("broadcast", tags)})
    return Command("broadcast", body, functools.partial(_broadcast_results, names))


# -- a user's connections -----------------------------------------------------------------------


def subscribe(user: str, channel: str, *, info: Any = None, data: Any = None,
              client: str | None = None, session: str | None = None,
              recover_since: StreamPosition | None = None,
              override: Mapping[str, Any] | None = None) -> Command[None]:
    """Subscribe every connection of ``user`` (or only ``client``/``session``) to ``channel``,
    on every hub node. ``info`` becomes the subscription's presence info, ``data`` is sent to
    the client with the subscribe push."""
    body = _body("subscribe", {
        "user": _text("subscribe", "user", user),
        "channel": _text("subscribe", "channel", channel), "info": info, "data": data,
        "client": _optional_text("subscribe", "client", client),
        "session": _optional_text("subscribe", "session", session),
        "recover_since": _position("subscribe", "recover_since", recover_since),
        "override": dict(override) if override else None})
    return Command("subscribe", body, _none)


def unsubscribe(user: str, channel: str, *, client: str | None = None,
                session: str | None = None) -> Command[None]:
    """Unsubscribe every connection of ``user`` (or only ``client``/``session``) from
    ``channel``, on every hub node."""
    body = _body("unsubscribe", {
        "user": _text("unsubscribe", "user", user),
        "channel": _text("unsubscribe", "channel", channel),
        "client": _optional_text("unsubscribe", "client", client),
        "session": _optional_text("unsubscribe", "session", session)})
    return Command("unsubscribe", body, _none)


def disconnect(user: str, *, code: int | None = None, reason: str | None = None,
               client: str | None = None, session: str | None = None,
               whitelist: Iterable[str] = ()) -> Command[None]:
    """Close every connection of ``user`` (or only ``client``/``session``; never those whose
    client id is in ``whitelist``) with ``code`` (3000-4999; default 3503, which tells clients
    not to reconnect) and ``reason``."""
    if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
        raise TypeError(f"disconnect: code must be an int, not {type(code).__name__}")
    if code is not None and not 3000 <= code <= 4999:
        raise ValueError(f"disconnect: code must be within 3000-4999, not {code}")
    model: dict[str, Any] | None = None
    if code is not None or reason is not None:
        model = {"code": 3503 if code is None else code,
                 "reason": "force disconnect" if reason is None else reason}
    body = _body("disconnect", {
        "user": _text("disconnect", "user", user),
        "client": _optional_text("disconnect", "client", client),
        "session": _optional_text("disconnect", "session", session),
        "whitelist": _texts("disconnect", "whitelist", whitelist) or None,
        "disconnect": model})
    return Command("disconnect", body, _none)


def refresh(user: str, *, client: str | None = None, session: str | None = None,
            expired: bool = False, expire_at: int | None = None) -> Command[None]:
    """Extend the connections of ``user`` to ``expire_at`` (Unix seconds), or end them
    (``expired=True``), as a new credential would."""
    if expire_at is not None and (isinstance(expire_at, bool) or not isinstance(expire_at, int)
                                  or expire_at < 0):
        raise ValueError(f"refresh: expire_at must be Unix seconds (an int >= 0), "
                         f"not {expire_at!r}")
    body = _body("refresh", {
        "user": _text("refresh", "user", user),
        "client": _optional_text("refresh", "client", client),
        "session": _optional_text("refresh", "session", session),
        "expired": expired or None, "expire_at": expire_at or None})
    return Command("refresh", body, _none)


# -- reading ------------------------------------------------------------------------------------


def _presence(raw: bytes) -> dict[str, ClientInfo]:
    return msgspec.json.decode(raw, type=_Presence).presence


def presence(channel: str) -> Command[dict[str, ClientInfo]]:
    """Who is in ``channel``: client id to ``ClientInfo``, across every node. The channel's
    namespace must have ``presence = true``, else the hub answers 108 not available."""
    return Command("presence", _body("presence", {"channel": _text("presence", "channel",
                                                                    channel)}), _presence)


def presence_stats(channel: str) -> Command[PresenceStats]:
    """How many connections and distinct users are in ``channel``."""
    return Command("presence_stats", _body("presence_stats", {
        "channel": _text("presence_stats", "channel", channel)}), _parser(PresenceStats))


def history(channel: str, *, limit: int | None = None, since: StreamPosition | None = None,
            reverse: bool = False) -> Command[HistoryResult]:
    """Up to ``limit`` publications of ``channel`` kept in history (None: as many as the hub
    keeps), after ``since`` when given, newest first with ``reverse``. ``limit=0`` asks for the
    stream position only. A ``since`` from another epoch raises ``HubReplyError`` 112
    (unrecoverable position): the history was lost, start over from the result's position."""
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"history: limit must be an int, not {type(limit).__name__}")
        if limit < 0:
            raise ValueError(f"history: limit must be >= 0, not {limit}")
    body = _body("history", {
        "channel": _text("history", "channel", channel),
        # Centrifugo reads limit 0 as "position only" and -1 as "all": None is the latter.
        "limit": -1 if limit is None else limit,
        "since": _position("history", "since", since), "reverse": reverse or None})
    return Command("history", body, _parser(HistoryResult))


def history_remove(channel: str) -> Command[None]:
    """Drop ``channel``'s history; its stream position is kept."""
    return Command("history_remove", _body("history_remove", {
        "channel": _text("history_remove", "channel", channel)}), _none)


def _channels(raw: bytes) -> dict[str, int]:
    found = msgspec.json.decode(raw, type=_Channels).channels
    return {name: entry.num_clients for name, entry in found.items()}


def channels(pattern: str | None = None) -> Command[dict[str, int]]:
    """Channels with at least one subscriber on any node, to their subscriber count;
    ``pattern`` filters names with a shell-style glob (``*``, ``?``, ``[…]``)."""
    return Command("channels", _body("channels", {
        "pattern": _optional_text("channels", "pattern", pattern)}), _channels)


def _nodes(raw: bytes) -> list[NodeInfo]:
    return msgspec.json.decode(raw, type=_Nodes).nodes


def info() -> Command[list[NodeInfo]]:
    """Every hub node that answered within the hub's ``survey_timeout``, the answering one
    first."""
    return Command("info", b"{}", _nodes)


# -- Clarion's own ------------------------------------------------------------------------------


def ticket(user: str, *, info: Any = None, channels: Iterable[str] = (),
           ttl: float | None = None) -> Command[Ticket]:
    """A one-time ticket that connects as ``user`` once, with ``info`` (any JSON) as its
    connection info and ``channels`` subscribed server-side. ``ttl`` in seconds (default the
    hub's ``ticket_ttl``) must be within the hub's ``ticket_max_ttl``."""
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise TypeError(f"ticket: ttl must be seconds (a number), not {type(ttl).__name__}")
        if not (math.isfinite(ttl) and ttl > 0):
            raise ValueError(f"ticket: ttl must be a number of seconds > 0, not {ttl}")
    body = _body("ticket", {
        "user": _text("ticket", "user", user), "info": info,
        "channels": _texts("ticket", "channels", channels) or None, "ttl": ttl})
    return Command("ticket", body, _parser(Ticket))


def event(type: str, data: Any, *, channel: str | None = None,
          idempotency_key: str | None = None) -> Command[EventResult]:
    """Send one event of ``type`` to the webhook listeners subscribed to it and, with
    ``channel``, publish the webhook's body (``{"type", "timestamp", "data"}``, byte for byte
    what the listeners get) into that channel, under the event's id as the idempotency key.
    The hub needs its webhook store (``serve --webhooks-db``) and ``type`` must be a
    registered event type."""
    body = _body("event", {
        "type": _text("event", "type", type), "data": data,
        "channel": _optional_text("event", "channel", channel),
        "idempotency_key": _optional_text("event", "idempotency_key", idempotency_key)})
    return Command("event", body, _parser(EventResult))
