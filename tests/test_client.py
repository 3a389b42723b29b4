"""clarion.client against a real hub on a real socket: every server API method through both
clients, the typed results, and the errors (wrong key, 422 with fields, API error codes, a hub
that is down, a hub that never answers, 503 with Retry-After); plus the pure parts (argument
checks, Retry-After parsing, the URL) as unit tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from tests.conftest import API_KEY, CHAT_NAMESPACE, Hub, HubFactory, free_port, token
from tests.test_api import read_messages as frames
from tests.test_api import read_reply as reply
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from clarion import client as client_module
from clarion.client import (
    AsyncClient,
    Client,
    ClientInfo,
    Command,
    EventResult,
    HistoryResult,
    HubError,
    HubReplyError,
    HubUnavailable,
    NodeInfo,
    PresenceStats,
    Publication,
    PublishResult,
    StreamPosition,
    Ticket,
    commands,
)
from clarion.client._edge import api_base, retry_after


def chat() -> str:
    return f"chat:{uuid.uuid4().hex[:12]}"


# -- a real WebSocket client, to see what the calls did --------------------------------------


def push(ws: ClientConnection, kind: str) -> dict[str, Any]:
    for msg in frames(ws):
        if kind in msg.get("push", {}):
            return msg["push"]  # type: ignore[no-any-return]
    raise AssertionError("unreachable")


@contextmanager
def connected(hub: Hub, user: str, credential: str | None = None,
              channel: str | None = None) -> Iterator[tuple[ClientConnection, str]]:
    """A WebSocket connection as ``user`` (subscribed to ``channel``); yields it and its
    client id."""
    with connect(hub.ws_url, proxy=None, open_timeout=5, close_timeout=1) as ws:
        ws.send(json.dumps({"id": 1, "connect": {"token": credential or token(user)}}))
        answer = reply(ws, 1)
        assert "connect" in answer, answer
        if channel is not None:
            ws.send(json.dumps({"id": 2, "subscribe": {"channel": channel}}))
            assert "subscribe" in reply(ws, 2)
        yield ws, answer["connect"]["client"]


# -- every method, synchronously ---------------------------------------------------------------


def test_publish_history_and_history_remove(hub: Hub) -> None:
    channel = chat()
    with Client(hub.url, api_key=API_KEY) as api, connected(hub, "bob", channel=channel) as (ws,
                                                                                          _):
        first = api.publish(channel, {"text": "hi"}, tags={"kind": "greeting"})
        assert isinstance(first, PublishResult) and first.offset == 1 and first.epoch
        pub = push(ws, "pub")["pub"]
        assert pub["data"] == {"text": "hi"} and pub["tags"] == {"kind": "greeting"}
        # Not kept in history: no position to answer with.
        assert api.publish(channel, [2], skip_history=True) == PublishResult()

        page = api.history(channel)
        assert isinstance(page, HistoryResult)
        assert page.publications == [Publication(data={"text": "hi"}, offset=1,
                                                 tags={"kind": "greeting"})]
        assert (page.offset, page.epoch) == (1, first.epoch)
        third = api.publish(channel, "three")
        assert api.history(channel, limit=0).publications == []
        newest = api.history(channel, limit=1, reverse=True).publications
        assert [p.data for p in newest] == ["three"]
        after = api.history(channel, since=StreamPosition(offset=1, epoch=first.epoch))
        assert [p.offset for p in after.publications] == [third.offset]

        # A position from another epoch cannot be recovered: 112, raised.
        with pytest.raises(HubReplyError) as lost:
            api.history(channel, since=StreamPosition(offset=1, epoch="elsewhere"))
        assert lost.value.code == 112 and lost.value.status == 200

        assert api.history_remove(channel) is None
        assert api.history(channel).publications == []
    # Without history the answer carries no position.
    assert api_publish_plain(hub) == PublishResult(offset=0, epoch="")


def api_publish_plain(hub: Hub) -> PublishResult:
    with Client(hub.url + "/api/", api_key=API_KEY) as api:  # cent's style of URL works too
        return api.publish("plainchannel", 1)


def test_idempotency_key_publishes_once(hub: Hub) -> None:
    channel = chat()
    with Client(hub.url, api_key=API_KEY) as api:
        first = api.publish(channel, {"n": 1}, idempotency_key="order-7")
        again = api.publish(channel, {"n": 1}, idempotency_key="order-7")
        assert again == first
        assert len(api.history(channel).publications) == 1
        twice = api.broadcast([channel, chat()], "b", idempotency_key="b-1")
        assert api.broadcast([channel, chat()], "b", idempotency_key="b-1")[0] == twice[0]
        assert len(api.history(channel).publications) == 2


def test_broadcast_results_and_a_failing_channel(hub: Hub) -> None:
    a, b = chat(), chat()
    with Client(hub.url, api_key=API_KEY) as api:
        results = api.broadcast([a, b], {"n": 1})
        assert [r.offset for r in results] == [1, 1]
        with pytest.raises(HubReplyError, match="'nowhere:x'") as failed:
            api.broadcast([a, "nowhere:x", b], {"n": 2})
        assert failed.value.code == 102  # unknown namespace
        # The other channels were still published, as the message says.
        assert api.history(b).offset == 2


def test_presence_subscribe_unsubscribe_refresh_disconnect(hub: Hub) -> None:
    channel, invited = chat(), chat()
    with Client(hub.url, api_key=API_KEY) as api, \
            connected(hub, "ann", channel=channel) as (ws, client_id):
        members = api.presence(channel)
        assert list(members) == [client_id]
        assert members[client_id] == ClientInfo(client=client_id, user="ann")
        assert api.presence_stats(channel) == PresenceStats(num_clients=1, num_users=1)
        assert api.channels() == {channel: 1}
        assert api.channels("chat:nomatch*") == {}

        api.subscribe("ann", invited, data={"why": "invited"}, info={"role": "guest"})
        pushed = push(ws, "subscribe")
        assert pushed["channel"] == invited and pushed["subscribe"]["data"] == {"why": "invited"}
        assert api.presence(invited)[client_id].chan_info == {"role": "guest"}
        api.unsubscribe("ann", invited)
        assert push(ws, "unsubscribe")["channel"] == invited
        assert api.presence_stats(invited) == PresenceStats(num_clients=0, num_users=0)

        api.refresh("ann", expire_at=int(time.time()) + 3600)  # extends: nothing to see
        api.disconnect("ann", code=4501, reason="banned")
        with pytest.raises(ConnectionClosed) as closed:
            for _ in frames(ws):
                pass
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4501, "banned")


def test_info_and_batch(hub: Hub) -> None:
    channel = chat()
    with Client(hub.url, api_key=API_KEY) as api:
        (node,) = api.info()
        assert isinstance(node, NodeInfo) and node.uid and node.version and node.uptime >= 0
        published, stats, refused, bad, stream = api.batch([
            commands.publish(channel, 1),
            commands.presence_stats(channel),
            commands.presence("plainchannel"),  # no presence there: 108, in its place
            commands.broadcast([channel, "nowhere:x"], 2),
            commands.history(channel, limit=0),
        ])
        assert published == PublishResult(offset=1, epoch=stream.epoch)
        assert stats == PresenceStats()
        assert isinstance(refused, HubReplyError) and refused.code == 108
        assert isinstance(bad, HubReplyError) and bad.code == 102
        assert stream.offset == 2  # the broadcast's other channel went through
        with pytest.raises(ValueError, match="must not be empty"):
            api.batch([])
        with pytest.raises(TypeError, match=r"clarion\.client\.commands"):
            api.batch([{"publish": {}}])  # type: ignore[list-item]


def test_ticket_connects_once_as_its_user(hub: Hub) -> None:
    channel = chat()
    with Client(hub.url, api_key=API_KEY) as api:
        issued = api.ticket("42", info={"name": "Ada"}, channels=[channel], ttl=30)
        assert isinstance(issued, Ticket) and issued.ticket.startswith("tkt_")
        assert issued.expires_in == 30
        with connected(hub, "ignored", credential=issued.ticket) as (_, client_id):
            assert api.presence(channel)[client_id] == ClientInfo(
                client=client_id, user="42", conn_info={"name": "Ada"})
        # Used once: the second connect is refused.
        with connect(hub.ws_url, proxy=None, open_timeout=5) as ws:
            ws.send(json.dumps({"id": 1, "connect": {"token": issued.ticket}}))
            with contextlib.suppress(ConnectionClosed):
                assert "connect" not in reply(ws, 1)
        with pytest.raises(HubReplyError) as too_long:
            api.ticket("42", ttl=301)
        assert too_long.value.code == 107 and "ttl" in too_long.value.message


def test_event_needs_the_webhook_store(hub: Hub) -> None:
    with Client(hub.url, api_key=API_KEY) as api, pytest.raises(HubReplyError) as refused:
        api.event("order.paid", {"total": 1})
    assert refused.value.code == 108 and "--webhooks-db" in refused.value.message


def test_event_to_listeners_and_a_channel(hub_factory: HubFactory, tmp_path: Path) -> None:
    hub = hub_factory(CHAT_NAMESPACE, "--webhooks-db", str(tmp_path / "hooks.sqlite3"),
                      "--webhook-types", "order.paid")
    channel = chat()
    with Client(hub.url, api_key=API_KEY) as api:
        sent = api.event("order.paid", {"total": 150}, channel=channel,
                         idempotency_key="order-5-paid")
        assert isinstance(sent, EventResult) and sent.id.startswith("msg_")
        assert sent.deliveries == 0  # no listener subscribed to order.paid
        assert sent.publication is not None and sent.publication.offset == 1
        assert api.event("order.paid", {"total": 150}, channel=channel,
                         idempotency_key="order-5-paid") == sent  # the same event
        (pub,) = api.history(channel).publications
        assert pub.data["type"] == "order.paid" and pub.data["data"] == {"total": 150}
        alone = api.event("order.paid", {"total": 1})
        assert alone.publication is None and alone.id != sent.id
        with pytest.raises(HubReplyError, match="unknown event type") as unknown:
            api.event("order.unknown", {})
        assert unknown.value.code == 107


async def test_async_event(hub_factory: HubFactory, tmp_path: Path) -> None:
    hub = hub_factory("", "--webhooks-db", str(tmp_path / "hooks.sqlite3"),
                      "--webhook-types", "order.paid")
    async with AsyncClient(hub.url, api_key=API_KEY) as api:
        sent = await api.event("order.paid", {"total": 2})
        assert sent.id.startswith("msg_") and sent.publication is None


def test_one_client_shared_between_threads(hub: Hub) -> None:
    channel = chat()
    with Client(hub.url, api_key=API_KEY) as api, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: api.publish(channel, n), range(40)))
    assert sorted(r.offset for r in results) == list(range(1, 41))


# -- AsyncClient: the same methods, awaited -------------------------------------------------------


async def test_async_client_every_method(hub: Hub) -> None:
    channel = chat()
    async with AsyncClient(hub.url, api_key=API_KEY) as api:
        first = await api.publish(channel, {"n": 1}, idempotency_key="k")
        assert first == await api.publish(channel, {"n": 1}, idempotency_key="k")
        assert [r.offset for r in await api.broadcast([channel], 2)] == [2]
        page = await api.history(channel, limit=5)
        assert [p.data for p in page.publications] == [{"n": 1}, 2]
        await api.history_remove(channel)
        assert await api.presence(channel) == {}
        assert await api.presence_stats(channel) == PresenceStats()
        assert await api.channels() == {}
        assert len(await api.info()) == 1
        # No connection of these users: accepted, nothing happens.
        await api.subscribe("nobody", channel)
        await api.unsubscribe("nobody", channel)
        await api.refresh("nobody", expired=True)
        await api.disconnect("nobody")
        ticket = await api.ticket("7")
        assert ticket.expires_in == 10 and ticket.ticket.startswith("tkt_")
        # Many calls at once share the pool.
        results = await asyncio.gather(*(api.publish(channel, i) for i in range(20)))
        assert sorted(r.offset for r in results) == list(range(3, 23))
        replies = await api.batch([commands.publish(channel, "x"), commands.info()])
        assert replies[0].offset == 23 and isinstance(replies[1][0], NodeInfo)
        with pytest.raises(HubReplyError) as wrong:
            await api.presence("plainchannel")
        assert wrong.value.code == 108


# -- errors ---------------------------------------------------------------------------------------


def test_wrong_or_missing_api_key_is_401(hub: Hub) -> None:
    for key in ("nope", None):
        with Client(hub.url, api_key=key) as api, pytest.raises(HubReplyError) as refused:
            api.publish("plainchannel", 1)
        assert (refused.value.status, refused.value.code) == (401, 401)
        assert "API key" in refused.value.message


def test_invalid_request_is_422_with_fields(hub: Hub) -> None:
    with Client(hub.url, api_key=API_KEY) as api:
        for body, field in ((b'{"channel": "a", "data": 1, "colour": "red"}', "colour"),
                            (b'{"channel": 5, "data": 1}', "channel")):
            with pytest.raises(HubReplyError) as invalid:
                api.run(Command("publish", body, commands.publish("x", 1).parse))
            assert (invalid.value.status, invalid.value.code) == (422, 422)
            assert invalid.value.fields[0]["field"] == field
        with pytest.raises(HubReplyError) as missing:
            api.run(Command("no_such_method", b"{}", lambda raw: raw))
        assert (missing.value.status, missing.value.code) == (404, 104)


def test_unknown_namespace_is_102(hub: Hub) -> None:
    with Client(hub.url, api_key=API_KEY) as api, pytest.raises(HubReplyError) as unknown:
        api.publish("nowhere:x", 1)
    assert unknown.value.code == 102 and unknown.value.status == 200
    assert isinstance(unknown.value, HubError)


def test_hub_down_is_hub_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, api_key=API_KEY) as api, pytest.raises(HubUnavailable) as down:
        api.publish("a", 1)
    assert "ConnectError" in str(down.value) and down.value.retry_after is None
    assert isinstance(down.value.__cause__, httpx.ConnectError)


async def test_hub_down_is_hub_unavailable_async() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with AsyncClient(url, api_key=API_KEY) as api:
        with pytest.raises(HubUnavailable):
            await api.info()


@contextmanager
def silent_server() -> Iterator[str]:
    """A socket that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_timeout_bounds_a_call() -> None:
    with silent_server() as url, Client(url, timeout=0.3) as api, \
            pytest.raises(HubUnavailable, match=r"no answer within 0\.3s \(ReadTimeout\)"):
        api.publish("a", 1)


