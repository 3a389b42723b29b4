"""Brokers: fan-out between hub processes, channel history, presence and one-time tickets.

A backend is chosen by URL (``memory``, ``redis://…``) or by dotted path to a class that
implements :class:`clarion.broker.base.Broker`. The written contract is docs/reference/broker.md;
tests/broker_conformance.py is the suite every backend passes.
"""

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


def create_broker(url: str) -> Broker:
    """A broker from ``memory``, ``memory://`` or a dotted path ``package.module:Class``."""
    if url in ("memory", "memory://", ""):
        from clarion.broker.memory import MemoryBroker

        return MemoryBroker()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from clarion.errors import ConfigError

        raise ConfigError("broker: the redis backend is not available in this release yet")
    import importlib

    from clarion.errors import ConfigError

    module_name, _, attr = url.replace(":", ".").rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"broker: cannot load {url!r}: {exc}") from None
    broker = cls()
    if not isinstance(broker, Broker):
        raise ConfigError(f"broker: {url!r} is not a clarion.broker.Broker")
    return broker
