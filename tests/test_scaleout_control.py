"""Node-to-node control (issue 10): the server API acts on every node sharing the broker.

The first part runs real hub processes on one Redis (each test with a key prefix of its own, as
in ``test_scaleout_nodes``): a command sent through one node reaches a centrifuge-python client
connected to another, ``info`` and ``channels`` answer for every node (as ``cent`` parses them),
and a killed node leaves ``info`` answering with the others. The last part tests the wire format
and the Control object in one process, with fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from cent import (
    ChannelsRequest,
    DisconnectRequest,
    InfoRequest,
    PublishRequest,
    RefreshRequest,
    SubscribeRequest,
    UnsubscribeRequest,
)
from cent import Disconnect as CentDisconnect
from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectedContext,
    ConnectingContext,
    DisconnectedContext,
    ServerPublicationContext,
    ServerSubscribedContext,
    ServerUnsubscribedContext,
)
from redis import Redis
from tests.centrifuge_support import wait_changed
from tests.conftest import CHAT_NAMESPACE, Hub, HubFactory, in_ci, token
from tests.test_scaleout_nodes import REDIS_URL, T, cent, redis_available, start_nodes

from clarion.hub import control as ctl
from clarion.hub.metrics import HubMetrics

needs_redis = pytest.mark.skipif(not redis_available() and not in_ci(),
                                 reason="no Redis at 127.0.0.1:6379")
TESTS_DIR = Path(__file__).resolve().parent


class Events(ClientEventHandler):
    """What one centrifuge-python client saw, for waiting on."""

    def __init__(self) -> None:
        self.client_id = ""
        self.codes: list[int] = []  # disconnect codes, whether the client reconnects or not
        self.subscribed: list[ServerSubscribedContext] = []
        self.unsubscribed: list[str] = []
        self.pubs: list[tuple[str, Any]] = []
        self.changed = asyncio.Event()

    async def on_connected(self, ctx: ConnectedContext) -> None:
        self.client_id = ctx.client
        self.changed.set()

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        if ctx.code >= 3000:
            self.codes.append(ctx.code)
            self.changed.set()

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        if ctx.code >= 3000:
            self.codes.append(ctx.code)
            self.changed.set()

    async def on_subscribed(self, ctx: ServerSubscribedContext) -> None:
        self.subscribed.append(ctx)
        self.changed.set()

    async def on_unsubscribed(self, ctx: ServerUnsubscribedContext) -> None:
        self.unsubscribed.append(ctx.channel)
        self.changed.set()

    async def on_publication(self, ctx: ServerPublicationContext) -> None:
        self.pubs.append((ctx.channel, ctx.pub.data))
        self.changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = T) -> None:
        await wait_changed(self.changed, predicate, timeout)


async def connect(hub: Hub, user: str, **claims: object) -> tuple[Client, Events]:
    events = Events()
    client = Client(hub.ws_url, events=events, token=token(user, **claims),
                    max_reconnect_delay=0.5)
    await client.connect()
    await events.wait_for(lambda: bool(events.client_id))
    return client, events


async def call(hub: Hub, request: Any) -> Any:
    """A server API call with cent's own client, which parses the answer into its models."""
    method = type(request).__name__.removesuffix("Request").lower()  # all one-word methods
    return await asyncio.to_thread(getattr(cent(hub), method), request)


def metric(hub: Hub, name: str) -> float:
    """A sample of the hub's /metrics (``name`` with its labels), 0 when absent."""
    text = httpx.get(f"{hub.url}/metrics", timeout=10).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def until(predicate: Callable[[], bool], what: str, timeout: float = T) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


# -- several hub processes on one Redis ---------------------------------------------------------


@needs_redis
async def test_disconnect_through_b_reaches_the_user_on_a_and_c_except_the_whitelist(
        hub_factory: HubFactory) -> None:
    a, b, c = start_nodes(hub_factory, 3)
    on_a, events_a = await connect(a, "dora")
    on_c, events_c = await connect(c, "dora")
    bystander, events_other = await connect(a, "ed")

    await call(b, DisconnectRequest(user="dora", whitelist=[events_c.client_id],
                                    disconnect=CentDisconnect(code=4501, reason="banned")))
    await events_a.wait_for(lambda: events_a.codes == [4501])
    # Through C's own node, with the whitelist naming C's connection: C stays. The next command
    # disconnects it, so its absence of a code is checked after a command that came later.
    await call(b, DisconnectRequest(user="dora", client=events_c.client_id,
                                    disconnect=CentDisconnect(code=4502, reason="now you")))
    await events_c.wait_for(lambda: bool(events_c.codes))
    assert events_c.codes == [4502]
    assert events_other.codes == []
    for client in (on_a, on_c, bystander):
        await client.disconnect()


