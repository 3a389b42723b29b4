"""The conformance suites every broker backend passes (the contract is clarion/broker/base.py).

Shipped for third-party backends, as Channels ships its layer test kit: it needs pytest and
pytest-asyncio (both in Clarion's ``test`` extra), which Clarion itself never imports at run
time. :class:`BrokerConformance` tests one instance; :class:`MultiNodeBrokerConformance` tests
two instances sharing one backing store, as two hub nodes do.

A backend's test module subclasses :class:`BrokerConformance` and provides:

* a ``broker`` fixture returning a new, *not yet started* broker (the suite starts it through
  the ``started`` fixture, so that it can also check what happens before ``start``);
* ``async def advance(self, seconds)``, which moves the broker's notion of time forward:
  a fake clock for the memory broker, a real ``asyncio.sleep`` for a server-backed one;
* optionally ``short_ttl``: the ttl the expiry tests use (raise it for a backend whose expiry
  has a coarse resolution).

Only the public contract is used. Channel names, clients and tickets are unique per test so
that a shared server (Redis) needs no flushing between tests. Delivery may be asynchronous:
the suite waits, with a generous bound, for what it expects to arrive; it asserts nothing
about how long that takes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

try:
    import pytest
    import pytest_asyncio
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "clarion.testing needs pytest and pytest-asyncio: pip install 'clarion[test]' "
        "(or just those two)") from exc

from clarion.broker.base import (
    Broker,
    ClientInfo,
    Publication,
    PublishOptions,
    StreamPosition,
)
from clarion.errors import BrokerError

__all__ = [
    "DELIVERY_WAIT",
    "LONG_TTL",
    "BrokerConformance",
    "MultiNodeBrokerConformance",
    "Recorder",
    "history_on",
    "new_id",
    "offsets",
]

DELIVERY_WAIT = 10.0  # upper bound on waiting for an asynchronous delivery; never asserted on
LONG_TTL = 300.0


class Recorder:
    """A BrokerEventHandler that remembers everything it was given."""

    def __init__(self) -> None:
        self.publications: list[tuple[str, Publication, str]] = []
        self.joins: list[tuple[str, ClientInfo]] = []
        self.leaves: list[tuple[str, ClientInfo]] = []
        self.controls: list[bytes] = []
        self.resubscribed: list[list[str]] = []
        self.changed = asyncio.Event()

    def on_publication(self, channel: str, pub: Publication, epoch: str) -> None:
        self.publications.append((channel, pub, epoch))
        self.changed.set()

    def on_join(self, channel: str, info: ClientInfo) -> None:
        self.joins.append((channel, info))
        self.changed.set()

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        self.leaves.append((channel, info))
        self.changed.set()

    def on_control(self, data: bytes) -> None:
        self.controls.append(data)
        self.changed.set()

    def on_resubscribed(self, channels: list[str]) -> None:
        self.resubscribed.append(channels)
        self.changed.set()

    def pubs(self, channel: str) -> list[tuple[Publication, str]]:
        return [(pub, epoch) for ch, pub, epoch in self.publications if ch == channel]

    def data(self, channel: str) -> list[bytes]:
        return [pub.data for pub, _ in self.pubs(channel)]

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds; fail (not hang) if it never does."""

        async def wait() -> None:
            while not condition():
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(wait(), DELIVERY_WAIT)
        except TimeoutError:
            pytest.fail("the broker did not deliver the expected events")


