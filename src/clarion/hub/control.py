"""Node-to-node control: the server API's per-user commands and its cluster-wide questions.

Every hub process sharing a broker is a node, and each node knows only its own connections. The
server API's ``subscribe``, ``unsubscribe``, ``disconnect`` and ``refresh`` therefore go to every
node as control messages (``Broker.publish_control``), and ``info`` and ``channels`` are asked of
every node, as Centrifugo does:

* A command is broadcast first and then applied to this node's own connections, awaited, so the
  API answers as it did on one node (errors included) and a command the broker could not carry
  fails as a whole (503) instead of reaching some nodes. A node ignores its own broadcasts.
* A question (``info``, ``channels``) is a broadcast carrying a request id; each node answers
  with ``publish_control(..., to=asker)``. The asker waits for the nodes it knows to be alive,
  at most ``survey_timeout``, and answers with what arrived (and its own part).
* Nodes announce themselves every ``NODE_INFO_INTERVAL`` seconds; a node not heard from for
  ``NODE_INFO_MAX_AGE`` is forgotten (Centrifuge's 3 s and 7 s). A starting node says hello and
  the others answer it directly, so it knows them at once instead of after their next round; a
  node shutting down says goodbye, so nobody waits for it.

Wire format: msgpack arrays without field names (msgspec), ``[version, sender, command]`` with
the command a tagged array (``["d", user, code, …]``). ``VERSION`` changes only when a message
can no longer be read by the previous release: new commands and new trailing fields with
defaults keep it, since readers ignore trailing fields they do not know. A message that cannot
be read (another version, garbage) is logged and counted, and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec

from clarion.broker.base import StreamPosition
from clarion.errors import BrokerError, Disconnect
from clarion.hub.session import Session, Subscription
from clarion.protocol import client as proto
from clarion.protocol import codes

if TYPE_CHECKING:
    from clarion.hub.app import Hub

VERSION = 1
NODE_INFO_INTERVAL = 3.0
NODE_INFO_MAX_AGE = 7.0

SERVER_UNSUBSCRIBE = proto.encode({"code": codes.UNSUBSCRIBE_SERVER[0],
                                   "reason": codes.UNSUBSCRIBE_SERVER[1]})


@runtime_checkable
class PushReceiver(Protocol):
    """A unidirectional connection that takes pushes of the client protocol (Centrifugo's
    ``uni_*`` transports): the server API's subscribe and unsubscribe are told to it as
    ``{"channel":…,"subscribe":{…}}`` and ``{"channel":…,"unsubscribe":{…}}``, as Centrifugo
    tells them. Clarion's own sse/stream/poll take no such push: their channels are the URL's."""

    def send_push(self, body: bytes) -> None: ...


Tell = Callable[[bytes, bytes, bytes], None]  # (channel JSON, push kind, push body)


def _teller(session: Session) -> Tell | None:
    """How a subscribe or unsubscribe push reaches this session, or None when its transport
    has no such push."""
    if session.bidirectional:
        return lambda channel, kind, body: session.send(proto.push_frame(channel, kind, body))
    target = session.target
    if isinstance(target, PushReceiver):
        return lambda channel, kind, body: target.send_push(proto.push_body(channel, kind, body))
    return None


class _Cmd(msgspec.Struct, array_like=True):
    pass


class SubscribeCmd(_Cmd, tag="s"):
    user: str
    channel: str
    client: str = ""
    info: bytes | None = None  # raw JSON: channel info of the new subscription
    data: bytes | None = None  # raw JSON: passed to the client in the subscribe push
    since: tuple[int, str] | None = None  # recover from this (offset, epoch)


class UnsubscribeCmd(_Cmd, tag="u"):
    user: str
    channel: str
    client: str = ""


class DisconnectCmd(_Cmd, tag="d"):
    user: str
    code: int
    reason: str
    client: str = ""
    whitelist: list[str] = []


class RefreshCmd(_Cmd, tag="r"):
    user: str
    client: str = ""
    expired: bool = False
    expire_at: int = 0


class NodeInfo(msgspec.Struct, array_like=True, frozen=True):
    """One node's part of the API's ``info`` (Centrifugo's Node)."""

    uid: str
    name: str
    version: str
    num_clients: int
    num_users: int
    num_channels: int
    num_subs: int
    uptime: int

    def as_api(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__struct_fields__}


class NodeCmd(_Cmd, tag="n"):
    info: NodeInfo
    hello: bool = False  # the sender just started: answer it with your own NodeCmd


class LeaveCmd(_Cmd, tag="x"):
    pass


class InfoRequest(_Cmd, tag="i"):
    request: int


class InfoReply(_Cmd, tag="I"):
    request: int
    info: NodeInfo


class ChannelsRequest(_Cmd, tag="c"):
    request: int
    pattern: str = ""


class ChannelsReply(_Cmd, tag="C"):
    request: int
    channels: dict[str, int]  # channel -> subscribers on the sender


class EmulationCmd(_Cmd, tag="e"):
    """Commands posted to ``/emulation`` on another node, for a session held here (sent
    node-addressed, ``to=`` the session's node)."""

    session: str  # the emulation session as the client sent it (id and secret)
    data: bytes  # one frame of client-protocol commands


Command = (SubscribeCmd | UnsubscribeCmd | DisconnectCmd | RefreshCmd | NodeCmd | LeaveCmd
           | InfoRequest | InfoReply | ChannelsRequest | ChannelsReply | EmulationCmd)
UserCommand = SubscribeCmd | UnsubscribeCmd | DisconnectCmd | RefreshCmd

KINDS: dict[type[_Cmd], str] = {
    SubscribeCmd: "subscribe", UnsubscribeCmd: "unsubscribe", DisconnectCmd: "disconnect",
    RefreshCmd: "refresh", NodeCmd: "node", LeaveCmd: "leave", InfoRequest: "info_request",
    InfoReply: "info_reply", ChannelsRequest: "channels_request",
    ChannelsReply: "channels_reply", EmulationCmd: "emulation",
}


class Envelope(msgspec.Struct, array_like=True, frozen=True):
    v: int
    sender: str  # the sending node's broker node_id: where replies go
    cmd: Command


class _Head(msgspec.Struct, array_like=True):
    v: int
    sender: str


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)
_head_decoder = msgspec.msgpack.Decoder(_Head)