@needs_redis
async def test_subscribe_and_unsubscribe_through_b_reach_the_client_on_a(
        hub_factory: HubFactory) -> None:
    a, b = start_nodes(hub_factory, 2)
    client, events = await connect(a, "fay")
    await call(b, SubscribeRequest(user="fay", channel="chat:invited", data={"why": "invited"}))
    await events.wait_for(lambda: bool(events.subscribed))
    pushed = events.subscribed[0]
    assert (pushed.channel, pushed.data) == ("chat:invited", {"why": "invited"})
    assert pushed.recoverable and pushed.positioned  # the namespace's force_recovery

    # A publication through B reaches the server-side subscription on A.
    await call(b, PublishRequest(channel="chat:invited", data={"n": 1}))
    await events.wait_for(lambda: events.pubs == [("chat:invited", {"n": 1})])
    channels = await call(b, ChannelsRequest(pattern="chat:*"))
    assert {ch: i.num_clients for ch, i in channels.channels.items()} == {"chat:invited": 1}

    await call(b, UnsubscribeRequest(user="fay", channel="chat:invited"))
    await events.wait_for(lambda: events.unsubscribed == ["chat:invited"])
    channels = await call(a, ChannelsRequest())
    assert channels.channels == {}
    assert events.codes == []
    await client.disconnect()


@needs_redis
async def test_refresh_through_b_extends_or_ends_the_expiry_on_a(
        hub_factory: HubFactory) -> None:
    a, b, c = start_nodes(hub_factory, 3, extra="client_expired_close_delay = 0")
    # Both expire at the same second; only rita's connection is refreshed, through B.
    exp = int(time.time()) + 4
    rita, rita_events = await connect(a, "rita", exp=exp)
    sam, sam_events = await connect(a, "sam", exp=exp)
    await call(b, RefreshRequest(user="rita", expire_at=int(time.time()) + 3600))
    # A's housekeeping checks both connections in the same round: once sam is gone for having
    # expired, rita would have been too, had her expiry not moved.
    await sam_events.wait_for(lambda: 3005 in sam_events.codes)
    assert rita_events.codes == []

    # expired: true, through C, ends rita's connection on A with "connection expired".
    await call(c, RefreshRequest(user="rita", expired=True))
    await rita_events.wait_for(lambda: 3005 in rita_events.codes)
    await rita.disconnect()
    await sam.disconnect()


@needs_redis
async def test_info_and_channels_through_any_node_cover_every_node(
        hub_factory: HubFactory) -> None:
    nodes = start_nodes(hub_factory, 3)
    a, b, c = nodes
    clients = [await connect(a, "u1"), await connect(a, "u2"), await connect(b, "u3")]
    subs = [("u1", "chat:x"), ("u2", "chat:x"), ("u3", "chat:x"), ("u3", "chat:y")]
    for user, channel in subs:
        await call(c, SubscribeRequest(user=user, channel=channel))
    for _, events in clients:
        await events.wait_for(lambda events=events: len(events.subscribed) >= 1)  # type: ignore[misc]
    await clients[2][1].wait_for(lambda: len(clients[2][1].subscribed) == 2)

    expected_clients = {a.port: 2, b.port: 1, c.port: 0}
    uids: set[str] = set()
    for node in nodes:
        info = await call(node, InfoRequest())
        assert len(info.nodes) == 3, info
        # The answering node comes first; the others follow.
        assert info.nodes[0].num_clients == expected_clients[node.port]
        assert sorted(n.num_clients for n in info.nodes) == [0, 1, 2]
        assert sorted(n.num_channels for n in info.nodes) == [0, 1, 2]
        assert sorted(n.num_subs for n in info.nodes) == [0, 2, 2]
        assert all(n.version and n.name for n in info.nodes)
        uids |= {n.uid for n in info.nodes}

        channels = await call(node, ChannelsRequest())
        assert {ch: i.num_clients for ch, i in channels.channels.items()} == {
            "chat:x": 3, "chat:y": 1}
        only_y = await call(node, ChannelsRequest(pattern="*:y"))
        assert list(only_y.channels) == ["chat:y"]
    assert len(uids) == 3  # every node has one id, the same whoever asks

    assert metric(a, "clarion_nodes") == 3
    assert metric(c, 'clarion_control_messages_sent_total{kind="subscribe"}') == 4
    assert metric(a, 'clarion_control_messages_received_total{kind="info_request"}') >= 2
    assert metric(a, 'clarion_control_messages_received_total{kind="channels_request"}') >= 4
    for client, _ in clients:
        await client.disconnect()


