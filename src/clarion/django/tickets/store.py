"""Tickets written straight into the hub's Redis, in the format its Redis broker consumes.

One ``SET <prefix>:ticket:<ticket> <payload> NX PX <ms>``: the value and its expiry arrive
together (django-realtime-ticket's ``SET`` then ``EXPIRE`` left a ticket without a TTL when
the second command failed), and ``NX`` never overwrites a ticket already issued. The hub reads
it with ``GETDEL``, so each ticket connects once.

One synchronous redis-py client per process and target: its pool keeps connections open
between requests, and redis-py resets the pool in a forked child (gunicorn workers).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from clarion.errors import BrokerError, ConfigError
from clarion.protocol.tickets import ticket_key

from .conf import RedisTarget

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["client_for", "store_ticket"]

_clients: dict[RedisTarget, Redis] = {}
_lock = threading.Lock()


def client_for(target: RedisTarget) -> Redis:
    """The process's client for ``target``, made on first use."""
    client = _clients.get(target)
    if client is not None:
        return client
    with _lock:
        client = _clients.get(target)
        if client is None:
            client = _clients[target] = _connect(target)
    return client


def _connect(target: RedisTarget) -> Redis:
    try:
        import redis
    except ImportError:
        raise ConfigError("REALTIME_TICKET_REDIS needs redis-py: pip install "
                          "'clarion[redis]'") from None
    timeout = target.socket_timeout
    if target.url is not None:
        return redis.Redis.from_url(target.url, socket_timeout=timeout,
                                    socket_connect_timeout=timeout)
    return redis.Redis(host=target.host, port=target.port, db=target.db,
                       password=target.password, username=target.username, ssl=target.ssl,
                       socket_timeout=timeout, socket_connect_timeout=timeout)


def store_ticket(target: RedisTarget, ticket: str, payload: bytes, ttl: float) -> None:
    """Write one ticket; raises BrokerError (naming the Redis, never its password) when Redis
    is unreachable, times out or refuses."""
    import redis

    client = client_for(target)
    try:
        stored = client.set(ticket_key(ticket, target.prefix), payload, nx=True,
                            px=max(1, round(ttl * 1000)))
    except redis.RedisError as exc:  # ConnectionError, TimeoutError, ResponseError, …
        raise BrokerError(f"ticket store {target.display()}: {type(exc).__name__}: "
                          f"{exc}") from exc
    if not stored:
        # 32 random bytes do not collide; an existing key means something else wrote it.
        raise BrokerError(f"ticket store {target.display()}: the key exists already")
