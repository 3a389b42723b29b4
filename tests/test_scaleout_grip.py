"""The GRIP proxy across hub processes (issue 10, part 2): a publication sent to any node's
``:5561/publish/`` or ``/api/publish`` reaches long-polls, held streams and WebSocket-over-HTTP
connections held on every node, and each held client gets it once.

Every test starts its own ``clarion serve --broker redis://… --grip-routes …`` processes on the
machine's Redis under a key prefix of its own, in front of one scriptable origin
(tests/grip_origin.py). A hold subscribes its node to the channel in Redis just after it is set
up, and GRIP holds do not read history, so a test first waits until Redis counts the node's
subscription (``PUBSUB NUMSUB``) and only then publishes.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from tests.conftest import Hub, HubFactory, free_port, in_ci
from tests.test_scaleout_nodes import REDIS_URL, T, redis_available, start_nodes
from websockets.asyncio.client import connect as ws_connect

from grip_origin import Origin, Reply, Req, ws_reply

pytestmark = pytest.mark.skipif(not redis_available() and not in_ci(),
                                reason="no Redis at 127.0.0.1:6379")


@dataclass
class GripNode:
    hub: Hub
    grip_port: int
    control_port: int

    @property
    def grip_url(self) -> str:
        return f"http://127.0.0.1:{self.grip_port}"

    @property
    def publish_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}/publish/"


@dataclass
class Cluster:
    nodes: list[GripNode]
    prefix: str
    redis: Redis

    async def wait_held(self, channel: str, nodes: int) -> None:
        """Until ``nodes`` hub processes receive ``channel`` from Redis: from then on a
        publication through any node reaches the holds."""
        name = f"{self.prefix}:client:{{{channel}}}"
        deadline = time.monotonic() + T
        while (count := self.redis.pubsub_numsub(name)[0][1]) != nodes:
            assert time.monotonic() < deadline, f"{count} of {nodes} nodes subscribed to {name}"
            await asyncio.sleep(0.02)


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin() as o:
        yield o


@pytest.fixture
def redis() -> Iterator[Redis]:
    r = Redis.from_url(REDIS_URL)
    yield r
    r.close()


def start_grip_nodes(hub_factory: HubFactory, tmp_path: Path, origin: Origin, redis: Redis,
                     n: int) -> Cluster:  # fmt: skip
    routes = tmp_path / "routes"
    # over_http: WebSocket clients reach the origin as WebSocket-over-HTTP; plain HTTP
    # requests are proxied as they are.
    routes.write_text(f"* 127.0.0.1:{origin.port},over_http\n")
    ports = [(free_port(), free_port()) for _ in range(n)]
    prefix = f"t{uuid.uuid4().hex[:12]}"
    hubs = start_nodes(hub_factory, n, prefix=prefix, args=lambda i: [
        "--grip-routes", str(routes), "--grip-port", str(ports[i][0]),
        "--control-port", str(ports[i][1])])
    nodes = [GripNode(h, g, c) for h, (g, c) in zip(hubs, ports, strict=True)]
    return Cluster(nodes, prefix, redis)


def hold(mode: str, channel: str, body: str) -> Reply:
    headers = [("Content-Type", "text/plain"), ("Grip-Hold", mode), ("Grip-Channel", channel)]
    if mode == "response":
        headers.append(("Grip-Timeout", "120"))  # longer than any test: only a publication ends it
    return Reply(200, headers, body)


def grip_item(channel: str, **formats: dict[str, Any]) -> dict[str, Any]:
    return {"items": [{"channel": channel, "formats": {
        k.replace("_", "-"): v for k, v in formats.items()}}]}


async def publish(http: httpx.AsyncClient, node: GripNode, body: dict[str, Any]) -> None:
    resp = await http.post(node.publish_url, json=body)
    assert resp.status_code == 200, resp.text


async def api_publish(http: httpx.AsyncClient, node: GripNode, channel: str,
                      data: object) -> None:  # fmt: skip
    resp = await http.post(f"{node.hub.url}/api/publish",
                           json={"channel": channel, "data": data},
                           headers={"X-API-Key": node.hub.api_key})
    assert resp.status_code == 200 and "error" not in resp.json(), resp.text


@dataclass
class Stream:
    """A held stream's body as it arrives."""

    chunks: AsyncIterator[str]
    received: str = ""

    async def until(self, ending: str) -> str:
        while ending not in self.received:
            self.received += await asyncio.wait_for(anext(self.chunks), T)
        return self.received


