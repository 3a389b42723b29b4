"""MemoryBroker against the broker conformance suite, on a fake clock."""

from __future__ import annotations

import pytest

from broker_conformance import BrokerConformance, Recorder, history_on
from clarion.broker import create_broker
from clarion.broker.base import Broker, ClientInfo, StreamPosition
from clarion.broker.memory import MemoryBroker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestMemoryBroker(BrokerConformance):
    @pytest.fixture
    def broker(self) -> Broker:
        self.clock = FakeClock()
        return MemoryBroker(clock=self.clock)

    async def advance(self, seconds: float) -> None:
        self.clock.now += seconds


# -- memory-only behaviour --------------------------------------------------------------------


def test_create_broker_memory_urls() -> None:
    for url in ("memory", "memory://", ""):
        assert isinstance(create_broker(url), MemoryBroker)


async def test_sweep_keeps_the_contract() -> None:
    """The periodic sweep drops expired data the same way lazy expiry does."""
    clock = FakeClock()
    broker = MemoryBroker(clock=clock)
    await broker.start(Recorder())
    try:
        res = await broker.publish("ch", b"1", history_on(ttl=5))
        await broker.publish("meta", b"1", history_on(ttl=5, history_meta_ttl=5))
        await broker.add_presence("ch", ClientInfo("c", "u"), 5)
        await broker.store_ticket("t", b"p", 5)
        clock.now += 10
        broker.sweep()
        hist = await broker.history("ch", limit=-1)
        assert hist.publications == []
        assert hist.position == res.position  # pubs gone, position kept
        meta = await broker.history("meta", limit=-1)
        assert meta.position.offset == 0  # whole stream gone: a fresh one
        assert await broker.presence("ch") == {}
        assert await broker.consume_ticket("t") is None
    finally:
        await broker.close()


async def test_sweep_leaves_live_data_alone() -> None:
    clock = FakeClock()
    broker = MemoryBroker(clock=clock)
    await broker.start(Recorder())
    try:
        res = await broker.publish("ch", b"1", history_on(ttl=50))
        await broker.add_presence("ch", ClientInfo("c", "u"), 50)
        await broker.store_ticket("t", b"p", 50)
        clock.now += 10
        broker.sweep()
        hist = await broker.history("ch", limit=-1)
        assert [p.offset for p in hist.publications] == [1]
        assert hist.position == StreamPosition(1, res.position.epoch)
        assert set(await broker.presence("ch")) == {"c"}
        assert await broker.consume_ticket("t") == b"p"
    finally:
        await broker.close()


# MultiNodeBrokerConformance is not run here: the memory broker lives in one process, so no
# second node can share its store (tests/test_broker_redis*.py run it on every Redis setup).
