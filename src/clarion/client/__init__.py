"""The hub's server API from any Python app: ``Client`` (sync) and ``AsyncClient`` (asyncio).

::

    from clarion.client import Client

    with Client("http://127.0.0.1:8000", api_key="…") as hub:
        hub.publish("chat:lobby", {"text": "hi"})      # PublishResult(offset=1, epoch='…')
        ticket = hub.ticket("42").ticket                # a one-time credential for user 42

Every call returns a typed, immutable result, or raises ``HubUnavailable`` (not reached, timed
out, 502/503/504) or ``HubReplyError`` (the hub refused the call), both ``HubError``s from
:mod:`clarion.errors`. Reference: docs/reference/client.md.
"""

from clarion.client import commands
from clarion.client._client import AsyncClient, Client
from clarion.client._results import (
    ClientInfo,
    EventResult,
    HistoryResult,
    NodeInfo,
    PresenceStats,
    Publication,
    PublishResult,
    StreamPosition,
    Ticket,
)
from clarion.client.commands import Command
from clarion.errors import HubError, HubReplyError, HubUnavailable

__all__ = [
    "AsyncClient",
    "Client",
    "ClientInfo",
    "Command",
    "EventResult",
    "HistoryResult",
    "HubError",
    "HubReplyError",
    "HubUnavailable",
    "NodeInfo",
    "PresenceStats",
    "Publication",
    "PublishResult",
    "StreamPosition",
    "Ticket",
    "commands",
]