def new_id(prefix: str) -> str:
    """A name no other test uses (channels, clients, tickets on a shared server)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


_id = new_id


def history_on(size: int = 10, ttl: float = LONG_TTL, **kw: object) -> PublishOptions:
    return PublishOptions(history_size=size, history_ttl=ttl, **kw)  # type: ignore[arg-type]


def offsets(pubs: list[Publication]) -> list[int]:
    return [p.offset for p in pubs]


@pytest.mark.asyncio
class BrokerConformance:
    """Subclass as ``TestXxxBroker`` and override ``broker`` and ``advance``."""

    short_ttl: float = 1.0

    # -- hooks a backend provides ------------------------------------------------------------

    @pytest.fixture
    def broker(self) -> Broker:
        raise NotImplementedError("a backend's test class overrides the broker fixture")

    async def advance(self, seconds: float) -> None:
        raise NotImplementedError("a backend's test class moves its clock forward")

    # -- fixtures and helpers -----------------------------------------------------------------

    @pytest_asyncio.fixture
    async def started(self, broker: Broker) -> AsyncIterator[Broker]:
        self.handler = Recorder()
        await broker.start(self.handler)
        try:
            yield broker
        finally:
            await broker.close()

    @pytest.fixture
    def channel(self) -> str:
        return _id("conf")

    async def publish_n(self, broker: Broker, channel: str, n: int,
                        options: PublishOptions | None = None) -> list[StreamPosition]:
        opts = options or history_on()
        out = []
        for i in range(1, n + 1):
            res = await broker.publish(channel, b'{"n":%d}' % i, opts)
            out.append(res.position)
        return out

    # -- start / close ------------------------------------------------------------------------

    async def test_start_then_close_twice(self, broker: Broker) -> None:
        await broker.start(Recorder())
        await broker.close()
        await broker.close()

    async def test_publish_before_start_raises_broker_error(self, broker: Broker) -> None:
        with pytest.raises(BrokerError):
            await broker.publish(_id("early"), b"{}", PublishOptions())
        await broker.close()

    # -- publishing and delivery --------------------------------------------------------------

    async def test_publish_without_history_has_offset_zero_and_is_delivered(
        self, started: Broker, channel: str
    ) -> None:
        await started.subscribe(channel)
        res = await started.publish(channel, b'{"text":"hi"}', PublishOptions())
        assert res.position.offset == 0
        assert res.suppressed is False
        await self.handler.until(lambda: len(self.handler.pubs(channel)) == 1)
        [(pub, _epoch)] = self.handler.pubs(channel)
        assert pub.data == b'{"text":"hi"}'
        assert pub.offset == 0
        # Nothing was kept.
        hist = await started.history(channel, limit=-1)
        assert hist.publications == []
        assert hist.position.offset == 0

    async def test_history_needs_both_size_and_ttl(self, started: Broker, channel: str) -> None:
        res1 = await started.publish(channel, b"1", PublishOptions(history_size=10))
        res2 = await started.publish(channel, b"2", PublishOptions(history_ttl=LONG_TTL))
        assert res1.position.offset == 0
        assert res2.position.offset == 0
        assert (await started.history(channel, limit=-1)).publications == []

    async def test_offsets_are_monotonic_under_one_epoch(
        self, started: Broker, channel: str
    ) -> None:
        await started.subscribe(channel)
        positions = await self.publish_n(started, channel, 5)
        assert [p.offset for p in positions] == [1, 2, 3, 4, 5]
        epochs = {p.epoch for p in positions}
        assert len(epochs) == 1
        epoch = epochs.pop()
        assert epoch
        await self.handler.until(lambda: len(self.handler.pubs(channel)) == 5)
        delivered = self.handler.pubs(channel)
        assert [pub.offset for pub, _ in delivered] == [1, 2, 3, 4, 5]
        assert {ep for _, ep in delivered} == {epoch}
        hist = await started.history(channel, limit=-1)
        assert hist.position == StreamPosition(5, epoch)

    async def test_publication_fields_survive_history_and_delivery(
        self, started: Broker, channel: str
    ) -> None:
        await started.subscribe(channel)
        info = ClientInfo("client-1", "user-1", b'{"name":"Ann"}', b'{"role":"admin"}')
        tags = {"kind": "chat", "ünïcode": "välue"}
        data = b'{"b": 1.50, "a": [ ], "s": "\\u00e9\xc3\xa9"}'  # raw JSON, odd spacing kept
        await started.publish(channel, data, history_on(info=info, tags=tags))
        [pub] = (await started.history(channel, limit=-1)).publications
        assert pub.data == data
        assert pub.info == info
        assert pub.tags == tags
        assert pub.offset == 1
        await self.handler.until(lambda: len(self.handler.pubs(channel)) == 1)
        [(delivered, _)] = self.handler.pubs(channel)
        assert delivered.data == data
        assert delivered.info == info
        assert delivered.tags == tags

    async def test_publication_without_info_or_tags(self, started: Broker, channel: str) -> None:
        await started.publish(channel, b"null", history_on())
        [pub] = (await started.history(channel, limit=-1)).publications
        assert pub.info is None
        assert not pub.tags

    async def test_delivery_keeps_publish_order_per_channel(self, started: Broker) -> None:
        a, b = _id("order-a"), _id("order-b")
        await started.subscribe(a)
        await started.subscribe(b)
        for i in range(30):
            await started.publish(a, b"%d" % i, history_on(size=100))
            await started.publish(b, b"%d" % i, PublishOptions())
        await self.handler.until(
            lambda: len(self.handler.pubs(a)) == 30 and len(self.handler.pubs(b)) == 30)
        assert self.handler.data(a) == [b"%d" % i for i in range(30)]
        assert self.handler.data(b) == [b"%d" % i for i in range(30)]
        assert [p.offset for p, _ in self.handler.pubs(a)] == list(range(1, 31))

    async def test_concurrent_publishes_get_distinct_offsets_delivered_in_order(
        self, started: Broker, channel: str
    ) -> None:
        await started.subscribe(channel)
        results = await asyncio.gather(
            *(started.publish(channel, b"%d" % i, history_on(size=100)) for i in range(40)))
        assert sorted(r.position.offset for r in results) == list(range(1, 41))
        assert len({r.position.epoch for r in results}) == 1
        await self.handler.until(lambda: len(self.handler.pubs(channel)) == 40)
        assert [p.offset for p, _ in self.handler.pubs(channel)] == list(range(1, 41))
        hist = await started.history(channel, limit=-1)
        assert offsets(hist.publications) == list(range(1, 41))

    async def test_publish_many_keeps_order_per_channel_and_answers_each(
        self, started: Broker
    ) -> None:
        a, b = _id("many-a"), _id("many-b")
        await started.subscribe(a)
        await started.subscribe(b)
        await started.publish(a, b"first", history_on(size=100))
        requests = []
        for i in range(20):
            requests.append((a, b"%d" % i, history_on(size=100)))
            requests.append((b, b"%d" % i, PublishOptions()))
        requests.append((a, b"again", history_on(size=100, idempotency_key="k")))
        requests.append((a, b"again", history_on(size=100, idempotency_key="k")))
        results = await started.publish_many(requests)
        assert len(results) == len(requests)
        assert not [r for r in results if isinstance(r, BrokerError)]
        ok = [r for r in results if not isinstance(r, BrokerError)]
        assert [r.position.offset for r in ok[0:40:2]] == list(range(2, 22))
        assert {r.position.offset for r in ok[1:40:2]} == {0}
        assert ok[40].position.offset == 22 and not ok[40].suppressed
        assert ok[41].suppressed and ok[41].position == ok[40].position
        await self.handler.until(
            lambda: len(self.handler.pubs(a)) == 22 and len(self.handler.pubs(b)) == 20)
        assert self.handler.data(a) == [b"first"] + [b"%d" % i for i in range(20)] + [b"again"]
        assert self.handler.data(b) == [b"%d" % i for i in range(20)]
        assert [p.offset for p, _ in self.handler.pubs(a)] == list(range(1, 23))
        assert offsets((await started.history(a, limit=-1)).publications) == list(range(1, 23))
        assert await started.publish_many([]) == []

    async def test_join_and_leave_are_delivered(self, started: Broker, channel: str) -> None:
        await started.subscribe(channel)
        info = ClientInfo(_id("client"), "user-7", b'{"a":1}', None)
        await started.publish_join(channel, info)
        await started.publish_leave(channel, info)
        await self.handler.until(lambda: bool(self.handler.joins and self.handler.leaves))
        assert self.handler.joins == [(channel, info)]
        assert self.handler.leaves == [(channel, info)]

    # -- history ------------------------------------------------------------------------------

    async def test_history_limit_semantics(self, started: Broker, channel: str) -> None:
        positions = await self.publish_n(started, channel, 5)
        top = positions[-1]

        only_position = await started.history(channel)  # limit defaults to 0
        assert only_position.publications == []
        assert only_position.position == top

        zero = await started.history(channel, limit=0)
        assert zero.publications == []
        assert zero.position == top

        every = await started.history(channel, limit=-1)
        assert offsets(every.publications) == [1, 2, 3, 4, 5]
        assert [p.data for p in every.publications] == [b'{"n":%d}' % i for i in range(1, 6)]
        assert every.position == top

        assert offsets((await started.history(channel, limit=2)).publications) == [1, 2]
        assert offsets((await started.history(channel, limit=10)).publications) == [1, 2, 3, 4, 5]
        assert offsets((await started.history(channel, limit=2, reverse=True)).publications) == [
            5, 4]
        assert offsets((await started.history(channel, limit=-1, reverse=True)).publications) == [
            5, 4, 3, 2, 1]

    async def test_history_since_position(self, started: Broker, channel: str) -> None:
        positions = await self.publish_n(started, channel, 5)
        epoch = positions[0].epoch

        since2 = await started.history(channel, since=StreamPosition(2, epoch), limit=-1)
        assert offsets(since2.publications) == [3, 4, 5]
        assert since2.position == positions[-1]

        since2_lim = await started.history(channel, since=StreamPosition(2, epoch), limit=2)
        assert offsets(since2_lim.publications) == [3, 4]

        since0 = await started.history(channel, since=StreamPosition(0, epoch), limit=-1)
        assert offsets(since0.publications) == [1, 2, 3, 4, 5]

        at_top = await started.history(channel, since=StreamPosition(5, epoch), limit=-1)
        assert at_top.publications == []
        assert at_top.position == positions[-1]

        only_pos = await started.history(channel, since=StreamPosition(2, epoch), limit=0)
        assert only_pos.publications == []
        assert only_pos.position == positions[-1]

    async def test_history_since_with_wrong_epoch_returns_nothing(
        self, started: Broker, channel: str
    ) -> None:
        positions = await self.publish_n(started, channel, 3)
        wrong = positions[0].epoch + "x"
        hist = await started.history(channel, since=StreamPosition(1, wrong), limit=-1)
        assert hist.publications == []
        assert hist.position == positions[-1]  # the current top, so the caller sees the gap
        hist0 = await started.history(channel, since=StreamPosition(0, wrong), limit=-1)
        assert hist0.publications == []

    async def test_history_of_unknown_channel_creates_stream_that_publishes_continue(
        self, started: Broker, channel: str
    ) -> None:
        first = await started.history(channel, limit=-1)
        assert first.publications == []
        assert first.position.offset == 0
        assert first.position.epoch
        again = await started.history(channel, limit=0)
        assert again.position == first.position
        res = await started.publish(channel, b"1", history_on())
        assert res.position == StreamPosition(1, first.position.epoch)
        hist = await started.history(channel, since=first.position, limit=-1)
        assert offsets(hist.publications) == [1]

    async def test_streams_are_independent_per_channel(self, started: Broker) -> None:
        a, b = _id("ind-a"), _id("ind-b")
        await self.publish_n(started, a, 3)
        pos_b = await self.publish_n(started, b, 1)
        assert pos_b[0].offset == 1
        assert offsets((await started.history(b, limit=-1)).publications) == [1]
        assert offsets((await started.history(a, limit=-1)).publications) == [1, 2, 3]

    async def test_history_size_keeps_only_newest(self, started: Broker, channel: str) -> None:
        positions = await self.publish_n(started, channel, 7, history_on(size=3))
        assert [p.offset for p in positions] == list(range(1, 8))
        hist = await started.history(channel, limit=-1)
        assert offsets(hist.publications) == [5, 6, 7]
        assert hist.position == positions[-1]
        rev = await started.history(channel, limit=-1, reverse=True)
        assert offsets(rev.publications) == [7, 6, 5]
        # A position older than what is kept: only what is kept comes back, and the caller can
        # tell from the first offset (5, not 2) that publications are missing.
        since = await started.history(channel, since=StreamPosition(1, positions[0].epoch),
                                      limit=-1)
        assert offsets(since.publications) == [5, 6, 7]

    async def test_remove_history_keeps_epoch_and_offset(
        self, started: Broker, channel: str
    ) -> None:
        positions = await self.publish_n(started, channel, 3)
        await started.remove_history(channel)
        hist = await started.history(channel, limit=-1)
        assert hist.publications == []
        assert hist.position == positions[-1]
        res = await started.publish(channel, b"4", history_on())
        assert res.position == StreamPosition(4, positions[0].epoch)
        after = await started.history(channel, limit=-1)
        assert offsets(after.publications) == [4]

    async def test_remove_history_of_unknown_channel_is_harmless(self, started: Broker) -> None:
        await started.remove_history(_id("never"))

    # -- expiry (uses the backend's clock hook) -----------------------------------------------

    async def test_history_ttl_drops_publications_but_keeps_position(
        self, started: Broker, channel: str
    ) -> None:
        ttl = self.short_ttl
        positions = await self.publish_n(started, channel, 3, history_on(ttl=ttl))
        epoch = positions[0].epoch
        assert offsets((await started.history(channel, limit=-1)).publications) == [1, 2, 3]

        await self.advance(ttl * 3)

        hist = await started.history(channel, limit=-1)
        assert hist.publications == []
        assert hist.position == StreamPosition(3, epoch)
        # A client at offset 1 is behind a stream whose publications are gone: it gets nothing
        # back while the top is still 3 under the same epoch, so it knows it cannot recover.
        behind = await started.history(channel, since=StreamPosition(1, epoch), limit=-1)
        assert behind.publications == []
        assert behind.position == StreamPosition(3, epoch)
        # The stream goes on where it was.
        res = await started.publish(channel, b"4", history_on(ttl=ttl))
        assert res.position == StreamPosition(4, epoch)

    async def test_meta_ttl_expiry_starts_a_new_epoch(
        self, started: Broker, channel: str
    ) -> None:
        ttl = self.short_ttl
        opts = history_on(ttl=ttl, history_meta_ttl=ttl)
        positions = await self.publish_n(started, channel, 3, opts)
        old_epoch = positions[0].epoch

        await self.advance(ttl * 3)

        res = await started.publish(channel, b"again", opts)
        assert res.position.offset == 1
        assert res.position.epoch != old_epoch
        hist = await started.history(channel, limit=-1, meta_ttl=ttl)
        assert offsets(hist.publications) == [1]
        assert hist.position == res.position
        # A client holding a position of the old epoch gets nothing.
        stale = await started.history(channel, since=StreamPosition(1, old_epoch), limit=-1,
                                      meta_ttl=ttl)
        assert stale.publications == []
        assert stale.position == res.position

    async def test_meta_ttl_expiry_seen_by_history(self, started: Broker, channel: str) -> None:
        ttl = self.short_ttl
        positions = await self.publish_n(
            started, channel, 2, history_on(ttl=ttl, history_meta_ttl=ttl))
        await self.advance(ttl * 3)
        hist = await started.history(channel, limit=-1, meta_ttl=LONG_TTL)
        assert hist.publications == []
        assert hist.position.offset == 0
        assert hist.position.epoch != positions[0].epoch
        # …and that new stream is the one later publications continue.
        res = await started.publish(channel, b"x", history_on())
        assert res.position == StreamPosition(1, hist.position.epoch)

    # -- idempotency --------------------------------------------------------------------------

    async def test_idempotency_key_suppresses_duplicate(
        self, started: Broker, channel: str
    ) -> None:
        await started.subscribe(channel)
        opts = history_on(idempotency_key="order-42")
        first = await started.publish(channel, b'{"v":1}', opts)
        second = await started.publish(channel, b'{"v":2}', opts)
        assert first.suppressed is False
        assert second.suppressed is True
        assert second.position == first.position
        assert first.position.offset == 1
        # A sentinel after the duplicate: once it arrives, anything before it has too.
        await started.publish(channel, b'"sentinel"', history_on())
        await self.handler.until(lambda: b'"sentinel"' in self.handler.data(channel))
        assert self.handler.data(channel) == [b'{"v":1}', b'"sentinel"']
        hist = await started.history(channel, limit=-1)
        assert [p.data for p in hist.publications] == [b'{"v":1}', b'"sentinel"']
        assert offsets(hist.publications) == [1, 2]

    async def test_idempotency_key_without_history(self, started: Broker, channel: str) -> None:
        await started.subscribe(channel)
        opts = PublishOptions(idempotency_key="k")
        first = await started.publish(channel, b"1", opts)
        second = await started.publish(channel, b"1", opts)
        assert first.suppressed is False
        assert second.suppressed is True
        assert second.position == first.position
        await started.publish(channel, b'"sentinel"', PublishOptions())
        await self.handler.until(lambda: b'"sentinel"' in self.handler.data(channel))
        assert self.handler.data(channel) == [b"1", b'"sentinel"']

    async def test_idempotency_key_is_per_channel(self, started: Broker) -> None:
        a, b = _id("idem-a"), _id("idem-b")
        ra = await started.publish(a, b"1", history_on(idempotency_key="same"))
        rb = await started.publish(b, b"1", history_on(idempotency_key="same"))
        assert ra.suppressed is False
        assert rb.suppressed is False
        assert rb.position.offset == 1

    async def test_different_idempotency_keys_are_not_suppressed(
        self, started: Broker, channel: str
    ) -> None:
        r1 = await started.publish(channel, b"1", history_on(idempotency_key="k1"))
        r2 = await started.publish(channel, b"1", history_on(idempotency_key="k2"))
        assert not r1.suppressed and not r2.suppressed
        assert [r1.position.offset, r2.position.offset] == [1, 2]

    async def test_idempotent_result_expires(self, started: Broker, channel: str) -> None:
        ttl = self.short_ttl
        opts = history_on(idempotency_key="k", idempotent_result_ttl=ttl)
        first = await started.publish(channel, b"1", opts)
        await self.advance(ttl * 3)
        again = await started.publish(channel, b"1", opts)
        assert again.suppressed is False
        assert again.position.offset == first.position.offset + 1

    # -- presence -----------------------------------------------------------------------------

    async def test_presence_add_list_remove_and_stats(
        self, started: Broker, channel: str
    ) -> None:
        c1, c2, c3 = _id("c1"), _id("c2"), _id("c3")
        i1 = ClientInfo(c1, "alice", b'{"device":"phone"}', b'{"x":1}')
        i2 = ClientInfo(c2, "alice", None, None)
        i3 = ClientInfo(c3, "bob", b'{"device":"laptop"}', None)
        assert await started.presence(channel) == {}
        assert await started.presence_stats(channel) == (0, 0)
        for info in (i1, i2, i3):
            await started.add_presence(channel, info, LONG_TTL)
        assert await started.presence(channel) == {c1: i1, c2: i2, c3: i3}
        assert await started.presence_stats(channel) == (3, 2)

        await started.remove_presence(channel, c1)
        assert await started.presence(channel) == {c2: i2, c3: i3}
        assert await started.presence_stats(channel) == (2, 2)
        await started.remove_presence(channel, c3)
        assert await started.presence_stats(channel) == (1, 1)
        await started.remove_presence(channel, c2)
        assert await started.presence(channel) == {}
        assert await started.presence_stats(channel) == (0, 0)
        await started.remove_presence(channel, c2)  # removing an absent client is harmless

    async def test_presence_refresh_replaces_info(self, started: Broker, channel: str) -> None:
        cid = _id("c")
        await started.add_presence(channel, ClientInfo(cid, "u", b'{"v":1}'), LONG_TTL)
        await started.add_presence(channel, ClientInfo(cid, "u", b'{"v":2}'), LONG_TTL)
        assert await started.presence(channel) == {cid: ClientInfo(cid, "u", b'{"v":2}')}
        assert await started.presence_stats(channel) == (1, 1)

    async def test_presence_is_per_channel(self, started: Broker) -> None:
        a, b = _id("pa"), _id("pb")
        info = ClientInfo(_id("c"), "u")
        await started.add_presence(a, info, LONG_TTL)
        assert await started.presence(b) == {}
        assert await started.presence(a) == {info.client: info}

    async def test_presence_ttl_expiry(self, started: Broker, channel: str) -> None:
        ttl = self.short_ttl
        stays, goes = _id("stays"), _id("goes")
        await started.add_presence(channel, ClientInfo(goes, "u1"), ttl)
        await started.add_presence(channel, ClientInfo(stays, "u2"), LONG_TTL)
        assert await started.presence_stats(channel) == (2, 2)
        await self.advance(ttl * 3)
        assert set(await started.presence(channel)) == {stays}
        assert await started.presence_stats(channel) == (1, 1)

    async def test_presence_all_expired(self, started: Broker, channel: str) -> None:
        ttl = self.short_ttl
        await started.add_presence(channel, ClientInfo(_id("c"), "u"), ttl)
        await self.advance(ttl * 3)
        assert await started.presence(channel) == {}
        assert await started.presence_stats(channel) == (0, 0)

    async def test_presence_refresh_extends_ttl(self, started: Broker, channel: str) -> None:
        ttl = self.short_ttl * 2
        cid = _id("c")
        await started.add_presence(channel, ClientInfo(cid, "u"), ttl)
        await self.advance(ttl * 0.6)
        await started.add_presence(channel, ClientInfo(cid, "u"), ttl)
        await self.advance(ttl * 0.6)  # 1.2 ttl after the first add, 0.6 after the refresh
        assert set(await started.presence(channel)) == {cid}

    # -- tickets ------------------------------------------------------------------------------

    async def test_ticket_is_consumed_once(self, started: Broker) -> None:
        ticket = _id("tkt")
        payload = b'{"user":"42","channels":["a"]}'
        await started.store_ticket(ticket, payload, LONG_TTL)
        assert await started.consume_ticket(ticket) == payload
        assert await started.consume_ticket(ticket) is None

    async def test_unknown_ticket_is_none(self, started: Broker) -> None:
        assert await started.consume_ticket(_id("nope")) is None

    async def test_expired_ticket_is_none(self, started: Broker) -> None:
        ticket = _id("tkt")
        await started.store_ticket(ticket, b"payload", self.short_ttl)
        await self.advance(self.short_ttl * 3)
        assert await started.consume_ticket(ticket) is None

    async def test_tickets_are_independent(self, started: Broker) -> None:
        t1, t2 = _id("t1"), _id("t2")
        await started.store_ticket(t1, b"one", LONG_TTL)
        await started.store_ticket(t2, b"two", LONG_TTL)
        assert await started.consume_ticket(t2) == b"two"
        assert await started.consume_ticket(t1) == b"one"

    async def test_concurrent_consumers_exactly_one_wins(self, started: Broker) -> None:
        ticket = _id("race")
        await started.store_ticket(ticket, b"prize", LONG_TTL)
        results = await asyncio.gather(*(started.consume_ticket(ticket) for _ in range(50)))
        assert results.count(b"prize") == 1
        assert results.count(None) == 49

    # -- control messages ---------------------------------------------------------------------

    async def test_control_message_reaches_this_node(self, started: Broker) -> None:
        assert started.node_id
        await started.publish_control(b'{"op":"broadcast"}')
        await started.publish_control(b'{"op":"to-me"}', to=started.node_id)
        # Addressed to a node that does not exist: dropped. The broadcast after it is the
        # sentinel: once it arrives, anything sent before it has too.
        await started.publish_control(b'{"op":"to-nobody"}', to=_id("node"))
        await started.publish_control(b'"sentinel"')
        await self.handler.until(lambda: b'"sentinel"' in self.handler.controls)
        assert self.handler.controls == [b'{"op":"broadcast"}', b'{"op":"to-me"}',
                                         b'"sentinel"']

    async def test_handler_without_on_control_keeps_working(
        self, broker: Broker, channel: str
    ) -> None:
        class Plain:
            def __init__(self) -> None:
                self.inner = Recorder()

            def on_publication(self, channel: str, pub: Publication, epoch: str) -> None:
                self.inner.on_publication(channel, pub, epoch)

            def on_join(self, channel: str, info: ClientInfo) -> None:
                self.inner.on_join(channel, info)

            def on_leave(self, channel: str, info: ClientInfo) -> None:
                self.inner.on_leave(channel, info)

        handler = Plain()
        await broker.start(handler)
        try:
            await broker.subscribe(channel)
            await broker.publish_control(b"ignored")
            await broker.publish(channel, b'"after"', PublishOptions())
            await handler.inner.until(lambda: handler.inner.data(channel) == [b'"after"'])
        finally:
            await broker.close()


@pytest.mark.asyncio
class MultiNodeBrokerConformance:
    """Two instances of a backend sharing one store, as two hub nodes (processes or machines)
    do. Subclass as ``TestXxxBrokerMulti`` and provide:

    * a ``make_broker`` fixture returning a callable that builds a new, *not yet started*
      broker on the shared store each time it is called;
    * optionally ``async def break_link(self, broker)``, which cuts the broker's fan-out link
      the way a network failure or a server restart would (the resubscribe test is skipped
      when a backend cannot simulate that).
    """

    @pytest.fixture
    def make_broker(self) -> Callable[[], Broker]:
        raise NotImplementedError("a backend's test class overrides the make_broker fixture")

    async def break_link(self, broker: Broker) -> None:
        pytest.skip("this backend cannot simulate a lost fan-out link")

    @pytest_asyncio.fixture
    async def nodes(self, make_broker: Callable[[], Broker]
                    ) -> AsyncIterator[tuple[Broker, Broker]]:
        a, b = make_broker(), make_broker()
        self.ha, self.hb = Recorder(), Recorder()
        await a.start(self.ha)
        try:
            await b.start(self.hb)
            try:
                yield a, b
            finally:
                await b.close()
        finally:
            await a.close()

    async def test_nodes_have_distinct_ids(self, nodes: tuple[Broker, Broker]) -> None:
        a, b = nodes
        assert a.node_id and b.node_id and a.node_id != b.node_id

    async def test_delivery_across_nodes_in_order(self, nodes: tuple[Broker, Broker]) -> None:
        a, b = nodes
        channel = _id("multi")
        await asyncio.gather(a.subscribe(channel), b.subscribe(channel))
        opts = history_on(size=100)

        async def publish_from(broker: Broker, name: bytes) -> None:
            for i in range(20):
                await broker.publish(channel, b'"%s%d"' % (name, i), opts)

        await asyncio.gather(publish_from(a, b"a"), publish_from(b, b"b"))
        for h in (self.ha, self.hb):
            await h.until(lambda h=h: len(h.pubs(channel)) == 40)  # type: ignore[misc]
            assert [p.offset for p, _ in h.pubs(channel)] == list(range(1, 41))
        assert self.ha.data(channel) == self.hb.data(channel)
        # Each node's own publications in the order it made them.
        for name in (b"a", b"b"):
            mine = [d for d in self.ha.data(channel) if d.startswith(b'"' + name)]
            assert mine == [b'"%s%d"' % (name, i) for i in range(20)]
        hist = await b.history(channel, limit=-1)
        assert [p.data for p in hist.publications] == self.ha.data(channel)

    async def test_join_and_leave_across_nodes(self, nodes: tuple[Broker, Broker]) -> None:
        a, b = nodes
        channel = _id("multi-jl")
        await b.subscribe(channel)
        info = ClientInfo(_id("client"), "u", b'{"a":1}', None)
        await a.publish_join(channel, info)
        await a.publish_leave(channel, info)
        await self.hb.until(lambda: bool(self.hb.joins and self.hb.leaves))
        assert self.hb.joins == [(channel, info)] and self.hb.leaves == [(channel, info)]

    async def test_only_subscribed_nodes_get_publications(
        self, nodes: tuple[Broker, Broker]
    ) -> None:
        a, b = nodes
        channel, other = _id("multi-sub"), _id("multi-other")
        await a.subscribe(channel)
        await b.subscribe(other)
        await b.publish(channel, b'"x"', PublishOptions())
        await a.publish(other, b'"sentinel"', PublishOptions())
        await self.hb.until(lambda: self.hb.data(other) == [b'"sentinel"'])
        await self.ha.until(lambda: self.ha.data(channel) == [b'"x"'])
        assert self.hb.data(channel) == []
        await b.unsubscribe(other)
        await b.subscribe(channel)
        await a.publish(other, b'"gone"', PublishOptions())
        await a.publish(channel, b'"sentinel"', PublishOptions())
        await self.hb.until(lambda: b'"sentinel"' in self.hb.data(channel))
        assert self.hb.data(other) == [b'"sentinel"']

    async def test_ticket_is_consumed_once_across_nodes(
        self, nodes: tuple[Broker, Broker]
    ) -> None:
        a, b = nodes
        ticket = _id("tkt")
        await a.store_ticket(ticket, b'{"user":"42"}', LONG_TTL)
        results = await asyncio.gather(*(n.consume_ticket(ticket)
                                         for _ in range(20) for n in (a, b)))
        assert results.count(b'{"user":"42"}') == 1
        assert results.count(None) == 39

    async def test_idempotency_and_presence_are_shared(
        self, nodes: tuple[Broker, Broker]
    ) -> None:
        a, b = nodes
        channel = _id("multi-idem")
        first = await a.publish(channel, b'"first"', history_on(idempotency_key="k"))
        retry = await b.publish(channel, b'"retry"', history_on(idempotency_key="k"))
        assert (first.suppressed, retry.suppressed) == (False, True)
        assert retry.position == first.position
        ca, cb = ClientInfo(_id("ca"), "ann"), ClientInfo(_id("cb"), "bob")
        await a.add_presence(channel, ca, LONG_TTL)
        await b.add_presence(channel, cb, LONG_TTL)
        for node in (a, b):
            assert await node.presence(channel) == {ca.client: ca, cb.client: cb}
            assert await node.presence_stats(channel) == (2, 2)

    async def test_control_messages_reach_every_node_in_order(
        self, nodes: tuple[Broker, Broker]
    ) -> None:
        a, _ = nodes
        sent = [b'{"n":%d}' % i for i in range(20)]
        for data in sent:
            await a.publish_control(data)
        for h in (self.ha, self.hb):
            await h.until(lambda h=h: len(h.controls) >= 20)  # type: ignore[misc]
            assert h.controls == sent  # the sender included, once each

    async def test_control_message_to_one_node(self, nodes: tuple[Broker, Broker]) -> None:
        a, b = nodes
        # A request and its reply, as the hub's info/channels surveys do.
        await a.publish_control(b'{"reply_to":"%s"}' % a.node_id.encode(), to=b.node_id)
        await self.hb.until(lambda: bool(self.hb.controls))
        await b.publish_control(b'"answer"', to=a.node_id)
        await self.ha.until(lambda: self.ha.controls == [b'"answer"'])
        await b.publish_control(b'"sentinel"', to=b.node_id)
        await self.hb.until(lambda: b'"sentinel"' in self.hb.controls)
        assert self.hb.controls == [b'{"reply_to":"%s"}' % a.node_id.encode(), b'"sentinel"']
        assert self.ha.controls == [b'"answer"']

    async def test_resubscribe_after_a_lost_link(self, nodes: tuple[Broker, Broker]) -> None:
        a, b = nodes
        channel = _id("multi-re")
        await a.subscribe(channel)
        await b.publish(channel, b'"before"', history_on())
        await self.ha.until(lambda: self.ha.data(channel) == [b'"before"'])
        await self.break_link(a)
        await self.ha.until(lambda: any(channel in chs for chs in self.ha.resubscribed))
        # Publications after the resubscribe arrive again, and so do control messages.
        await b.publish(channel, b'"after"', history_on())
        await self.ha.until(lambda: b'"after"' in self.ha.data(channel))
        # Control may ride another link that is still coming back (at most once): resend.
        for _ in range(int(DELIVERY_WAIT / 0.2)):
            await b.publish_control(b'"still-here"', to=a.node_id)
            await asyncio.sleep(0.2)
            if b'"still-here"' in self.ha.controls:
                break
        assert b'"still-here"' in self.ha.controls
        hist = await a.history(channel, limit=-1)
        assert [p.data for p in hist.publications] == [b'"before"', b'"after"']
