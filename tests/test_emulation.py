"""Centrifugo's bidirectional emulation (/connection/http_stream, bidirectional /connection/sse,
/emulation) with the official npm `centrifuge` client under Node, against real hubs.

tests/js/node_emulation.mjs drives the SDK (its own getToken mints tokens, so refreshes are
real); Node 20's EventSource (undici's, behind --experimental-eventsource) carries SSE.
Drops go through a real TCP proxy that is cut (tests/netproxy.py). Bad input is sent with
httpx. Skipped without Node and tests/js/node_modules unless CI is set (then a failure).
"""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from cent import Client, PresenceRequest, PublishRequest

from conftest import API_KEY, CHAT_NAMESPACE, HMAC_SECRET, Hub, HubFactory, in_ci, token
from netproxy import NetProxy
from test_node_client import JS_DIR, Event, NodeClient, _require_node

pytestmark = pytest.mark.node

SCRIPT = JS_DIR / "node_emulation.mjs"
EMULATED = ["http_stream", "sse"]
REDIS_URL = "redis://127.0.0.1:6379/0"


class EmuClient(NodeClient):
    """One node_emulation.mjs process (NodeClient's event queue and waits)."""

    def __init__(self, node: str, base: str, transports: str, user: str, channel: str,
                 *extra: str) -> None:
        self.lib = transports
        self.user = user
        self.events: list[Event] = []
        self._queue: queue.Queue[Event | None] = queue.Queue()
        cmd = [node, "--experimental-eventsource", "--no-warnings", str(SCRIPT),
               "--base", base, "--transports", transports, "--secret", HMAC_SECRET,
               "--user", user, "--channel", channel, *extra]
        self.proc = subprocess.Popen(
            cmd, cwd=JS_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, bufsize=1,
        )
        self._stderr: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()


@pytest.fixture
def clients() -> Iterator[Callable[..., EmuClient]]:
    node = _require_node()
    started: list[EmuClient] = []

    def start(base: str, transports: str, user: str, channel: str, *extra: str) -> EmuClient:
        client = EmuClient(node, base, transports, user, channel, *extra)
        started.append(client)
        return client

    yield start
    for client in started:
        client.close()


@pytest.fixture
def cent(hub: Hub) -> Iterator[Client]:
    client = Client(f"{hub.url}/api", API_KEY)
    yield client
    client.close()