async def test_timeout_bounds_an_async_call() -> None:
    with silent_server() as url:
        async with AsyncClient(url, timeout=0.3) as api:
            with pytest.raises(HubUnavailable, match=r"no answer within 0\.3s"):
                await api.history("a")


@contextmanager
def answering(status: int, body: bytes, headers: dict[str, str]) -> Iterator[str]:
    """A real HTTP server that answers every POST with ``status`` (a proxy or a hub whose
    broker is away)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_503_with_retry_after_is_hub_unavailable() -> None:
    body = b'{"error":{"code":100,"message":"internal server error: broker unavailable"}}'
    with answering(503, body, {"retry-after": "1", "content-type": "application/json"}) as url, \
            Client(url) as api, pytest.raises(HubUnavailable) as busy:
        api.publish("a", 1, idempotency_key="x")
    assert busy.value.retry_after == 1.0 and "broker unavailable" in str(busy.value)
    page = b"<html>Bad gateway</html>"
    with answering(502, page, {}) as url, Client(url) as api, \
            pytest.raises(HubUnavailable, match="502") as proxy:
        api.info()
    assert proxy.value.retry_after is None


def test_an_answer_that_is_not_the_hubs_is_hub_error() -> None:
    with answering(200, b"<html>hello</html>", {}) as url, Client(url) as api, \
            pytest.raises(HubError, match="not the hub's JSON") as odd:
        api.info()
    assert type(odd.value) is HubError
    with answering(200, b'{"result": {"offset": "one"}}', {}) as url, Client(url) as api, \
            pytest.raises(HubError, match="expected shape"):
        api.publish("a", 1)


# -- `clarion publish`, on clarion.client --------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clarion", "publish", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_cli_publish_with_idempotency_key(hub: Hub) -> None:
    channel = chat()
    args = (channel, '{"n": 1}', "--url", hub.url, "--api-key", API_KEY,
            "--idempotency-key", "cli-1")
    first, again = cli(*args), cli(*args)
    assert first.returncode == 0 and again.returncode == 0, first.stderr
    assert json.loads(first.stdout) == json.loads(again.stdout)
    assert json.loads(first.stdout)["offset"] == 1
    assert json.loads(cli("plainchannel", "1", "--url", hub.url, "--api-key",
                          API_KEY).stdout) == {}
    unknown = cli("nowhere:x", "1", "--url", hub.url, "--api-key", API_KEY)
    assert unknown.returncode == 1 and "error 102: unknown channel" in unknown.stderr


def test_cli_publish_hub_down_and_bad_url() -> None:
    down = cli("a", "1", "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "2")
    assert down.returncode == 1
    assert down.stderr.startswith("clarion publish: the hub at http://127.0.0.1:")
    assert "unavailable" in down.stderr and "Traceback" not in down.stderr
    bad = cli("a", "1", "--url", "127.0.0.1:8000")
    assert bad.returncode == 2 and "http:// or https://" in bad.stderr


@contextmanager
def trickling_server(seconds: float) -> Iterator[tuple[str, threading.Event]]:
    """Answers one request with a header trickling in a byte every 0.1 s, for ``seconds``,
    then closes: a call that keeps its connection busy without timing out. The event is set
    once the request has arrived."""
    arrived = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                arrived.set()
                conn.sendall(b"HTTP/1.1 200 OK\r\nx-slow: ")
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    conn.sendall(b"a")
                    time.sleep(0.1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", arrived
    finally:
        listener.close()
        thread.join(10)


def test_a_full_pool_is_hub_unavailable_and_says_why() -> None:
    # One connection, kept busy by the first call: the second waits for the pool and gives
    # up after the timeout, never sent.
    transport = httpx.HTTPTransport(limits=httpx.Limits(max_connections=1))
    with trickling_server(3.0) as (url, arrived), ThreadPoolExecutor(1) as pool, \
            Client(url, timeout=0.5, transport=transport) as api:
        busy = pool.submit(api.publish, "a", 1)
        assert arrived.wait(30)
        with pytest.raises(HubUnavailable, match="too many calls in flight"):
            api.publish("a", 2)
        assert isinstance(busy.exception(timeout=30), HubUnavailable)


# -- the pure parts ---------------------------------------------------------------------------


def test_arguments_are_checked_before_sending() -> None:
    with pytest.raises(TypeError, match="channels must be a list of str, not a single str"):
        commands.broadcast("abc", 1)
    with pytest.raises(ValueError, match="broadcast: channels must not be empty"):
        commands.broadcast([], 1)
    with pytest.raises(ValueError, match="publish: channel must not be empty"):
        commands.publish("", 1)
    with pytest.raises(TypeError, match="publish: channel must be a str, not int"):
        commands.publish(5, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="publish: the arguments cannot be sent as JSON"):
        commands.publish("a", object())
    with pytest.raises(ValueError, match="within 3000-4999, not 1000"):
        commands.disconnect("u", code=1000)
    for ttl in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="ttl must be a number of seconds > 0"):
            commands.ticket("u", ttl=ttl)
    with pytest.raises(ValueError, match="history: limit must be >= 0"):
        commands.history("a", limit=-1)
    with pytest.raises(TypeError, match="tags must map str to str"):
        commands.publish("a", 1, tags={"n": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
        Client("http://127.0.0.1:1", timeout=0)
    with pytest.raises(ValueError, match="http:// or https://"):
        Client("127.0.0.1:8000")


def test_command_bodies() -> None:
    assert msgspec.json.decode(commands.history("a").body) == {"channel": "a", "limit": -1}
    assert msgspec.json.decode(commands.disconnect("u", reason="bye").body) == {
        "user": "u", "disconnect": {"code": 3503, "reason": "bye"}}
    raw = commands.publish("a", msgspec.Raw(b'{"pre":"encoded"}')).body
    assert msgspec.json.decode(raw) == {"channel": "a", "data": {"pre": "encoded"}}


def test_retry_after_forms() -> None:
    assert retry_after("2") == 2.0 and retry_after(" 0.5 ") == 0.5
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert retry_after(None) is None and retry_after("soon") is None
    assert retry_after("nan") is None


def test_api_base() -> None:
    assert api_base("http://hub:8000") == "http://hub:8000/api"
    assert api_base("http://hub:8000/api/") == "http://hub:8000/api"
    assert api_base("https://example.com/realtime") == "https://example.com/realtime/api"


def test_exports_are_curated() -> None:
    public = sorted(name for name in vars(client_module) if not name.startswith("_"))
    assert client_module.__all__ == sorted(client_module.__all__)
    assert set(client_module.__all__) == set(public) - {"annotations"}
    functions = {name for name, value in vars(commands).items()
                 if callable(value) and getattr(value, "__module__", "") == commands.__name__
                 and not name.startswith("_")}
    assert set(commands.__all__) == functions
    # One command per method of the clients (run and batch send them).
    methods = {name for name in vars(Client) if not name.startswith("_")}
    assert methods - {"close", "run", "batch"} == set(commands.__all__) - {"Command"}
    assert methods - {"close"} == {name for name in vars(AsyncClient)
                                   if not name.startswith("_")} - {"aclose"}


def test_transport_is_injectable() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"result": {"offset": 3, "epoch": "e"}})

    with Client("http://hub", api_key="k", transport=httpx.MockTransport(handler),
                headers={"X-Trace": "t1"}) as api:
        assert api.publish("a", 1) == PublishResult(offset=3, epoch="e")
    (request,) = seen
    assert str(request.url) == "http://hub/api/publish"
    assert request.headers["x-api-key"] == "k" and request.headers["x-trace"] == "t1"
    assert json.loads(request.content) == {"channel": "a", "data": 1}


def test_a_private_ca_is_named_by_its_file(tmp_path: Path) -> None:
    from clarion.client._client import tls_verification
    from clarion.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot read the CA bundle"):
        Client("https://hub.example", verify=str(tmp_path / "missing.pem"))
    assert tls_verification(True) is True and tls_verification(False) is False
