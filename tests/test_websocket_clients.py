"""The official centrifuge-python SDK and the cent server-API client against a real hub."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from cent import Client as Cent
from cent import HistoryRequest, PresenceStatsRequest, PublishRequest
from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectedContext,
    ServerPublicationContext,
    ServerSubscribedContext,
)
from tests.centrifuge_support import Recorder
from tests.conftest import Hub, token
from tests.netproxy import NetProxy


def cent(hub: Hub) -> Cent:
    return Cent(f"{hub.url}/api", hub.api_key)


async def test_connect_subscribe_receive_publications_sent_with_cent(hub: Hub) -> None:
    client = Client(hub.ws_url, token=token("alice"))
    rec = Recorder()
    sub = client.new_subscription("chat:room", rec)
    await client.connect()
    await sub.subscribe()
    await rec.wait_for(lambda: rec.subscribed)
    api = cent(hub)
    results = [api.publish(PublishRequest(channel="chat:room", data={"n": i})) for i in range(5)]
    await rec.wait_for(lambda: len(rec.pubs) == 5)
    assert rec.pubs == [{"n": i} for i in range(5)]
    assert rec.offsets == [r.offset for r in results] == [1, 2, 3, 4, 5]
    assert len({r.epoch for r in results}) == 1
    await client.disconnect()


async def test_client_publish_presence_and_history(hub: Hub) -> None:
    alice = Client(hub.ws_url, token=token("alice", info={"name": "Alice"}))
    bob = Client(hub.ws_url, token=token("bob"))
    rec_a, rec_b = Recorder(), Recorder()
    sub_a = alice.new_subscription("chat:lobby", rec_a, join_leave=True)
    sub_b = bob.new_subscription("chat:lobby", rec_b, join_leave=True)
    await alice.connect()
    await sub_a.subscribe()
    await rec_a.wait_for(lambda: rec_a.subscribed)
    await bob.connect()
    await sub_b.subscribe()
    await rec_a.wait_for(lambda: "bob" in rec_a.joins)

    await sub_a.publish({"text": "hello"})
    await rec_b.wait_for(lambda: rec_b.pubs == [{"text": "hello"}])

    presence = await sub_b.presence()
    users = sorted(info.user for info in presence.clients.values())
    assert users == ["alice", "bob"]
    alice_info = next(i for i in presence.clients.values() if i.user == "alice")
    assert alice_info.conn_info == {"name": "Alice"}
    stats = await sub_b.presence_stats()
    assert (stats.num_clients, stats.num_users) == (2, 2)
    assert cent(hub).presence_stats(PresenceStatsRequest(channel="chat:lobby")).num_users == 2

    history = await sub_b.history(limit=10)
    assert [p.data for p in history.publications] == [{"text": "hello"}]
    assert history.publications[0].info.user == "alice"
    api_history = cent(hub).history(HistoryRequest(channel="chat:lobby", limit=10))
    assert api_history.offset == 1

    await bob.disconnect()
    await rec_a.wait_for(lambda: "bob" in rec_a.leaves)
    await alice.disconnect()


async def test_recovers_missed_publications_after_a_network_drop(hub: Hub) -> None:
    proxy = await NetProxy(hub.port).start()
    client = Client(f"ws://127.0.0.1:{proxy.port}/connection/websocket", token=token("carol"),
                    min_reconnect_delay=0.1, max_reconnect_delay=0.3)
    rec = Recorder()
    sub = client.new_subscription("chat:news", rec)
    await client.connect()
    await sub.subscribe()
    await rec.wait_for(lambda: rec.subscribed)
    api = cent(hub)
    api.publish(PublishRequest(channel="chat:news", data={"n": 0}))
    await rec.wait_for(lambda: len(rec.pubs) == 1)

    proxy.cut()
    for i in range(1, 6):
        api.publish(PublishRequest(channel="chat:news", data={"n": i}))
    await asyncio.sleep(0.5)
    proxy.restore()

    await rec.wait_for(lambda: len(rec.pubs) == 6)
    assert rec.pubs == [{"n": i} for i in range(6)]
    assert rec.offsets == list(range(1, 7))
    assert rec.subscribed[-1].recovered is True
    assert rec.subscribed[-1].was_recovering is True
    await client.disconnect()
    await proxy.close()


async def test_position_gone_is_reported_not_recovered(hub_factory: Any) -> None:
    hub = hub_factory("""