class ThreadProxy:
    """tests/netproxy.NetProxy on a loop of its own thread, for these synchronous tests."""

    def __init__(self, target_port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.proxy = self._run(NetProxy(target_port).start())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"

    def cut(self) -> None:
        self.loop.call_soon_threadsafe(self.proxy.cut)

    def restore(self) -> None:
        self.loop.call_soon_threadsafe(self.proxy.restore)

    def close(self) -> None:
        self._run(self.proxy.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def new_channel() -> str:
    return f"chat:emu-{uuid.uuid4().hex[:8]}"


def texts(client: NodeClient) -> list[Any]:
    return [e["data"].get("text") for e in client.publications() if isinstance(e["data"], dict)]


def publication(client: NodeClient, text: str, timeout: float = 10.0) -> Event:
    return client.wait_for(lambda e: e.get("event") == "publication"
                           and e.get("data") == {"text": text}, timeout, what=repr(text))


def metric(hub: Hub, name: str, **labels: str) -> float:
    body = httpx.get(f"{hub.url}/metrics", timeout=5).text
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                   if labels else "")
    for line in body.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


# -- the SDK over each emulated transport ---------------------------------------------------------


@pytest.mark.parametrize("transport", EMULATED)
def test_subscribe_presence_history_publish_unsubscribe(
        hub: Hub, clients: Callable[..., EmuClient], cent: Client, transport: str) -> None:
    channel = new_channel()
    for i in range(3):
        cent.publish(PublishRequest(channel=channel, data={"text": f"early{i}"}))
    alice = clients(hub.url, transport, "alice", channel)
    assert alice.wait_event("connected")["transport"] == transport
    subscribed = alice.wait_event("subscribed")
    assert subscribed["recoverable"] is True and subscribed["offset"] == 3
    bob = clients(hub.url, transport, "bob", channel)
    bob.wait_event("subscribed")
    alice.wait_for(lambda e: e.get("event") == "join" and e["info"]["user"] == "bob",
                   what="bob's join")

    alice.send(cmd="presence")
    presence = alice.wait_event("presence")
    assert sorted(i["user"] for i in presence["clients"].values()) == ["alice", "bob"]

    alice.send(cmd="history", limit=2, reverse=True)
    history = alice.wait_event("history")
    assert [p["data"]["text"] for p in history["publications"]] == ["early2", "early1"]
    assert history["offset"] == 3 and history["epoch"] == subscribed["epoch"]

    bob.send(cmd="publish", data={"text": "from bob"})
    bob.wait_event("published")
    got = publication(alice, "from bob")
    assert got["info"]["user"] == "bob" and got["offset"] == 4
    api = cent.publish(PublishRequest(channel=channel, data={"text": "from api"}))
    assert publication(bob, "from api")["offset"] == api.offset

    bob.send(cmd="unsubscribe")
    bob.wait_event("unsubscribed")
    alice.wait_for(lambda e: e.get("event") == "leave" and e["info"]["user"] == "bob",
                   what="bob's leave")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        users = [i.user for i in cent.presence(PresenceRequest(channel=channel)).presence.values()]
        if users == ["alice"]:
            break
        time.sleep(0.05)
    assert users == ["alice"]
    cent.publish(PublishRequest(channel=channel, data={"text": "after unsubscribe"}))
    publication(alice, "after unsubscribe")
    bob.drain(settle=0.3)
    assert "after unsubscribe" not in texts(bob)
    assert metric(hub, "clarion_emulation_commands_total", outcome="local") >= 6


@pytest.mark.parametrize("transport", EMULATED)
def test_recovers_what_was_published_during_a_drop(
        hub: Hub, clients: Callable[..., EmuClient], cent: Client, transport: str) -> None:
    proxy = ThreadProxy(hub.port)
    try:
        channel = new_channel()
        alice = clients(proxy.url, transport, "alice", channel)
        first = alice.wait_event("subscribed")
        cent.publish(PublishRequest(channel=channel, data={"text": "before"}))
        publication(alice, "before")

        proxy.cut()
        alice.wait_for(lambda e: e.get("event") in ("connecting", "subscribing"),
                       what="the drop noticed")
        missed = [f"missed{i}" for i in range(5)]
        for text in missed:
            cent.publish(PublishRequest(channel=channel, data={"text": text}))
        time.sleep(0.5)  # a few failed reconnect attempts
        proxy.restore()

        again = alice.wait_for(lambda e: e.get("event") == "subscribed" and e is not first,
                               timeout=15, what="resubscribed after the drop")
        assert again["wasRecovering"] is True and again["recovered"] is True, again
        for text in missed:
            publication(alice, text)
        cent.publish(PublishRequest(channel=channel, data={"text": "after"}))
        publication(alice, "after")
        alice.drain(settle=0.3)
        assert texts(alice) == ["before", *missed, "after"]  # each once, in order
        assert alice.wait_event("connected")["transport"] == transport
    finally:
        proxy.close()


@pytest.mark.parametrize("transport", EMULATED)
def test_token_refresh_keeps_the_connection(
        hub_factory: HubFactory, clients: Callable[..., EmuClient], transport: str) -> None:
    """A 3-second token: the SDK's getToken is called and its refresh goes by /emulation;
    without it the hub would disconnect the client (expired) a second after expiry."""
    hub = hub_factory('client_expired_close_delay = "1s"\n' + CHAT_NAMESPACE)
    channel = new_channel()
    alice = clients(hub.url, transport, "alice", channel, "--ttl", "3")
    alice.wait_event("subscribed")
    alice.wait_event("token", timeout=10)  # the refresh
    time.sleep(3.5)  # past the first token's expiry and the close delay
    alice.drain()
    trouble = [e for e in alice.events if e.get("event") in ("connecting", "disconnected")
               and e.get("reason") != "connect called"]
    assert not trouble, alice.describe()
    with Client(f"{hub.url}/api", API_KEY) as cent:
        cent.publish(PublishRequest(channel=channel, data={"text": "still here"}))
    publication(alice, "still here")


@pytest.mark.parametrize("transport", EMULATED)
def test_pongs_go_by_emulation(
        hub_factory: HubFactory, clients: Callable[..., EmuClient], transport: str) -> None:
    """Pings are `{}` lines/events on the stream and the SDK's pongs are posted; a client whose
    pongs did not arrive would be dropped (3012) within two seconds."""
    hub = hub_factory("ping_interval = 1\npong_timeout = 1\n" + CHAT_NAMESPACE)
    channel = new_channel()
    alice = clients(hub.url, transport, "alice", channel)
    alice.wait_event("subscribed")
    time.sleep(4.5)
    alice.drain()
    trouble = [e for e in alice.events
               if e.get("event") in ("connecting", "disconnected", "subscribing")
               and e.get("reason") not in ("connect called", "subscribe called")]
    assert not trouble, alice.describe()


@pytest.mark.parametrize("transport", EMULATED)
def test_server_side_subscriptions_and_the_server_api(
        hub: Hub, clients: Callable[..., EmuClient], cent: Client, transport: str) -> None:
    server_channel = new_channel()
    alice = clients(hub.url, transport, "alice", new_channel(), "--claims",
                    json.dumps({"channels": [server_channel]}))
    assert alice.wait_event("server_subscribed")["channel"] == server_channel
    cent.publish(PublishRequest(channel=server_channel, data={"text": "server side"}))
    got = alice.wait_event("server_publication")
    assert got["data"] == {"text": "server side"} and got["channel"] == server_channel
    # The server API's subscribe and disconnect reach an emulated session too.
    later = new_channel()
    assert hub.api("subscribe", {"user": "alice", "channel": later}).status_code == 200
    alice.wait_for(lambda e: e.get("event") == "server_subscribed" and e["channel"] == later,
                   what="the API's subscribe")
    r = hub.api("disconnect", {"user": "alice", "disconnect": {"code": 4501,
                                                               "reason": "go away"}})
    assert r.status_code == 200 and "error" not in r.json(), r.text
    gone = alice.wait_event("disconnected")
    assert (gone["code"], gone["reason"]) == (4501, "go away")


@pytest.mark.parametrize("transport", EMULATED)
def test_a_bad_token_ends_the_session_with_3500(
        hub: Hub, clients: Callable[..., EmuClient], transport: str) -> None:
    """As on a WebSocket: the stream opens, the connect fails, and the disconnect push tells
    the SDK not to reconnect."""
    alice = clients(hub.url, transport, "alice", new_channel(), "--secret", "not-the-secret")
    gone = alice.wait_event("disconnected")
    assert gone["code"] == 3500 and gone["reason"] == "invalid token"
    alice.drain(settle=0.5)
    assert not [e for e in alice.events if e.get("event") == "connected"]


def test_falls_back_to_http_stream_when_websocket_is_refused(
        hub: Hub, clients: Callable[..., EmuClient], cent: Client) -> None:
    channel = new_channel()
    # Port 9 on loopback: nothing listens, the WebSocket is refused at once.
    alice = clients(hub.url, "websocket,http_stream,sse", "alice", channel,
                    "--ws", "ws://127.0.0.1:9/connection/websocket")
    assert alice.wait_event("connected", timeout=15)["transport"] == "http_stream"
    alice.wait_event("subscribed")
    cent.publish(PublishRequest(channel=channel, data={"text": "fell back"}))
    publication(alice, "fell back")


def test_sse_fallback_when_http_stream_is_missing_too(
        hub: Hub, clients: Callable[..., EmuClient], cent: Client) -> None:
    """An SDK listing only sse after a refused WebSocket: the bidirectional SSE."""
    channel = new_channel()
    alice = clients(hub.url, "websocket,sse", "alice", channel,
                    "--ws", "ws://127.0.0.1:9/connection/websocket")
    assert alice.wait_event("connected", timeout=15)["transport"] == "sse"
    alice.wait_event("subscribed")
    alice.send(cmd="publish", data={"text": "over sse"})
    publication(alice, "over sse")


# -- two nodes on Redis ---------------------------------------------------------------------------


def _redis_available() -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", 6379)) == 0


@pytest.mark.parametrize("transport", EMULATED)
def test_commands_posted_to_another_node_reach_the_session(
        hub_factory: HubFactory, clients: Callable[..., EmuClient], transport: str) -> None:
    if not _redis_available():
        if in_ci():
            pytest.fail("no Redis at 127.0.0.1:6379")
        pytest.skip("no Redis at 127.0.0.1:6379")
    prefix = f"t{uuid.uuid4().hex[:12]}"
    config = f'broker = "{REDIS_URL}"\n[redis]\nprefix = "{prefix}"\n' + CHAT_NAMESPACE
    a, b = hub_factory(config), hub_factory(config)
    # Each node must know the other is alive (its announcements, every 3 s at most).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        nodes = httpx.post(f"{b.url}/api/info", json={}, headers={"X-API-Key": API_KEY},
                           timeout=5).json()["result"]["nodes"]
        if len(nodes) == 2:
            break
        time.sleep(0.2)
    channel = new_channel()
    alice = clients(a.url, transport, "alice", channel, "--emulation", f"{b.url}/emulation")
    alice.wait_event("subscribed")
    alice.send(cmd="presence")
    assert [i["user"] for i in alice.wait_event("presence")["clients"].values()] == ["alice"]
    alice.send(cmd="publish", data={"text": "via b"})
    alice.wait_event("published")
    publication(alice, "via b")
    assert metric(b, "clarion_emulation_commands_total", outcome="forwarded") >= 3
    assert metric(a, "clarion_emulation_commands_total", outcome="local") >= 3
    assert metric(b, "clarion_emulation_commands_total", outcome="local") == 0


