"""The fan-out's positions in one process: holes, epochs, subscribers ahead of the node,
resubscribes and the subscribe race, with a scripted broker (no Redis, no sockets)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from clarion.broker.base import HistoryResult, Publication, StreamPosition
from clarion.errors import BrokerError
from clarion.hub.fanout import Fanout
from clarion.hub.push import EncodedPush


class FakeLog:
    def info(self, *args: Any, **kwargs: Any) -> None:
        pass

    warning = info


class FakeMetrics:
    def delivered(self, n: int, t: float) -> None:
        pass


class FakeConfig:
    def seconds(self, name: str) -> float:
        return 3600.0


class FakeBroker:
    def __init__(self) -> None:
        self.stream: list[Publication] = []
        self.epoch = "e1"
        self.subscribe_gate: asyncio.Future[None] | None = None
        self.subscribes = 0
        self.fail_subscribe = False

    def add(self, offset: int) -> Publication:
        pub = Publication(offset, b'{"n":%d}' % offset)
        self.stream.append(pub)
        return pub

    async def history(self, channel: str, *, since: StreamPosition | None = None,
                      limit: int = 0, reverse: bool = False,
                      meta_ttl: float = 0.0) -> HistoryResult:
        top = self.stream[-1].offset if self.stream else 0
        pos = StreamPosition(top, self.epoch)
        if since is not None and since.epoch != self.epoch:
            return HistoryResult([], pos)
        after = since.offset if since is not None else 0
        return HistoryResult([p for p in self.stream if p.offset > after], pos)

    async def subscribe(self, channel: str) -> None:
        self.subscribes += 1
        if self.subscribe_gate is not None:
            await self.subscribe_gate
        if self.fail_subscribe:
            raise BrokerError("redis subscribe: down")

    async def unsubscribe(self, channel: str) -> None:
        pass


class FakeHub:
    def __init__(self) -> None:
        self.broker = FakeBroker()
        self.log = FakeLog()
        self.metrics = FakeMetrics()
        self.config = FakeConfig()
        self.loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.failures: list[tuple[str, BaseException]] = []

    def failed(self, part: str, exc: BaseException, **fields: Any) -> None:
        self.failures.append((part, exc))

    def spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def settle(self) -> None:
        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.sleep(0)


@dataclass
class Sub:
    positioned: bool = True
    push_join_leave: bool = False


@dataclass
class Target:
    got: list[int] = field(default_factory=list)

    def push(self, enc: EncodedPush) -> None:
        self.got.append(enc.offset)


@dataclass
class FakeSession:
    id: str
    target: Target = field(default_factory=Target)
    subs: dict[str, Sub] = field(default_factory=dict)
    user: str = ""
    lost: list[str] = field(default_factory=list)
    fanout: Fanout | None = None

    def lose_position(self, channel: str) -> None:
        self.lost.append(channel)
        self.subs.pop(channel, None)
        assert self.fanout is not None
        self.fanout.remove(channel, self)  # type: ignore[arg-type]


def subscribe(fan: Fanout, sid: str, top: int, epoch: str | None = "e1",
              buffered: tuple[int, ...] = ()) -> FakeSession:
    session = FakeSession(sid, fanout=fan)
    session.subs["ch"] = Sub(positioned=epoch is not None)
    fan.register(session)  # type: ignore[arg-type]
    buffer = fan.add_buffering("ch", session)  # type: ignore[arg-type]
    for offset in buffered:
        buffer.push(EncodedPush.publication("ch", Publication(offset, b"1"), epoch or "e1"))
    fan.activate("ch", session, buffer, top, epoch)  # type: ignore[arg-type]
    return session


def arrive(fan: Fanout, hub: FakeHub, offset: int, epoch: str = "e1",
           keep: bool = True) -> None:
    pub = hub.broker.add(offset) if keep else Publication(offset, b'{"n":%d}' % offset)
    fan.on_publication("ch", pub, epoch)


@pytest.fixture
async def setup() -> tuple[Fanout, FakeHub]:
    hub = FakeHub()
    return Fanout(hub), hub  # type: ignore[arg-type]


async def test_in_order_publications_are_delivered_once(setup: tuple[Fanout, FakeHub]) -> None:
    fan, hub = setup
    a = subscribe(fan, "a", 0)
    for n in range(1, 6):
        arrive(fan, hub, n)
    await hub.settle()
    assert a.target.got == [1, 2, 3, 4, 5]
    assert fan.catch_ups == 0


async def test_a_hole_is_filled_from_history_in_order(setup: tuple[Fanout, FakeHub]) -> None:
    fan, hub = setup
    a = subscribe(fan, "a", 0)
    arrive(fan, hub, 1)
    hub.broker.add(2)
    hub.broker.add(3)  # lost on the way to this node
    arrive(fan, hub, 4)
    arrive(fan, hub, 5)  # waits behind the catch-up
    await hub.settle()
    assert a.target.got == [1, 2, 3, 4, 5]
    assert fan.catch_ups == 1 and not a.lost


async def test_a_trimmed_history_means_insufficient_state(
        setup: tuple[Fanout, FakeHub]) -> None:
    fan, hub = setup
    a = subscribe(fan, "a", 0)
    plain = FakeSession("p", fanout=fan)
    plain.subs["ch"] = Sub(positioned=False)
    fan.register(plain)  # type: ignore[arg-type]
    fan.add_target("ch", "p", plain.target)
    arrive(fan, hub, 1)
    for n in (2, 3):
        hub.broker.add(n)
    del hub.broker.stream[:3]  # history no longer has 2
    arrive(fan, hub, 4)
    await hub.settle()
    assert a.lost == ["ch"] and a.target.got == [1]
    assert plain.target.got == [1, 4] and not plain.lost


async def test_a_new_epoch_means_insufficient_state(setup: tuple[Fanout, FakeHub]) -> None:
    fan, hub = setup
    a = subscribe(fan, "a", 0)
    arrive(fan, hub, 1)
    hub.broker.stream.clear()
    hub.broker.epoch = "e2"
    arrive(fan, hub, 1, epoch="e2")
    await hub.settle()
    assert a.lost == ["ch"] and a.target.got == [1]


async def test_a_subscriber_ahead_of_the_node_gets_nothing_twice(
        setup: tuple[Fanout, FakeHub]) -> None:
    fan, hub = setup
    a = subscribe(fan, "a", 0)
    arrive(fan, hub, 1)
    hub.broker.add(2)
    hub.broker.add(3)
    # b read history up to 3 while 2 and 3 were still on their way here.
    b = subscribe(fan, "b", 3)
    fan.on_publication("ch", hub.broker.stream[1], "e1")
    fan.on_publication("ch", hub.broker.stream[2], "e1")
    arrive(fan, hub, 4)
    await hub.settle()
    assert a.target.got == [1, 2, 3, 4]
    assert b.target.got == [4]
    assert not fan._streams["ch"].ahead


async def test_buffered_publications_the_reply_covered_are_skipped(
        setup: tuple[Fanout, FakeHub]) -> None:
    fan, hub = setup
    for n in (1, 2, 3):
        hub.broker.add(n)
    a = subscribe(fan, "a", 2, buffered=(1, 2, 3))
    arrive(fan, hub, 4)
    await hub.settle()
    assert a.target.got == [3, 4] and not a.lost


async def test_resubscribe_catches_up_every_subscriber(setup: tuple[Fanout, FakeHub]) -> None:
    fan, hub = setup
    a = subscribe(fan, "a", 0)
    arrive(fan, hub, 1)
    hub.broker.add(2)
    hub.broker.add(3)  # published while the link was down
    fan.on_resubscribed(["ch", "other"])
    await hub.settle()
    arrive(fan, hub, 4)
    await hub.settle()
    assert a.target.got == [1, 2, 3, 4] and not a.lost


async def test_resubscribe_before_any_arrival_uses_the_subscribers_reads(
        setup: tuple[Fanout, FakeHub]) -> None:
    fan, hub = setup
    hub.broker.add(1)
    a = subscribe(fan, "a", 1)
    hub.broker.add(2)
    fan.on_resubscribed(["ch"])
    await hub.settle()
    assert a.target.got == [2] and not a.lost


async def test_resubscribe_into_an_empty_redis_is_insufficient_state(
        setup: tuple[Fanout, FakeHub]) -> None:
    fan, hub = setup
    a = subscribe(fan, "a", 0)
    arrive(fan, hub, 1)
    hub.broker.stream.clear()
    hub.broker.epoch = "e2"
    fan.on_resubscribed(["ch"])
    await hub.settle()
    assert a.lost == ["ch"]


async def test_concurrent_subscribers_all_wait_for_the_broker(
        setup: tuple[Fanout, FakeHub]) -> None:
    fan, hub = setup
    hub.broker.subscribe_gate = hub.loop.create_future()
    fan.channels["ch"] = {"x": Target()}
    first = asyncio.ensure_future(fan.ensure_broker_subscription("ch"))
    second = asyncio.ensure_future(fan.ensure_broker_subscription("ch"))
    await asyncio.sleep(0.01)
    assert not first.done() and not second.done()
    assert hub.broker.subscribes == 1
    hub.broker.subscribe_gate.set_result(None)
    await asyncio.gather(first, second)
    assert "ch" in fan._broker_channels


async def test_a_failed_subscribe_fails_every_waiter_and_leaves_nothing(
        setup: tuple[Fanout, FakeHub]) -> None:
    fan, hub = setup
    hub.broker.subscribe_gate = hub.loop.create_future()
    hub.broker.fail_subscribe = True
    fan.channels["ch"] = {"x": Target()}
    waiters = [asyncio.ensure_future(fan.ensure_broker_subscription("ch")) for _ in range(3)]
    await asyncio.sleep(0.01)
    hub.broker.subscribe_gate.set_result(None)
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, BrokerError) for r in results)
    assert "ch" not in fan._broker_channels and "ch" not in fan._subscribing
    hub.broker.fail_subscribe = False
    await fan.ensure_broker_subscription("ch")
    assert "ch" in fan._broker_channels


async def test_a_subscriber_set_up_across_a_reconnect_catches_up(
        setup: tuple[Fanout, FakeHub]) -> None:
    fan, hub = setup
    hub.broker.add(1)
    session = FakeSession("a", fanout=fan)
    session.subs["ch"] = Sub()
    fan.register(session)  # type: ignore[arg-type]
    buffer = fan.add_buffering("ch", session)  # type: ignore[arg-type]
    # Its history read said 1; then the link dropped, 2 and 3 were published, and the link
    # came back before the subscriber went live.
    hub.broker.add(2)
    hub.broker.add(3)
    fan.on_resubscribed(["ch"])
    fan.activate("ch", session, buffer, 1, "e1")  # type: ignore[arg-type]
    await hub.settle()
    arrive(fan, hub, 4)
    await hub.settle()
    assert session.target.got == [2, 3, 4] and not session.lost


async def test_a_failed_history_read_is_retried_before_giving_up(
        setup: tuple[Fanout, FakeHub]) -> None:
    fan, hub = setup
    a = subscribe(fan, "a", 0)
    arrive(fan, hub, 1)
    hub.broker.add(2)
    real = hub.broker.history
    failures = [BrokerError("redis history: down")]

    async def flaky(*args: Any, **kwargs: Any) -> HistoryResult:
        if failures:
            raise failures.pop()
        return await real(*args, **kwargs)

    hub.broker.history = flaky  # type: ignore[method-assign]
    arrive(fan, hub, 3)
    await hub.settle()
    assert a.target.got == [1, 2, 3] and not a.lost


async def test_a_catch_up_that_breaks_tells_the_subscribers_their_position_is_gone(
        setup: tuple[Fanout, FakeHub]) -> None:
    # Not a broker outage but a bug or a reply of the wrong shape: nobody may be left waiting
    # for a catch-up that died; the failure is counted and the channel goes on.
    fan, hub = setup
    a = subscribe(fan, "a", 0)
    arrive(fan, hub, 1)
    hub.broker.add(2)

    async def broken(*args: Any, **kwargs: Any) -> HistoryResult:
        raise RuntimeError("the handler is closed")

    hub.broker.history = broken  # type: ignore[method-assign]
    arrive(fan, hub, 3)
    await hub.settle()
    assert a.lost == ["ch"] and a.target.got == [1]
    assert [part for part, _ in hub.failures] == ["catch_up"]
    b = subscribe(fan, "b", 3)  # the channel still works for those who come after
    arrive(fan, hub, 4)
    await hub.settle()
    assert b.target.got == [4]
