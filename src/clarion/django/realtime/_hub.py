"""The hub's server API over HTTP (:mod:`clarion.client`), with clients kept for reuse.

One sync ``Client`` per process: httpx pools keep-alive connections and is safe to share
between threads. An ``AsyncClient`` belongs to the event loop it was first used on, so there is
one per loop (under ASGI that is one; ``async_to_sync`` makes short-lived loops, whose clients
go when the loop does). After ``fork`` the child drops the parent's clients: their sockets
belong to the parent.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import msgspec

from clarion.client import AsyncClient, Client, Command, PublishResult, commands
from clarion.django.conf import RealtimeSettings
from clarion.django.realtime._outgoing import Outgoing
from clarion.errors import HubError


def _command(item: Outgoing) -> Command[Any]:
    data = msgspec.Raw(item.data)
    if item.broadcast:
        return commands.broadcast(item.channels, data, idempotency_key=item.idempotency_key)
    return commands.publish(item.channels[0], data, idempotency_key=item.idempotency_key)


class HubApi:
    def __init__(self, conf: RealtimeSettings) -> None:
        hub = conf.HUB
        self._args: dict[str, Any] = {"api_key": hub.API_KEY, "timeout": hub.TIMEOUT,
                                      "verify": hub.CA_FILE or True}
        self.url = hub.URL
        self._lock = threading.Lock()
        self._sync: Client | None = None
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = (
            weakref.WeakKeyDictionary())

    @property
    def client(self) -> Client:
        with self._lock:
            if self._sync is None:
                self._sync = Client(self.url, **self._args)
            return self._sync

    @property
    def aclient(self) -> AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async.get(loop)
            if client is None:
                client = self._async[loop] = AsyncClient(self.url, **self._args)
            return client

    def close(self) -> None:
        """Close the sync client; async clients are closed on their loops when running."""
        with self._lock:
            sync, self._sync = self._sync, None
            clients = list(self._async.items())
            self._async.clear()
        if sync is not None:
            sync.close()
        for loop, client in clients:
            if loop.is_running() and not loop.is_closed():
                asyncio.run_coroutine_threadsafe(client.aclose(), loop)

    def publish_batch(self, items: Sequence[Outgoing],
                      ) -> list[PublishResult | list[PublishResult] | HubError]:
        """Every item in one ``POST /api/batch``; a result or the error it met per item."""
        if len(items) == 1:
            return [self.client.run(_command(items[0]))]
        return self.client.batch([_command(item) for item in items])

    async def apublish_batch(self, items: Sequence[Outgoing],
                             ) -> list[PublishResult | list[PublishResult] | HubError]:
        if len(items) == 1:
            return [await self.aclient.run(_command(items[0]))]
        return await self.aclient.batch([_command(item) for item in items])

    def ticket(self, user: str, info: Any, channels: Sequence[str], ttl: float | None) -> str:
        return self.client.ticket(user, info=info, channels=channels, ttl=ttl).ticket

    async def aticket(self, user: str, info: Any, channels: Sequence[str],
                      ttl: float | None) -> str:
        return (await self.aclient.ticket(user, info=info, channels=channels, ttl=ttl)).ticket
