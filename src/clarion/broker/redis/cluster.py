"""The Redis broker on a Redis Cluster (Redis ≥ 7: sharded Pub/Sub).

``redis+cluster://[user:password@]host:port[,host:port…]``: any reachable nodes; the rest are
discovered. Commands and scripts go through redis-py's asyncio ``RedisCluster``, routed by key:
every key of a channel carries the hash tag ``{channel}``, so the publish script's keys and its
``SPUBLISH`` share one slot. Fan-out uses sharded Pub/Sub: a channel is ``SSUBSCRIBE``d on a
connection (a :class:`Link`) to the primary that owns its slot, one link per primary that owns
a subscribed channel, so a publication crosses only the node that owns it (a classic
``PUBLISH`` is broadcast to every node of the cluster).

When the topology changes (a slot migrated: the node drops its subscribers with
``sunsubscribe``; a ``MOVED`` reply to ``SSUBSCRIBE``; a lost link), the slot map is reloaded
and every channel whose slot now lives elsewhere is subscribed on the new owner's link; the
handler's ``on_resubscribed`` then names the channels that moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from redis.asyncio.cluster import ClusterNode, NodesManager, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
)

from clarion.broker.base import PublishOptions, PublishResult
from clarion.broker.redis.standalone import (
    PUBLISH_MANY_CHUNK,
    Link,
    RedisBroker,
    _cancel,
)
from clarion.broker.redis.urls import parse
from clarion.errors import BrokerError, ConfigError

T = TypeVar("T")

log = logging.getLogger("clarion.broker")  # the standalone broker's


def _closed_under_us(exc: BaseException) -> bool:
    """Whether ``exc``, raised from inside redis-py, is a connection closed under a command.

    Two such errors are not redis-py's own: its cluster client closes *every* connection of
    every node, those in use by other commands too, when a node answers CLUSTERDOWN (as the
    nodes of a cluster do while a master is away). A command in the middle of a write then
    meets a stream redis-py has let go (AttributeError on None), or, on uvloop, which the hub
    runs on, a closed transport (RuntimeError, where asyncio would raise nothing). Both are a
    lost connection like any other: the next command opens a new one."""
    if isinstance(exc, RuntimeError):
        return "the handler is closed" in str(exc)  # uvloop's words
    if isinstance(exc, AttributeError) and exc.obj is None:
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        return tb is not None and "redis" in Path(tb.tb_frame.f_code.co_filename).parts
    return False


def _cluster_outage(exc: RedisClusterException) -> bool:
    """Whether a RedisClusterException (which is no RedisError) is an outage.

    Two kinds are: a slot with no owner (SlotNotCoveredError), and what redis-py's slot map
    reload raises: no startup node answered ("Redis Cluster cannot be connected", whose
    cause is the last node's error), the nodes disagree on the slots, or slots have no owner.
    Those are raised in ``NodesManager.initialize`` itself, so its frame is the innermost of
    the traceback: no words matched. Every other one is a bug in the command sent (keys in
    two slots, no key, bad arguments): it can never succeed, and must not be answered
    "temporary, retry". Should redis-py move those raises elsewhere, an outage becomes a
    logged 500, not silence (the every-master-killed tests would fail)."""
    if isinstance(exc, SlotNotCoveredError):
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code is NodesManager.initialize.__code__


async def _lost_when_closed_under_us(send: Awaitable[None]) -> None:
    try:
        await send
    except (RuntimeError, AttributeError) as exc:
        if not _closed_under_us(exc):
            raise
        raise RedisConnectionError(f"Error writing to a closed connection: {exc!r}") from exc


class _LinkConnection(Connection):
    """A Pub/Sub link's connection: a write on a connection closed under it is the
    ConnectionError the link's reconnect loop handles, not an error that would end it."""

    async def send_packed_command(self, command: bytes | str | Iterable[bytes],
                                  check_health: bool = True) -> None:
        await _lost_when_closed_under_us(super().send_packed_command(command, check_health))


class _SSLLinkConnection(SSLConnection):
    """:class:`_LinkConnection` over TLS."""

    async def send_packed_command(self, command: bytes | str | Iterable[bytes],
                                  check_health: bool = True) -> None:
        await _lost_when_closed_under_us(super().send_packed_command(command, check_health))


class RedisClusterBroker(RedisBroker):
    _schemes = ("redis+cluster://", "rediss+cluster://")
    _publish_command = "spublish"
    # redis-py's cluster client raises RedisClusterException, which is no RedisError, for
    # outages (a slot with no owner, no node answering) and for bugs in a command alike;
    # _call and the topology code tell them apart with _cluster_outage. ClusterDownError,
    # TryAgainError and MaxConnectionsError are RedisErrors already.
    _client_errors = (RedisError, SlotNotCoveredError, OSError)

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        parsed = parse(url, self._where, 6379)
        if parsed.path or parsed.query:
            raise ConfigError(f"broker: {self._where!r}: a Redis Cluster URL takes no "
                              "database or parameters (redis+cluster://host:port,host:port)")
        self.nodes = parsed.hosts
        self._auth: dict[str, Any] = {k: v for k, v in (("username", parsed.username),
                                         ("password", parsed.password)) if v is not None}
        self._tls = parsed.tls
        self._where = "cluster " + ",".join(f"{h}:{p}" for h, p in self.nodes)
        self._links: dict[str, Link] = {}  # by node name, host:port
        self._homes: dict[str, Link] = {}  # Pub/Sub name -> the link it is subscribed on
        self._opening: dict[str, asyncio.Future[Link]] = {}
        self._topology_lock = asyncio.Lock()
        # _rehome runs from the rehome task and from every lost link's reconnect loop; in a
        # full outage, all at once. One at a time: interleaved, two would retire the same
        # link twice and load the slot map once per caller in parallel.
        self._rehome_lock = asyncio.Lock()
        self._rehome_task: asyncio.Task[None] | None = None
        self._rehome_again = False
        # RedisCluster's per-node pools fail at once when full (MaxConnectionsError); the
        # standalone broker's pool waits. Waiting here keeps that behaviour: at most
        # pool_size commands in flight, the wait counted in the command timeout.
        self._in_flight = asyncio.Semaphore(self.pool_size)

    async def _call(self, what: str, work: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.command_timeout):
                await self._in_flight.acquire()
        except TimeoutError:
            close = getattr(work, "close", None)
            if close is not None:
                close()  # never awaited: no "coroutine was never awaited" warning
            raise BrokerError(f"redis {what}: no free connection within "
                              f"{self.command_timeout:g} s ({self._where})") from None
        try:
            return await super()._call(what, work)
        except RedisClusterException as exc:
            if not _cluster_outage(exc):
                raise  # a bug in the command: the caller's 500 path logs its traceback
            raise BrokerError(f"redis {what} failed ({self._where}): {exc}") from exc
        except (RuntimeError, AttributeError) as exc:
            if not _closed_under_us(exc):
                raise
            # redis-py's doing, not ours (see _closed_under_us): kept visible, as it is a
            # redis-py bug, but answered as the outage it is.
            log.warning("redis %s: the connection was closed under the command (%s)",
                        what, self._where, exc_info=True)
            raise BrokerError(f"redis {what} failed ({self._where}): the connection was "
                              "closed") from exc
        finally:
            self._in_flight.release()

    @property
    def connected(self) -> bool:
        return bool(self._links) and all(link.connected for link in self._links.values())

    async def publish(self, channel: str, data: bytes, options: PublishOptions) -> PublishResult:
        """Straight to the channel's slot: a call shared across slots (the standalone
        broker's outbox) would make every channel wait for the slowest node, and all of them
        for a node that is down until failover."""
        self._require()
        (result,) = await self._publish_now([(channel, data, options)])
        if isinstance(result, BrokerError):
            raise result
        return result

    async def _publish_now(
        self, requests: Sequence[tuple[str, bytes, PublishOptions]],
    ) -> list[PublishResult | BrokerError]:
        """Grouped by slot (a channel's keys and its SPUBLISH share one): each group is one
        ``PUBLISH_MANY_LUA`` call per ``PUBLISH_MANY_CHUNK`` on the slot's node, in order; the
        groups at once, within the pool's bound on commands in flight."""
        groups: dict[int, list[int]] = {}
        for i, (channel, _, _) in enumerate(requests):
            groups.setdefault(key_slot(self._stream_key(channel).encode()), []).append(i)
        results: list[PublishResult | BrokerError | None] = [None] * len(requests)

        async def run(indexes: list[int]) -> None:
            for start in range(0, len(indexes), PUBLISH_MANY_CHUNK):
                chunk = indexes[start:start + PUBLISH_MANY_CHUNK]
                done = await self._publish_chunk([requests[i] for i in chunk])
                for i, result in zip(chunk, done, strict=True):
                    results[i] = result

        # Every group runs to its end, whatever another meets: a group that failed must not
        # leave the others' callers without an answer while their publications go out.
        failures = [f for f in await asyncio.gather(
            *(run(ix) for ix in groups.values()), return_exceptions=True) if f is not None]
        for failure in failures:
            if not isinstance(failure, Exception):
                raise failure  # cancellation
        if failures:
            raise failures[0]  # not an outage (those are results): the caller's 500 path
        return [r for r in results if r is not None]

    async def _connect_client(self) -> Any:
        client = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in self.nodes],
            max_connections=self.pool_size, ssl=self._tls, **self._auth,
            **self._pool_options())
        try:
            await self._call("cluster discovery", client.initialize())
        except BaseException:
            with contextlib.suppress(*self._client_errors):
                await client.aclose()
            raise
        return client

    # -- links per primary ----------------------------------------------------------------------

    def _node_of(self, name: str) -> Any:
        return self._client.nodes_manager.get_node_from_slot(key_slot(name.encode()))

    async def _link_to(self, node: Any) -> Link:
        link = self._links.get(node.name)
        if link is not None:
            return link
        pending = self._opening.get(node.name)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Link] = asyncio.get_running_loop().create_future()
        self._opening[node.name] = fut

        def connection() -> AbstractConnection:
            kwargs = dict(node.connection_kwargs)
            kwargs.update(socket_timeout=None, client_name="clarion-pubsub")
            tls = issubclass(node.connection_class, SSLConnection)
            return (_SSLLinkConnection if tls else _LinkConnection)(**kwargs)

        try:
            link = Link(self, f"cluster node {node.name}", connection, sharded=True)
            await link.start()
            self._links[node.name] = link
            fut.set_result(link)
            return link
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: nobody may be waiting
            raise
        finally:
            self._opening.pop(node.name, None)

    def _key_of(self, link: Link) -> str | None:
        for key, value in self._links.items():
            if value is link:
                return key
        return None

    async def _start_links(self) -> None:
        if self.control:
            for name in sorted(self._control_names):
                await self._subscribe_name(name, "subscribe to control messages")

    async def close(self) -> None:
        task, self._rehome_task = self._rehome_task, None
        if task is not None:
            await _cancel(task)
        links, self._links = list(self._links.values()), {}
        self._homes.clear()
        for link in links:
            await link.close()
        await super().close()

    # -- fan-out ------------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        if self._handler is None:
            raise BrokerError("broker is not started")
        await self._subscribe_name(self._pubsub_channel(channel), f"subscribe to {channel!r}")

    async def _subscribe_name(self, name: str, what: str) -> None:
        problem = "did not confirm"
        for _ in range(3):
            try:
                link = await self._link_to(self._node_of(name))
            except (BrokerError, *self._client_errors) as exc:
                problem = str(exc)
                await self._refresh_topology()
                continue
            self._homes[name] = link
            if await link.subscribe(name):
                return
            if self._homes.get(name) is link:
                del self._homes[name]
            problem = "did not confirm" if link.connected else "is down, reconnecting"
            # Most likely a MOVED reply: the slot map is stale.
            await self._refresh_topology()
        raise BrokerError(f"redis {what}: the Pub/Sub connection {problem} ({self._where})")

    async def unsubscribe(self, channel: str) -> None:
        if self._handler is None:
            raise BrokerError("broker is not started")
        link = self._homes.pop(self._pubsub_channel(channel), None)
        if link is not None:
            link.unsubscribe(self._pubsub_channel(channel))

    # -- topology changes -----------------------------------------------------------------------

    async def _refresh_topology(self) -> None:
        async with self._topology_lock:
            try:
                async with asyncio.timeout(self.connect_timeout + self.command_timeout):
                    await self._client.nodes_manager.initialize()
            except (*self._client_errors, RedisClusterException, TimeoutError) as exc:
                if isinstance(exc, RedisClusterException) and not _cluster_outage(exc):
                    raise
                log.warning("redis cluster: reloading the slot map failed (%s): %s",
                            self._where, exc)

    def _schedule_rehome(self) -> None:
        if self._client is None:
            return
        if self._rehome_task is not None and not self._rehome_task.done():
            self._rehome_again = True
            return
        self._rehome_task = asyncio.get_running_loop().create_task(self._rehome_forever())

    async def _rehome_forever(self) -> None:
        delay = self.reconnect_delay
        while True:
            self._rehome_again = False
            try:
                if await self._rehome() and not self._rehome_again:
                    return
            except Exception:  # logged with its traceback
                # Not an outage the broker expects (those are logged as warnings inside):
                # still retried, or the channels that moved would never be received again.
                self.handler_errors += 1
                log.exception("redis cluster: moving subscriptions failed unexpectedly (%s), "
                              "retrying", self._where)
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(self.reconnect_delay_max, delay * 2)

    async def _rehome(self) -> bool:
        """Move every subscription to the link of its slot's current owner; True when all
        are in effect."""
        async with self._rehome_lock:
            return await self._rehome_locked()

    async def _rehome_locked(self) -> bool:
        await self._refresh_topology()
        moves: list[tuple[str, Link]] = []
        complete = True
        for name, link in list(self._homes.items()):
            try:
                target = await self._link_to(self._node_of(name))
            except (BrokerError, *self._client_errors) as exc:
                log.warning("redis cluster: %s has no reachable owner yet: %s", name, exc)
                complete = False
                continue
            if target is not link:
                link.forget(name)
                self._homes[name] = target
                moves.append((name, target))
            elif link.connected and not link.subscribed(name):
                moves.append((name, link))  # dropped by its node, which still owns it
        results = await asyncio.gather(*(link.subscribe(name, keep=True)
                                         for name, link in moves))
        done = [name for (name, _), ok in zip(moves, results, strict=True) if ok]
        if done:
            log.info("redis cluster: %d subscriptions moved to their slots' new owners",
                     len(done))
            self._resubscribed(done)
        for key, link in list(self._links.items()):
            # _link_lost may have dropped it while an earlier close() awaited.
            if not link.wanted and self._links.get(key) is link:
                del self._links[key]
                await link.close()
        return complete and all(results)

    async def _link_lost(self, link: Link) -> bool:
        await self._rehome()
        if link.wanted:
            return True
        key = self._key_of(link)
        if key is not None:
            del self._links[key]
        return False

    def _link_error(self, link: Link, exc: ResponseError) -> None:
        log.info("redis cluster: %s answered %s; reloading the slot map", link.where, exc)
        self._schedule_rehome()

    def _link_evicted(self, link: Link, name: str) -> None:
        self._schedule_rehome()
