"""Client-side sharding: channels spread over independent brokers by jump consistent hash.

``create_broker(["redis://a", "redis://b"])`` builds a :class:`ShardedBroker`. Everything of a
channel (its stream, meta, presence, idempotency results and Pub/Sub) lives on the one shard
``jump_hash(channel, n)`` picks, the same function Centrifugo's Redis engine uses, so a
channel maps to the same shard index in both and adding a shard moves only about 1/(n+1) of
the channels (those lose their history: a new epoch on the new shard). Tickets are spread the
same way by ticket id. Control messages go over the first shard only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from clarion.broker.base import (
    Broker,
    BrokerEventHandler,
    ClientInfo,
    HistoryResult,
    PublishOptions,
    PublishResult,
    StreamPosition,
)
from clarion.errors import BrokerError, ConfigError

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = 0xFFFFFFFFFFFFFFFF


def fnv1a_64(data: bytes) -> int:
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK64
    return h


def jump_hash(key: str | bytes, buckets: int) -> int:
    """The bucket in ``range(buckets)`` of ``key``: Lamping and Veach's jump consistent hash
    over FNV-1a 64 of the key's UTF-8 bytes, as Centrifugo's ``consistentIndex``, float
    arithmetic included, so both pick the same shard for a channel."""
    if buckets < 1:
        raise ValueError("jump_hash needs at least one bucket")
    k = fnv1a_64(key.encode() if isinstance(key, str) else key)
    b, j = -1, 0
    while j < buckets:
        b = j
        k = (k * 2862933555777941757 + 1) & _MASK64
        j = int(float(b + 1) * (float(1 << 31) / float((k >> 33) + 1)))
    return b


class ShardedBroker(Broker):
    """Routes every call to the shard that owns its channel (or ticket)."""

    def __init__(self, shards: Sequence[Broker]) -> None:
        if len(shards) < 1:
            raise ConfigError("broker: a shard list needs at least one broker")
        self.shards = list(shards)
        for shard in self.shards[1:]:
            # A backend that carries control messages on its own link (the Redis ones) is told
            # to leave them to the first shard; one on the same server (another db) would
            # otherwise deliver every message twice, as Pub/Sub ignores db numbers.
            if hasattr(shard, "control"):
                shard.control = False
        self._started: list[Broker] = []
        # Only when every shard does: a channel on a shard that does not would otherwise never
        # reach the hub's recent-publications buffer.
        self.delivers_unsubscribed = all(s.delivers_unsubscribed for s in self.shards)

    def shard(self, key: str) -> Broker:
        """The shard that owns a channel name or a ticket id."""
        shards = self.shards
        return shards[jump_hash(key, len(shards))] if len(shards) > 1 else shards[0]

    @property
    def node_id(self) -> str:
        return self.shards[0].node_id

    @property
    def connected(self) -> bool:
        """Whether every shard's fan-out link is up."""
        return all(getattr(s, "connected", True) for s in self.shards)

    @property
    def reconnects(self) -> int:
        return sum(int(getattr(s, "reconnects", 0)) for s in self.shards)

    @property
    def handler_errors(self) -> int:
        return sum(int(getattr(s, "handler_errors", 0)) for s in self.shards)

    async def start(self, handler: BrokerEventHandler) -> None:
        if self._started:
            raise BrokerError("broker is already started")
        results = await asyncio.gather(*(s.start(handler) for s in self.shards),
                                       return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        self._started = [s for s, r in zip(self.shards, results, strict=True)
                         if not isinstance(r, BaseException)]
        if failed:
            # All or nothing: a node that sees some shards would silently miss channels.
            await self.close()
            raise failed[0]

    async def close(self) -> None:
        started, self._started = self._started, []
        if started:
            await asyncio.gather(*(s.close() for s in started), return_exceptions=True)

    async def subscribe(self, channel: str) -> None:
        await self.shard(channel).subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        await self.shard(channel).unsubscribe(channel)

    async def publish(self, channel: str, data: bytes, options: PublishOptions) -> PublishResult:
        return await self.shard(channel).publish(channel, data, options)

    async def publish_many(
        self, requests: Sequence[tuple[str, bytes, PublishOptions]],
    ) -> list[PublishResult | BrokerError]:
        """Each shard gets its share in one call (in the order given), all shards at once."""
        if len(self.shards) == 1:
            return await self.shards[0].publish_many(requests)
        groups: dict[int, list[int]] = {}
        for i, (channel, _, _) in enumerate(requests):
            groups.setdefault(jump_hash(channel, len(self.shards)), []).append(i)
        shares = await asyncio.gather(*(
            self.shards[s].publish_many([requests[i] for i in ix]) for s, ix in groups.items()))
        results: list[PublishResult | BrokerError | None] = [None] * len(requests)
        for ix, share in zip(groups.values(), shares, strict=True):
            for i, result in zip(ix, share, strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self.shard(channel).publish_join(channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self.shard(channel).publish_leave(channel, info)

    async def publish_control(self, data: bytes, *, to: str | None = None) -> None:
        await self.shards[0].publish_control(data, to=to)

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int = 0,
        reverse: bool = False,
        meta_ttl: float = 30 * 24 * 3600.0,
    ) -> HistoryResult:
        return await self.shard(channel).history(
            channel, since=since, limit=limit, reverse=reverse, meta_ttl=meta_ttl)

    async def remove_history(self, channel: str) -> None:
        await self.shard(channel).remove_history(channel)

    async def add_presence(self, channel: str, info: ClientInfo, ttl: float) -> None:
        await self.shard(channel).add_presence(channel, info, ttl)

    async def remove_presence(self, channel: str, client: str) -> None:
        await self.shard(channel).remove_presence(channel, client)

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return await self.shard(channel).presence(channel)

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        return await self.shard(channel).presence_stats(channel)

    async def store_ticket(self, ticket: str, payload: bytes, ttl: float) -> None:
        await self.shard(ticket).store_ticket(ticket, payload, ttl)

    async def consume_ticket(self, ticket: str) -> bytes | None:
        return await self.shard(ticket).consume_ticket(ticket)