@pytest.mark.parametrize("transport", EMULATED)
def test_a_lost_position_is_an_unsubscribe_2500_and_the_sdk_resubscribes(
        hub_factory: HubFactory, clients: Callable[..., EmuClient], transport: str) -> None:
    """The node cannot deliver every publication after the subscriber's position (here: the
    channel's stream in Redis is deleted, so the next publication opens a new epoch and the
    catch-up from history cannot cover the hole). A client-side subscription over emulation is
    told with Centrifugo's unsubscribe push 2500; the SDK resubscribes on its own, on the same
    connection, asking to recover, and is told what could not be recovered."""
    if not _redis_available():
        if in_ci():
            pytest.fail("no Redis at 127.0.0.1:6379")
        pytest.skip("no Redis at 127.0.0.1:6379")
    prefix = f"t{uuid.uuid4().hex[:12]}"
    hub = hub_factory(f'broker = "{REDIS_URL}"\n[redis]\nprefix = "{prefix}"\n'
                      + CHAT_NAMESPACE)
    channel = new_channel()
    alice = clients(hub.url, transport, "alice", channel)
    assert alice.wait_event("connected")["transport"] == transport
    first = alice.wait_event("subscribed")
    hub.api("publish", {"channel": channel, "data": {"text": "before"}})
    assert publication(alice, "before")["offset"] == 1

    store = redis.Redis.from_url(REDIS_URL)
    try:
        assert store.delete(f"{prefix}:stream:{{{channel}}}", f"{prefix}:meta:{{{channel}}}") == 2
    finally:
        store.close()
    hub.api("publish", {"channel": channel, "data": {"text": "in a new epoch"}})

    lost = alice.wait_for(lambda e: e.get("event") == "subscribing" and e.get("code") == 2500,
                          what="the 2500 unsubscribe push")
    assert lost["reason"] == "insufficient state"
    again = alice.wait_for(lambda e: e.get("event") == "subscribed" and e is not first,
                           what="the SDK's own resubscribe")
    assert again["wasRecovering"] is True and again["recovered"] is False, again
    assert again["epoch"] != first["epoch"] and again["offset"] == 1
    hub.api("publish", {"channel": channel, "data": {"text": "after"}})
    publication(alice, "after")
    alice.drain(settle=0.3)
    assert texts(alice) == ["before", "after"]
    # One connection throughout: only the subscription was told.
    assert [e["event"] for e in alice.events if e.get("event") in (
        "connected", "disconnected", "connecting")] == ["connecting", "connected"]
    assert metric(hub, "clarion_stream_positions_lost_total") >= 1


