"""Brokers: fan-out between hub processes, channel history, presence and one-time tickets.

A backend is chosen by URL (``memory``, ``redis://…``) or by dotted path to a class that
implements :class:`clarion.broker.base.Broker`. The written contract is docs/reference/broker.md;
tests/broker_conformance.py is the suite every backend passes.
"""

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


def create_broker(url: str, **options: Any) -> Broker:
    """A broker from a URL or a dotted path ``package.module:Class``.

    ``memory`` (also ``memory://`` or empty): this process only; takes no options.
    ``redis://[:password@]host:port/db``, ``rediss://…`` (TLS) or ``unix:///path?db=N``:
    :class:`clarion.broker.redis.RedisBroker`, whose keyword options (``prefix``,
    ``pool_size``, ``connect_timeout``, ``command_timeout``, …) come from ``options``.
    A dotted path: the class is called with ``options`` as keyword arguments.
    """
    from clarion.errors import ConfigError

    if url in ("memory", "memory://", ""):
        if options:
            raise ConfigError(f"broker: memory takes no options (got {', '.join(options)})")
        from clarion.broker.memory import MemoryBroker

        return MemoryBroker()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from clarion.broker.redis import RedisBroker

        try:
            return RedisBroker(url, **options)
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
