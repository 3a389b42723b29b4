"""Who is subscribed to what on this node, and the fan-out of broker events to them.

Positions. A broker with a link that can drop (Redis Pub/Sub) may lose publications on their
way to this node. Every kept publication carries its offset and epoch, so the fan-out keeps,
per channel, the last offset and epoch it delivered (``_Stream``): a publication that does not
follow it (a hole, or a new epoch) starts a catch-up from history for that channel, once for
all its subscribers here, while later publications wait behind it in order. When history no
longer covers the hole, or the epoch changed, every subscriber that holds a position is told
its position is gone, as Centrifugo does ("insufficient state": an unsubscribe push 2500 for a
client-side subscription, which the SDK answers by resubscribing with recovery; a disconnect
3010 for server-side subscriptions and the unidirectional transports, which reconnect from
their cursor). The broker's ``on_resubscribed`` starts the same catch-up for every channel.

A subscriber whose own position is ahead of the node's (it read history that the node has not
seen arrive yet) is kept in ``_Stream.ahead`` until the node catches up with it, so it is never
sent a publication twice. On the common path all this costs one dict lookup and a comparison
per publication, not per subscriber.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from clarion.broker.base import (
    ClientInfo,
    Publication,
    PublishOptions,
    PublishResult,
    StreamPosition,
)
from clarion.errors import BrokerError
from clarion.hub.push import EncodedPush

if TYPE_CHECKING:
    from clarion.hub.app import Hub
    from clarion.hub.session import PushTarget, Session

# Catch-ups in a row for one channel before its subscribers are told their position is gone:
# a stream whose holes keep reopening (offsets reused after a restore) must not loop forever.
MAX_CATCH_UP_ROUNDS = 3


class Buffer:
    """Stands in for a subscriber while its subscription is being set up."""

    __slots__ = ("items", "lost", "resync")

    def __init__(self) -> None:
        self.items: list[EncodedPush] = []
        self.lost = False  # the node lost its position meanwhile: so did this subscriber
        # The broker's link was restored while this subscriber was being set up: its history
        # read may predate publications that never arrived here.
        self.resync = False

    def push(self, enc: EncodedPush) -> None:
        self.items.append(enc)


class _Stream:
    """What this node delivered of one channel's stream."""

    __slots__ = ("ahead", "catching_up", "epoch", "offset", "pending")

    def __init__(self, offset: int = 0, epoch: str = "") -> None:
        self.offset = offset
        self.epoch = epoch  # "": no kept publication delivered yet, the position is unknown
        # Subscribers whose own position is not the node's: key -> (offset, epoch).
        self.ahead: dict[str, tuple[int, str]] = {}
        # Publications that arrived while a catch-up runs, in arrival order; None: none runs.
        self.pending: list[EncodedPush] | None = None
        self.catching_up = False


