"""Hubs with clients connected while a shard dies or Sentinel fails over (issue 10, part 6: "the
same on two shards … a Sentinel failover with clients connected").

The clients, the publisher and the per-publication check are those of
``test_scaleout_redis_failure``: every client receives every acknowledged publication exactly
once and in order, or is told that its position is gone between its neighbours. Counted, not
sampled; a last publication marks the end.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from tests.conftest import Hub, HubFactory, free_port, in_ci
from tests.test_broker_redis_topologies import SentinelSetup, _cli, _tool, _wait
from tests.test_scaleout_redis_failure import (
    CHANNEL,
    END,
    REDIS_SERVER,
    Published,
    RedisServer,
    T,
    flow,
    publish,
)

from clarion.broker.sharded import jump_hash

# Under CI=true a missing redis-server fails the tests (scripts/install-test-deps installs it).
pytestmark = pytest.mark.skipif(REDIS_SERVER is None and not in_ci(),
                                reason="redis-server is not installed")

async def test_the_shard_holding_the_channel_dies_and_comes_back_empty(
        hub_factory: HubFactory, tmp_path: Path) -> None:
    shards = []
    for n in range(2):
        directory = tmp_path / f"shard{n}"
        directory.mkdir()
        shards.append(RedisServer(free_port(), directory, persistent=False))
        shards[-1].start()
    try:
        owner = shards[jump_hash(CHANNEL, 2)]

        async def kill_owner(http: httpx.AsyncClient, nodes: list[Hub],
                             published: Published) -> None:
            owner.kill()
            before = published.unavailable
            i = 10_000  # data no client expects in order: these publishes must be refused
            while published.unavailable < before + 5:
                assert await publish(http, nodes[i % 2], i, published) is False
                i += 1
            published.attempted[:] = [p for p in published.attempted if p < 10_000]
            owner.start()

        urls = ", ".join(f'"{s.url}"' for s in shards)
        published, logs, _ = await flow(hub_factory, f"[{urls}]", kill_owner)
    finally:
        for shard in shards:
            shard.stop()
    assert published.unavailable >= 5
    # The shard came back empty: a new epoch there, and every client was told so once.
    for log in logs:
        assert log.losses >= 1, f"{log.name} was not told its position is gone"


async def test_sentinel_failover_with_clients_connected(
        hub_factory: HubFactory, tmp_path: Path) -> None:
    _tool("redis-sentinel")
    setup = SentinelSetup(tmp_path)
    try:
        async def fail_over(http: httpx.AsyncClient, nodes: list[Hub],
                            published: Published) -> None:
            old = setup.master_port()
            _cli(setup.port, "sentinel", "failover", "mymaster")
            await asyncio.to_thread(_wait, lambda: setup.master_port() != old,
                                    "Sentinel did not fail over")
            # Until a node's keepalive sees the move (one ping_interval), the demoted primary
            # still takes its writes: Sentinel reconfigures it only after its INFO period, and
            # what was written there is dropped when it resyncs (Redis's asynchronous failover;
            # docs/topics/scaling.md). Publishing resumes once both nodes have moved.
            for n in nodes:
                deadline = time.monotonic() + T
                while (await http.get(f"{n.url}/health")).json()["broker"]["reconnects"] < 1:
                    assert time.monotonic() < deadline, "a node did not follow the failover"
                    await asyncio.sleep(0.05)

        published, logs, _ = await flow(hub_factory, f'"{setup.url}"', fail_over)
    finally:
        setup.stop()
    # A failover Sentinel was asked for waits for the replica to catch up: nothing is lost,
    # the epoch stays, and every client has everything.
    for log in logs:
        assert log.losses == 0, f"{log.name}: {log.events[-5:]}"
        assert set(published.ok) - {END} <= set(log.received), log.name
