"""Issue one ticket for a Django user: straight into Redis, or through the hub.

A ticket names the user's id (``str(user.pk)``, the hub's ``user``), the username and any
extra ``info`` (Centrifugo's connection info: presence, join/leave and publications show it),
and optionally channels the hub subscribes the connection to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from clarion.protocol import tickets

from . import store
from .conf import ticket_settings

__all__ = ["Ticket", "create_ticket", "ticket_info"]


@dataclass(frozen=True, slots=True)
class Ticket:
    ticket: str
    expires_in: float  # seconds

    def __str__(self) -> str:
        return self.ticket


def ticket_info(user: Any, info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"username": …}`` merged with ``info`` (whose keys win)."""
    return {"username": user.get_username(), **(info or {})}


def create_ticket(user: Any, *, info: Mapping[str, Any] | None = None,
                  channels: Iterable[str] = ()) -> Ticket:
    """A one-time ticket for an authenticated ``user``, valid ``REALTIME_TICKET_EXPIRE``
    seconds.

    Raises ValueError for an anonymous user (callers answer 403 before asking),
    ``ConfigError`` for bad settings, ``BrokerError`` when the Redis of
    ``REALTIME_TICKET_REDIS`` fails, and the hub client's errors (``HubError``) otherwise."""
    if user is None or not getattr(user, "is_authenticated", False):
        raise ValueError("tickets are for authenticated users only")
    conf = ticket_settings()
    channel_list = list(channels)
    if conf.redis is None:
        # The CLARION["HUB"] / CLARION["BROKER"] path: the hub's API or its broker's Redis.
        from clarion.django.realtime import issue_ticket

        ticket = issue_ticket(user, info=dict(info or {}), channels=channel_list,
                              ttl=conf.expire)
        return Ticket(ticket, conf.expire)
    ticket = tickets.new_ticket()
    payload = tickets.encode_payload(str(user.pk), info=ticket_info(user, info),
                                     channels=channel_list)
    store.store_ticket(conf.redis, ticket, payload, conf.expire)
    return Ticket(ticket, conf.expire)
