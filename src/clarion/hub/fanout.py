"""Who is subscribed to what on this node, and the fan-out of broker events to them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from clarion.broker.base import ClientInfo, Publication
from clarion.hub.push import EncodedPush

if TYPE_CHECKING:
    from clarion.hub.app import Hub
    from clarion.hub.session import PushTarget, Session


class Buffer:
    """Stands in for a subscriber while its subscription is being set up."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[EncodedPush] = []

    def push(self, enc: EncodedPush) -> None:
        self.items.append(enc)


class Fanout:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.channels: dict[str, dict[str, PushTarget]] = {}
        self.sessions: dict[str, Session] = {}
        self.users: dict[str, set[str]] = {}
        self._broker_channels: set[str] = set()
        # The GRIP proxy sees every publication first (it keeps recent ones for holds that
        # are being set up); None when the proxy is off.
        self.observer: Callable[[str, EncodedPush], None] | None = None

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

    def activate(self, channel: str, session: Session, buffer: Buffer, top: int) -> None:
        subs = self.channels.get(channel)
        if subs is None or subs.get(session.id) is not buffer:
            return
        target = session.target
        subs[session.id] = target
        for enc in buffer.items:
            # What the stream read already covered was sent with the subscribe reply.
            if not (enc.kind == b"pub" and enc.offset and enc.offset <= top):
                target.push(enc)

    def remove_key(self, channel: str, key: str) -> None:
        subs = self.channels.get(channel)
        if subs is not None:
            subs.pop(key, None)
            if not subs:
                del self.channels[channel]
                if channel in self._broker_channels:
                    self.hub.spawn(self.release_broker_subscription(channel))

    def remove(self, channel: str, session: Session) -> None:
        subs = self.channels.get(channel)
        if subs is not None:
            subs.pop(session.id, None)
            if not subs:
                del self.channels[channel]

    async def ensure_broker_subscription(self, channel: str) -> None:
        if channel not in self._broker_channels:
            self._broker_channels.add(channel)
            try:
                await self.hub.broker.subscribe(channel)
            except BaseException:
                self._broker_channels.discard(channel)
                raise

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