@needs_redis
async def test_a_killed_node_leaves_info_answering_with_the_others(
        hub_factory: HubFactory) -> None:
    a, b, c = start_nodes(hub_factory, 3, extra='survey_timeout = "1s"')
    client, _ = await connect(b, "vic")
    info = await call(a, InfoRequest())
    assert len(info.nodes) == 3

    os.kill(c.process.pid, signal.SIGKILL)
    c.process.wait()
    # A still counts C as alive for a few seconds: it waits survey_timeout for it, then answers
    # with those that answered.
    info = await call(a, InfoRequest())
    assert sorted(n.num_clients for n in info.nodes) == [0, 1]
    channels = await call(b, ChannelsRequest())
    assert channels.channels == {}
    # A node stopped the usual way says goodbye: nobody waits for it.
    b.process.terminate()
    b.process.wait(30)
    await until(lambda: len(a.api("info", {}).json()["result"]["nodes"]) == 1,
                "A still lists nodes that are gone")
    with contextlib.suppress(Exception):
        await client.disconnect()


@needs_redis
async def test_malformed_control_messages_are_counted_and_change_nothing(
        hub_factory: HubFactory) -> None:
    prefix = f"t{os.urandom(6).hex()}"
    a, b = start_nodes(hub_factory, 2, prefix=prefix)
    client, events = await connect(a, "wes")
    redis = Redis.from_url(REDIS_URL)
    try:
        control = f"{prefix}:{{control}}"
        redis.publish(control, b"\x00 not msgpack")
        redis.publish(control, msgspec.msgpack.encode([ctl.VERSION, "someone", ["?", 1]]))
        # A later release's message: another version, dropped as such.
        redis.publish(control, msgspec.msgpack.encode([ctl.VERSION + 1, "future", ["z"]]))
        for node in (a, b):
            await until(lambda node=node: metric(  # type: ignore[misc]
                node, 'clarion_control_messages_failed_total{why="malformed"}') == 2,
                "malformed messages not counted")
            assert metric(node, 'clarion_control_messages_failed_total{why="version"}') == 1
    finally:
        redis.close()
    # The readers went on: commands still travel between the nodes.
    await call(b, DisconnectRequest(user="wes", disconnect=CentDisconnect(code=4503,
                                                                         reason="x")))
    await events.wait_for(lambda: events.codes == [4503])
    await client.disconnect()