class ControlDecodeError(ValueError):
    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why  # "version" or "malformed", the label of the failure counter


def encode(sender: str, cmd: Command) -> bytes:
    return _encoder.encode(Envelope(VERSION, sender, cmd))


def decode(data: bytes) -> Envelope:
    """The envelope, or ControlDecodeError saying why not."""
    try:
        env = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            head = _head_decoder.decode(data)
            if head.v != VERSION:
                raise ControlDecodeError(
                    f"control message of version {head.v} from node {head.sender!r}; this "
                    f"node speaks {VERSION}", "version") from None
        raise ControlDecodeError(f"malformed control message: {exc}", "malformed") from None
    if env.v != VERSION:
        raise ControlDecodeError(f"control message of version {env.v} from node "
                                 f"{env.sender!r}; this node speaks {VERSION}", "version")
    return env


class _Survey:
    """Replies to one question, and whether every node expected has answered."""

    __slots__ = ("done", "expected", "replies")

    def __init__(self, expected: set[str]) -> None:
        self.expected = expected
        self.replies: dict[str, Command] = {}
        self.done = asyncio.Event()
        self._check()

    def add(self, sender: str, reply: Command) -> None:
        self.replies[sender] = reply
        self._check()

    def gone(self, node: str) -> None:
        self.expected.discard(node)
        self._check()

    def _check(self) -> None:
        if self.expected.issubset(self.replies):
            self.done.set()


