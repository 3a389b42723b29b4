"""Brokers: fan-out between hub processes, channel history, presence and one-time tickets.

A backend is chosen by URL (``memory``, ``redis://…``, ``redis+cluster://…``,
``redis+sentinel://…``), by a list of URLs (shards), or by dotted path to a class that
implements :class:`clarion.broker.base.Broker`. The written contract is docs/reference/broker.md;
:mod:`clarion.testing.broker` is the suite every backend passes.
"""

from collections.abc import Sequence
from typing import Any

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

__all__ = [
    "Broker",
    "BrokerEventHandler",
    "ClientInfo",
    "HistoryResult",
    "Publication",
    "PublishOptions",
    "PublishResult",
    "StreamPosition",
    "create_broker",
]


def create_broker(url: str | Sequence[str], **options: Any) -> Broker:
    """A broker from a URL, a list of URLs, or a dotted path ``package.module:Class``.

    ``memory`` (also ``memory://`` or empty): this process only; takes no options.
    ``redis://[:password@]host:port/db``, ``rediss://…`` (TLS) or ``unix:///path?db=N``:
    :class:`clarion.broker.redis.RedisBroker`, whose keyword options (``prefix``,
    ``pool_size``, ``connect_timeout``, ``command_timeout``, …) come from ``options``.
    ``redis+cluster://host:port[,host:port…]``: a Redis Cluster
    (:class:`clarion.broker.redis.cluster.RedisClusterBroker`);
    ``redis+sentinel://host:port[,host:port…]/mastername``: the primary Sentinel names
    (:class:`clarion.broker.redis.sentinel.RedisSentinelBroker`); both take the same options.
    A list of URLs: a :class:`clarion.broker.sharded.ShardedBroker` over one broker per URL,
    each built with ``options`` (a list of one is that one broker).
    A dotted path: the class is called with ``options`` as keyword arguments.
    """
    from clarion.errors import ConfigError

    if not isinstance(url, str):
        urls = list(url)
        if not urls:
            raise ConfigError("broker: the list of shard URLs is empty")
        if len(set(urls)) != len(urls):
            raise ConfigError("broker: a shard URL is listed twice")
        if any(not isinstance(u, str) or u in ("memory", "memory://", "") for u in urls):
            raise ConfigError("broker: shards are Redis URLs (memory serves one process only)")
        shards = [create_broker(u, **options) for u in urls]
        if len(shards) == 1:
            return shards[0]
        from clarion.broker.sharded import ShardedBroker

        return ShardedBroker(shards)
    if url in ("memory", "memory://", ""):
        if options:
            raise ConfigError(f"broker: memory takes no options (got {', '.join(options)})")
        from clarion.broker.memory import MemoryBroker

        return MemoryBroker()
    if url.startswith(("redis://", "rediss://", "unix://", "redis+cluster://",
                       "rediss+cluster://", "redis+sentinel://", "rediss+sentinel://")):
        from clarion.broker.redis import RedisBroker

        cls: type[RedisBroker] = RedisBroker
        if url.startswith(("redis+cluster://", "rediss+cluster://")):
            from clarion.broker.redis.cluster import RedisClusterBroker

            cls = RedisClusterBroker
        elif url.startswith(("redis+sentinel://", "rediss+sentinel://")):
            from clarion.broker.redis.sentinel import RedisSentinelBroker

            cls = RedisSentinelBroker
        try:
            return cls(url, **options)
        except TypeError as exc:
            raise ConfigError(f"broker: {exc}") from None
    import importlib

    module_name, _, attr = url.replace(":", ".").rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"broker: cannot load {url!r}: {exc}") from None
    broker = cls(**options)
    if not isinstance(broker, Broker):
        raise ConfigError(f"broker: {url!r} is not a clarion.broker.Broker")
    return broker
