"""The in-process broker: everything lives in this process's memory (the default).

Streams, presence and tickets expire lazily on access plus a periodic sweep, so an idle hub
does no work and a busy one never holds expired data for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from clarion.broker.base import (
    Broker,
    BrokerEventHandler,
    ClientInfo,
    HistoryResult,
    Publication,
    PublishOptions,
    PublishResult,
    StreamPosition,
)
from clarion.errors import BrokerError

log = logging.getLogger("clarion.broker")


def new_epoch() -> str:
    return secrets.token_hex(4)


@dataclass(slots=True)
class _Stream:
    epoch: str
    top: int = 0
    pubs: deque[Publication] = field(default_factory=deque)
    pubs_expire_at: float = 0.0
    meta_expire_at: float = 0.0


class MemoryBroker(Broker):
    # Every publication goes to the one handler, subscribed or not.
    delivers_unsubscribed = True
    sweep_interval = 5.0
    default_meta_ttl = 30 * 24 * 3600.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._handler: BrokerEventHandler | None = None
        self._streams: dict[str, _Stream] = {}
        self._presence: dict[str, dict[str, tuple[ClientInfo, float]]] = {}
        self._tickets: dict[str, tuple[bytes, float]] = {}
        self._idempotency: dict[tuple[str, str], tuple[PublishResult, float]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.sweep_failures = 0

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        self._handler = None

    async def subscribe(self, channel: str) -> None:
        return None  # one process: every publication is already here

    async def unsubscribe(self, channel: str) -> None:
        return None

    def _stream(self, channel: str, now: float, create: bool) -> _Stream | None:
        stream = self._streams.get(channel)
        if stream is not None:
            if now >= stream.meta_expire_at:
                del self._streams[channel]
                stream = None
            elif stream.pubs and now >= stream.pubs_expire_at:
                stream.pubs.clear()
        if stream is None and create:
            stream = self._streams[channel] = _Stream(
                new_epoch(), meta_expire_at=now + self.default_meta_ttl)
        return stream

    async def publish(self, channel: str, data: bytes, options: PublishOptions) -> PublishResult:
        handler = self._require_handler()
        now = self._clock()
        if options.idempotency_key:
            key = (channel, options.idempotency_key)
            seen = self._idempotency.get(key)
            if seen is not None and now < seen[1]:
                return PublishResult(seen[0].position, suppressed=True)
        offset = 0
        epoch = ""
        if options.history_size > 0 and options.history_ttl > 0:
            stream = self._stream(channel, now, create=True)
            assert stream is not None
            stream.top += 1
            offset = stream.top
            epoch = stream.epoch
            pub = Publication(offset, data, options.info, options.tags, time.time())
            stream.pubs.append(pub)
            while len(stream.pubs) > options.history_size:
                stream.pubs.popleft()
            stream.pubs_expire_at = now + options.history_ttl
            stream.meta_expire_at = now + max(options.history_meta_ttl, options.history_ttl)
        else:
            pub = Publication(0, data, options.info, options.tags, time.time())
        result = PublishResult(StreamPosition(offset, epoch))
        if options.idempotency_key:
            self._idempotency[(channel, options.idempotency_key)] = (
                result, now + options.idempotent_result_ttl)
        handler.on_publication(channel, pub, epoch)
        return result

    async def publish_control(self, data: bytes, *, to: str | None = None) -> None:
        handler = self._require_handler()
        if to is not None and to != self.node_id:
            return  # one process, one node: any other address does not exist
        hook: Callable[[bytes], None] | None = getattr(handler, "on_control", None)
        if hook is not None:
            hook(data)

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        self._require_handler().on_join(channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        self._require_handler().on_leave(channel, info)

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int = 0,
        reverse: bool = False,
        meta_ttl: float = 30 * 24 * 3600.0,
    ) -> HistoryResult:
        now = self._clock()
        stream = self._stream(channel, now, create=True)
        assert stream is not None
        stream.meta_expire_at = max(stream.meta_expire_at, now + meta_ttl)
        position = StreamPosition(stream.top, stream.epoch)
        if limit == 0:
            return HistoryResult([], position)
        pubs: list[Publication]
        if since is not None and since.epoch != stream.epoch:
            return HistoryResult([], position)
        if reverse:
            # Centrifuge's paging backwards: since is exclusive, newest first.
            pubs = [p for p in reversed(stream.pubs)
                    if since is None or p.offset < since.offset]
        else:
            pubs = [p for p in stream.pubs if since is None or p.offset > since.offset]
        if limit > 0:
            pubs = pubs[:limit]
        return HistoryResult(pubs, position)

    async def remove_history(self, channel: str) -> None:
        stream = self._streams.get(channel)
        if stream is not None:
            # The epoch and offset stay: clients must see a gap, not a new stream at offset 1.
            stream.pubs.clear()

    async def add_presence(self, channel: str, info: ClientInfo, ttl: float) -> None:
        self._presence.setdefault(channel, {})[info.client] = (info, self._clock() + ttl)

    async def remove_presence(self, channel: str, client: str) -> None:
        members = self._presence.get(channel)
        if members is not None:
            members.pop(client, None)
            if not members:
                del self._presence[channel]

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        now = self._clock()
        members = self._presence.get(channel, {})
        return {cid: info for cid, (info, exp) in members.items() if exp > now}

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        members = await self.presence(channel)
        return len(members), len({info.user for info in members.values()})

    async def store_ticket(self, ticket: str, payload: bytes, ttl: float) -> None:
        self._tickets[ticket] = (payload, self._clock() + ttl)

    async def consume_ticket(self, ticket: str) -> bytes | None:
        # pop() with no await in between: atomic within the event loop.
        entry = self._tickets.pop(ticket, None)
        if entry is None or self._clock() >= entry[1]:
            return None
        return entry[0]

    def _require_handler(self) -> BrokerEventHandler:
        if self._handler is None:
            raise BrokerError("broker is not started")
        return self._handler

    def sweep(self) -> None:
        now = self._clock()
        for channel in [c for c, s in self._streams.items() if now >= s.meta_expire_at]:
            del self._streams[channel]
        for stream in self._streams.values():
            if stream.pubs and now >= stream.pubs_expire_at:
                stream.pubs.clear()
        for channel, members in list(self._presence.items()):
            for cid in [c for c, (_, exp) in members.items() if exp <= now]:
                del members[cid]
            if not members:
                del self._presence[channel]
        for ticket in [t for t, (_, exp) in self._tickets.items() if exp <= now]:
            del self._tickets[ticket]
        for key in [k for k, (_, exp) in self._idempotency.items() if exp <= now]:
            del self._idempotency[key]

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                self.sweep()
            except Exception:
                # Expiry must go on: a sweeper that died would let presence, tickets and
                # idempotency keys grow for the life of the process.
                self.sweep_failures += 1
                log.exception("memory broker sweep failed; the next one runs as scheduled")