class Control:
    """The hub's end of control messages: ``on_control`` is the broker handler's hook."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.node_id = hub.broker.node_id
        # uid -> (what it said last, when it said it, monotonic)
        self.nodes: dict[str, tuple[NodeInfo, float]] = {}
        self._surveys: dict[int, _Survey] = {}
        self._next_request = 0
        # Commands for one user run one after another, in arrival order (one sender's messages
        # arrive in its order): a subscribe still awaiting the broker must not be overtaken by
        # the unsubscribe sent after it.
        self._chains: dict[str, asyncio.Task[None]] = {}
        self._last_announce = 0.0
        self._announce_failing = False

    # -- sending ------------------------------------------------------------------------------

    async def send(self, cmd: Command, to: str | None = None) -> None:
        """Publish one control message; BrokerError (counted) when the broker cannot."""
        metrics = self.hub.metrics
        try:
            await self.hub.broker.publish_control(encode(self.node_id, cmd), to=to)
        except BrokerError:
            metrics.control_failed["send"] += 1
            raise
        metrics.control_sent[KINDS[type(cmd)]] += 1

    async def run(self, cmd: UserCommand) -> None:
        """A server-API command for a user's connections on every node: the other nodes are
        told first (a BrokerError here means none was), then this node applies it."""
        await self.send(cmd)
        await self.apply(cmd)

    async def survey_info(self) -> list[NodeInfo]:
        """This node's info first, then every other node that answered in time. With the
        broker away, this node alone: info is how an operator looks at a node during an outage
        (Centrifugo's info needs no broker either), and the list shows who answered."""
        try:
            replies = await self._survey(InfoRequest)
        except BrokerError as exc:
            self.hub.log.warning("info answered for this node only: broker unavailable",
                                 error=str(exc))
            return [self.node_info()]
        others = [r.info for r in replies.values() if isinstance(r, InfoReply)]
        others.sort(key=lambda n: (n.name, n.uid))
        return [self.node_info(), *others]

    async def survey_channels(self, pattern: str) -> dict[str, int]:
        """Channels with subscribers on any node that answered in time, counts summed."""
        replies = await self._survey(lambda rid: ChannelsRequest(rid, pattern))
        total = self.local_channels(pattern)
        for reply in replies.values():
            if isinstance(reply, ChannelsReply):
                for channel, count in reply.channels.items():
                    total[channel] = total.get(channel, 0) + count
        return total

    async def _survey(self, make: Callable[[int], Command]) -> dict[str, Command]:
        self._next_request += 1
        rid = self._next_request
        self._forget_stale(time.monotonic())
        waiter = _Survey(set(self.nodes))
        self._surveys[rid] = waiter
        try:
            await self.send(make(rid))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.done.wait(),
                                       self.hub.config.seconds("survey_timeout"))
            missing = waiter.expected.difference(waiter.replies)
            if missing:
                self.hub.log.warning("nodes did not answer in time", nodes=sorted(missing),
                                     timeout=self.hub.config.seconds("survey_timeout"))
            return dict(waiter.replies)
        finally:
            del self._surveys[rid]

    # -- announcements ------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """From the hub's housekeeping, once a second: announce this node when it is time, and
        forget nodes that went quiet."""
        self._forget_stale(now)
        if now - self._last_announce >= NODE_INFO_INTERVAL:
            self._last_announce = now
            self.hub.spawn(self.announce())

    async def announce(self, hello: bool = False) -> None:
        try:
            await self.send(NodeCmd(self.node_info(), hello))
        except BrokerError as exc:
            # Every few seconds while the broker is away: say it once, not every round.
            if not self._announce_failing:
                self._announce_failing = True
                self.hub.log.warning("node announcement not sent", error=str(exc))
            return
        self._announce_failing = False

    async def leave(self) -> None:
        """Tell the other nodes this one is going, so no question waits for it."""
        with contextlib.suppress(BrokerError, TimeoutError):
            await asyncio.wait_for(self.send(LeaveCmd()), 1.0)

    def _forget_stale(self, now: float) -> None:
        stale = [uid for uid, (_, seen) in self.nodes.items()
                 if now - seen > NODE_INFO_MAX_AGE]
        for uid in stale:
            del self.nodes[uid]
            self.hub.log.info("node gone quiet: forgotten", node=uid)

    def _seen(self, info: NodeInfo) -> None:
        if info.uid not in self.nodes:
            self.hub.log.info("node joined", node=info.uid, name=info.name)
        self.nodes[info.uid] = (info, time.monotonic())

    @property
    def node_count(self) -> int:
        """Nodes known to be alive, this one included."""
        return len(self.nodes) + 1

    # -- this node's answers ------------------------------------------------------------------

    def node_info(self) -> NodeInfo:
        hub = self.hub
        fan = hub.fanout
        return NodeInfo(
            uid=self.node_id, name=hub.node_name, version=hub.version,
            num_clients=len(fan.sessions), num_users=len(fan.users),
            num_channels=len(fan.channels),
            num_subs=sum(len(s) for s in fan.channels.values()),
            uptime=int(time.monotonic() - hub.started_at))

    def local_channels(self, pattern: str) -> dict[str, int]:
        pattern = pattern or "*"
        return {ch: len(subs) for ch, subs in self.hub.fanout.channels.items()
                if fnmatchcase(ch, pattern)}

    # -- receiving ----------------------------------------------------------------------------

    def on_control(self, data: bytes) -> None:
        hub = self.hub
        try:
            env = decode(data)
        except ControlDecodeError as exc:
            hub.metrics.control_failed[exc.why] += 1
            hub.log.warning("control message dropped", error=str(exc), size=len(data))
            return
        sender = env.sender
        if sender == self.node_id:
            return  # this node's own broadcast: applied where it was sent
        cmd = env.cmd
        hub.metrics.control_received[KINDS[type(cmd)]] += 1
        try:
            self._dispatch(sender, cmd)
        except Exception as exc:  # noqa: BLE001 - logged with traceback in failed()
            hub.failed("control", exc, kind=KINDS[type(cmd)], sender=sender)

    def _dispatch(self, sender: str, cmd: Command) -> None:
        if isinstance(cmd, SubscribeCmd | UnsubscribeCmd | DisconnectCmd | RefreshCmd):
            self._chain(cmd.user, self._apply_remote(cmd, sender))
        elif isinstance(cmd, NodeCmd):
            self._seen(cmd.info)
            if cmd.hello:
                self._reply(sender, NodeCmd(self.node_info()))
        elif isinstance(cmd, LeaveCmd):
            if self.nodes.pop(sender, None) is not None:
                self.hub.log.info("node left", node=sender)
            for survey in self._surveys.values():
                survey.gone(sender)
        elif isinstance(cmd, InfoRequest):
            self._reply(sender, InfoReply(cmd.request, self.node_info()))
        elif isinstance(cmd, ChannelsRequest):
            self._reply(sender, ChannelsReply(cmd.request, self.local_channels(cmd.pattern)))
        elif isinstance(cmd, EmulationCmd):
            from clarion.hub.emulation import deliver

            deliver(self.hub, cmd.session, cmd.data)
        else:
            if isinstance(cmd, InfoReply):
                self._seen(cmd.info)
            waiter = self._surveys.get(cmd.request)
            if waiter is not None:  # else: too late, the question was answered without it
                waiter.add(sender, cmd)

    def _reply(self, to: str, cmd: Command) -> None:
        async def send() -> None:
            try:
                await self.send(cmd, to=to)
            except BrokerError as exc:
                self.hub.log.warning("control reply not sent", to=to, kind=KINDS[type(cmd)],
                                     error=str(exc))

        self.hub.spawn(send())

    def _chain(self, user: str, coro: Coroutine[Any, Any, None]) -> None:
        before = self._chains.get(user)

        async def run() -> None:
            if before is not None:
                await asyncio.wait([before])  # its failure is its own (logged by spawn)
            await coro

        task = self.hub.spawn(run())
        self._chains[user] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._chains.get(user) is t:
                del self._chains[user]

        task.add_done_callback(done)

    async def _apply_remote(self, cmd: UserCommand, sender: str) -> None:
        try:
            await self.apply(cmd)
        except BrokerError as exc:
            # The asking node has answered already; what is left is to say why this node's
            # connections missed the command.
            self.hub.log.warning("control command not applied: broker unavailable",
                                 kind=KINDS[type(cmd)], user=cmd.user, sender=sender,
                                 error=str(exc))

    # -- applying a command to this node's connections ----------------------------------------

    def _sessions(self, user: str, client: str) -> list[Session]:
        found = self.hub.fanout.user_sessions(user)
        if client:
            found = [s for s in found if s.id == client]
        return found

    async def apply(self, cmd: UserCommand) -> None:
        if isinstance(cmd, SubscribeCmd):
            await self._subscribe(cmd)
        elif isinstance(cmd, UnsubscribeCmd):
            await self._unsubscribe(cmd)
        elif isinstance(cmd, DisconnectCmd):
            self._disconnect(cmd)
        else:
            self._refresh(cmd)

    async def _subscribe(self, cmd: SubscribeCmd) -> None:
        options = self.hub.rules.options(cmd.channel)
        for session in self._sessions(cmd.user, cmd.client):
            tell = _teller(session)
            if cmd.channel in session.subs or tell is None:
                continue
            # A unidirectional client gets join/leave pushes where its connect's server-side
            # channels would (force_push_join_leave), as on Centrifugo.
            push_join_leave = options.join_leave and (
                session.bidirectional or options.force_push_join_leave)
            sub = Subscription(options, options.force_recovery, push_join_leave, 0, cmd.info,
                               server_side=True)
            recover = StreamPosition(*cmd.since) if cmd.since is not None else None
            attached = await session.attach(cmd.channel, sub, recover, options.history_enabled)
            result = dict(attached.result)
            if cmd.data:
                result["data"] = msgspec.Raw(cmd.data)
            tell(proto.encode_str(cmd.channel), b"subscribe", proto.encode(result))
            attached.activate()
            await session.announce_join(cmd.channel, sub)

    async def _unsubscribe(self, cmd: UnsubscribeCmd) -> None:
        for session in self._sessions(cmd.user, cmd.client):
            if cmd.channel not in session.subs:
                continue
            await session.detach(cmd.channel)
            tell = _teller(session)
            # Clarion's own sse/stream/poll just stop getting the channel's publications.
            if tell is not None:
                tell(proto.encode_str(cmd.channel), b"unsubscribe", SERVER_UNSUBSCRIBE)

    def _disconnect(self, cmd: DisconnectCmd) -> None:
        for session in self._sessions(cmd.user, cmd.client):
            if session.id in cmd.whitelist or session.transport == "poll":
                continue
            session.target.disconnect(Disconnect(cmd.code, cmd.reason))

    def _refresh(self, cmd: RefreshCmd) -> None:
        for session in self._sessions(cmd.user, cmd.client):
            if session.transport == "poll":
                continue  # a long-poll ends by itself; its next request is checked again
            if cmd.expired:
                session.target.disconnect(Disconnect(*codes.EXPIRED))
            elif cmd.expire_at:
                session.expire_at = cmd.expire_at
