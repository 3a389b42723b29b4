"""The Redis broker on its other topologies, each started by this test session on free ports:
two standalone shards, a three-master Cluster, and a primary with one replica behind one
Sentinel. Each passes both conformance suites unchanged; then what is particular to each:
routing by jump hash, slot migration, failover.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from broker_conformance import BrokerConformance, history_on
from broker_conformance_multi import MultiNodeBrokerConformance, Recorder
from clarion.broker import create_broker
from clarion.broker.base import Broker, PublishOptions
from clarion.broker.redis import RedisBroker
from clarion.broker.redis.cluster import RedisClusterBroker
from clarion.broker.redis.sentinel import RedisSentinelBroker
from clarion.broker.sharded import ShardedBroker, fnv1a_64, jump_hash
from clarion.errors import ConfigError
from conftest import free_port, in_ci
from test_broker_redis import RedisServer, kill_pubsub_links, pubsub_links, running

FAST = {"reconnect_delay": 0.05, "reconnect_delay_max": 0.5}


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        if in_ci():
            pytest.fail(f"{name} is not installed; scripts/install-test-deps installs it")
        pytest.skip(f"{name} is not installed (scripts/install-test-deps)")
    return exe


def _cli(port: int, *args: str) -> str:
    return subprocess.run([_tool("redis-cli"), "-p", str(port), *args], check=True,
                          capture_output=True, text=True, timeout=30).stdout


def _wait(condition: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {seconds:g} s")
        time.sleep(0.05)


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


# -- the servers, one set per session ---------------------------------------------------------


@pytest.fixture(scope="session")
def shard_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    base = tmp_path_factory.mktemp("shards")
    servers = [RedisServer(base / f"s{i}").start() for i in range(2)]
    yield [s.url for s in servers]
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _tool("redis-cli")
    base = tmp_path_factory.mktemp("cluster")
    servers = [RedisServer(base / f"n{i}", "--cluster-enabled", "yes",
                           "--cluster-config-file", "nodes.conf",
                           # The bus port defaults to port + 10000, past 65535 for
                           # most free ports.
                           "--cluster-port", str(free_port()),
                           "--cluster-node-timeout", "2000").start() for i in range(3)]
    try:
        _cli(servers[0].port, "--cluster", "create",
             *(f"127.0.0.1:{s.port}" for s in servers),
             "--cluster-replicas", "0", "--cluster-yes")
        for s in servers:
            _wait(lambda s=s: "cluster_state:ok" in _cli(s.port, "cluster", "info"),
                  "the cluster did not come up")
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in servers[:2])
    finally:
        for s in servers:
            s.stop()


class SentinelSetup:
    def __init__(self, base: Path) -> None:
        self.primary = RedisServer(base / "primary").start()
        self.replica = RedisServer(base / "replica", "--replicaof", "127.0.0.1",
                                   str(self.primary.port))
        self.process: subprocess.Popen[bytes] | None = None
        try:
            self.replica.start()
            self._start(base)
        except BaseException:
            self.stop()  # a setup that failed halfway must not leave servers behind
            raise

    def _start(self, base: Path) -> None:
        _wait(lambda: "master_link_status:up" in _cli(self.replica.port, "info", "replication"),
              "the replica did not sync")
        # A port chosen free can be taken before Sentinel binds it (CI saw Sentinel never
        # answer): a Sentinel that exits is started again on another port, and a timeout says
        # what Sentinel logged and saw.
        for attempt in range(3):
            self.port = free_port()
            conf = base / f"sentinel{attempt}.conf"
            conf.write_text(
                f"port {self.port}\nbind 127.0.0.1\ndir {base}\n"
                f"logfile {base / f'sentinel{attempt}.log'}\n"
                f"sentinel monitor mymaster 127.0.0.1 {self.primary.port} 1\n"
                "sentinel down-after-milliseconds mymaster 1000\n"
                "sentinel failover-timeout mymaster 5000\n")
            self.log = base / f"sentinel{attempt}.log"
            self.process = subprocess.Popen([_tool("redis-sentinel"), str(conf)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self.process.poll() is None:
                if self._replicas() == 1:
                    return
                time.sleep(0.1)
            if self.process.poll() is None:
                break
        pytest.fail("Sentinel did not find the replica within 60 s; it logged:\n"
                    + self._log_tail() + "\nSENTINEL REPLICAS said:\n" + self._replicas_text())

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        except OSError as exc:
            return f"(no log: {exc})"

    def _replicas_text(self) -> str:
        try:
            return _cli(self.port, "sentinel", "replicas", "mymaster")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            return f"(no answer: {exc})"

    def _replicas(self) -> int:
        try:
            out = _cli(self.port, "sentinel", "replicas", "mymaster")
        except subprocess.CalledProcessError:
            return 0
        # redis-cli prints each replica's fields as alternating name and value lines, one
        # replica after another; a replica counts once its flags are plain "slave" (not down,
        # not disconnected). Counting "slave" lines counted role-reported too.
        lines = out.splitlines()
        fields = dict(zip(lines[::2], lines[1::2], strict=False))
        replicas = out.count("\nflags\n") + out.startswith("flags\n")
        return 1 if replicas == 1 and fields.get("flags") == "slave" else 0

    def master_port(self) -> int:
        return int(_cli(self.port, "sentinel", "get-master-addr-by-name",
                        "mymaster").split()[1])

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/mymaster?db=0"

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
        self.replica.stop()
        self.primary.stop()


@pytest.fixture(scope="session")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    _tool("redis-cli")
    setup = SentinelSetup(tmp_path_factory.mktemp("sentinel"))
    yield setup
    setup.stop()


# -- the conformance suites on each topology --------------------------------------------------


class TestShardedRedisBroker(BrokerConformance):
    short_ttl = 0.3

    @pytest.fixture
    def broker(self, shard_urls: list[str]) -> Broker:
        return create_broker(shard_urls, prefix=_prefix())

    async def advance(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class TestShardedRedisBrokerMulti(MultiNodeBrokerConformance):
    @pytest.fixture
    def make_broker(self, shard_urls: list[str]) -> Callable[[], Broker]:
        prefix = _prefix()
        return lambda: create_broker(shard_urls, prefix=prefix, **FAST)

    async def break_link(self, broker: Broker) -> None:
        await kill_pubsub_links(broker)


class TestRedisClusterBroker(BrokerConformance):
    short_ttl = 0.3

    @pytest.fixture
    def broker(self, cluster_url: str) -> Broker:
        return create_broker(cluster_url, prefix=_prefix())

    async def advance(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class TestRedisClusterBrokerMulti(MultiNodeBrokerConformance):
    @pytest.fixture
    def make_broker(self, cluster_url: str) -> Callable[[], Broker]:
        prefix = _prefix()
        return lambda: create_broker(cluster_url, prefix=prefix, **FAST)

    async def break_link(self, broker: Broker) -> None:
        await kill_pubsub_links(broker)


class TestRedisSentinelBroker(BrokerConformance):
    short_ttl = 0.3

    @pytest.fixture
    def broker(self, sentinel: SentinelSetup) -> Broker:
        return create_broker(sentinel.url, prefix=_prefix())

    async def advance(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class TestRedisSentinelBrokerMulti(MultiNodeBrokerConformance):
    @pytest.fixture
    def make_broker(self, sentinel: SentinelSetup) -> Callable[[], Broker]:
        prefix = _prefix()
        return lambda: create_broker(sentinel.url, prefix=prefix, **FAST)

    async def break_link(self, broker: Broker) -> None:
        await kill_pubsub_links(broker)


# -- shards -----------------------------------------------------------------------------------


def test_jump_hash_is_centrifugos_consistent_index() -> None:
    assert fnv1a_64(b"") == 0xCBF29CE484222325
    assert fnv1a_64(b"a") == 0xAF63DC4C8601EC8C  # the published FNV-1a 64 test vector
    keys = [f"chat:{i}" for i in range(4000)]
    for n in (1, 2, 3, 5, 8):
        assert all(0 <= jump_hash(k, n) < n for k in keys)
        assert [jump_hash(k, n) for k in keys[:50]] == [jump_hash(k, n) for k in keys[:50]]
    assert {jump_hash(k, 1) for k in keys} == {0}
    # Adding a shard moves about 1/(n+1) of the keys, and only onto the new shard.
    for n in (2, 4, 7):
        moved = [k for k in keys if jump_hash(k, n) != jump_hash(k, n + 1)]
        assert all(jump_hash(k, n + 1) == n for k in moved)
        assert abs(len(moved) / len(keys) - 1 / (n + 1)) < 0.03
        counts = [sum(1 for k in keys if jump_hash(k, n) == i) for i in range(n)]
        assert min(counts) > 0.8 * len(keys) / n
    assert jump_hash("ü", 7) == jump_hash("ü".encode(), 7)
    with pytest.raises(ValueError):
        jump_hash("x", 0)


async def test_shards_route_every_channel_and_ticket_to_one_shard(
        shard_urls: list[str]) -> None:
    prefix = _prefix()
    broker = create_broker(shard_urls, prefix=prefix)
    assert isinstance(broker, ShardedBroker)
    assert not broker.shards[1].control and broker.shards[0].control  # type: ignore[attr-defined]
    channels = [f"ch-{i}" for i in range(40)]
    tickets = [f"tkt_{i}" for i in range(40)]
    async with running(broker) as (b, _):  # type: ignore[arg-type]
        for c in channels:
            await b.publish(c, b"1", history_on())
        for t in tickets:
            await b.store_ticket(t, b"p", 60)
    admins = [aioredis.Redis.from_url(u) for u in shard_urls]
    try:
        for i, admin in enumerate(admins):
            keys = {k.decode() async for k in admin.scan_iter(match=f"{prefix}:*")}
            mine = {c for c in channels if jump_hash(c, 2) == i}
            assert 0 < len(mine) < len(channels)  # both shards are used
            assert {k for k in keys if k.startswith(f"{prefix}:meta:")} == {
                f"{prefix}:meta:{{{c}}}" for c in mine}
            assert {k for k in keys if k.startswith(f"{prefix}:ticket:")} == {
                f"{prefix}:ticket:{t}" for t in tickets if jump_hash(t, 2) == i}
    finally:
        for admin in admins:
            await admin.aclose()


async def test_shards_start_all_or_nothing(shard_urls: list[str]) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    broker = create_broker([shard_urls[0], dead], connect_timeout=0.3)
    with pytest.raises(Exception, match="cannot connect"):
        await broker.start(Recorder())
    assert not broker.shards[0].connected  # type: ignore[attr-defined]
    await broker.close()


def test_create_broker_urls() -> None:
    single = create_broker(["redis://127.0.0.1:1/0"])
    assert isinstance(single, RedisBroker)
    with pytest.raises(ConfigError, match="twice"):
        create_broker(["redis://a:1", "redis://a:1"])
    with pytest.raises(ConfigError, match="empty"):
        create_broker([])
    with pytest.raises(ConfigError, match="memory"):
        create_broker(["memory", "redis://a:1"])
    cluster = create_broker("redis+cluster://:pw@h1:7000,h2:7001?addr=h3:7002", prefix="p")
    assert isinstance(cluster, RedisClusterBroker)
    assert cluster.nodes == [("h1", 7000), ("h2", 7001), ("h3", 7002)]
    assert "pw" not in repr(cluster._where)
    with pytest.raises(ConfigError, match="no database"):
        create_broker("redis+cluster://h1:7000/2")
    s = create_broker("redis+sentinel://u:pw@s1,s2:26380/mymaster?db=3&sentinel_password=x")
    assert isinstance(s, RedisSentinelBroker)
    assert (s.sentinels, s.service) == ([("s1", 26379), ("s2", 26380)], "mymaster")
    assert s._master_kwargs == {"username": "u", "password": "pw", "db": 3}
    assert s._sentinel_auth == {"password": "x"}
    centrifugo_form = create_broker("redis+sentinel://s1:26379?sentinel_master_name=m&addr=s2")
    assert isinstance(centrifugo_form, RedisSentinelBroker)
    assert centrifugo_form.sentinels == [("s1", 26379), ("s2", 26379)]
    with pytest.raises(ConfigError, match="name the master"):
        create_broker("redis+sentinel://s1:26379")
    with pytest.raises(ConfigError, match="unknown parameter"):
        create_broker("redis+sentinel://s1/m?bogus=1")
    with pytest.raises(ConfigError, match="node_id"):
        create_broker("redis://h:1", node_id="a{b}")


# -- Cluster ----------------------------------------------------------------------------------


async def test_cluster_uses_sharded_pubsub_on_the_slot_owner(cluster_url: str) -> None:
    channels = [f"spread-{i}-{uuid.uuid4().hex[:6]}" for i in range(30)]
    async with running(create_broker(cluster_url, prefix=_prefix())) as (b, h):  # type: ignore[arg-type]
        await asyncio.gather(*(b.subscribe(c) for c in channels))
        assert isinstance(b, RedisClusterBroker)
        assert len(b._links) == 3  # 30 channels cover every primary; one link each
        for c in channels:
            await b.publish(c, b'"x"', history_on() if len(c) % 2 else PublishOptions())
        await h.until(lambda: len(h.publications) == 30)
        node = b._client.get_node_from_key(b._pubsub_channel(channels[0]))
        admin = aioredis.Redis(host=node.host, port=node.port)
        try:
            shard_channels = {c.decode() for c in
                              await admin.execute_command("PUBSUB", "SHARDCHANNELS")}
            assert b._pubsub_channel(channels[0]) in shard_channels
        finally:
            await admin.aclose()


async def test_cluster_slot_migration_moves_the_subscription(cluster_url: str) -> None:
    prefix = _prefix()
    channel = f"moving-{uuid.uuid4().hex[:6]}"
    async with running(create_broker(cluster_url, prefix=prefix, **FAST)) as (b, h):  # type: ignore[arg-type]
        assert isinstance(b, RedisClusterBroker)
        await b.subscribe(channel)
        name = b._pubsub_channel(channel)
        source = b._client.get_node_from_key(name)
        target = next(n for n in b._client.get_primaries() if n.name != source.name)
        slot = b._client.keyslot(name)
        ids = {}
        for node in (source, target):
            ids[node.name] = _cli(node.port, "cluster", "myid").strip()
        # Move the (keyless) slot by hand, as redis-cli --cluster reshard does.
        _cli(target.port, "cluster", "setslot", str(slot), "importing", ids[source.name])
        _cli(source.port, "cluster", "setslot", str(slot), "migrating", ids[target.name])
        for node in b._client.get_primaries():
            _cli(node.port, "cluster", "setslot", str(slot), "node", ids[target.name])
        try:
            await h.until(lambda: any(channel in chs for chs in h.resubscribed))
            assert b._homes[name] is b._links[target.name]
            await b.publish(channel, b'"after the move"', PublishOptions())
            await h.until(lambda: h.data(channel) == [b'"after the move"'])
        finally:
            for node in b._client.get_primaries():
                _cli(node.port, "cluster", "setslot", str(slot), "node", ids[source.name])


# -- Sentinel ---------------------------------------------------------------------------------


async def test_sentinel_failover_resubscribes_on_the_new_primary(
        sentinel: SentinelSetup) -> None:
    prefix = _prefix()
    channel = f"failover-{uuid.uuid4().hex[:6]}"
    broker = create_broker(sentinel.url, prefix=prefix, ping_interval=0.5, command_timeout=1.0,
                           **FAST)
    async with running(broker) as (b, h):  # type: ignore[arg-type]
        await b.subscribe(channel)
        before = await b.publish(channel, b'"before"', history_on())
        await h.until(lambda: h.data(channel) == [b'"before"'])
        old = sentinel.master_port()
        _cli(sentinel.port, "sentinel", "failover", "mymaster")
        _wait(lambda: sentinel.master_port() != old, "Sentinel did not fail over")
        await h.until(lambda: any(channel in chs for chs in h.resubscribed))
        [(_, port, _)] = pubsub_links(b)
        assert port == sentinel.master_port()
        # Publishing may fail while connections still point at the old primary; it succeeds
        # within a few attempts, and the publication arrives through the new primary.
        deadline = time.monotonic() + 10
        while True:
            try:
                after = await b.publish(channel, b'"after"', history_on())
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        await h.until(lambda: b'"after"' in h.data(channel))
        # Replication carried the stream over: the same epoch, the next offset.
        assert after.position.epoch == before.position.epoch
        assert after.position.offset == before.position.offset + 1
