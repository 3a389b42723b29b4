"""RedisBroker against the broker conformance suite and Redis-specific behaviour.

The machine's Redis (127.0.0.1:6379, also running for CI) serves the shared tests, each under
its own key prefix, removed afterwards. Tests that restart or stop a server start their own
``redis-server`` on a free port. Time is real: the expiry tests sleep, so ``short_ttl`` is small.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from broker_conformance import BrokerConformance, Recorder, history_on
from broker_conformance_multi import MultiNodeBrokerConformance
from clarion.broker import create_broker
from clarion.broker.base import Broker, ClientInfo, PublishOptions, StreamPosition
from clarion.broker.memory import MemoryBroker
from clarion.broker.redis import RedisBroker
from clarion.errors import BrokerError, ConfigError
from conftest import free_port, in_ci, redis_up

REDIS_URL = "redis://127.0.0.1:6379/0"




@pytest.fixture(scope="session")
def redis_available() -> None:
    if not redis_up():
        why = "no Redis at 127.0.0.1:6379"
        if in_ci():
            pytest.fail(f"{why}; CI must run one")
        pytest.skip(why)


@pytest.fixture
async def prefix(redis_available: None) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards (SCAN + DEL)."""
    name = f"clarion-test-{uuid.uuid4().hex[:10]}"
    yield name
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{name}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


