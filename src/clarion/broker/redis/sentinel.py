"""The Redis broker on a primary found through Sentinel, following it across failovers.

``redis+sentinel://[user:password@]host:port[,host:port…]/mastername[?db=N&password=…]``.
Commands use redis-py's Sentinel-managed pool, whose connections ask Sentinel for the primary
whenever they (re)connect. The Pub/Sub link does the same through the same connection class.
A failover closes the link (Sentinel kills the clients of the demoted primary, or the primary
is simply gone); the link reconnects to the new primary, resubscribes and calls the handler's
``on_resubscribed``. A link that stays connected to a server that is no longer the primary
still gets publications only while that server replicates from the new one, which a partition
breaks silently (Centrifugo's issue 1189); so every keepalive also asks Sentinel whether the
link's server is still the primary, and reconnects when it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from redis.asyncio import BlockingConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import RedisError

from clarion.broker.redis.standalone import RedisBroker, log, with_hiredis_packing
from clarion.broker.redis.urls import parse
from clarion.errors import ConfigError


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool, waiting for a free connection (up to the command timeout) instead of
    failing at once when all are in use, as the standalone broker's pool does."""


class RedisSentinelBroker(RedisBroker):
    _schemes = ("redis+sentinel://", "rediss+sentinel://")

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        parsed = parse(url, self._where, 26379)
        query = dict(parsed.query)
        service = parsed.path or query.pop("sentinel_master_name", "")
        query.pop("sentinel_master_name", None)
        if not service or "/" in service:
            raise ConfigError(f"broker: {self._where!r}: name the master, as "
                              "redis+sentinel://host:port/mastername")
        self.service = service
        self.sentinels = parsed.hosts
        master: dict[str, Any] = {"username": query.pop("username", parsed.username),
                                  "password": query.pop("password", parsed.password)}
        sentinel_auth = {"username": query.pop("sentinel_username", None),
                         "password": query.pop("sentinel_password", None)}
        try:
            master["db"] = int(query.pop("db", "0"))
        except ValueError:
            raise ConfigError(f"broker: {self._where!r}: db must be a number") from None
        if query:
            raise ConfigError(f"broker: {self._where!r}: unknown parameter "
                              f"{', '.join(sorted(query))}")
        self._master_kwargs = {k: v for k, v in master.items() if v is not None}
        if parsed.tls:
            self._master_kwargs["ssl"] = True
        self._sentinel_auth = {k: v for k, v in sentinel_auth.items() if v is not None}
        self._sentinel: Sentinel | None = None
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        self._where = f"sentinel {hosts}, master {service!r}"

    async def _connect_client(self) -> Any:
        sentinel = self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
            self.sentinels,
            sentinel_kwargs=dict(socket_timeout=self.command_timeout,
                                 socket_connect_timeout=self.connect_timeout,
                                 protocol=2, **self._sentinel_auth),
            **self._master_kwargs)
        client = sentinel.master_for(
            self.service, connection_pool_class=_BlockingSentinelPool,
            max_connections=self.pool_size, timeout=self.command_timeout,
            **self._pool_options())
        self._pool = client.connection_pool
        self._pool.connection_class = with_hiredis_packing(self._pool.connection_class)
        return client

    async def _link_stale(self, conn: AbstractConnection) -> bool:
        sentinel = self._sentinel
        if sentinel is None:
            return False
        try:
            async with asyncio.timeout(self.command_timeout):
                host, port = await sentinel.discover_master(self.service)
        except (RedisError, OSError, TimeoutError):
            return False  # Sentinel unsure or away: keep what works
        await self._follow_primary((host, int(port)))
        current = (getattr(conn, "host", None), getattr(conn, "port", None))
        if current != (host, int(port)):
            log.warning("redis Pub/Sub link is on %s:%s, Sentinel's primary is %s:%s; "
                        "reconnecting (%s)", *current, host, port, self._where)
            return True
        return False

    async def _follow_primary(self, primary: tuple[str, int]) -> None:
        """Move the command pool to Sentinel's primary. redis-py's pool asks Sentinel only when
        it opens a connection, and a demoted primary keeps accepting writes until Sentinel
        reconfigures it (up to its 10 s INFO period): pooled connections left there split the
        nodes, each publishing where only it listens, and what they wrote is dropped when the
        old primary resyncs. Checked on every keepalive, so the window is one ping_interval."""
        pool = getattr(self, "_pool", None)
        known = getattr(pool, "master_address", None)
        if pool is None or known is None or tuple(known) == primary:
            return
        log.warning("Sentinel's primary moved from %s:%s to %s:%s; reconnecting commands (%s)",
                    *known, *primary, self._where)
        pool.master_address = primary
        # In-use connections too: a command in flight on the old primary fails (the caller
        # sees BrokerError) rather than committing where nobody reads.
        await pool.disconnect(inuse_connections=True)

    async def _release(self) -> None:
        await super()._release()
        sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:
            for client in sentinel.sentinels:
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()
