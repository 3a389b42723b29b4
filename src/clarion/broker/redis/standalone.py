"""The Redis broker: history, presence, tickets and fan-out shared by every hub process.

Built on redis-py's asyncio client (with the hiredis parser when installed). The layout
follows Centrifugo's Redis engine (docs/reference/broker.md, "Redis", has the key table):

* history is a STREAM per channel plus a meta HASH (``e`` epoch, ``s`` top offset); one Lua
  script bumps the offset, appends, sets expiries and PUBLISHes, so the order on the wire is
  the order in history and every node sees an offset for every kept publication;
* presence is a HASH of client info plus a ZSET of expiry times, cleaned on read;
* tickets are plain keys written with ``SET NX PX`` and consumed with ``GETDEL``;
* fan-out is one Pub/Sub connection per broker (:class:`Link`), subscribed only to what this
  node needs, with subscribe and unsubscribe calls coalesced into one write per event-loop turn;
* control messages between nodes go over two more Pub/Sub channels on that connection.

Every key of a channel carries the hash tag ``{channel}`` so that it lands in one Cluster slot.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

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
from clarion.broker.urls import redact as _redact
from clarion.errors import BrokerError, ConfigError
from clarion.protocol import tickets

try:
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.connection import AbstractConnection
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.crc import key_slot
    from redis.exceptions import RedisError, ResponseError
    from redis.utils import HIREDIS_AVAILABLE
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigError(
        "broker: the redis backend needs redis-py: pip install 'clarion[redis]'") from exc

log = logging.getLogger("clarion.broker")


def with_hiredis_packing(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls`` packing commands with hiredis's C packer, as redis-py's sync connections do when
    hiredis is installed; its asyncio connections pack in Python, by repeated joins, which
    was a third of the hub's time when publishing through Redis. Same bytes on the wire."""
    if not HIREDIS_AVAILABLE:
        return cls
    import hiredis
    from redis.connection import HiredisRespSerializer

    serializer = HiredisRespSerializer()
    pack = hiredis.pack_command

    def pack_command(self: AbstractConnection, *args: Any) -> list[bytes]:
        # redis-py's wrapper first copies every argument through a generator to turn
        # memoryviews into bytes; a publish script's call has ~900 arguments, none of them
        # views, so hand them to hiredis as they are and fall back only when it refuses one.
        command = args[0]
        if isinstance(command, str) and " " not in command:
            try:
                return [pack(args)]
            except TypeError:
                pass
        packed: list[bytes] = serializer.pack(*args)
        return packed

    return type(f"Hiredis{cls.__name__}", (cls,), {"pack_command": pack_command})

T = TypeVar("T")

# -- the envelope ------------------------------------------------------------------------------
# msgpack arrays: no field names on the wire, data stays raw bytes (a msgpack bin), and msgspec
# decodes straight into typed structs. Trailing defaults are omitted, so a publication without
# info or tags costs its data plus about a dozen bytes.