def http_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(T, read=60))


async def test_long_poll_on_a_answered_through_b(hub_factory: HubFactory, tmp_path: Path,
                                                 origin: Origin, redis: Redis) -> None:
    cluster = start_grip_nodes(hub_factory, tmp_path, origin, redis, 2)
    a, b = cluster.nodes
    origin.on("/poll/grip", hold("response", "lp-grip", "timed out\n"))
    origin.on("/poll/text", hold("response", "lp-text", "timed out\n"))
    origin.on("/poll/json", hold("response", "lp-json", "timed out\n"))
    async with http_client() as http:
        # An http-response item through B's publish API answers the long-poll held on A.
        poll = asyncio.create_task(http.get(f"{a.grip_url}/poll/grip"))
        await cluster.wait_held("lp-grip", 1)
        await publish(http, b, grip_item("lp-grip", http_response={
            "code": 201, "headers": {"X-Published-By": "b"}, "body": "from B\n"}))
        resp = await asyncio.wait_for(poll, T)
        assert (resp.status_code, resp.text) == (201, "from B\n")
        assert resp.headers["x-published-by"] == "b"

        # B's server API: a JSON string becomes the text body, other JSON a JSON body
        # (docs/topics/grip-proxy.md, "Native to GRIP").
        poll = asyncio.create_task(http.get(f"{a.grip_url}/poll/text"))
        await cluster.wait_held("lp-text", 1)
        await api_publish(http, b, "lp-text", "hello from B\n")
        resp = await asyncio.wait_for(poll, T)
        assert (resp.status_code, resp.text) == (200, "hello from B\n")
        assert resp.headers["content-type"] == "text/plain; charset=utf-8"

        poll = asyncio.create_task(http.get(f"{a.grip_url}/poll/json"))
        await cluster.wait_held("lp-json", 1)
        await api_publish(http, b, "lp-json", {"text": "hi"})
        resp = await asyncio.wait_for(poll, T)
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/json"
        assert resp.json() == {"text": "hi"}
    # Answered long-polls leave: A keeps no Redis subscription for them.
    for channel in ("lp-grip", "lp-text", "lp-json"):
        await cluster.wait_held(channel, 0)


def ws_origin(channel: str) -> Callable[[Req], Reply]:
    """A WebSocket-over-HTTP origin that accepts with the GRIP extension and subscribes the
    connection to ``channel``; a CLOSE is echoed, anything else gets no events."""

    def handler(req: Req) -> Reply:
        kinds = [kind for kind, _ in req.events]
        if kinds[:1] == ["OPEN"]:
            subscribe = json.dumps({"type": "subscribe", "channel": channel})
            return ws_reply([("OPEN", None), ("TEXT", f"c:{subscribe}")])
        return ws_reply([(k, c) for k, c in req.events if k == "CLOSE"])

    return handler


async def test_websocket_over_http_on_a_gets_what_b_publishes(
        hub_factory: HubFactory, tmp_path: Path, origin: Origin, redis: Redis) -> None:
    cluster = start_grip_nodes(hub_factory, tmp_path, origin, redis, 2)
    a, b = cluster.nodes
    origin.on("/ws", ws_origin("room"))
    async with http_client() as http, ws_connect(f"ws://127.0.0.1:{a.grip_port}/ws") as ws:
        await cluster.wait_held("room", 1)
        await publish(http, b, grip_item("room", ws_message={"content": "hi from B"}))
        assert await asyncio.wait_for(ws.recv(), T) == "hi from B"
        await api_publish(http, b, "room", {"via": "api"})
        assert json.loads(await asyncio.wait_for(ws.recv(), T)) == {"via": "api"}
        await publish(http, b, grip_item("room", ws_message={"content": "last"}))
        # Nothing twice, nothing in between.
        assert await asyncio.wait_for(ws.recv(), T) == "last"
    await cluster.wait_held("room", 0)