class TestRedisBroker(BrokerConformance):
    # Redis keeps time in milliseconds; 0.3 s leaves room for a loaded machine's sleeps in the
    # refresh test (0.36 s after the refresh of an entry with 0.6 s to live).
    short_ttl = 0.3

    @pytest.fixture
    def broker(self, prefix: str) -> Broker:
        return RedisBroker(REDIS_URL, prefix=prefix)

    async def advance(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def pubsub_links(broker: Broker) -> list[tuple[str, int, str]]:
    """(server host, server port, our local address) of every Pub/Sub link of a Redis broker,
    sharded, clustered or not."""
    from clarion.broker.sharded import ShardedBroker

    brokers = broker.shards if isinstance(broker, ShardedBroker) else [broker]
    out = []
    for b in brokers:
        assert isinstance(b, RedisBroker)
        links = list(getattr(b, "_links", {}).values()) or [b._link]
        for link in links:
            assert link is not None and link._conn is not None
            conn: Any = link._conn
            host, port = conn._writer.get_extra_info("sockname")[:2]
            out.append((conn.host, int(conn.port), f"{host}:{port}"))
    return out


async def kill_pubsub_links(broker: Broker) -> None:
    """Cut a broker's Pub/Sub connections from the server side, as a network failure would,
    touching no other client of the server (other tests' and other programs' included)."""
    for host, port, addr in pubsub_links(broker):
        admin = aioredis.Redis(host=host, port=port)
        try:
            await admin.execute_command("CLIENT", "KILL", "ADDR", addr)
        finally:
            await admin.aclose()


class TestRedisBrokerMulti(MultiNodeBrokerConformance):
    @pytest.fixture
    def make_broker(self, prefix: str) -> Callable[[], Broker]:
        return lambda: RedisBroker(REDIS_URL, prefix=prefix, reconnect_delay=0.05)

    async def break_link(self, broker: Broker) -> None:
        await kill_pubsub_links(broker)


# -- helpers for Redis-specific tests ---------------------------------------------------------


class Handler(Recorder):
    """A Recorder that also takes the optional ``on_resubscribed`` hook."""

    def __init__(self) -> None:
        super().__init__()
        self.resubscribed: list[list[str]] = []

    def on_resubscribed(self, channels: list[str]) -> None:
        self.resubscribed.append(channels)
        self.changed.set()


class RedisServer:
    """A redis-server of the test's own on a free port, without persistence."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.port = free_port()
        self.directory = directory
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            if in_ci():
                pytest.fail("redis-server is not installed; CI must have it")
            pytest.skip("redis-server is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5):
                return self
            if self.process.poll() is not None:
                pytest.fail(f"redis-server exited with {self.process.returncode}")
            time.sleep(0.02)
        pytest.fail("redis-server did not start listening within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@contextlib.asynccontextmanager
async def running(broker: RedisBroker, handler: Recorder | None = None
                  ) -> AsyncIterator[tuple[RedisBroker, Recorder]]:
    handler = handler or Recorder()
    await broker.start(handler)
    try:
        yield broker, handler
    finally:
        await broker.close()


def _id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


# -- construction -----------------------------------------------------------------------------


def test_create_broker_builds_redis_with_options() -> None:
    broker = create_broker("redis://:pw@127.0.0.1:6390/3", prefix="app", pool_size=4,
                           connect_timeout=0.5, command_timeout=2)
    assert isinstance(broker, RedisBroker)
    assert (broker.prefix, broker.pool_size, broker.connect_timeout, broker.command_timeout) == (
        "app", 4, 0.5, 2.0)
    assert isinstance(create_broker("rediss://127.0.0.1:6390"), RedisBroker)
    assert isinstance(create_broker("unix:///run/redis.sock?db=1"), RedisBroker)
    assert isinstance(create_broker("memory"), MemoryBroker)
    with pytest.raises(ConfigError, match="unexpected keyword"):
        create_broker(REDIS_URL, pool=3)
    with pytest.raises(ConfigError, match="memory takes no options"):
        create_broker("memory", prefix="x")
    with pytest.raises(ConfigError, match="must not contain"):
        RedisBroker(REDIS_URL, prefix="a{b}")
    with pytest.raises(ConfigError, match="command_timeout"):
        RedisBroker(REDIS_URL, command_timeout=0)


async def test_errors_never_show_the_password(redis_available: None) -> None:
    port = free_port()
    broker = RedisBroker(f"redis://:hunter2@127.0.0.1:{port}/0", connect_timeout=0.5)
    with pytest.raises(BrokerError) as err:
        await broker.start(Recorder())
    assert "hunter2" not in str(err.value)
    assert "***" in str(err.value)


# -- several instances on one Redis -----------------------------------------------------------


async def test_two_instances_deliver_each_others_publications_in_order(prefix: str) -> None:
    channel = _id("two")
    async with running(RedisBroker(REDIS_URL, prefix=prefix)) as (a, ha), \
            running(RedisBroker(REDIS_URL, prefix=prefix)) as (b, hb):
        await asyncio.gather(a.subscribe(channel), b.subscribe(channel))
        opts = history_on(size=100)

        async def publish_from(broker: RedisBroker, name: bytes) -> None:
            for i in range(25):
                await broker.publish(channel, b'"%s%d"' % (name, i), opts)

        await asyncio.gather(publish_from(a, b"a"), publish_from(b, b"b"))
        for handler in (ha, hb):
            await handler.until(lambda h=handler: len(h.pubs(channel)) == 50)
            assert [p.offset for p, _ in handler.pubs(channel)] == list(range(1, 51))
        # Both nodes saw the same sequence, which is the sequence in history.
        assert ha.data(channel) == hb.data(channel)
        hist = await b.history(channel, limit=-1)
        assert [p.data for p in hist.publications] == ha.data(channel)
        # Join and leave reach the other node too.
        info = ClientInfo(_id("c"), "u", b'{"a":1}', None)
        await a.publish_join(channel, info)
        await a.publish_leave(channel, info)
        await hb.until(lambda: bool(hb.joins and hb.leaves))
        assert hb.joins == [(channel, info)] and hb.leaves == [(channel, info)]


async def test_ticket_is_consumed_once_across_instances(prefix: str, raw: aioredis.Redis
                                                        ) -> None:
    async with running(RedisBroker(REDIS_URL, prefix=prefix)) as (a, _), \
            running(RedisBroker(REDIS_URL, prefix=prefix)) as (b, _):
        ticket = _id("tkt")
        await a.store_ticket(ticket, b'{"user":"42"}', 60)
        results = await asyncio.gather(*(broker.consume_ticket(ticket)
                                         for _ in range(20) for broker in (a, b)))
        assert results.count(b'{"user":"42"}') == 1
        assert results.count(None) == 39
        # The documented format: what the Django tickets app writes, the hub consumes.
        written = "tkt_" + uuid.uuid4().hex
        await raw.set(f"{prefix}:ticket:{written}", b'{"user":"7","channels":["news"]}',
                      nx=True, px=10_000)
        assert await b.consume_ticket(written) == b'{"user":"7","channels":["news"]}'
        assert await a.consume_ticket(written) is None


async def test_idempotency_key_holds_across_instances(prefix: str) -> None:
    channel = _id("idem")
    async with running(RedisBroker(REDIS_URL, prefix=prefix)) as (a, ha), \
            running(RedisBroker(REDIS_URL, prefix=prefix)) as (b, hb):
        await a.subscribe(channel)
        await b.subscribe(channel)
        for opts in (history_on(idempotency_key="order-1"),
                     PublishOptions(idempotency_key="order-2")):
            first = await a.publish(channel, b'"first"', opts)
            retry = await b.publish(channel, b'"retry"', opts)
            assert (first.suppressed, retry.suppressed) == (False, True)
            assert retry.position == first.position
        await b.publish(channel, b'"sentinel"', PublishOptions())
        for handler in (ha, hb):
            await handler.until(lambda h=handler: b'"sentinel"' in h.data(channel))
            assert handler.data(channel) == [b'"first"', b'"first"', b'"sentinel"']


# -- keys, epochs and bounds ------------------------------------------------------------------


async def test_lost_meta_hash_means_a_new_epoch(prefix: str, raw: aioredis.Redis) -> None:
    channel = _id("meta")
    async with running(RedisBroker(REDIS_URL, prefix=prefix)) as (broker, _):
        before = await broker.publish(channel, b"1", history_on())
        await broker.publish(channel, b"2", history_on())
        # As after a restart without persistence or an eviction of the meta hash alone.
        assert await raw.delete(f"{prefix}:meta:{{{channel}}}") == 1
        after = await broker.publish(channel, b"3", history_on())
        assert after.position.offset == 1
        assert after.position.epoch != before.position.epoch
        hist = await broker.history(channel, limit=-1)
        assert [(p.offset, p.data) for p in hist.publications] == [(1, b"3")]
        assert hist.position == after.position
        stale = await broker.history(channel, since=before.position, limit=-1)
        assert stale.publications == []

        # Lost again, and this time a reader notices first: it starts the new epoch (at 0)
        # and the old entries are gone from it.
        await raw.delete(f"{prefix}:meta:{{{channel}}}")
        fresh = await broker.history(channel, limit=-1)
        assert fresh.publications == []
        assert fresh.position.offset == 0
        assert fresh.position.epoch not in (before.position.epoch, after.position.epoch)
        res = await broker.publish(channel, b"4", history_on())
        assert res.position == StreamPosition(1, fresh.position.epoch)


async def test_key_layout_and_bounds(prefix: str, raw: aioredis.Redis) -> None:
    channel = _id("keys")
    async with running(RedisBroker(REDIS_URL, prefix=prefix)) as (broker, _):
        opts = history_on(size=5, ttl=60, history_meta_ttl=600, idempotency_key="k",
                          idempotent_result_ttl=30)
        await broker.publish(channel, b"0", opts)
        for i in range(1, 20):
            await broker.publish(channel, b"%d" % i, history_on(size=5, ttl=60,
                                                                history_meta_ttl=600))
        await broker.publish(_id("nohistory"), b"x", PublishOptions())
        await broker.add_presence(channel, ClientInfo("c1", "u"), 30)
        await broker.store_ticket("tkt_x", b"{}", 30)
        tag = f"{{{channel}}}"
        keys = {k.decode() async for k in raw.scan_iter(match=f"{prefix}:*")}
        assert keys == {f"{prefix}:stream:{tag}", f"{prefix}:meta:{tag}",
                        f"{prefix}:idem:{tag}:k", f"{prefix}:presence:{tag}",
                        f"{prefix}:presence-expire:{tag}", f"{prefix}:ticket:tkt_x"}
        stream = f"{prefix}:stream:{tag}"
        assert await raw.xlen(stream) == 5  # exact MAXLEN, not ~
        assert 55_000 < await raw.pttl(stream) <= 60_000
        assert 590_000 < await raw.pttl(f"{prefix}:meta:{tag}") <= 600_000
        assert 25_000 < await raw.pttl(f"{prefix}:idem:{tag}:k") <= 30_000
        assert await raw.hgetall(f"{prefix}:meta:{tag}") == {
            b"e": (await broker.history(channel)).position.epoch.encode(), b"s": b"20"}
        assert [e[0] for e in await raw.xrange(stream)] == [b"%d-0" % i for i in range(16, 21)]


# -- failures ---------------------------------------------------------------------------------


async def test_unreachable_redis_is_a_broker_error_within_the_timeout() -> None:
    broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.5,
                         command_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(BrokerError, match="cannot connect"):
        await broker.start(Recorder())
    assert time.monotonic() - started < 2.0
    await broker.close()


async def test_a_server_that_never_answers_is_a_broker_error_within_the_timeout() -> None:
    # Accepts connections and reads, never replies: a hung or half-open server.
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(4096):
                pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        broker = RedisBroker(f"redis://127.0.0.1:{port}/0", connect_timeout=0.3,
                             command_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(BrokerError):
            await broker.start(Recorder())
        assert time.monotonic() - started < 2.0
        await broker.close()
    finally:
        server.close()


async def test_paused_redis_fails_commands_within_the_timeout(own_redis: RedisServer) -> None:
    async with running(RedisBroker(own_redis.url, command_timeout=0.5)) as (broker, _):
        admin = aioredis.Redis.from_url(own_redis.url)
        try:
            # CLIENT UNPAUSE would wait behind the pause itself, so it is short instead.
            await admin.execute_command("CLIENT", "PAUSE", "1300", "ALL")
            started = time.monotonic()
            with pytest.raises(BrokerError, match="timed out"):
                await broker.publish(_id("p"), b"1", history_on())
            with pytest.raises(BrokerError, match="timed out"):
                await broker.consume_ticket("tkt_nope")
            assert time.monotonic() - started < 1.3
            await asyncio.sleep(max(0.0, 1.4 - (time.monotonic() - started)))
            res = await broker.publish(_id("p"), b"1", history_on())
            assert res.position.offset == 1
        finally:
            await admin.aclose()


async def test_pubsub_reconnects_and_resubscribes_after_a_restart(
        own_redis: RedisServer) -> None:
    channels = [_id("re-a"), _id("re-b")]
    handler = Handler()
    broker = RedisBroker(own_redis.url, command_timeout=1.0, reconnect_delay=0.05)
    async with running(broker, handler):
        for channel in channels:
            await broker.subscribe(channel)
        before = await broker.publish(channels[0], b'"before"', history_on())
        await handler.until(lambda: handler.data(channels[0]) == [b'"before"'])

        own_redis.stop()
        await asyncio.sleep(0.1)
        assert not broker.connected
        started = time.monotonic()
        with pytest.raises(BrokerError):
            await broker.publish(channels[0], b'"lost"', history_on())
        assert time.monotonic() - started < 2.0
        own_redis.start()  # same port, empty: no persistence

        await handler.until(lambda: bool(handler.resubscribed))
        assert handler.resubscribed == [sorted(channels)]
        assert broker.connected and broker.reconnects == 1
        # Publications made after the reconnect arrive, from this node and from another one;
        # the server came back empty, so the stream starts again under a new epoch.
        after = await broker.publish(channels[0], b'"after"', history_on())
        assert after.position.offset == 1 and after.position.epoch != before.position.epoch
        async with running(RedisBroker(own_redis.url)) as (other, _):
            await other.publish(channels[1], b'"other"', PublishOptions())
        await handler.until(lambda: handler.data(channels[1]) == [b'"other"'])
        assert handler.data(channels[0]) == [b'"before"', b'"after"']
        # New subscriptions work on the new connection.
        late = _id("late")
        await broker.subscribe(late)
        await broker.publish(late, b'"late"', PublishOptions())
        await handler.until(lambda: handler.data(late) == [b'"late"'])


async def test_unsubscribed_channels_are_not_delivered_nor_resubscribed(
        own_redis: RedisServer) -> None:
    kept, dropped = _id("kept"), _id("dropped")
    handler = Handler()
    async with running(RedisBroker(own_redis.url, reconnect_delay=0.05), handler) as (b, _):
        await b.subscribe(kept)
        await b.subscribe(dropped)
        await b.unsubscribe(dropped)
        await b.publish(dropped, b'"x"', PublishOptions())
        await b.publish(kept, b'"sentinel"', PublishOptions())
        await handler.until(lambda: handler.data(kept) == [b'"sentinel"'])
        assert handler.data(dropped) == []
        own_redis.stop()
        own_redis.start()
        await handler.until(lambda: bool(handler.resubscribed))
        assert handler.resubscribed == [[kept]]


# -- batching, URLs ---------------------------------------------------------------------------


async def test_concurrent_subscribes_share_one_subscribe_command(own_redis: RedisServer) -> None:
    channels = [_id("many") for _ in range(300)]
    admin = aioredis.Redis.from_url(own_redis.url)
    try:
        async with running(RedisBroker(own_redis.url)) as (broker, handler):
            await admin.config_resetstat()
            await asyncio.gather(*(broker.subscribe(c) for c in channels))
            stats = await admin.info("commandstats")
            assert stats["cmdstat_subscribe"]["calls"] == 1
            # Each is in effect once subscribe() returned.
            await asyncio.gather(*(broker.publish(c, b"1", PublishOptions()) for c in channels))
            await handler.until(lambda: len(handler.publications) == len(channels))
            await asyncio.gather(*(broker.unsubscribe(c) for c in channels))
            await broker.subscribe(channels[0])  # the unsubscribes went out before it
            stats = await admin.info("commandstats")
            assert stats["cmdstat_unsubscribe"]["calls"] == 1
            assert (await admin.pubsub_numsub(broker._pubsub_channel(channels[1])))[0][1] == 0
    finally:
        await admin.aclose()


async def test_password_db_and_unix_socket_urls(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    server = RedisServer(tmp_path / "auth", "--requirepass", "s3cret", "--unixsocket",
                         str(sock), "--unixsocketperm", "700").start()
    try:
        for url in (f"redis://:s3cret@127.0.0.1:{server.port}/2",
                    f"unix://:s3cret@{sock}?db=2"):
            async with running(RedisBroker(url)) as (broker, handler):
                channel = _id("url")
                await broker.subscribe(channel)
                res = await broker.publish(channel, b'"hi"', history_on())
                await handler.until(lambda c=channel: handler.data(c) == [b'"hi"'])
                hist = await broker.history(channel, limit=-1)
                assert hist.position == res.position
        admin = aioredis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{server.port}/2")
        try:
            assert await admin.dbsize() == 4  # two streams, two meta hashes: in db 2
        finally:
            await admin.aclose()
        wrong = RedisBroker(f"redis://:nope@127.0.0.1:{server.port}/2")
        with pytest.raises(BrokerError):
            await wrong.start(Recorder())
        await wrong.close()
    finally:
        server.stop()


async def test_one_bad_publication_of_a_run_fails_alone(own_redis: RedisServer) -> None:
    # Its meta key holds a string (another program's key, a corrupted keyspace): HGET fails
    # with WRONGTYPE inside the script; the publications before and after it still happen.
    good, bad = _id("good"), _id("bad")
    broker = RedisBroker(own_redis.url)
    async with running(broker) as (_, handler):
        await broker.subscribe(good)
        admin = aioredis.Redis.from_url(own_redis.url)
        try:
            await admin.set(broker._meta_key(bad), "not a hash")
        finally:
            await admin.aclose()
        results = await broker.publish_many([(good, b"1", history_on()), (bad, b"x", history_on()),
                                             (good, b"2", history_on())])
        assert [r.position.offset for r in results if not isinstance(r, BrokerError)] == [1, 2]
        assert isinstance(results[1], BrokerError)
        assert "WRONGTYPE" in str(results[1])
        await handler.until(lambda: len(handler.data(good)) == 2)
        assert handler.data(good) == [b"1", b"2"]


async def test_publish_many_is_one_script_call_that_reloads_a_lost_script(
        own_redis: RedisServer) -> None:
    channel = _id("many")
    broker = RedisBroker(own_redis.url)
    async with running(broker) as (_, handler):
        await broker.subscribe(channel)
        admin = aioredis.Redis.from_url(own_redis.url)
        try:
            await admin.script_flush()  # as after a restart: the script's SHA is unknown
            await admin.config_resetstat()
            results = await broker.publish_many(
                [(channel, b"%d" % i, history_on(size=100)) for i in range(50)])
            stats = await admin.info("commandstats")
            # More than one chunk: 250 publications are three script calls, still in order.
            await admin.config_resetstat()
            more = await broker.publish_many(
                [(channel, b"%d" % i, history_on(size=300)) for i in range(50, 300)])
            more_stats = await admin.info("commandstats")
        finally:
            await admin.aclose()
        assert [r.position.offset for r in results if not isinstance(r, BrokerError)] \
            == list(range(1, 51))
        # One EVALSHA for the 50, refused once with NOSCRIPT (the script was flushed), then
        # loaded and sent again: nothing was published twice (the offsets above).
        assert stats["cmdstat_evalsha"]["calls"] == 2
        assert stats["cmdstat_evalsha"].get("failed_calls", 0) + stats["cmdstat_evalsha"].get(
            "rejected_calls", 0) == 1
        assert stats["cmdstat_script|load"]["calls"] == 1
        assert [r.position.offset for r in more if not isinstance(r, BrokerError)] \
            == list(range(51, 301))
        assert more_stats["cmdstat_evalsha"]["calls"] == 3
        await handler.until(lambda: len(handler.data(channel)) == 300)
        assert handler.data(channel) == [b"%d" % i for i in range(300)]

    broker = RedisBroker(own_redis.url, command_timeout=0.5)
    async with running(broker):
        own_redis.stop()
        results = await broker.publish_many([(channel, b"1", history_on()),
                                             (channel, b"2", history_on())])
        assert all(isinstance(r, BrokerError) for r in results)
        own_redis.start()


async def test_an_unknown_url_parameter_is_a_config_error_without_secrets() -> None:
    broker = RedisBroker("redis://:pw1@127.0.0.1:6379/0?bogus=1&password=pw2")
    with pytest.raises(ConfigError) as refused:
        await broker.start(Recorder())
    await broker.close()
    message = str(refused.value)
    assert "bogus" in message
    assert "pw1" not in message and "pw2" not in message


def test_broker_urls_are_redacted_for_logs() -> None:
    from clarion.broker.urls import redact

    assert redact("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact("redis://u:s3cret@h/0?password=x&db=2&sentinel_password=y") \
        == "redis://u:***@h/0?password=***&db=2&sentinel_password=***"
    assert redact(["redis://a:1/0", "redis://:p@b:2/0"]) == "redis://a:1/0,redis://:***@b:2/0"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"


def test_hiredis_packing_writes_redis_py_bytes() -> None:
    """The broker's connections pack with hiredis, handing it the arguments as they are; what
    goes on the wire is what redis-py's own Python packer writes, and an argument neither can
    send is redis-py's DataError."""
    from redis.asyncio.connection import Connection
    from redis.exceptions import DataError

    from clarion.broker.redis.standalone import with_hiredis_packing

    fast = with_hiredis_packing(Connection)()
    plain = Connection()
    cases: list[tuple[Any, ...]] = [
        ("EVALSHA", "abc", 2, "k:{a}", "k:{b}", b"\x00\xffbin", 0, 1.5, -7, "é"),
        ("CLIENT SETNAME", "clarion"),  # a command name with a space is split
        (b"PUBLISH", memoryview(b"chan"), bytearray(b"data")),
        ("SET", "k", 10**20),
    ]
    for args in cases:
        assert b"".join(fast.pack_command(*args)) == b"".join(plain.pack_command(*args)), args
    for bad in (None, True, object()):
        with pytest.raises(DataError):
            fast.pack_command("SET", "k", bad)
        with pytest.raises(DataError):
            plain.pack_command("SET", "k", bad)


# -- settling background tasks (review 1, finding 2) --------------------------------------------


async def test_settle_logs_a_task_that_had_failed(caplog: pytest.LogCaptureFixture) -> None:
    """Closing must not fail because a background task once did: logged, with its traceback."""
    from clarion.broker.redis.standalone import _settle

    async def fails() -> None:
        raise ValueError("the task's own error")

    task = asyncio.get_running_loop().create_task(fails(), name="clarion-test-failed")
    await asyncio.sleep(0)
    await _settle(task)  # does not raise
    [record] = [r for r in caplog.records if "clarion-test-failed" in r.getMessage()]
    assert record.exc_info is not None and "the task's own error" in str(record.exc_info[1])


async def test_settle_lets_the_callers_own_cancellation_through() -> None:
    """Only the settled task's CancelledError is swallowed: a timeout around a close() that
    waits for a task slow to exit fires, and a caller cancelled while it waits is cancelled,
    though cancelling it cancels the awaited task too."""
    from clarion.broker.redis.standalone import _cancel, _settle

    loop = asyncio.get_running_loop()
    exiting = asyncio.Event()

    async def slow_to_exit() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            exiting.set()
            await asyncio.Event().wait()  # until the timeout's cancel reaches it too

    slow = loop.create_task(slow_to_exit())
    await asyncio.sleep(0)
    slow.cancel()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await _settle(slow)
    assert exiting.is_set()
    await _settle(slow)  # it ended cancelled: swallowed
    assert slow.cancelled()

    idle = loop.create_task(asyncio.Event().wait())
    caller = loop.create_task(_settle(idle))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert caller.cancelled() and idle.cancelled()

    # A task being cancelled that cleans up with _cancel still runs its whole cleanup.
    cleaned: list[str] = []

    async def owner() -> None:
        first = loop.create_task(asyncio.Event().wait())
        second = loop.create_task(asyncio.Event().wait())
        try:
            await asyncio.Event().wait()
        finally:
            await _cancel(first)
            cleaned.append("first")
            await _cancel(second)
            cleaned.append("second")

    task = loop.create_task(owner())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["first", "second"]


async def test_a_link_closed_from_its_own_task_does_not_cancel_that_task() -> None:
    """A Cluster retires a link from the link's own reconnect loop (_link_lost, _rehome):
    close() cancels the link's other tasks and leaves the calling one running."""
    from clarion.broker.redis.standalone import Link

    def no_connection() -> Any:
        raise AssertionError("close() opens nothing")

    loop = asyncio.get_running_loop()
    link = Link(RedisBroker(REDIS_URL), "test", no_connection)
    other = loop.create_task(asyncio.Event().wait())

    async def own_loop() -> str:
        link._tasks = [current, other]
        await link.close()
        await asyncio.sleep(0)  # not cancelled: this would raise CancelledError
        return "went on"

    current_task = loop.create_task(own_loop())
    current: Any = current_task
    assert await current_task == "went on"
    assert other.cancelled() and link._tasks == []


async def test_concurrent_publishes_share_script_calls_in_order(own_redis: RedisServer) -> None:
    """Publishes from separate callers (other HTTP requests, other clients) that arrive while
    a script call is in flight leave together in the next one, each channel in order."""
    channels = [_id("c") for _ in range(4)]
    broker = RedisBroker(own_redis.url)
    async with running(broker) as (_, handler):
        for channel in channels:
            await broker.subscribe(channel)
        admin = aioredis.Redis.from_url(own_redis.url)
        try:
            await broker.publish(channels[0], b"-1", history_on(size=1000))  # script loaded
            await admin.config_resetstat()
            results = await asyncio.gather(*(
                broker.publish(channels[i % 4], b"%d" % i, history_on(size=1000))
                for i in range(400)))
            stats = await admin.info("commandstats")
        finally:
            await admin.aclose()
        # 400 callers at once: a handful of script calls, not 400.
        assert stats["cmdstat_evalsha"]["calls"] <= 10
        for k, channel in enumerate(channels):
            offsets = [r.position.offset for i, r in enumerate(results) if i % 4 == k]
            assert offsets == list(range(2 if k == 0 else 1, 102 if k == 0 else 101))
            await handler.until(lambda c=channel: len(handler.data(c)) >= 100)
            assert handler.data(channel)[-100:] == [b"%d" % i for i in range(k, 400, 4)]


async def test_a_publish_whose_caller_gave_up_is_not_sent_later(own_redis: RedisServer) -> None:
    """Redis stalled: each caller gets BrokerError within command_timeout (also those queued
    behind the call in flight), and what was never sent is not sent when Redis resumes."""
    channel = _id("late")
    broker = RedisBroker(own_redis.url, command_timeout=0.5)
    async with running(broker):
        await broker.publish(channel, b"0", history_on())
        assert own_redis.process is not None
        own_redis.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            first = asyncio.ensure_future(broker.publish(channel, b"1", history_on()))
            await asyncio.sleep(0)  # the first call is in flight; these wait behind it
            queued = [asyncio.ensure_future(broker.publish(channel, b"%d" % i, history_on()))
                      for i in range(2, 6)]
            for task in (first, *queued):
                with pytest.raises(BrokerError, match="timed out"):
                    await task
            assert time.monotonic() - started < 2.0
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
        hist = await broker.history(channel, since=None, limit=100, reverse=False)
        # "1" was sent before Redis stalled and may have run; "2".."5" never left.
        assert [p.data for p in hist.publications] in ([b"0"], [b"0", b"1"])
        res = await broker.publish(channel, b"6", history_on())
        assert res.position.offset == len(hist.publications) + 1


async def test_close_answers_publishes_in_flight_and_waiting(own_redis: RedisServer) -> None:
    """close() while a script call is in flight (Redis stalled) and more wait behind it:
    every caller hears "broker is closed" at once, not its timeout; a broker started again
    publishes."""
    channel = _id("closing")
    broker = RedisBroker(own_redis.url, command_timeout=5)
    await broker.start(Recorder())
    await broker.publish(channel, b"0", history_on())
    assert own_redis.process is not None
    own_redis.process.send_signal(signal.SIGSTOP)
    try:
        first = asyncio.ensure_future(broker.publish(channel, b"1", history_on()))
        await asyncio.sleep(0.05)  # in flight
        queued = [asyncio.ensure_future(broker.publish(channel, b"%d" % i, history_on()))
                  for i in range(2, 5)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await broker.close()
        for task in (first, *queued):
            with pytest.raises(BrokerError, match="closed"):
                await task
        assert time.monotonic() - started < 4  # a bound: the callers did not wait out 5 s
        with pytest.raises(BrokerError, match=r"not started|closed"):
            await broker.publish(channel, b"late", history_on())
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
    async with running(broker):
        res = await broker.publish(channel, b"5", history_on())
        assert res.position.offset >= 2