class _Info(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    client: str
    user: str
    conn_info: bytes | None = None
    chan_info: bytes | None = None


class _Envelope(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    data: bytes
    time: float
    info: _Info | None = None
    tags: dict[str, str] | None = None


_encode = msgspec.msgpack.Encoder().encode
_decode_envelope = msgspec.msgpack.Decoder(_Envelope).decode
_decode_info = msgspec.msgpack.Decoder(_Info).decode


def _pack_info(info: ClientInfo) -> _Info:
    return _Info(info.client, info.user, info.conn_info, info.chan_info)


def _unpack_info(info: _Info) -> ClientInfo:
    return ClientInfo(info.client, info.user, info.conn_info, info.chan_info)


@dataclass(slots=True)
class _Outgoing:
    """A publication waiting in the broker's outbox for the next script call."""

    channel: str
    data: bytes
    options: PublishOptions
    future: asyncio.Future[PublishResult | BrokerError]


def _publication(offset: int, raw: bytes) -> Publication:
    env = _decode_envelope(raw)
    info = None if env.info is None else _unpack_info(env.info)
    return Publication(offset, env.data, info, env.tags, env.time)


def _publish_result(reply: Any) -> PublishResult:
    result, suppressed = reply
    offset, _, epoch = bytes(result).partition(b":")
    return PublishResult(StreamPosition(int(offset), epoch.decode()), bool(suppressed))


def _new_epoch() -> str:
    # 8 characters of [A-Za-z0-9_-], as Centrifuge's epochs; they appear in resume cursors.
    return secrets.token_urlsafe(6)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _history_args(options: PublishOptions) -> tuple[int, int, int]:
    """The publish script's history size, history TTL and meta TTL (ms); zeros when the
    publication is not kept."""
    if options.history_size <= 0 or options.history_ttl <= 0:
        return 0, 0, 0
    return (options.history_size, _ms(options.history_ttl),
            _ms(max(options.history_meta_ttl, options.history_ttl)))


# -- Lua ---------------------------------------------------------------------------------------
# Publish a run of publications in one call (every publication goes this way, one or many).
# ARGV[1]: the publish command ("publish", or "spublish" on a Cluster), ARGV[2]: a fresh epoch
# (used for any channel whose meta hash is missing); then six per publication: envelope,
# history size (0: not kept), history ttl ms, meta ttl ms, Pub/Sub channel, idempotent result
# ttl ms (0: no key). KEYS: stream, meta, idempotency result per publication. For each: a
# repeated idempotency key returns the cached result; otherwise bump the offset, XADD to the
# stream and PUBLISH "p<offset>:<epoch>:<envelope>", so the order on the wire is the order in
# history. Each publication runs under pcall, so one that fails (a key of the wrong type)
# fails alone. Returns two items per publication: "offset:epoch" (or "!" and the error) and
# whether it was suppressed as a repeat.
PUBLISH_MANY_LUA = """
local command, fresh = ARGV[1], ARGV[2]
local function publish(stream, meta, idem, envelope, size, history_ttl, meta_ttl, channel,
                       idem_ttl)
  if idem_ttl > 0 then
    local cached = redis.call('get', idem)
    if cached then
      return cached, 1
    end
  end
  local offset = 0
  local epoch = ''
  if size > 0 then
    epoch = redis.call('hget', meta, 'e')
    if not epoch then
      epoch = fresh
      redis.call('hset', meta, 'e', epoch)
    end
    offset = redis.call('hincrby', meta, 's', 1)
    redis.call('pexpire', meta, meta_ttl)
    if offset == 1 then
      redis.call('del', stream)
    end
    redis.call('xadd', stream, 'MAXLEN', size, offset .. '-0', 'd', envelope)
    redis.call('pexpire', stream, history_ttl)
  end
  redis.call(command, channel, 'p' .. offset .. ':' .. epoch .. ':' .. envelope)
  local result = offset .. ':' .. epoch
  if idem_ttl > 0 then
    redis.call('set', idem, result, 'PX', idem_ttl)
  end
  return result, 0
end
local out = {}
for i = 0, #KEYS / 3 - 1 do
  local k, a = i * 3, 2 + i * 6
  local ok, result, suppressed = pcall(publish, KEYS[k + 1], KEYS[k + 2], KEYS[k + 3],
    ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3], ARGV[a + 4], ARGV[a + 5],
    tonumber(ARGV[a + 6]))
  if ok then
    out[i * 2 + 1], out[i * 2 + 2] = result, suppressed
  else
    local err = result
    if type(err) == 'table' then
      err = err.err
    end
    out[i * 2 + 1], out[i * 2 + 2] = '!' .. tostring(err), 0
  end
end
return out
"""
# At most this many publications per PUBLISH_MANY_LUA call: Redis runs a script without
# serving anyone else, so a huge /api/batch is cut into calls of bounded length.
PUBLISH_MANY_CHUNK = 100

# History. KEYS: stream, meta. ARGV: a fresh epoch, meta ttl ms, since offset (-1: none), since
# epoch, limit (-1: all, 0: none), reverse (1/0). Returns {top, epoch, entries}.
HISTORY_LUA = """
local meta = redis.call('hmget', KEYS[2], 'e', 's')
local epoch = meta[1]
local top = 0
if not epoch then
  epoch = ARGV[1]
  redis.call('hset', KEYS[2], 'e', epoch)
  redis.call('del', KEYS[1])
elseif meta[2] then
  top = tonumber(meta[2])
end
local meta_ttl = tonumber(ARGV[2])
if redis.call('pttl', KEYS[2]) < meta_ttl then
  redis.call('pexpire', KEYS[2], meta_ttl)
end
local since = tonumber(ARGV[3])
local limit = tonumber(ARGV[5])
if limit == 0 or (since >= 0 and ARGV[4] ~= epoch) then
  return {top, epoch, {}}
end
local entries
if ARGV[6] == '1' then
  local upper = '+'
  if since >= 0 then
    if since <= 1 then
      return {top, epoch, {}}
    end
    upper = tostring(since - 1)
  end
  if limit > 0 then
    entries = redis.call('xrevrange', KEYS[1], upper, '-', 'COUNT', limit)
  else
    entries = redis.call('xrevrange', KEYS[1], upper, '-')
  end
else
  local lower = '-'
  if since >= 0 then
    lower = tostring(since + 1)
  end
  if limit > 0 then
    entries = redis.call('xrange', KEYS[1], lower, '+', 'COUNT', limit)
  else
    entries = redis.call('xrange', KEYS[1], lower, '+')
  end
end
return {top, epoch, entries}
"""

# Presence uses the server's clock, so nodes with skewed clocks agree on who has expired.
PRESENCE_ADD_LUA = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
redis.call('zadd', KEYS[2], string.format('%d', now + ttl), ARGV[1])
for i = 1, 2 do
  if redis.call('pttl', KEYS[i]) < ttl then
    redis.call('pexpire', KEYS[i], ttl)
  end
end
"""

PRESENCE_REMOVE_LUA = """
redis.call('hdel', KEYS[1], ARGV[1])
redis.call('zrem', KEYS[2], ARGV[1])
"""

PRESENCE_GET_LUA = """
local t = redis.call('time')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local expired = redis.call('zrangebyscore', KEYS[2], '-inf', now)
if #expired > 0 then
  for i = 1, #expired, 1000 do
    redis.call('hdel', KEYS[1], unpack(expired, i, math.min(i + 999, #expired)))
  end
  redis.call('zremrangebyscore', KEYS[2], '-inf', now)
end
return redis.call('hgetall', KEYS[1])
"""

# Channels per SUBSCRIBE/UNSUBSCRIBE command; a resubscribe of more goes out as several
# commands in one write.
SUBSCRIBE_BATCH = 4096


class Link:
    """One Pub/Sub connection: the names it should be subscribed to, batched (un)subscribes,
    keepalive, and reconnect with resubscribe.

    It knows Pub/Sub *names* only; its broker maps them to channels and back, so one class
    serves a standalone Redis, each shard, each Cluster node and a Sentinel-found master.
    A ``sharded`` link speaks SSUBSCRIBE/SUNSUBSCRIBE, one command per hash slot, because a
    sharded command whose channels cross slots is refused as a whole (CROSSSLOT).
    """

    def __init__(self, broker: RedisBroker, where: str,
                 opener: Callable[[], AbstractConnection], *, sharded: bool = False) -> None:
        self.broker = broker
        self.where = where
        self.sharded = sharded
        self._opener = opener
        self._sub, self._unsub = ("SSUBSCRIBE", "SUNSUBSCRIBE") if sharded else (
            "SUBSCRIBE", "UNSUBSCRIBE")
        self._message = b"smessage" if sharded else b"message"
        # wanted: what the broker asked for; _server: what was sent on the current
        # connection; _touched: names whose state changed since the last write.
        self.wanted: set[str] = set()
        self._server: set[str] = set()
        self._touched: set[str] = set()
        self._conn: AbstractConnection | None = None
        self._batch: asyncio.Future[bool] | None = None
        self._barriers: dict[bytes, asyncio.Future[bool]] = {}
        self._tokens = itertools.count(1)
        self._error_since_barrier = False
        self._flush_needed = asyncio.Event()
        self._link_up = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def subscribed(self, name: str) -> bool:
        """Whether ``name`` was sent on the current connection (and not taken back since)."""
        return name in self._server

    async def start(self) -> None:
        conn, reader = await self._connect()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._link_forever(conn, reader),
                                        name="clarion-redis-link"),
                       loop.create_task(self._flush_forever(), name="clarion-redis-subscribe")]

    async def close(self) -> None:
        self._closing = True
        tasks, self._tasks = self._tasks, []
        # A Cluster's link can be retired from its own reconnect loop (_link_lost, through
        # _rehome): that task neither cancels nor awaits itself; it ends when _link_lost
        # answers False.
        current = asyncio.current_task()
        tasks = [task for task in tasks if task is not current]
        for task in tasks:
            task.cancel()
        for task in tasks:
            await _settle(task)
        conn = self._conn
        if conn is not None:
            await self._lose(conn)
        self._link_up.clear()
        batch, self._batch = self._batch, None
        if batch is not None and not batch.done():
            batch.set_result(False)
        self.wanted.clear()
        self._touched.clear()

    # -- subscriptions ------------------------------------------------------------------------

    async def subscribe(self, name: str, *, keep: bool = False) -> bool:
        """Subscribe and wait until Redis confirmed it; False when it could not within the
        command timeout (then ``name`` is given up, unless ``keep``: a reconnect retries)."""
        added = name not in self.wanted
        self.wanted.add(name)
        self._touched.add(name)
        batch = self._batch
        if batch is None:
            batch = self._batch = asyncio.get_running_loop().create_future()
        self._flush_needed.set()
        try:
            async with asyncio.timeout(self.broker.command_timeout):
                ok = await asyncio.shield(batch)
        except TimeoutError:
            ok = False
        if not ok and added and not keep:
            self.wanted.discard(name)
            self._touched.add(name)
            self._flush_needed.set()
        return ok

    def unsubscribe(self, name: str) -> None:
        # Nothing to wait for: messages still in flight are dropped by the broker, and a
        # reconnect resubscribes only what is wanted.
        if name in self.wanted:
            self.wanted.discard(name)
            self._touched.add(name)
            self._flush_needed.set()

    def forget(self, name: str) -> None:
        """Drop ``name`` without telling the server, which already dropped it (a Cluster slot
        that moved away unsubscribes its channels by itself, and refuses SUNSUBSCRIBE)."""
        self.wanted.discard(name)
        self._server.discard(name)
        self._touched.discard(name)

    def _commands(self, verb: str, names: list[str]) -> list[tuple[str, ...]]:
        if not self.sharded:
            return [(verb, *names[i:i + SUBSCRIBE_BATCH])
                    for i in range(0, len(names), SUBSCRIBE_BATCH)]
        by_slot: dict[int, list[str]] = {}
        for name in names:
            by_slot.setdefault(key_slot(name.encode()), []).append(name)
        return [(verb, *group[i:i + SUBSCRIBE_BATCH]) for group in by_slot.values()
                for i in range(0, len(group), SUBSCRIBE_BATCH)]

    async def _flush_forever(self) -> None:
        while True:
            await self._flush_needed.wait()
            # One turn of the loop lets every subscribe() started in this turn join the write.
            await asyncio.sleep(0)
            self._flush_needed.clear()
            conn = self._conn
            if conn is None:
                # The link task resubscribes everything wanted, then sets _flush_needed.
                await self._link_up.wait()
                self._flush_needed.set()
                continue
            touched, self._touched = self._touched, set()
            batch, self._batch = self._batch, None
            subs = [n for n in touched if n in self.wanted and n not in self._server]
            unsubs = [n for n in touched if n not in self.wanted and n in self._server]
            commands = self._commands(self._unsub, unsubs) + self._commands(self._sub, subs)
            if batch is None:
                if not commands:
                    continue
                batch = asyncio.get_running_loop().create_future()
            for n in touched:
                if n in self.wanted:
                    self._server.add(n)
                else:
                    self._server.discard(n)
            if not await self._send(conn, commands, batch):
                self._touched |= touched  # resent after the reconnect, with the rest

    async def _send(self, conn: AbstractConnection, commands: list[tuple[str, ...]],
                    barrier: asyncio.Future[bool]) -> bool:
        """Write commands plus a PING whose reply resolves ``barrier``.

        Redis answers a connection's commands in order, so the PING's reply means every
        SUBSCRIBE before it is in effect: publications made after it reach this node."""
        token = b"b%d" % next(self._tokens)
        self._barriers[token] = barrier
        commands.append(("PING", token.decode()))
        if conn is not self._conn or not conn.is_connected:
            # redis-py would reconnect a closed connection by itself, unsubscribed.
            self._resolve(token, False)
            return False
        try:
            async with asyncio.timeout(self.broker.command_timeout):
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis Pub/Sub write failed (%s): %s", self.where, exc)
            self._resolve(token, False)
            await self._lose(conn)
            return False
        return True

    def _resolve(self, token: bytes, ok: bool) -> None:
        fut = self._barriers.pop(token, None)
        if fut is not None and not fut.done():
            fut.set_result(ok)

    # -- the connection -----------------------------------------------------------------------

    async def _open(self) -> AbstractConnection:
        conn = self._opener()
        connect: Callable[[], Awaitable[None]] = conn.connect  # untyped in redis-py
        timeout = self.broker.connect_timeout
        try:
            async with asyncio.timeout(timeout + self.broker.command_timeout):
                await connect()
        except TimeoutError:
            await _disconnect(conn)
            raise BrokerError(f"redis: no connection within {timeout:g} s "
                              f"({self.where})") from None
        except (RedisError, OSError) as exc:
            await _disconnect(conn)
            raise BrokerError(f"redis: cannot connect ({self.where}): {exc}") from exc
        except BaseException:
            await _disconnect(conn)
            raise
        self._conn = conn
        self._server = set()
        self._error_since_barrier = False
        self._link_up.set()
        return conn

    async def _connect(self) -> tuple[AbstractConnection, asyncio.Task[None]]:
        """Open a connection and subscribe everything wanted in one write, confirmed."""
        conn = await self._open()
        names = sorted(self.wanted)
        self._server = set(names)
        loop = asyncio.get_running_loop()
        barrier: asyncio.Future[bool] = loop.create_future()
        reader = loop.create_task(self._read(conn))
        try:
            if not await self._send(conn, self._commands(self._sub, names), barrier):
                raise BrokerError(f"redis: the subscribe could not be written ({self.where})")
            try:
                async with asyncio.timeout(self.broker.command_timeout):
                    ok = await barrier
            except TimeoutError:
                ok = False
            if not ok:
                raise BrokerError(f"redis: the subscribe was not confirmed ({self.where})")
        except BaseException:
            await _cancel(reader)
            await self._lose(conn)
            raise
        # What changed meanwhile goes out with the next write.
        self._touched |= self.wanted.symmetric_difference(names)
        self._flush_needed.set()
        return conn, reader

    async def _lose(self, conn: AbstractConnection) -> None:
        if self._conn is conn:
            self._conn = None
            self._link_up.clear()
            self._server = set()
            for token in list(self._barriers):
                self._resolve(token, False)
        await _disconnect(conn)

    async def _link_forever(self, conn: AbstractConnection, reader: asyncio.Task[None]) -> None:
        broker = self.broker
        attempt = 0
        while True:
            await self._serve(conn, reader)
            # The link is gone: reconnect with exponential backoff and full jitter, so the
            # nodes of a cluster do not all come back in the same millisecond.
            while True:
                delay = min(broker.reconnect_delay_max, broker.reconnect_delay * 2 ** attempt)
                attempt += 1
                await asyncio.sleep(random.uniform(delay / 2, delay))
                try:
                    # The broker's look at the topology is part of the attempt: a Cluster
                    # that is down everywhere fails it as the connect does.
                    if not await broker._link_lost(self):
                        return  # retired: what it carried lives on other links now
                    conn, reader = await self._connect()
                except BrokerError as exc:
                    log.warning("redis Pub/Sub reconnect failed, retrying: %s", exc)
                    continue
                except Exception:  # logged with its traceback
                    # Not an error the broker expects (uvloop's RuntimeError on a transport
                    # closed under a handshake, an exception class redis-py added): still a
                    # failed attempt, never the end of the link, or this node would
                    # silently stop receiving.
                    broker.handler_errors += 1
                    log.exception("redis Pub/Sub reconnect failed unexpectedly (%s), retrying",
                                  self.where)
                    continue
                attempt = 0
                break
            broker.reconnects += 1
            names = sorted(self._server)
            log.info("redis Pub/Sub reconnected (%s); resubscribed %d channels",
                     self.where, len(names))
            broker._resubscribed(names)

    async def _serve(self, conn: AbstractConnection, reader: asyncio.Task[None]) -> None:
        """Keep one connection alive until its reader or its keepalive fails."""
        keepalive = asyncio.get_running_loop().create_task(self._keepalive(conn))
        try:
            await asyncio.wait([reader, keepalive], return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel(reader)
            await _cancel(keepalive)
            await self._lose(conn)

    async def _keepalive(self, conn: AbstractConnection) -> None:
        # A half-open TCP connection never fails a read; an unanswered PING finds it.
        broker = self.broker
        while True:
            await asyncio.sleep(broker.ping_interval)
            barrier: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            if not await self._send(conn, [], barrier):
                return
            try:
                async with asyncio.timeout(broker.command_timeout):
                    ok = await barrier
            except TimeoutError:
                ok = False
            if not ok:
                log.warning("redis Pub/Sub connection did not answer a PING within %g s (%s)",
                            broker.command_timeout, self.where)
                return
            if await broker._link_stale(conn):
                return

    async def _read(self, conn: AbstractConnection) -> None:
        message = self._message
        dispatch = self.broker._dispatch
        try:
            while True:
                try:
                    response = await conn.read_response()
                except ResponseError as exc:
                    # An error reply (MOVED, CLUSTERDOWN…) to one of this link's commands:
                    # the next barrier reports failure, and the broker finds out why.
                    self._error_since_barrier = True
                    self.broker._link_error(self, exc)
                    continue
                if isinstance(response, list):
                    kind = response[0]
                    if kind == message:
                        dispatch(self, response[1], response[2])
                    elif kind == b"pong":
                        self._resolve(response[1], not self._error_since_barrier)
                        self._error_since_barrier = False
                    elif kind == b"sunsubscribe":
                        self._sunsubscribed(response[1])
                    # Other confirmations: the PING barrier covers them.
                elif isinstance(response, bytes):
                    self._resolve(response, True)  # PING's reply outside subscribed mode
        except (RedisError, OSError) as exc:
            if not self._closing:
                log.warning("redis Pub/Sub connection lost (%s): %s", self.where, exc)
        except Exception:
            # Not a network failure: a bug. Reconnecting still beats a node that silently
            # stops receiving.
            log.exception("redis Pub/Sub reader failed (%s)", self.where)

    def _sunsubscribed(self, raw: bytes) -> None:
        name = raw.decode(errors="replace")
        if name in self._server:
            # Not asked for (what this link unsubscribes leaves _server when it is sent):
            # the server dropped it, because its Cluster slot moved to another node.
            self._server.discard(name)
            if name in self.wanted:
                self.broker._link_evicted(self, name)


class RedisBroker(Broker):
    """A broker on one Redis server (standalone, or a primary behind a stable address)."""

    _schemes: tuple[str, ...] = ("redis://", "rediss://", "unix://")
    # What the command client raises for an outage; every one becomes BrokerError.
    _client_errors: tuple[type[Exception], ...] = (RedisError, OSError)

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "clarion",
        pool_size: int = 32,
        connect_timeout: float = 1.0,
        command_timeout: float = 4.0,
        ping_interval: float = 5.0,
        reconnect_delay: float = 0.1,
        reconnect_delay_max: float = 5.0,
        node_id: str | None = None,
    ) -> None:
        if not url.startswith(self._schemes):
            raise ConfigError(f"broker: {_redact(url)!r} is not a "
                              f"{', '.join(s.rstrip('/') for s in self._schemes)} URL")
        if "{" in prefix or "}" in prefix:
            # A brace in the prefix would become the Cluster hash tag of every key.
            raise ConfigError("broker: the redis key prefix must not contain { or }")
        for name, value in (("pool_size", pool_size), ("connect_timeout", connect_timeout),
                            ("command_timeout", command_timeout),
                            ("ping_interval", ping_interval),
                            ("reconnect_delay", reconnect_delay),
                            ("reconnect_delay_max", reconnect_delay_max)):
            if not value > 0:
                raise ConfigError(f"broker: redis option {name} must be > 0, not {value!r}")
        if node_id is not None and (not node_id or "{" in node_id or "}" in node_id):
            raise ConfigError("broker: node_id must be a non-empty string without { or }")
        self.url = url
        self.prefix = prefix
        self.pool_size = int(pool_size)
        self.connect_timeout = float(connect_timeout)
        self.command_timeout = float(command_timeout)
        self.ping_interval = float(ping_interval)
        self.reconnect_delay = float(reconnect_delay)
        self.reconnect_delay_max = float(reconnect_delay_max)
        self._node_id = node_id or secrets.token_hex(8)
        self._where = _redact(url)
        self._pubsub_prefix = f"{prefix}:client:{{"
        self._plen = len(self._pubsub_prefix)
        # Control channels share one hash tag, so in a Cluster they live on one node.
        self._control_channel = f"{prefix}:{{control}}"
        self._control_names = frozenset((self._control_channel,
                                         self._node_channel(self._node_id)))
        # Whether this broker carries control messages; a sharded broker leaves them to its
        # first shard, so a message is not delivered once per shard.
        self.control = True

        self._handler: BrokerEventHandler | None = None
        self._pool: Any = None
        self._client: Any = None
        self._pub: Callable[[str, bytes], Awaitable[Any]] | None = None
        self._publish_many_script: Any = None
        self._history_script: Any = None
        self._presence_add_script: Any = None
        self._presence_remove_script: Any = None
        self._presence_get_script: Any = None
        self._link: Link | None = None
        self._background: set[asyncio.Task[None]] = set()
        # Single publications waiting for the next shared script call (see publish), and the task
        # sending them while one is in flight.
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._sending: list[_Outgoing] = []  # the call in flight
        self._sender: asyncio.Task[None] | None = None
        self._publishing = False  # between start and close
        # Counters for the hub's metrics and /health.
        self.reconnects = 0
        self.handler_errors = 0
        self.undecodable_messages = 0

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the Pub/Sub link is up (publications from other nodes can arrive)."""
        return self._link is not None and self._link.connected

    def _pool_options(self) -> dict[str, Any]:
        return dict(
            socket_timeout=self.command_timeout,
            socket_connect_timeout=self.connect_timeout,
            # No retries inside redis-py: a retried EVALSHA after a reply was lost would
            # publish twice. A failure reaches the caller as BrokerError; callers that retry
            # pass an idempotency key.
            retry=Retry(NoBackoff(), 0),
            client_name="clarion",
            # RESP2 on every version of redis-py: the Pub/Sub reader reads messages as plain
            # replies (RESP3 would route them to redis-py's push handlers instead), and
            # redis-py 8 defaults to RESP3.
            protocol=2,
        )

    async def _connect_client(self) -> Any:
        """The command client (its pool in ``self._pool`` when it has one)."""
        try:
            self._pool = BlockingConnectionPool.from_url(
                self.url, max_connections=self.pool_size, timeout=self.command_timeout,
                **self._pool_options())
            # redis-py passes unknown URL parameters on to the connection class: building one
            # (it does not connect) turns a misspelt ?parameter into a clear error at start.
            self._pool.make_connection()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"broker: {self._where!r}: {exc}") from None
        self._pool.connection_class = with_hiredis_packing(self._pool.connection_class)
        return Redis(connection_pool=self._pool)

    def _pubsub_connection(self) -> AbstractConnection:
        """A new, unconnected connection for a Pub/Sub link."""
        pool = self._pool
        assert pool is not None
        kwargs = dict(pool.connection_kwargs)
        # Reads on this connection wait for publications, for as long as there are none;
        # liveness is the keepalive PING's job.
        kwargs.update(socket_timeout=None, client_name="clarion-pubsub")
        conn: AbstractConnection = pool.connection_class(**kwargs)
        return conn

    def _register_scripts(self, client: Any) -> None:
        self._publish_many_script = client.register_script(PUBLISH_MANY_LUA)
        self._history_script = client.register_script(HISTORY_LUA)
        self._presence_add_script = client.register_script(PRESENCE_ADD_LUA)
        self._presence_remove_script = client.register_script(PRESENCE_REMOVE_LUA)
        self._presence_get_script = client.register_script(PRESENCE_GET_LUA)

    async def start(self, handler: BrokerEventHandler) -> None:
        if self._client is not None:
            raise BrokerError("broker is already started")
        try:
            client = self._client = await self._connect_client()
            self._pub = getattr(client, self._publish_command)
            self._register_scripts(client)
            await self._start_links()
        except BaseException:
            await self._release()
            raise
        self._handler = handler
        self._publishing = True

    async def _start_links(self) -> None:
        link = Link(self, self._where, self._pubsub_connection)
        if self.control:
            link.wanted |= self._control_names
        await link.start()
        self._link = link

    async def close(self) -> None:
        self._publishing = False  # publishes from now on are refused, not queued
        for task in list(self._background):
            await _cancel(task)
        sender, self._sender = self._sender, None
        if sender is not None:
            await _cancel(sender)
        self._answer_waiting(BrokerError("broker is closed"))
        link, self._link = self._link, None
        if link is not None:
            await link.close()
        self._handler = None
        await self._release()

    async def _release(self) -> None:
        client, self._client = self._client, None
        pool, self._pool = self._pool, None
        if client is not None:
            with contextlib.suppress(*self._client_errors):
                await client.aclose()
        if pool is not None:
            with contextlib.suppress(RedisError, OSError):
                await pool.disconnect()

    def _require(self) -> Any:
        if self._client is None or self._handler is None:
            raise BrokerError("broker is not started")
        return self._client

    async def _call(self, what: str, work: Awaitable[T]) -> T:
        """Run one Redis operation within the command timeout; every failure is BrokerError."""
        try:
            async with asyncio.timeout(self.command_timeout):
                return await work
        except TimeoutError:
            raise BrokerError(f"redis {what} timed out after {self.command_timeout:g} s "
                              f"({self._where})") from None
        except self._client_errors as exc:
            raise BrokerError(f"redis {what} failed ({self._where}): {exc}") from exc

    # -- keys ---------------------------------------------------------------------------------

    def _stream_key(self, channel: str) -> str:
        return f"{self.prefix}:stream:{{{channel}}}"

    def _meta_key(self, channel: str) -> str:
        return f"{self.prefix}:meta:{{{channel}}}"

    def _idem_key(self, channel: str, key: str) -> str:
        return f"{self.prefix}:idem:{{{channel}}}:{key}"

    def _presence_keys(self, channel: str) -> tuple[str, str]:
        return (f"{self.prefix}:presence:{{{channel}}}",
                f"{self.prefix}:presence-expire:{{{channel}}}")

    def _pubsub_channel(self, channel: str) -> str:
        return f"{self._pubsub_prefix}{channel}}}"

    def _node_channel(self, node_id: str) -> str:
        return f"{self._control_channel}:{node_id}"

    def ticket_key(self, ticket: str) -> str:
        """The key a ticket is stored under (what the Django tickets app writes)."""
        return tickets.ticket_key(ticket, self.prefix)

    # -- publishing ---------------------------------------------------------------------------

    async def publish(self, channel: str, data: bytes, options: PublishOptions) -> PublishResult:
        """Single publications from concurrent callers (separate HTTP requests, clients)
        share script calls: one call in flight at a time, and what is added meanwhile leaves
        together in the next, in the order added, as Centrifugo's Redis engine pipelines
        concurrent commands. Each caller waits at most ``command_timeout``; a publication
        whose caller gave up before its call was sent is not sent."""
        self._require()
        if not self._publishing:
            raise BrokerError("broker is closed")
        loop = asyncio.get_running_loop()
        waiting = _Outgoing(channel, data, options, loop.create_future())
        self._outbox.append(waiting)
        if self._sender is None:
            self._sender = loop.create_task(self._send_outbox(), name="clarion-redis-publish")
        try:
            async with asyncio.timeout(self.command_timeout):
                result = await waiting.future
        except TimeoutError:
            # Not yet sent: dropped. Sent: it may still take effect, as any command whose
            # reply did not come in time (callers that retry pass an idempotency key).
            waiting.future.cancel()
            raise BrokerError(f"redis publish timed out after {self.command_timeout:g} s "
                              f"({self._where})") from None
        if isinstance(result, BrokerError):
            raise result
        return result

    async def publish_many(
        self, requests: Sequence[tuple[str, bytes, PublishOptions]],
    ) -> list[PublishResult | BrokerError]:
        """One script call per ``PUBLISH_MANY_CHUNK`` publications, in order: Redis runs a
        script's commands in order, so each channel's order holds. Against one EVALSHA each in
        a pipeline, this saves redis-py's per-command packing and reply parsing (a third of
        the hub's time at 26,000 publications/s) and Redis's per-script overhead. Runs from
        concurrent callers go out side by side (each on a pooled connection), so the hub's
        work and Redis's overlap; a single publication joins ``publish``'s shared calls."""
        self._require()
        if len(requests) == 1:
            channel, data, options = requests[0]
            try:
                return [await self.publish(channel, data, options)]
            except BrokerError as exc:
                return [exc]
        return await self._publish_now(requests)

    async def _send_outbox(self) -> None:
        outbox = self._outbox
        try:
            while outbox:
                batch = self._sending
                while outbox and len(batch) < PUBLISH_MANY_CHUNK:
                    waiting = outbox.popleft()
                    if not waiting.future.done():  # its caller has not given up
                        batch.append(waiting)
                if not batch:
                    continue
                try:
                    results = await self._publish_now(
                        [(w.channel, w.data, w.options) for w in batch])
                except Exception as exc:  # noqa: BLE001 - goes to each caller, as raised
                    # Not an outage (those are results): each caller gets it as it came, and
                    # the hub's 500 path logs it with its traceback.
                    for waiting in batch:
                        if not waiting.future.done():
                            waiting.future.set_exception(exc)
                else:
                    for waiting, result in zip(batch, results, strict=True):
                        if not waiting.future.done():
                            waiting.future.set_result(result)
                batch.clear()
        finally:
            if self._sender is asyncio.current_task():
                self._sender = None
            # Cancelled (close) with publications in flight or still waiting: they get an
            # answer now rather than waiting out their timeout.
            self._answer_waiting(BrokerError("broker is closed"))

    def _answer_waiting(self, error: BrokerError) -> None:
        for waiting in (*self._sending, *self._outbox):
            if not waiting.future.done():
                waiting.future.set_result(error)
        self._sending.clear()
        self._outbox.clear()

    async def _publish_now(
        self, requests: Sequence[tuple[str, bytes, PublishOptions]],
    ) -> list[PublishResult | BrokerError]:
        """``requests`` in script calls of up to ``PUBLISH_MANY_CHUNK``, one after another."""
        results: list[PublishResult | BrokerError] = []
        for start in range(0, len(requests), PUBLISH_MANY_CHUNK):
            results += await self._publish_chunk(requests[start:start + PUBLISH_MANY_CHUNK])
        return results

    async def _publish_chunk(
        self, requests: Sequence[tuple[str, bytes, PublishOptions]],
    ) -> list[PublishResult | BrokerError]:
        keys: list[str] = []
        args: list[Any] = [self._publish_command, _new_epoch()]
        now = time.time()  # one clock read per call: the publications are sent together
        stream_key, meta_key, idem_key = self._stream_key, self._meta_key, self._idem_key
        pubsub_channel = self._pubsub_channel
        # Publications of one call mostly share their options; the history numbers are
        # worked out once per options object, not once per publication.
        history_args: dict[int, tuple[int, int, int]] = {}
        for channel, data, options in requests:
            info = options.info
            envelope = _encode(_Envelope(data, now, None if info is None
                                         else _pack_info(info), options.tags or None))
            history = history_args.get(id(options))
            if history is None:
                history = history_args[id(options)] = _history_args(options)
            keys += (stream_key(channel), meta_key(channel),
                     idem_key(channel, options.idempotency_key))
            args += (envelope, *history, pubsub_channel(channel),
                     _ms(options.idempotent_result_ttl) if options.idempotency_key else 0)
        try:
            reply = await self._call("publish", self._publish_many_script(keys=keys, args=args))
        except BrokerError as exc:
            return [exc] * len(requests)
        results: list[PublishResult | BrokerError] = []
        for i in range(len(requests)):
            result, suppressed = bytes(reply[2 * i]), reply[2 * i + 1]
            if result.startswith(b"!"):
                results.append(BrokerError(
                    f"redis publish failed ({self._where}): {result[1:].decode(errors='replace')}"))
            else:
                results.append(_publish_result((result, suppressed)))
        return results

    # PUBLISH, or SPUBLISH on a Cluster: the publish script's first argument.
    _publish_command = "publish"

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self._publish_raw("publish_join", self._pubsub_channel(channel),
                                b"j" + _encode(_pack_info(info)))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._publish_raw("publish_leave", self._pubsub_channel(channel),
                                b"l" + _encode(_pack_info(info)))

    async def publish_control(self, data: bytes, *, to: str | None = None) -> None:
        name = self._control_channel if to is None else self._node_channel(to)
        await self._publish_raw("publish_control", name, data)

    async def _publish_raw(self, what: str, name: str, payload: bytes) -> None:
        self._require()
        assert self._pub is not None
        await self._call(what, self._pub(name, payload))

    # -- history ------------------------------------------------------------------------------

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int = 0,
        reverse: bool = False,
        meta_ttl: float = 30 * 24 * 3600.0,
    ) -> HistoryResult:
        self._require()
        keys = [self._stream_key(channel), self._meta_key(channel)]
        args = [_new_epoch(), _ms(meta_ttl), -1 if since is None else since.offset,
                "" if since is None else since.epoch, max(limit, -1), 1 if reverse else 0]
        top, epoch, entries = await self._call(
            "history", self._history_script(keys=keys, args=args))
        position = StreamPosition(int(top), bytes(epoch).decode())
        try:
            pubs = [_publication(int(entry_id.partition(b"-")[0]), fields[1])
                    for entry_id, fields in entries]
        except (msgspec.DecodeError, ValueError, IndexError, TypeError) as exc:
            raise BrokerError(f"redis history of {channel!r}: an entry is not a Clarion "
                              f"publication ({exc})") from None
        return HistoryResult(pubs, position)

    async def remove_history(self, channel: str) -> None:
        # The meta hash stays: the epoch and offset go on, so clients see a gap.
        client = self._require()
        await self._call("remove_history", client.delete(self._stream_key(channel)))

    # -- presence -----------------------------------------------------------------------------

    async def add_presence(self, channel: str, info: ClientInfo, ttl: float) -> None:
        self._require()
        await self._call("add_presence", self._presence_add_script(
            keys=list(self._presence_keys(channel)),
            args=[info.client, _encode(_pack_info(info)), _ms(ttl)]))

    async def remove_presence(self, channel: str, client: str) -> None:
        self._require()
        await self._call("remove_presence", self._presence_remove_script(
            keys=list(self._presence_keys(channel)), args=[client]))

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        self._require()
        flat = await self._call("presence", self._presence_get_script(
            keys=list(self._presence_keys(channel)), args=[]))
        out: dict[str, ClientInfo] = {}
        for i in range(0, len(flat) - 1, 2):
            try:
                info = _unpack_info(_decode_info(flat[i + 1]))
            except msgspec.DecodeError:
                log.warning("redis presence of %r: skipped an entry that is not Clarion's",
                            channel)
                continue
            out[info.client] = info
        return out

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        members = await self.presence(channel)
        return len(members), len({info.user for info in members.values()})

    # -- tickets ------------------------------------------------------------------------------

    async def store_ticket(self, ticket: str, payload: bytes, ttl: float) -> None:
        client = self._require()
        stored = await self._call("store_ticket", client.set(
            self.ticket_key(ticket), payload, nx=True, px=_ms(ttl)))
        if not stored:
            raise BrokerError("redis store_ticket: a ticket with this id exists already")

    async def consume_ticket(self, ticket: str) -> bytes | None:
        client = self._require()
        value = await self._call("consume_ticket", client.getdel(self.ticket_key(ticket)))
        # redis-py types the reply as str too; without decode_responses it is always bytes.
        return value.encode() if isinstance(value, str) else value

    # -- fan-out ------------------------------------------------------------------------------

    def _link_of(self, channel: str) -> Link:
        if self._handler is None or self._link is None:
            raise BrokerError("broker is not started")
        return self._link

    async def subscribe(self, channel: str) -> None:
        link = self._link_of(channel)
        if not await link.subscribe(self._pubsub_channel(channel)):
            state = "is down, reconnecting" if not link.connected else "did not confirm"
            raise BrokerError(f"redis subscribe to {channel!r}: the Pub/Sub connection "
                              f"{state} ({link.where})")

    async def unsubscribe(self, channel: str) -> None:
        self._link_of(channel).unsubscribe(self._pubsub_channel(channel))

    def _dispatch(self, link: Link, raw_name: bytes, payload: bytes) -> None:
        handler = self._handler
        if handler is None:
            return
        channel = ""
        try:
            name = raw_name.decode()
            if name not in link.wanted:
                return  # unsubscribed while this was in flight
            if name in self._control_names:
                self._deliver_control(handler, payload)
                return
            channel = name[self._plen:-1]
            kind = payload[:1]
            if kind == b"p":
                offset, epoch, body = payload[1:].split(b":", 2)
                pub = _publication(int(offset), body)
                event: Publication | ClientInfo = pub
            elif kind in (b"j", b"l"):
                event = _unpack_info(_decode_info(payload[1:]))
            else:
                raise ValueError(f"unknown message kind {kind!r}")
        except (msgspec.DecodeError, ValueError, UnicodeDecodeError) as exc:
            self.undecodable_messages += 1
            log.warning("redis Pub/Sub: skipped a message on %r that is not Clarion's: %s",
                        raw_name, exc)
            return
        try:
            if isinstance(event, Publication):
                handler.on_publication(channel, event, epoch.decode())
            elif kind == b"j":
                handler.on_join(channel, event)
            else:
                handler.on_leave(channel, event)
        except Exception:
            # One failing subscriber must not stop delivery to every other channel.
            self.handler_errors += 1
            log.exception("broker handler failed on a message of %r", channel)

    def _deliver_control(self, handler: BrokerEventHandler, payload: bytes) -> None:
        hook: Callable[[bytes], None] | None = getattr(handler, "on_control", None)
        if hook is None:
            return
        try:
            hook(payload)
        except Exception:
            self.handler_errors += 1
            log.exception("broker handler on_control failed")

    # -- what links tell their broker ---------------------------------------------------------

    def _resubscribed(self, names: list[str]) -> None:
        """A link is back with ``names`` resubscribed: tell the handler which channels."""
        hook: Callable[[list[str]], None] | None = getattr(
            self._handler, "on_resubscribed", None)
        if hook is None:
            return
        control = self._control_names
        plen = self._plen
        channels = sorted(n[plen:-1] for n in names if n not in control)
        try:
            hook(channels)
        except Exception:
            self.handler_errors += 1
            log.exception("broker handler on_resubscribed failed")

    async def _link_lost(self, link: Link) -> bool:
        """Called before each reconnect attempt; False retires the link."""
        return True

    async def _link_stale(self, conn: AbstractConnection) -> bool:
        """Whether a live connection no longer reaches the right server (after a failover)."""
        return False

    def _link_error(self, link: Link, exc: ResponseError) -> None:
        log.warning("redis Pub/Sub: error reply (%s): %s", link.where, exc)

    def _link_evicted(self, link: Link, name: str) -> None:
        # Only a Cluster drops subscriptions by itself; elsewhere, ask again.
        self._resubscribe_soon(link, name)

    def _resubscribe_soon(self, link: Link, name: str) -> None:
        async def again() -> None:
            if await link.subscribe(name, keep=True):
                self._resubscribed([name])

        task = asyncio.get_running_loop().create_task(again())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await _settle(task)


async def _settle(task: asyncio.Task[None]) -> None:
    """Wait for a cancelled task. One that had died of an error instead is logged, not
    raised: closing a broker must not fail because a background task once did.

    The caller's own cancellation (a timeout around close(), its task cancelled) still
    propagates: only the awaited task's CancelledError is swallowed. Cancelling a task that
    awaits another cancels that one too, so the awaited task being cancelled proves nothing;
    the caller's count of cancel requests growing across the wait does."""
    current = asyncio.current_task()
    requested = current.cancelling() if current is not None else 0
    try:
        await task
    except asyncio.CancelledError:
        if (current is None or task is current or current.cancelling() > requested
                or not (task.done() and task.cancelled())):
            raise
    except Exception:
        log.exception("redis broker task %s had failed", task.get_name())


async def _disconnect(conn: AbstractConnection) -> None:
    with contextlib.suppress(RedisError, OSError):
        await conn.disconnect(nowait=True)