# -- the wire, and bad input ----------------------------------------------------------------------


def _connect_line(user: str = "eve", cmd_id: int = 1) -> str:
    return json.dumps({"id": cmd_id, "connect": {"token": token(user), "name": "raw"}})


def test_http_stream_wire_format_and_emulation_answers(hub: Hub) -> None:
    with httpx.Client(timeout=10) as http, http.stream(
            "POST", f"{hub.url}/connection/http_stream", content=_connect_line(),
            headers={"content-type": "application/json"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["cache-control"].startswith("private, no-cache")
        lines = resp.iter_lines()
        connect = json.loads(next(lines))
        assert connect["id"] == 1
        result = connect["connect"]
        session, node = result["session"], result["node"]
        assert session.startswith(result["client"] + ".") and node

        def post(data: str, sess: str = session, **kw: Any) -> httpx.Response:
            return http.post(f"{hub.url}/emulation",
                             json={"session": sess, "node": node, "data": data}, **kw)

        channel = new_channel()
        r = post(json.dumps({"id": 2, "subscribe": {"channel": channel}}))
        assert r.status_code == 204
        reply = json.loads(next(lines))
        assert reply["id"] == 2 and "subscribe" in reply
        assert hub.api("publish", {"channel": channel, "data": {"n": 1}}).status_code == 200
        push = json.loads(next(lines))
        assert push["push"]["channel"] == channel and push["push"]["pub"]["data"] == {"n": 1}
        # Two commands in one post, separated by a newline as the SDK's JSON codec writes.
        both = "\n".join(json.dumps({"id": i, "presence_stats": {"channel": channel}})
                         for i in (3, 4))
        assert post(both).status_code == 204
        assert [json.loads(next(lines))["id"] for _ in range(2)] == [3, 4]

        # The client id alone is not the session: it is public (presence shows it).
        assert post("{}", sess=result["client"]).status_code == 204
        assert post("{}", sess=result["client"] + ".wrong").status_code == 204
        assert metric(hub, "clarion_emulation_commands_total", outcome="gone") == 2

        # A malformed command ends the session, as on WebSocket (3501, bad request).
        assert post("{not json").status_code == 204
        bye = json.loads(next(lines))
        assert bye["push"]["disconnect"]["code"] == 3501
        assert next(lines, None) is None  # the stream ended


def test_sse_wire_format(hub: Hub) -> None:
    with httpx.Client(timeout=10) as http, http.stream(
            "GET", f"{hub.url}/connection/sse", params={"cf_connect": _connect_line()}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        chunks = resp.iter_raw()
        got = b""
        while b"\n\n" not in got:
            got += next(chunks)
        assert got.startswith(b"\r\ndata: {")
        connect = json.loads(got.split(b"data: ", 1)[1].split(b"\n\n", 1)[0])
        assert connect["id"] == 1 and connect["connect"]["session"]


def test_sse_without_cf_connect_is_still_clarions_own(hub: Hub) -> None:
    with httpx.Client(timeout=10) as http, http.stream(
            "GET", f"{hub.url}/connection/sse",
            params={"channel": new_channel(), "token": token("eve")}) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                body = json.loads(line[6:])
                assert "connect" in body and "id" not in body  # a push, not a reply
                assert body["connect"]["subs"]
                break


def test_bad_input(hub: Hub) -> None:
    url = hub.url
    emu = f"{url}/emulation"
    with httpx.Client(timeout=10) as http:
        # Wrong methods.
        r = http.get(emu)
        assert r.status_code == 405 and "POST" in r.headers["allow"]
        assert http.get(f"{url}/connection/http_stream").status_code == 405
        assert http.put(f"{url}/connection/sse", content=b"x").status_code == 405
        # Malformed bodies: a clear 400, counted as refused.
        for body in (b"", b"{", b"[]", b'{"session": 1, "data": "x"}',
                     b'{"session": "s", "data": {"id": 1}}', b'{"session": "", "data": "{}"}'):
            r = http.post(emu, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, (body, r.text)
            assert r.json()["error"]["message"]
        assert metric(hub, "clarion_emulation_commands_total", outcome="refused") == 6
        # Unknown session on this node: 204 (Centrifugo's answer; the SDK's stream has ended
        # anyway). Unknown node: 404, and the SDK reconnects.
        assert http.post(emu, json={"session": "nope.nope", "data": "{}"}).status_code == 204
        r = http.post(emu, json={"session": "nope.nope", "node": "elsewhere", "data": "{}"})
        assert r.status_code == 404
        # Oversize: client_max_message_size (64 KiB) of commands; the body may be up to twice
        # that plus 1 KiB (JSON escaping).
        limit = 65536
        big = "x" * (limit + 1)
        r = http.post(emu, json={"session": "s.s", "data": big})
        assert r.status_code == 413 and "client_max_message_size" in r.json()["error"]["message"]
        edge = http.post(emu, json={"session": "s.s", "data": "x" * limit})
        assert edge.status_code == 204  # at the limit: accepted (and the session is unknown)
        r = http.post(emu, content=b" " * (2 * limit + 2048),
                      headers={"content-type": "application/json"})
        assert r.status_code == 413
        r = http.post(f"{url}/connection/http_stream", content=b" " * (limit + 1))
        assert r.status_code == 413
        # Protobuf is not served.
        r = http.post(emu, content=b"\x0a\x01s",
                      headers={"content-type": "application/octet-stream"})
        assert r.status_code == 415
        # The stream's first command must be a connect with an id.
        for body in ("", "{not json", json.dumps({"id": 1, "subscribe": {"channel": "x"}}),
                     json.dumps({"connect": {"token": token("eve")}})):
            r = http.post(f"{url}/connection/http_stream", content=body)
            assert r.status_code == 400, (body, r.text)
        # cf_connect with a bare connect request (uni_sse's form) is refused with a reason.
        r = http.get(f"{url}/connection/sse",
                     params={"cf_connect": json.dumps({"token": token("eve")})})
        assert r.status_code == 400 and "connect command" in r.json()["error"]["message"]


def test_origin_check_and_cors(hub: Hub) -> None:
    url = hub.url
    evil = {"origin": "https://evil.example"}
    good_origin = "http://localhost:3000"
    with httpx.Client(timeout=10) as http:
        assert http.post(f"{url}/connection/http_stream", content=_connect_line(),
                         headers=evil).status_code == 403
        assert http.get(f"{url}/connection/sse", params={"cf_connect": _connect_line()},
                        headers=evil).status_code == 403
        assert http.post(f"{url}/emulation", json={"session": "a.b", "data": "{}"},
                         headers=evil).status_code == 403
        assert http.options(f"{url}/emulation", headers=evil).status_code == 403
        # A browser's preflight of the SDK's JSON post from an allowed origin.
        r = http.options(f"{url}/emulation", headers={
            "origin": good_origin, "access-control-request-method": "POST",
            "access-control-request-headers": "content-type"})
        assert r.status_code == 204
        assert r.headers["access-control-allow-origin"] == good_origin
        assert "POST" in r.headers["access-control-allow-methods"]
        assert r.headers["access-control-allow-headers"] == "content-type"
        r = http.options(f"{url}/connection/http_stream", headers={
            "origin": good_origin, "access-control-request-method": "POST"})
        assert r.status_code == 204
        r = http.post(f"{url}/emulation", json={"session": "a.b", "data": "{}"},
                      headers={"origin": good_origin})
        assert r.status_code == 204
        assert r.headers["access-control-allow-origin"] == good_origin
        assert r.headers["access-control-allow-credentials"] == "true"  # a listed origin


def test_any_origin_is_allowed_without_credentials(hub_factory: HubFactory) -> None:
    # allowed_origins ["*"]: any page may use the hub, but its browser never sends the user's
    # cookies to it; a listed pattern next to "*" still gets them.
    hub = hub_factory(env={"CLARION_ALLOWED_ORIGINS": "*,https://app.example"})
    with httpx.Client(timeout=10) as http:
        for origin, credentials in [("https://evil.example", False),
                                    ("https://app.example", True)]:
            r = http.options(f"{hub.url}/emulation", headers={
                "origin": origin, "access-control-request-method": "POST"})
            assert r.status_code == 204
            assert r.headers["access-control-allow-origin"] == origin
            assert ("access-control-allow-credentials" in r.headers) is credentials
            r = http.post(f"{hub.url}/emulation", json={"session": "a.b", "data": "{}"},
                          headers={"origin": origin})
            assert r.status_code == 204
            assert r.headers.get("access-control-allow-credentials") == (
                "true" if credentials else None)


def test_a_stream_reader_that_stops_reading_is_dropped_slow(hub_factory: HubFactory) -> None:
    """The slow-consumer rule of every held connection: an HTTP stream whose client reads
    nothing while ~10 KB publications flow is closed (3008) once its backlog passes
    client_queue_max_size, and the hub goes on serving."""
    hub = hub_factory("client_queue_max_size = 65536\n" + CHAT_NAMESPACE)
    channels = [new_channel() for _ in range(20)]  # server-side, from the token
    connect = json.dumps({"id": 1, "connect": {"token": token("slowpoke", channels=channels)}})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", hub.port))
    try:
        sock.sendall(f"POST /connection/http_stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(connect)}\r\n"
                     f"\r\n{connect}".encode())
        sock.settimeout(10)
        head = b""
        while b'"connect"' not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 200")
        # From here on the client reads nothing.
        payload = "x" * 10_000
        with httpx.Client(timeout=10) as http:
            for i in range(60):  # x 20 channels x 10 KB = 12 MB
                r = http.post(f"{hub.url}/api/broadcast",
                              json={"channels": channels, "data": {"i": i, "p": payload}},
                              headers={"X-API-Key": API_KEY})
                assert r.status_code == 200, r.text
                if metric(hub, "clarion_disconnects_total", code="3008") >= 1:
                    break
        assert metric(hub, "clarion_disconnects_total", code="3008") >= 1
    finally:
        sock.close()
    assert httpx.get(f"{hub.url}/health", timeout=5).json()["status"] == "ok"


def test_a_session_flooded_with_posts_is_told_3013(hub_factory: HubFactory) -> None:
    """Posted batches wait in the session's inbox; past 64 waiting, the post is answered 429
    and the session ends with 3013 (as a WebSocket client would stop being read), so a client
    cannot pile commands up in the hub's memory."""
    hub = hub_factory("client_command_rate_limit = 0\n" + CHAT_NAMESPACE)
    channel = new_channel()
    for i in range(100):
        hub.api("publish", {"channel": channel, "data": {"i": i}})
    # Each batch reads the whole history 50 times: slow enough that batches wait.
    batch = "\n".join(json.dumps({"id": 10 + i, "history": {"channel": channel, "limit": -1}})
                      for i in range(50))

    async def run() -> tuple[list[int], Any]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(
                max_connections=300)) as http, http.stream(
                "POST", f"{hub.url}/connection/http_stream", content=_connect_line()) as resp:
            lines = resp.aiter_lines()
            connect = json.loads(await anext(lines))["connect"]

            async def read_to_end() -> Any:
                last = None
                async for line in lines:
                    last = json.loads(line)
                return last

            reader = asyncio.create_task(read_to_end())
            posts = [http.post(f"{hub.url}/emulation", json={
                "session": connect["session"], "node": connect["node"], "data": batch})
                for _ in range(200)]
            statuses = [r.status_code for r in await asyncio.gather(*posts)]
            return statuses, await asyncio.wait_for(reader, 30)

    statuses, last = asyncio.run(run())
    assert 429 in statuses and set(statuses) <= {204, 429}, statuses
    assert last == {"push": {"disconnect": {"code": 3013, "reason": "too many requests"}}}
    assert metric(hub, "clarion_emulation_commands_total", outcome="refused") >= 1
    assert httpx.get(f"{hub.url}/health", timeout=5).json()["status"] == "ok"


async def test_a_cancelled_command_loop_answers_the_frames_it_leaves() -> None:
    # A unit test of the loop alone (cancelling it in a running hub is the hub's shutdown):
    # frames still queued when it is cancelled must not leave their /emulation requests
    # waiting until the socket goes.
    import types

    from clarion.hub.commands import CommandConnection

    started = asyncio.Event()

    async def command(cmd: object) -> None:
        started.set()
        await asyncio.Event().wait()  # a command that never ends

    tasks: list[asyncio.Task[None]] = []
    conn = CommandConnection.__new__(CommandConnection)
    conn.hub = types.SimpleNamespace(  # type: ignore[assignment]
        spawn=lambda coro: tasks.append(asyncio.ensure_future(coro)),
        metrics=types.SimpleNamespace(messages_in=0))
    conn.out = types.SimpleNamespace(closing=False)  # type: ignore[assignment]
    conn.session = types.SimpleNamespace(command=command, post_reply=False)  # type: ignore[assignment]
    conn._start_inbox()
    loop = asyncio.get_running_loop()
    dones = [loop.create_future() for _ in range(3)]
    for i, done in enumerate(dones):
        conn.feed(b'{"id": %d, "ping": {}}' % (i + 1), done)
    await asyncio.wait_for(started.wait(), 10)
    tasks[0].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert all(done.done() for done in dones)
    assert conn.pending == 0
