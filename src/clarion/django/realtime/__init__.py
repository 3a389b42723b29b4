"""Talk to the hub from Django: publish (after commit, or durably), presence, history,
disconnect, one-time tickets and JWTs. Settings ``CLARION["HUB"]`` (and ``["BROKER"]`` to
publish straight into the hub's Redis); guide docs/topics/realtime.md, reference
docs/reference/django-realtime.md.

::

    from clarion.django import realtime

    with transaction.atomic():
        order.save()
        realtime.publish(f"orders:{order.customer_id}", {"id": order.id, "state": "paid"})
    # sent now, after the commit; nothing is sent if the block raised

Every call is bounded by ``CLARION["HUB"]["TIMEOUT"]`` and raises ``HubUnavailable`` (the hub
or its broker could not be reached in time) or ``HubReplyError`` (the hub refused the call),
both ``clarion.errors.HubError``. Each function has an ``a…`` twin for async views; the twins
that take a user read it in Django's sync thread (``request.user`` may load it from the
database), so passing ``request.user`` from an async view is safe.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from clarion.client import ClientInfo, HistoryResult, PresenceStats, PublishResult, StreamPosition
from clarion.django.realtime import _coalesce, _routes
from clarion.django.realtime._commit import after_commit
from clarion.django.realtime._outgoing import Outgoing, outgoing
from clarion.django.realtime._tokens import (
    _plain,
    aconnection_token,
    asubscription_token,
    connection_token,
    subscription_token,
)
from clarion.django.realtime._users import identity

__all__ = [
    "abroadcast",
    "aconnection_token",
    "adisconnect",
    "ahistory",
    "aissue_ticket",
    "apresence",
    "apresence_stats",
    "apublish",
    "asubscription_token",
    "broadcast",
    "connection_token",
    "disconnect",
    "history",
    "issue_ticket",
    "presence",
    "presence_stats",
    "publish",
    "subscription_token",
]


# -- publishing ---------------------------------------------------------------------------------


def publish(channel: str, data: Any, *, idempotency_key: str | None = None,
            durable: bool = False, using: str | None = None) -> PublishResult | None:
    """Publish ``data`` (any JSON value) into ``channel``.

    Inside ``transaction.atomic(using=using)`` it is sent after the commit (with the
    transaction's other publications, in one request) and None is returned; a rollback sends
    nothing. Outside a transaction it is sent now and the result (offset and epoch in the
    channel's history) returned. ``durable=True`` writes it to the outbox in the current
    transaction instead (:func:`clarion.django.outbox.publish_durably`) and the worker
    publishes it, at least once, with the idempotency key set; None is returned."""
    if durable:
        _durably([channel], data, idempotency_key, using)
        return None
    item = outgoing(channel, data, idempotency_key, broadcast=False)
    if _queued(item, using):
        return None
    result = _send(item)
    assert isinstance(result, PublishResult)
    return result


def broadcast(channels: Iterable[str], data: Any, *, idempotency_key: str | None = None,
              durable: bool = False, using: str | None = None) -> list[PublishResult] | None:
    """Publish the same ``data`` into each of ``channels`` (one result per channel), with
    :func:`publish`'s rules for transactions and ``durable``."""
    if durable:
        if isinstance(channels, str):
            raise TypeError("broadcast: channels must be a list of channel names, not one str")
        _durably(list(channels), data, idempotency_key, using)
        return None
    item = outgoing(channels, data, idempotency_key, broadcast=True)
    if _queued(item, using):
        return None
    result = _send(item)
    assert isinstance(result, list)
    return result


async def apublish(channel: str, data: Any, *, idempotency_key: str | None = None,
                   durable: bool = False, using: str | None = None) -> PublishResult | None:
    """:func:`publish` for async code. Async code runs outside transactions (Django's
    ``atomic`` is sync-only), so it is sent now; ``durable=True`` writes the outbox row in a
    thread, in autocommit."""
    if durable:
        await _adurably([channel], data, idempotency_key, using)
        return None
    result = await _asend(outgoing(channel, data, idempotency_key, broadcast=False))
    assert isinstance(result, PublishResult)
    return result


async def abroadcast(channels: Iterable[str], data: Any, *, idempotency_key: str | None = None,
                     durable: bool = False,
                     using: str | None = None) -> list[PublishResult] | None:
    """:func:`broadcast` for async code (see :func:`apublish`)."""
    if durable:
        if isinstance(channels, str):
            raise TypeError("broadcast: channels must be a list of channel names, not one str")
        await _adurably(list(channels), data, idempotency_key, using)
        return None
    result = await _asend(outgoing(channels, data, idempotency_key, broadcast=True))
    assert isinstance(result, list)
    return result


def _queued(item: Outgoing, using: str | None) -> bool:
    alias = using or DEFAULT_DB_ALIAS
    if not connections[alias].in_atomic_block:
        return False
    after_commit(item, alias)
    return True


def _send(item: Outgoing) -> PublishResult | list[PublishResult]:
    (result,) = _routes.publisher().publish_batch([item])
    if isinstance(result, Exception):
        raise result
    return result


async def _asend(item: Outgoing) -> PublishResult | list[PublishResult]:
    # Concurrent async publications share batches (see _coalesce).
    result: PublishResult | list[PublishResult] | Exception = await _coalesce.send(
        item, _routes.publisher().apublish_batch)
    if isinstance(result, Exception):
        raise result
    return result


def _durably(channels: list[str], data: Any, idempotency_key: str | None,
             using: str | None) -> None:
    from clarion.django.conf import webhook_settings
    from clarion.django.outbox import publish_durably

    if not channels:
        raise ValueError("broadcast: channels must not be empty")
    # One row per channel, all or none: a bad channel name must not leave the others written.
    with transaction.atomic(using=using or webhook_settings().DATABASE):
        for channel in channels:
            publish_durably(channel, data, idempotency_key=idempotency_key, using=using)


async def _adurably(channels: list[str], data: Any, idempotency_key: str | None,
                    using: str | None) -> None:
    from asgiref.sync import sync_to_async

    await sync_to_async(_durably)(channels, data, idempotency_key, using)


# -- reading and managing ------------------------------------------------------------------------
# Always through the hub's API: presence and connections live in the hub, and history reads
# are the hub's to shape (visible tags, info).


def presence(channel: str) -> dict[str, ClientInfo]:
    """The connections subscribed to ``channel`` (its namespace needs ``presence``)."""
    return _routes.hub().client.presence(channel)


async def apresence(channel: str) -> dict[str, ClientInfo]:
    return await _routes.hub().aclient.presence(channel)


def presence_stats(channel: str) -> PresenceStats:
    """How many connections and distinct users are subscribed to ``channel``."""
    return _routes.hub().client.presence_stats(channel)


async def apresence_stats(channel: str) -> PresenceStats:
    return await _routes.hub().aclient.presence_stats(channel)


def history(channel: str, *, limit: int | None = None, since: StreamPosition | None = None,
            reverse: bool = False) -> HistoryResult:
    """Publications kept in ``channel``'s history (oldest first; newest first with
    ``reverse``), at most ``limit`` (None: the hub's default), after ``since``."""
    return _routes.hub().client.history(channel, limit=limit, since=since, reverse=reverse)


async def ahistory(channel: str, *, limit: int | None = None,
                   since: StreamPosition | None = None, reverse: bool = False) -> HistoryResult:
    return await _routes.hub().aclient.history(channel, limit=limit, since=since,
                                               reverse=reverse)


def disconnect(user: Any, *, code: int | None = None, reason: str | None = None) -> None:
    """Disconnect every connection of ``user`` (a Django user or a user id) on every hub
    node; ``code`` 3000-4999 (3500-3999 and 4500-4999 tell clients not to reconnect)."""
    sub, _ = identity(user, None)
    _routes.hub().client.disconnect(sub, code=code, reason=reason)


async def adisconnect(user: Any, *, code: int | None = None, reason: str | None = None) -> None:
    sub, _ = await _aidentity(user, None)
    await _routes.hub().aclient.disconnect(sub, code=code, reason=reason)


# -- tickets ------------------------------------------------------------------------------------


def issue_ticket(user: Any, *, info: Any = None, channels: Iterable[str] = (),
                 ttl: float | None = None) -> str:
    """A one-time ticket (``tkt_…``) that connects ``user`` once, within ``ttl`` seconds
    (default the hub's ``ticket_ttl``, 10 s). For a Django user the connection's info is
    ``{"username": user.get_username()}`` merged with ``info``; ``channels`` are subscribed
    server-side. Written straight into Redis when ``CLARION["BROKER"]`` is set, else issued by
    the hub's ``POST /api/ticket``."""
    sub, conn_info = identity(user, info)
    return _routes.publisher().ticket(sub, conn_info, _names(channels), ttl)


async def aissue_ticket(user: Any, *, info: Any = None, channels: Iterable[str] = (),
                        ttl: float | None = None) -> str:
    # As aconnection_token: request.user and a queryset of channel names are read in
    # Django's sync thread (on the event loop Django refuses the query).
    if _plain(user, channels):
        sub, conn_info = identity(user, info)
        names = _names(channels)
    else:
        from asgiref.sync import sync_to_async

        sub, conn_info, names = await sync_to_async(_ticket_args)(user, info, channels)
    return await _routes.publisher().aticket(sub, conn_info, names, ttl)


def _ticket_args(user: Any, info: Any, channels: Iterable[str]) -> tuple[str, Any, list[str]]:
    sub, conn_info = identity(user, info)
    return sub, conn_info, _names(channels)


async def _aidentity(user: Any, info: Any) -> tuple[str, Any]:
    # request.user in an async view is lazy: its first read queries the database, which
    # Django refuses on the event loop. An id needs no thread. type(), not isinstance():
    # isinstance reads __class__, which evaluates the lazy object.
    if type(user) in (str, int):
        return identity(user, info)
    from asgiref.sync import sync_to_async

    return await sync_to_async(identity)(user, info)


def _names(channels: Iterable[str]) -> list[str]:
    if isinstance(channels, str):
        raise TypeError("channels must be a list of channel names, not one str")
    return list(channels)
