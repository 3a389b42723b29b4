"""Several hub processes on one Redis (issue 10, part 6): every node shares channels, history,
presence and tickets, whichever node a client, a publisher or a resume lands on.

Each test starts its own ``clarion serve --broker redis://…`` processes with a key prefix of
its own, so tests never see each other's channels on the shared Redis at 127.0.0.1:6379.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cent import Client as Cent
from cent import PresenceRequest, PresenceStatsRequest, PublishRequest
from centrifuge import (
    Client,
)
from redis import Redis
from tests.centrifuge_support import Recorder as _Recorder
from tests.conftest import CHAT_NAMESPACE, Hub, HubFactory, free_port, in_ci, token
from tests.netproxy import NetProxy
from tests.sse_reader import LineReader, SSEReader

from grip_origin import Origin, Reply

REDIS_URL = "redis://127.0.0.1:6379/0"
T = 15.0


def redis_available() -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", 6379)) == 0


# Under CI=true a missing Redis fails these tests (CI runs one), it does not skip them.
pytestmark = pytest.mark.skipif(not redis_available() and not in_ci(),
                                reason="no Redis at 127.0.0.1:6379")


def node_config(prefix: str, extra: str = "") -> str:
    # broker and [redis] must come before the namespace tables of CHAT_NAMESPACE.
    return f'broker = "{REDIS_URL}"\n{extra}\n[redis]\nprefix = "{prefix}"\n' + CHAT_NAMESPACE


def start_nodes(hub_factory: HubFactory, n: int, extra: str = "",
                args: Callable[[int], list[str]] | None = None,
                prefix: str = "") -> list[Hub]:
    prefix = prefix or f"t{uuid.uuid4().hex[:12]}"
    return [hub_factory(node_config(prefix, extra), *(args(i) if args else []))
            for i in range(n)]


def cent(hub: Hub) -> Cent:
    return Cent(f"{hub.url}/api", hub.api_key)


class Recorder(_Recorder):
    timeout = T


async def test_client_on_a_gets_what_b_publishes_and_recovers_on_c(
        hub_factory: HubFactory) -> None:
    a, b, c = start_nodes(hub_factory, 3)
    proxy = await NetProxy(a.port).start()
    client = Client(f"ws://127.0.0.1:{proxy.port}/connection/websocket", token=token("carol"),
                    min_reconnect_delay=0.1, max_reconnect_delay=0.3)
    rec = Recorder()
    sub = client.new_subscription("chat:news", rec)
    await client.connect()
    await sub.subscribe()
    await rec.wait_for(lambda: bool(rec.subscribed))
    for i in range(3):
        await asyncio.to_thread(cent(b).publish, PublishRequest(channel="chat:news",
                                                                data={"n": i}))
    await rec.wait_for(lambda: len(rec.pubs) == 3)

    proxy.cut()
    for i in range(3, 8):  # missed while away, published through B again
        await asyncio.to_thread(cent(b).publish, PublishRequest(channel="chat:news",
                                                                data={"n": i}))
    proxy.target_port = c.port  # the client comes back through node C
    proxy.restore()
    await rec.wait_for(lambda: len(rec.pubs) == 8)
    assert rec.subscribed[-1].was_recovering is True
    assert rec.subscribed[-1].recovered is True
    # Live again on C, for what A publishes now.
    await asyncio.to_thread(cent(a).publish, PublishRequest(channel="chat:news",
                                                            data={"n": 8}))
    await rec.wait_for(lambda: len(rec.pubs) == 9)
    assert rec.pubs == [{"n": i} for i in range(9)]
    assert rec.offsets == list(range(1, 10))
    await client.disconnect()
    await proxy.close()


async def test_presence_and_join_leave_seen_from_every_node(hub_factory: HubFactory) -> None:
    a, b, c = start_nodes(hub_factory, 3)
    alice = Client(a.ws_url, token=token("alice", info={"name": "Alice"}))
    bob = Client(b.ws_url, token=token("bob"))
    rec_a, rec_b = Recorder(), Recorder()
    sub_a = alice.new_subscription("chat:lobby", rec_a, join_leave=True)
    sub_b = bob.new_subscription("chat:lobby", rec_b, join_leave=True)
    await alice.connect()
    await sub_a.subscribe()
    await rec_a.wait_for(lambda: bool(rec_a.subscribed))
    await bob.connect()
    await sub_b.subscribe()
    await rec_a.wait_for(lambda: "bob" in rec_a.joins)

    presence = await asyncio.to_thread(cent(c).presence, PresenceRequest(channel="chat:lobby"))
    assert sorted(i.user for i in presence.presence.values()) == ["alice", "bob"]
    stats = await asyncio.to_thread(cent(c).presence_stats,
                                    PresenceStatsRequest(channel="chat:lobby"))
    assert (stats.num_clients, stats.num_users) == (2, 2)
    from_b = await sub_b.presence()
    alice_info = next(i for i in from_b.clients.values() if i.user == "alice")
    assert alice_info.conn_info == {"name": "Alice"}

    await sub_a.publish({"text": "hi from A"})
    await rec_b.wait_for(lambda: rec_b.pubs == [{"text": "hi from A"}])

    await bob.disconnect()
    await rec_a.wait_for(lambda: "bob" in rec_a.leaves)
    presence = await asyncio.to_thread(cent(c).presence, PresenceRequest(channel="chat:lobby"))
    assert [i.user for i in presence.presence.values()] == ["alice"]
    await alice.disconnect()


async def test_sse_stream_and_poll_resume_on_another_node(hub_factory: HubFactory) -> None:
    a, b, c = start_nodes(hub_factory, 3)
    channel = "chat:resume"
    tok = token("uma")
    async with httpx.AsyncClient(timeout=T) as http:
        # SSE on A: its event ids are cursors; the resume happens on B.
        params = {"channel": channel, "token": tok}
        async with http.stream("GET", f"{a.url}/connection/sse", params=params) as r:
            sse = SSEReader(r)
            connect = (await sse.next(T)).json
            assert "connect" in connect
            cent(c).publish(PublishRequest(channel=channel, data={"n": 1}))
            first = await sse.next_pub(T)
            assert first.json["pub"]["data"] == {"n": 1} and first.id
        for n in (2, 3):
            cent(c).publish(PublishRequest(channel=channel, data={"n": n}))
        async with http.stream("GET", f"{b.url}/connection/sse", params=params,
                               headers={"Last-Event-ID": first.id}) as r:
            sse = SSEReader(r)
            assert "connect" in (await sse.next(T)).json
            got = [(await sse.next_pub(T)).json["pub"] for _ in range(2)]
            assert [(p["offset"], p["data"]) for p in got] == [(2, {"n": 2}), (3, {"n": 3})]

        # NDJSON stream on B, resumed with ?cursor= on C.
        async with http.stream("GET", f"{b.url}/connection/stream", params=params) as r:
            lines = LineReader(r)
            assert "connect" in await lines.next(T)
            cent(a).publish(PublishRequest(channel=channel, data={"n": 4}))
            line = await lines.next_pub(T)
            assert line["pub"]["offset"] == 4
            cursor = line["cursor"]
        cent(a).publish(PublishRequest(channel=channel, data={"n": 5}))
        async with http.stream("GET", f"{c.url}/connection/stream",
                               params={**params, "cursor": cursor}) as r:
            lines = LineReader(r)
            assert "connect" in await lines.next(T)
            line = await lines.next_pub(T)
            assert (line["pub"]["offset"], line["pub"]["data"]) == (5, {"n": 5})

        # Long-poll: the cursor from A's answer, the next poll on B.
        first_poll = (await http.get(f"{a.url}/connection/poll", params=params)).json()
        cursor = first_poll["cursor"]
        cent(c).publish(PublishRequest(channel=channel, data={"n": 6}))
        polled = (await http.get(f"{b.url}/connection/poll",
                                 params={"channel": channel, "session": first_poll["session"],
                                         "cursor": cursor, "timeout": "10"})).json()
        pubs = [p["pub"] for p in polled["pushes"] if "pub" in p]
        assert [(p["offset"], p["data"]) for p in pubs] == [(6, {"n": 6})]
        assert "unrecoverable" not in polled


async def test_ticket_issued_on_b_is_accepted_once_on_a(hub_factory: HubFactory) -> None:
    a, b = start_nodes(hub_factory, 2)
    answer = b.api("ticket", {"user": "tess", "info": {"role": "tester"}}).json()
    ticket = answer["result"]["ticket"]
    params = {"channel": "chat:tickets", "token": ticket}
    async with httpx.AsyncClient(timeout=T) as http:
        async with http.stream("GET", f"{a.url}/connection/stream", params=params) as r:
            assert r.status_code == 200
            assert "connect" in await LineReader(r).next(T)
        refused = await http.get(f"{b.url}/connection/stream", params=params)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == 3500
        again = await http.get(f"{a.url}/connection/stream", params=params)
        assert again.status_code == 401


def hold_stream(channel: str) -> Reply:
    return Reply(200, [("Content-Type", "text/plain"), ("Grip-Hold", "stream"),
                       ("Grip-Channel", channel)], "open\n")


async def test_grip_publish_to_b_reaches_a_stream_held_on_a(hub_factory: HubFactory,
                                                            tmp_path: Path) -> None:
    with Origin() as origin:
        origin.on("/events", hold_stream("feed"))
        routes = tmp_path / "routes"
        routes.write_text(f"* 127.0.0.1:{origin.port}\n")
        grip_ports = [(free_port(), free_port()) for _ in range(2)]
        prefix = f"t{uuid.uuid4().hex[:12]}"
        start_nodes(hub_factory, 2, prefix=prefix, args=lambda i: [
            "--grip-routes", str(routes), "--grip-port", str(grip_ports[i][0]),
            "--control-port", str(grip_ports[i][1])])
        publish_b = f"http://127.0.0.1:{grip_ports[1][1]}/publish/"

        def item(content: str) -> dict[str, Any]:
            return {"items": [{"channel": "feed",
                               "formats": {"http-stream": {"content": content}}}]}

        async with (httpx.AsyncClient(timeout=httpx.Timeout(T, read=60)) as http,
                    http.stream("GET", f"http://127.0.0.1:{grip_ports[0][0]}/events") as r):
            assert r.status_code == 200
            chunks = r.aiter_text()
            received = ""
            # The hold subscribes A to the channel in Redis right after it is set up: publish
            # a probe until one arrives, then the message that counts.
            probes = 0
            while "probe" not in received:
                assert probes < 100, f"nothing held on A got B's publications: {received!r}"
                resp = await http.post(publish_b, json=item("probe\n"))
                assert resp.status_code == 200, resp.text
                probes += 1
                with contextlib.suppress(TimeoutError):
                    received += await asyncio.wait_for(anext(chunks), 0.2)
            resp = await http.post(publish_b, json=item("the one\n"))
            assert resp.status_code == 200
            while "the one\n" not in received:
                received += await asyncio.wait_for(anext(chunks), T)
            assert received.startswith("open\n")
            assert received.endswith("probe\nthe one\n")
            assert received.count("the one") == 1
            redis = Redis.from_url(REDIS_URL)
            pubsub_name = f"{prefix}:client:{{feed}}"
            assert redis.pubsub_numsub(pubsub_name)[0][1] == 1  # A only: B holds nothing
        # The hold is gone: A leaves the channel in Redis (nothing stays subscribed).
        deadline = time.monotonic() + T
        while redis.pubsub_numsub(pubsub_name)[0][1] != 0:
            assert time.monotonic() < deadline, "A is still subscribed to the held channel"
            await asyncio.sleep(0.05)
        redis.close()


async def test_publishes_through_every_node_arrive_once_and_in_order(
        hub_factory: HubFactory) -> None:
    """Three nodes, one client each, publishers on all three: every client gets the same
    sequence of offsets 1..N, each once."""
    nodes = start_nodes(hub_factory, 3)
    clients = [Client(n.ws_url, token=token(f"u{i}")) for i, n in enumerate(nodes)]
    recs = [Recorder() for _ in nodes]
    subs = [cl.new_subscription("chat:all", rec) for cl, rec in zip(clients, recs, strict=True)]
    for cl, sub, rec in zip(clients, subs, recs, strict=True):
        await cl.connect()
        await sub.subscribe()
        await rec.wait_for(lambda rec=rec: bool(rec.subscribed))  # type: ignore[misc]

    def publish_all() -> None:
        apis = [cent(n) for n in nodes]
        for i in range(60):
            apis[i % 3].publish(PublishRequest(channel="chat:all", data={"i": i}))

    await asyncio.to_thread(publish_all)
    for rec in recs:
        await rec.wait_for(lambda rec=rec: len(rec.offsets) >= 60)  # type: ignore[misc]
        assert rec.offsets == list(range(1, 61))
    for cl in clients:
        await cl.disconnect()