async def test_a_control_message_the_broker_refuses_is_a_503(hub_factory: HubFactory) -> None:
    env = {"PYTHONPATH": os.pathsep.join(
        [str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    hub = hub_factory('broker = "control_brokers:NoControlBroker"\n' + CHAT_NAMESPACE, env=env)
    client, events = await connect(hub, "xia")
    calls = {"disconnect": {"user": "xia"}, "subscribe": {"user": "xia", "channel": "chat:a"},
             "unsubscribe": {"user": "xia", "channel": "chat:a"}, "refresh": {"user": "xia",
                                                                            "expired": True},
             "channels": {}}
    for method, body in calls.items():
        resp = await asyncio.to_thread(hub.api, method, body)
        assert resp.status_code == 503, (method, resp.text)
        assert resp.json()["error"]["code"] == 100
    # info needs no broker to describe the answering node: it answers for that node alone.
    info = await call(hub, InfoRequest())
    assert [n.num_clients for n in info.nodes] == [1]
    batch = await asyncio.to_thread(hub.api, "batch", {"commands": [
        {"disconnect": {"user": "xia"}}, {"publish": {"channel": "chat:a", "data": {}}}]})
    replies = batch.json()["replies"]
    assert replies[0]["error"]["code"] == 100 and "publish" in replies[1]
    # Nothing was applied on this node either: the command failed as a whole.
    assert events.codes == [] and events.subscribed == []
    assert metric(hub, 'clarion_control_messages_failed_total{why="send"}') >= 7
    await client.disconnect()


# -- the wire format and the Control object, in one process --------------------------------------


def test_codec_round_trips_every_command() -> None:
    info = ctl.NodeInfo("n1", "host/worker-0", "0.1.0", 3, 2, 1, 4, 17)
    commands: list[ctl.Command] = [
        ctl.SubscribeCmd("u", "chat:a", "c1", b'{"x":1}', b'{"why":"hi"}', (5, "ep")),
        ctl.SubscribeCmd("u", "chat:a"),
        ctl.UnsubscribeCmd("u", "chat:a", "c1"),
        ctl.DisconnectCmd("u", 4000, "bye", "", ["c2", "c3"]),
        ctl.RefreshCmd("u", "c1", False, 1_900_000_000),
        ctl.NodeCmd(info, hello=True),
        ctl.LeaveCmd(),
        ctl.InfoRequest(7),
        ctl.InfoReply(7, info),
        ctl.ChannelsRequest(8, "chat:*"),
        ctl.ChannelsReply(8, {"chat:a": 2, "b": 1}),
    ]
    for cmd in commands:
        data = ctl.encode("node-1", cmd)
        env = ctl.decode(data)
        assert (env.v, env.sender, env.cmd) == (ctl.VERSION, "node-1", cmd)
    # Compact: field names never travel.
    assert b"user" not in ctl.encode("n", ctl.DisconnectCmd("u", 4000, "bye"))
    assert len(ctl.encode("n", ctl.DisconnectCmd("u", 4000, "bye"))) < 30


def test_codec_reads_trailing_fields_it_does_not_know() -> None:
    # What a later release may add without changing VERSION: a field at the end.
    newer = msgspec.msgpack.encode([ctl.VERSION, "n2", ["u", "bob", "chat:a", "", "extra"]])
    assert ctl.decode(newer).cmd == ctl.UnsubscribeCmd("bob", "chat:a")


@pytest.mark.parametrize(("data", "why"), [
    (b"", "malformed"),
    (b"\xc1", "malformed"),
    (msgspec.msgpack.encode({"v": 1}), "malformed"),
    (msgspec.msgpack.encode([ctl.VERSION, "n", ["?"]]), "malformed"),
    (msgspec.msgpack.encode([ctl.VERSION, "n", ["d", "u", "not a code", "r"]]), "malformed"),
    (msgspec.msgpack.encode([ctl.VERSION, 5, ["x"]]), "malformed"),
    (msgspec.msgpack.encode([ctl.VERSION + 1, "n", ["x"]]), "version"),
    (msgspec.msgpack.encode([ctl.VERSION + 1, "n", ["never-seen", {"a": 1}]]), "version"),
])
def test_codec_says_why_a_message_is_unreadable(data: bytes, why: str) -> None:
    with pytest.raises(ctl.ControlDecodeError) as err:
        ctl.decode(data)
    assert err.value.why == why


class FakeLog:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def info(self, event: str, **fields: Any) -> None:
        pass

    def warning(self, event: str, **fields: Any) -> None:
        self.warnings.append(event)


class FakeBroker:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.sent: list[tuple[bytes, str | None]] = []

    async def publish_control(self, data: bytes, *, to: str | None = None) -> None:
        self.sent.append((data, to))


class FakeFanout:
    def __init__(self) -> None:
        self.sessions: dict[str, Any] = {}
        self.users: dict[str, set[str]] = {}
        self.channels: dict[str, dict[str, Any]] = {"chat:a": {"s1": object()}}

    def user_sessions(self, user: str) -> list[Any]:
        return []


class FakeConfig:
    def seconds(self, name: str) -> float:
        assert name == "survey_timeout"
        return 0.2


class FakeHub:
    def __init__(self) -> None:
        self.broker = FakeBroker("me")
        self.metrics = HubMetrics()
        self.log = FakeLog()
        self.config = FakeConfig()
        self.fanout = FakeFanout()
        self.node_name = "host"
        self.version = "0.1.0"
        self.started_at = time.monotonic()
        self.failures: list[str] = []

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        return asyncio.get_running_loop().create_task(coro)

    def failed(self, part: str, exc: BaseException, **fields: Any) -> None:
        self.failures.append(part)


def make_control() -> tuple[ctl.Control, FakeHub]:
    hub = FakeHub()
    return ctl.Control(hub), hub  # type: ignore[arg-type]


def node(uid: str, clients: int = 0) -> ctl.NodeInfo:
    return ctl.NodeInfo(uid, f"host-{uid}", "0.1.0", clients, clients, 0, 0, 1)


async def test_a_question_returns_as_soon_as_every_known_node_answered() -> None:
    control, hub = make_control()
    for uid in ("n1", "n2"):
        control.on_control(ctl.encode(uid, ctl.NodeCmd(node(uid))))
    assert control.node_count == 3
    asking = asyncio.ensure_future(control.survey_info())
    await asyncio.sleep(0)
    (request, to), = hub.broker.sent
    assert to is None
    rid = ctl.decode(request).cmd.request  # type: ignore[union-attr]
    control.on_control(ctl.encode("n2", ctl.InfoReply(rid, node("n2", 5))))
    control.on_control(ctl.encode("n1", ctl.InfoReply(rid, node("n1", 7))))
    # Done without waiting for the timeout: nothing else was expected.
    nodes = await asyncio.wait_for(asking, 0.15)
    assert [n.uid for n in nodes] == ["me", "n1", "n2"]
    assert [n.num_clients for n in nodes] == [0, 7, 5]
    assert hub.log.warnings == []


async def test_a_question_answers_with_what_arrived_when_a_node_stays_silent() -> None:
    control, hub = make_control()
    for uid in ("n1", "n2"):
        control.on_control(ctl.encode(uid, ctl.NodeCmd(node(uid))))
    asking = asyncio.ensure_future(control.survey_channels("chat:*"))
    await asyncio.sleep(0)
    request = ctl.decode(hub.broker.sent[0][0]).cmd
    assert request == ctl.ChannelsRequest(1, "chat:*")
    control.on_control(ctl.encode("n1", ctl.ChannelsReply(1, {"chat:a": 2, "chat:b": 1})))
    assert await asking == {"chat:a": 3, "chat:b": 1}
    assert hub.log.warnings == ["nodes did not answer in time"]
    # A late answer to a question already answered is dropped quietly.
    control.on_control(ctl.encode("n2", ctl.ChannelsReply(1, {"chat:c": 1})))


async def test_a_node_that_leaves_is_not_waited_for() -> None:
    control, _ = make_control()
    control.on_control(ctl.encode("n1", ctl.NodeCmd(node("n1"))))
    asking = asyncio.ensure_future(control.survey_info())
    await asyncio.sleep(0)
    control.on_control(ctl.encode("n1", ctl.LeaveCmd()))
    assert [n.uid for n in await asyncio.wait_for(asking, 0.15)] == ["me"]
    assert control.node_count == 1


async def test_hello_is_answered_directly_and_own_broadcasts_are_ignored() -> None:
    control, hub = make_control()
    control.on_control(ctl.encode("n1", ctl.NodeCmd(node("n1"), hello=True)))
    await asyncio.sleep(0)
    (reply, to), = hub.broker.sent
    assert to == "n1"
    assert isinstance(ctl.decode(reply).cmd, ctl.NodeCmd)
    control.on_control(ctl.encode("me", ctl.InfoRequest(1)))  # our own broadcast, echoed
    await asyncio.sleep(0)
    assert len(hub.broker.sent) == 1
    assert hub.metrics.control_received == {"node": 1}
    assert hub.metrics.control_sent == {"node": 1}


async def test_an_unreadable_message_is_counted_and_the_next_one_still_works() -> None:
    control, hub = make_control()
    control.on_control(b"garbage")
    control.on_control(msgspec.msgpack.encode([ctl.VERSION + 1, "n9", ["new"]]))
    control.on_control(ctl.encode("n1", ctl.NodeCmd(node("n1"))))
    assert hub.metrics.control_failed == {"malformed": 1, "version": 1}
    assert control.node_count == 2
    assert hub.failures == []


async def test_nodes_that_go_quiet_are_forgotten() -> None:
    control, hub = make_control()
    control.on_control(ctl.encode("n1", ctl.NodeCmd(node("n1"))))
    now = time.monotonic()
    control.tick(now + ctl.NODE_INFO_MAX_AGE - 1)
    assert control.node_count == 2
    control.tick(now + ctl.NODE_INFO_MAX_AGE + 1)
    assert control.node_count == 1
    await asyncio.sleep(0)  # the announcement tick() started
    assert [ctl.decode(d).cmd.__class__ for d, _ in hub.broker.sent] == [ctl.NodeCmd]