async def test_stream_on_a_gets_what_b_api_publishes(hub_factory: HubFactory, tmp_path: Path,
                                                     origin: Origin, redis: Redis) -> None:
    cluster = start_grip_nodes(hub_factory, tmp_path, origin, redis, 2)
    a, b = cluster.nodes
    origin.on("/events", hold("stream", "feed", "open\n"))
    async with http_client() as http, http.stream("GET", f"{a.grip_url}/events") as r:
        assert r.status_code == 200
        stream = Stream(r.aiter_text())
        await cluster.wait_held("feed", 1)
        await api_publish(http, b, "feed", "a line\n")
        await api_publish(http, b, "feed", {"a": 1})
        assert await stream.until('{"a":1}\n') == 'open\na line\n{"a":1}\n'


@pytest.mark.parametrize("channel", ["both", "chat:both"],
                         ids=["no-history", "with-history"])
async def test_channel_held_on_two_nodes_reaches_each_client_once(
        hub_factory: HubFactory, tmp_path: Path, origin: Origin, redis: Redis,
        channel: str) -> None:
    """Streams on A and B, publishers on A (which holds one itself), B and C: every stream gets
    every publication once, in publishing order. ``chat:`` keeps history, so publications
    carry offsets and go through the node's gap checks."""
    cluster = start_grip_nodes(hub_factory, tmp_path, origin, redis, 3)
    a, b, c = cluster.nodes
    origin.on("/events", hold("stream", channel, "open\n"))
    async with (http_client() as http,
                http.stream("GET", f"{a.grip_url}/events") as ra,
                http.stream("GET", f"{b.grip_url}/events") as rb):
        streams = [Stream(ra.aiter_text()), Stream(rb.aiter_text())]
        await cluster.wait_held(channel, 2)
        await publish(http, a, grip_item(channel, http_stream={"content": "1 via A\n"}))
        await api_publish(http, b, channel, "2 via B\n")
        await publish(http, c, grip_item(channel, http_stream={"content": "3 via C\n"}))
        await api_publish(http, a, channel, "4 via A\n")
        # The last one goes through C, which holds nothing: it reaches A and B only through
        # Redis, after any second copy of the earlier ones would have.
        await publish(http, c, grip_item(channel, http_stream={"content": "end\n"}))
        for stream in streams:
            assert await stream.until("end\n") == "open\n1 via A\n2 via B\n3 via C\n4 via A\nend\n"


@pytest.mark.parametrize("way", ["grip", "api", "batch"])
async def test_hold_window_on_one_redis_node(hub_factory: HubFactory, tmp_path: Path,
                                             origin: Origin, redis: Redis, way: str) -> None:
    """The view publishes, then answers with a hold (the docs' typical case), all on one
    node: the hold gets the early publication from the recent buffer, whichever way of the
    hub's it was published (GRIP publish API, /api/publish, a run in /api/batch), once."""
    cluster = start_grip_nodes(hub_factory, tmp_path, origin, redis, 1)
    (a,) = cluster.nodes
    api = {"X-API-Key": a.hub.api_key}

    def publish_then_hold(req: Req) -> Reply:
        if way == "grip":
            item = grip_item("window", http_stream={"content": "early\n"})
            resp = httpx.post(a.publish_url, json=item, timeout=T)
        elif way == "api":
            resp = httpx.post(f"{a.hub.url}/api/publish", headers=api, timeout=T,
                              json={"channel": "window", "data": "early\n"})
        else:
            resp = httpx.post(f"{a.hub.url}/api/batch", headers=api, timeout=T, json={
                "commands": [{"publish": {"channel": "window", "data": "early\n"}},
                             {"publish": {"channel": "other", "data": "x"}}]})
        assert resp.status_code == 200 and "error" not in resp.text, resp.text
        return hold("stream", "window", "open\n")

    origin.on("/events", publish_then_hold)
    async with http_client() as http, http.stream("GET", f"{a.grip_url}/events") as r:
        stream = Stream(r.aiter_text())
        await cluster.wait_held("window", 1)
        await publish(http, a, grip_item("window", http_stream={"content": "end\n"}))
        assert await stream.until("end\n") == "open\nearly\nend\n"