[namespaces.tiny]
history_size = 2
history_ttl = 300
force_recovery = true
allow_subscribe_for_client = true
""")
    proxy = await NetProxy(hub.port).start()
    client = Client(f"ws://127.0.0.1:{proxy.port}/connection/websocket", token=token("dan"),
                    min_reconnect_delay=0.1, max_reconnect_delay=0.3)
    rec = Recorder()
    sub = client.new_subscription("tiny:t", rec)
    await client.connect()
    await sub.subscribe()
    await rec.wait_for(lambda: rec.subscribed)
    api = cent(hub)
    api.publish(PublishRequest(channel="tiny:t", data={"n": 0}))
    await rec.wait_for(lambda: len(rec.pubs) == 1)
    proxy.cut()
    for i in range(1, 6):  # five missed, only two kept: the position is gone
        api.publish(PublishRequest(channel="tiny:t", data={"n": i}))
    proxy.restore()
    await rec.wait_for(lambda: len(rec.subscribed) == 2)
    assert rec.subscribed[-1].was_recovering is True
    assert rec.subscribed[-1].recovered is False
    await client.disconnect()
    await proxy.close()


async def test_server_side_subscriptions_from_token_channels(hub: Hub) -> None:
    got: list[Any] = []
    subscribed: list[str] = []
    ready = asyncio.Event()

    class Handler(ClientEventHandler):
        async def on_connected(self, ctx: ConnectedContext) -> None:
            ready.set()

        async def on_subscribed(self, ctx: ServerSubscribedContext) -> None:
            subscribed.append(ctx.channel)

        async def on_publication(self, ctx: ServerPublicationContext) -> None:
            got.append((ctx.channel, ctx.pub.data))

    client = Client(hub.ws_url, token=token("erin", channels=["chat:erin-feed"]),
                    events=Handler())
    await client.connect()
    await asyncio.wait_for(ready.wait(), 5)
    assert subscribed == ["chat:erin-feed"]
    cent(hub).publish(PublishRequest(channel="chat:erin-feed", data={"x": 1}))
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.05)
    assert got == [("chat:erin-feed", {"x": 1})]
    await client.disconnect()


async def test_server_side_subscriptions_recover_what_a_dropped_connection_missed(
        hub: Hub) -> None:
    # The SDK sends connect.subs with the offset and epoch it reached on each recoverable
    # server-side subscription; the new connection's reply carries what was missed.
    got: list[tuple[int, Any]] = []
    subscribed: list[ServerSubscribedContext] = []

    class Handler(ClientEventHandler):
        async def on_subscribed(self, ctx: ServerSubscribedContext) -> None:
            subscribed.append(ctx)

        async def on_publication(self, ctx: ServerPublicationContext) -> None:
            got.append((ctx.pub.offset, ctx.pub.data))

    async def until(cond: Any) -> None:
        for _ in range(300):
            if cond():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out: subscribed={subscribed} got={got}")

    proxy = await NetProxy(hub.port).start()
    client = Client(f"ws://127.0.0.1:{proxy.port}/connection/websocket",
                    token=token("gwen", channels=["chat:gwen-feed"]), events=Handler(),
                    min_reconnect_delay=0.1, max_reconnect_delay=0.3)
    api = cent(hub)
    await client.connect()
    await until(lambda: len(subscribed) == 1)
    assert subscribed[0].recoverable is True
    api.publish(PublishRequest(channel="chat:gwen-feed", data={"n": 1}))
    await until(lambda: len(got) == 1)

    proxy.cut()
    for n in (2, 3, 4):
        api.publish(PublishRequest(channel="chat:gwen-feed", data={"n": n}))
    proxy.restore()
    await until(lambda: len(subscribed) == 2)
    assert subscribed[1].was_recovering is True
    assert subscribed[1].recovered is True
    api.publish(PublishRequest(channel="chat:gwen-feed", data={"n": 5}))
    await until(lambda: len(got) == 5)
    assert got == [(n, {"n": n}) for n in range(1, 6)]  # each once, in order
    await client.disconnect()
    await proxy.close()


async def test_token_refresh_before_expiry(hub: Hub) -> None:
    calls = 0

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        return token("frank", exp=int(time.time()) + 3 if calls == 1 else int(time.time()) + 600)

    client = Client(hub.ws_url, get_token=get_token)
    rec = Recorder()
    sub = client.new_subscription("chat:refresh", rec)
    await client.connect()
    await sub.subscribe()
    await rec.wait_for(lambda: rec.subscribed)
    await asyncio.sleep(4.5)  # past the first token's expiry: the SDK refreshed in time
    assert calls >= 2
    cent(hub).publish(PublishRequest(channel="chat:refresh", data={"still": "here"}))
    await rec.wait_for(lambda: rec.pubs == [{"still": "here"}])
    assert len(rec.subscribed) == 1  # never dropped
    await client.disconnect()


@pytest.mark.parametrize("ticket_user", ["gina"])
async def test_one_time_ticket_connects_once(hub: Hub, ticket_user: str) -> None:
    answer = hub.api("ticket", {"user": ticket_user, "info": {"role": "tester"}}).json()
    ticket = answer["result"]["ticket"]
    assert ticket.startswith("tkt_") and len(ticket) > 40
    assert answer["result"]["expires_in"] == 10
    client = Client(hub.ws_url, token=ticket)
    rec = Recorder()
    sub = client.new_subscription("chat:tickets", rec)
    await client.connect()
    await sub.subscribe()
    await rec.wait_for(lambda: rec.subscribed)
    presence = await sub.presence()
    assert [i.user for i in presence.clients.values()] == [ticket_user]
    assert [i.conn_info for i in presence.clients.values()] == [{"role": "tester"}]
    await client.disconnect()