class Fanout:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.channels: dict[str, dict[str, PushTarget]] = {}
        self.sessions: dict[str, Session] = {}
        self.users: dict[str, set[str]] = {}
        self._broker_channels: set[str] = set()
        # One future per channel whose broker subscription is on its way: every subscriber
        # that arrives meanwhile waits for the broker's confirmation, not only the first.
        self._subscribing: dict[str, asyncio.Future[None]] = {}
        self._retrying: set[str] = set()
        self._streams: dict[str, _Stream] = {}
        # The GRIP proxy sees every publication first (it keeps recent ones for holds that
        # are being set up); None when the proxy is off.
        self.observer: Callable[[str, EncodedPush], None] | None = None
        # Counters for /health and the logs.
        self.catch_ups = 0
        self.positions_lost = 0

    # -- sessions -----------------------------------------------------------------------------

    def register(self, session: Session) -> None:
        self.sessions[session.id] = session
        if session.user:
            self.users.setdefault(session.user, set()).add(session.id)

    def unregister(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        ids = self.users.get(session.user)
        if ids is not None:
            ids.discard(session.id)
            if not ids:
                del self.users[session.user]

    def user_sessions(self, user: str) -> list[Session]:
        return [self.sessions[i] for i in self.users.get(user, ()) if i in self.sessions]

    # -- subscriptions ------------------------------------------------------------------------

    def add_buffering(self, channel: str, session: Session) -> Buffer:
        buffer = Buffer()
        self.channels.setdefault(channel, {})[session.id] = buffer
        return buffer

    def activate(self, channel: str, session: Session, buffer: Buffer, top: int,
                 epoch: str | None = None) -> None:
        """Switch a subscriber from its buffer to live delivery. ``top``/``epoch``: the
        position its subscribe reply gave it (``epoch`` None: it holds no position)."""
        subs = self.channels.get(channel)
        if subs is None or subs.get(session.id) is not buffer:
            return
        target = session.target
        subs[session.id] = target
        if epoch is None:
            for enc in buffer.items:
                # What the stream read already covered was sent with the subscribe reply.
                if not (enc.kind == b"pub" and enc.offset and enc.offset <= top):
                    target.push(enc)
            return
        lost = buffer.lost
        position = top
        for enc in buffer.items:
            if lost:
                break
            if enc.kind != b"pub" or not enc.offset:
                target.push(enc)
            elif enc.epoch != epoch or enc.offset > position + 1:
                lost = True
            elif enc.offset == position + 1:
                target.push(enc)
                position = enc.offset
        if not lost:
            st = self._streams.get(channel)
            if st is None:
                st = self._streams[channel] = _Stream()
            if st.epoch == epoch and st.offset > position:
                # The node delivered more than this subscriber's read and buffer hold; cannot
                # happen while the buffer saw every arrival, but a hole is never papered over.
                lost = True
            elif st.epoch != epoch or st.offset != position:
                st.ahead[session.id] = (position, epoch)
            if buffer.resync:
                self._start_catch_up(channel, st)
        if lost:
            self._lose(channel, [session.id])

    def remove_key(self, channel: str, key: str) -> None:
        subs = self.channels.get(channel)
        if subs is not None:
            subs.pop(key, None)
            if not subs:
                self._forget_channel(channel)
                if channel in self._broker_channels:
                    self.hub.spawn(self.release_broker_subscription(channel))

    def remove(self, channel: str, session: Session) -> None:
        subs = self.channels.get(channel)
        if subs is not None:
            subs.pop(session.id, None)
            if not subs:
                self._forget_channel(channel)
            else:
                st = self._streams.get(channel)
                if st is not None:
                    st.ahead.pop(session.id, None)

    def _forget_channel(self, channel: str) -> None:
        del self.channels[channel]
        # Publications that arrive while nobody here listens are not delivered, so the node's
        # position would go stale: the next subscriber starts a fresh one.
        self._streams.pop(channel, None)

    async def ensure_broker_subscription(self, channel: str) -> None:
        """Return once the broker confirmed that this node receives ``channel``'s events;
        raise BrokerError (for every subscriber waiting) when it could not."""
        if channel in self._broker_channels:
            return
        fut = self._subscribing.get(channel)
        if fut is None:
            fut = self._subscribing[channel] = self.hub.loop.create_future()
            # Retrieved here so that a failure nobody waits for any more is not reported as
            # "never retrieved" by the event loop.
            fut.add_done_callback(lambda f: None if f.cancelled() else f.exception())
            self.hub.spawn(self._broker_subscribe(channel, fut))
        # Shielded: one subscriber that goes away must not cancel the others' subscription.
        await asyncio.shield(fut)

    async def _broker_subscribe(self, channel: str, fut: asyncio.Future[None]) -> None:
        try:
            await self.hub.broker.subscribe(channel)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting subscriber
            del self._subscribing[channel]
            fut.set_exception(exc if isinstance(exc, BrokerError)
                              else BrokerError(f"subscribe to {channel!r} failed: {exc}"))
            self._retry_for_holds(channel)
            return
        del self._subscribing[channel]
        self._broker_channels.add(channel)
        fut.set_result(None)
        if channel not in self.channels:
            # Everyone left while the broker was confirming.
            await self.release_broker_subscription(channel)

    def _retry_for_holds(self, channel: str) -> None:
        """A client whose subscribe failed is told so and retries by itself; a GRIP hold
        cannot be told, so the node keeps trying for as long as holds wait on the channel."""
        if channel not in self._retrying:
            self._retrying.add(channel)
            self.hub.spawn(self._subscribe_for_holds(channel))

    async def _subscribe_for_holds(self, channel: str) -> None:
        delay = 0.1
        try:
            while True:
                await asyncio.sleep(delay)
                subs = self.channels.get(channel)
                if not subs or not any(getattr(t, "is_grip", False) for t in subs.values()):
                    return
                try:
                    await self.ensure_broker_subscription(channel)
                except BrokerError:
                    delay = min(delay * 2, 5.0)
                else:
                    return
        finally:
            self._retrying.discard(channel)

    async def release_broker_subscription(self, channel: str) -> None:
        if channel not in self.channels and channel in self._broker_channels:
            self._broker_channels.discard(channel)
            await self.hub.broker.unsubscribe(channel)

    # -- broker events ------------------------------------------------------------------------

    def add_target(self, channel: str, key: str, target: PushTarget) -> None:
        """A subscriber that is not a session (a GRIP hold)."""
        self.channels.setdefault(channel, {})[key] = target

    def on_publication(self, channel: str, pub: Publication, epoch: str) -> None:
        subs = self.channels.get(channel)
        if pub.offset and subs:
            st = self._streams.get(channel)
            if (st is None or pub.offset != st.offset + 1 or epoch != st.epoch or st.ahead
                    or st.pending is not None):
                self._arrive(channel, pub, epoch, st)
                return
            st.offset = pub.offset
        observer = self.observer
        if observer is None:
            if not subs:
                return
            enc = EncodedPush.publication(channel, pub, epoch)
        else:
            enc = EncodedPush.publication(channel, pub, epoch)
            observer(channel, enc)
            if not subs:
                return
        if enc.grip_only:
            for target in list(subs.values()):
                if getattr(target, "is_grip", False):
                    target.push(enc)
            return
        # push() only queues, so nothing can change ``subs`` while this loop runs.
        # (A GRIP long-poll answers and leaves on its first message: it leaves later.)
        for target in subs.values():
            target.push(enc)
        self.hub.metrics.delivered(len(subs), pub.time)

    def observe_own(self, requests: Sequence[tuple[str, bytes, PublishOptions]],
                    results: Sequence[PublishResult | BrokerError], now: float) -> None:
        """Publications this node just made, for a broker that delivers only subscribed
        channels (``Broker.delivers_unsubscribed`` False): those the broker will not bring
        back to ``on_publication`` go to the observer here, so that the GRIP proxy's
        recent-publications buffer sees every publication made through this node, as it
        does with the memory broker.

        The broker brings one back when this node's subscription to the channel is confirmed
        or on its way; those are left to it, so nothing reaches the buffer twice. What
        remains: a subscription confirmed, or asked for, while the publish was on its way
        may have reached Redis after it, and then the publication reaches neither path (the
        buffer misses it; a client subscribing meanwhile reads it from history, when the
        channel keeps history, but a hold set up in that moment does not get it).
        A backend's ``unsubscribe`` drops what is still in flight (the contract), so a
        channel being left is not delivered twice either."""
        observer = self.observer
        if observer is None:
            return
        subscribed, subscribing = self._broker_channels, self._subscribing
        for (channel, data, options), result in zip(requests, results, strict=True):
            if (channel in subscribed or isinstance(result, BrokerError) or result.suppressed
                    or channel in subscribing):
                continue
            position = result.position
            pub = Publication(position.offset, data, options.info, options.tags, now)
            observer(channel, EncodedPush.publication(channel, pub, position.epoch))

    def _arrive(self, channel: str, pub: Publication, epoch: str, st: _Stream | None) -> None:
        """A kept publication off the common path: the first one, a hole, a new epoch,
        subscribers ahead of the node, or a catch-up running."""
        enc = EncodedPush.publication(channel, pub, epoch)
        if self.observer is not None:
            self.observer(channel, enc)
        if st is None:
            st = self._streams[channel] = _Stream()
        self._feed(channel, st, enc)

    def _feed(self, channel: str, st: _Stream, enc: EncodedPush) -> None:
        """Deliver the next kept publication in stream order, or start a catch-up."""
        if st.pending is not None:
            st.pending.append(enc)
            return
        if not st.epoch:
            st.offset, st.epoch = enc.offset, enc.epoch
        elif enc.epoch == st.epoch and enc.offset <= st.offset:
            return  # delivered already (history and live arrivals overlap in a catch-up)
        elif enc.epoch != st.epoch or enc.offset != st.offset + 1:
            st.pending = [enc]
            if not st.catching_up:
                st.catching_up = True
                self.hub.spawn(self._catch_up(channel, st))
            return
        else:
            st.offset = enc.offset
        self._deliver(channel, st, enc)

    def _deliver(self, channel: str, st: _Stream, enc: EncodedPush) -> None:
        subs = self.channels.get(channel)
        if not subs:
            return
        ahead = st.ahead
        lost: list[str] = []
        delivered = 0
        for key, target in subs.items():
            if enc.grip_only and not getattr(target, "is_grip", False):
                continue
            own = ahead.get(key) if ahead else None
            if own is not None:
                offset, epoch = own
                if epoch != enc.epoch or enc.offset > offset + 1:
                    lost.append(key)
                    continue
                if enc.offset <= offset:
                    continue  # its subscribe reply carried this one
                del ahead[key]  # from here on it is where the node is
            target.push(enc)
            delivered += 1
        if not enc.grip_only:
            self.hub.metrics.delivered(delivered, enc.time)
        if lost:
            self._lose(channel, lost)

    async def _catch_up(self, channel: str, st: _Stream) -> None:
        """Fill the hole from history, then release what waited behind it, in order."""
        hub = self.hub
        rounds = 0
        try:
            while st.pending is not None:
                rounds += 1
                self.catch_ups += 1
                since = StreamPosition(st.offset, st.epoch)
                history = None
                if rounds <= MAX_CATCH_UP_ROUNDS:
                    try:
                        history = await hub.broker.history(
                            channel, since=since, limit=-1,
                            meta_ttl=hub.config.seconds("history_meta_ttl"))
                    except BrokerError as exc:
                        hub.log.warning("catch-up from history failed", channel=channel,
                                        error=str(exc))
                if history is None and rounds < MAX_CATCH_UP_ROUNDS:
                    # Redis is still settling: what waits keeps waiting, in order, a little.
                    await asyncio.sleep(0.1 * 2 ** rounds)
                    if self._streams.get(channel) is not st:
                        return
                    continue
                if self._streams.get(channel) is not st:
                    return  # everyone here left meanwhile
                pending, st.pending = st.pending, None
                pubs = history.publications if history is not None else []
                pos = history.position if history is not None else since
                covered = (history is not None and pos.epoch == since.epoch
                           and pos.offset >= since.offset
                           and (pos.offset == since.offset
                                or bool(pubs and pubs[0].offset == since.offset + 1)))
                if covered:
                    hub.log.info("caught up from history", channel=channel,
                                 since=since.offset, top=pos.offset)
                    for pub in pubs:
                        if pub.offset <= st.offset:
                            continue
                        enc = EncodedPush.publication(channel, pub, pos.epoch)
                        if self.observer is not None:
                            self.observer(channel, enc)
                        self._feed(channel, st, enc)
                else:
                    hub.log.info("stream position lost: subscribers told insufficient state",
                                 channel=channel, offset=since.offset, epoch=since.epoch,
                                 now_epoch=pos.epoch)
                    self._position_gone(channel, st)
                    rounds = 0
                for enc in pending:
                    self._feed(channel, st, enc)
        except Exception as exc:  # noqa: BLE001 - logged with its traceback in failed()
            # Whatever broke, the channel's subscribers must not wait for a catch-up that
            # will never come: they are told their position is gone, and recover from there.
            hub.failed("catch_up", exc, channel=channel)
            if self._streams.get(channel) is st:
                st.pending = None
                self._position_gone(channel, st)
        finally:
            st.catching_up = False

    def _position_gone(self, channel: str, st: _Stream) -> None:
        """Everyone here holding a position in ``channel`` loses it; the node starts anew."""
        st.offset, st.epoch = 0, ""
        st.ahead.clear()
        subs = self.channels.get(channel)
        if not subs:
            return
        lost: list[str] = []
        for key, target in subs.items():
            if isinstance(target, Buffer):
                target.lost = True  # told once its subscribe reply is out
                continue
            session = self.sessions.get(key)
            sub = session.subs.get(channel) if session is not None else None
            if sub is not None and sub.positioned:
                lost.append(key)
        self._lose(channel, lost)

    def _lose(self, channel: str, keys: list[str]) -> None:
        for key in keys:
            st = self._streams.get(channel)
            if st is not None:
                st.ahead.pop(key, None)
            session = self.sessions.get(key)
            if session is None:
                continue
            self.positions_lost += 1
            session.lose_position(channel)

    def on_resubscribed(self, channels: list[str]) -> None:
        """The broker's link was restored: what was published meanwhile never arrived here,
        so every channel with subscribers catches up from history."""
        for channel in channels:
            subs = self.channels.get(channel)
            if not subs:
                continue
            for target in subs.values():
                if isinstance(target, Buffer):
                    target.resync = True  # caught up when it goes live, from its own read
            st = self._streams.get(channel)
            if st is not None:
                self._start_catch_up(channel, st)

    def _start_catch_up(self, channel: str, st: _Stream) -> None:
        if st.pending is not None:
            return  # one is on its way, and reads history after this point
        if not st.epoch:
            if not st.ahead:
                return  # nobody here holds a position yet
            # No arrival yet, only subscribers' own reads: start from the oldest of them.
            st.offset, st.epoch = min(st.ahead.values())
        st.pending = []
        if not st.catching_up:
            st.catching_up = True
            self.hub.spawn(self._catch_up(channel, st))

    def _presence_event(self, channel: str, kind: bytes, info: ClientInfo) -> None:
        subs = self.channels.get(channel)
        if not subs:
            return
        enc = EncodedPush.presence_event(channel, kind, info)
        for sid, target in list(subs.items()):
            session = self.sessions.get(sid)
            sub = session.subs.get(channel) if session is not None else None
            if sub is not None and sub.push_join_leave:
                target.push(enc)

    def on_join(self, channel: str, info: ClientInfo) -> None:
        self._presence_event(channel, b"join", info)

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        self._presence_event(channel, b"leave", info)

    def on_control(self, data: bytes) -> None:
        # The fan-out is the broker's handler; control messages belong to the hub's Control.
        self.hub.control.on_control(data)
