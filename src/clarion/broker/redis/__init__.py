"""The Redis brokers: one server, a Redis Cluster, or a primary found through Sentinel.

:class:`RedisBroker` (``redis://``, ``rediss://``, ``unix://``) is the base the others extend;
``create_broker`` picks one by URL, and builds a sharded broker from a list of URLs
(:mod:`clarion.broker.sharded`). docs/reference/broker.md, "Redis", is the reference.
"""

from clarion.broker.redis.standalone import Link, RedisBroker

__all__ = ["Link", "RedisBroker"]
