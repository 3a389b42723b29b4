"""Centrifugo's unidirectional endpoints (/connection/uni_websocket, uni_sse, uni_http_stream)
against a real hub, read by clients written by others: ``websockets``, httpx streaming, and
Chromium's own EventSource (the ``browser`` fixture of test_browser: skipped without Chromium
unless CI is set). The wire format is Centrifugo's (docs: transports/
uni_client_protocol.md; centrifugo internal/uni*/handler.go)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from tests.conftest import API_KEY, Hub, HubFactory, in_ci, redis_up, token
from tests.proxy_backend import ProxyBackend
from tests.sse_reader import LineReader, SSEReader
from tests.test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    _unavailable,
    events_of,
    open_hub_page,
    wait_events,
)
from websockets.exceptions import ConnectionClosed

T = 10.0

# A namespace where a uni client sees what Centrifugo's server-side subscriptions give it:
# recovery forced, join/leave pushed, history for recovery.
ROOM = """
[namespaces.room]
history_size = 100
history_ttl = 300
presence = true
join_leave = true
force_push_join_leave = true
force_recovery = true
allow_subscribe_for_client = true

[namespaces.small]
history_size = 2
history_ttl = 300
force_recovery = true
allow_subscribe_for_client = true

[namespaces.private]
history_size = 10
history_ttl = 300
"""


def room() -> str:
    return f"room:{uuid.uuid4().hex[:10]}"


def publish(hub: Hub, channel: str, data: Any) -> dict[str, Any]:
    answer = hub.api("publish", {"channel": channel, "data": data}).json()
    assert "result" in answer, answer
    return answer["result"]  # type: ignore[no-any-return]


@pytest.fixture
def uni_hub(hub_factory: HubFactory) -> Hub:
    return hub_factory("ping_interval = 1\n" + ROOM)


@contextlib.asynccontextmanager
async def http_stream(hub: Hub, connect: Any, *,
                      client: httpx.AsyncClient | None = None) -> AsyncIterator[LineReader]:
    """A uni_http_stream connection: POST the connect request, read JSON lines."""
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(httpx.AsyncClient(timeout=T))
        body = connect if isinstance(connect, bytes) else json.dumps(connect).encode()
        resp = await stack.enter_async_context(client.stream(
            "POST", f"{hub.url}/connection/uni_http_stream", content=body))
        assert resp.status_code == 200, await resp.aread()
        yield LineReader(resp)


async def next_push(reader: LineReader, *, skip_pings: bool = True) -> dict[str, Any]:
    while True:
        push = await reader.next(T)
        if push or not skip_pings:
            return push  # type: ignore[no-any-return]


async def next_event(reader: LineReader) -> dict[str, Any]:
    """The next push that is neither a ping nor a join/leave."""
    while True:
        push = await next_push(reader)
        if not ({"join", "leave"} & set(push)):
            return push


async def next_pub(reader: LineReader) -> dict[str, Any]:
    while True:
        push = await next_push(reader)
        if "pub" in push:
            return push


# -- uni_http_stream ----------------------------------------------------------------------------


async def test_http_stream_token_channels_publications_in_order(uni_hub: Hub) -> None:
    channel = room()
    async with http_stream(uni_hub, {"token": token("ann", channels=[channel]),
                                     "name": "curl", "version": "1"}) as reader:
        connect = (await next_push(reader))["connect"]
        assert connect["client"]
        assert connect["version"]
        assert connect["ping"] == 1
        assert "pong" not in connect  # a unidirectional client answers nothing
        sub = connect["subs"][channel]
        assert sub["recoverable"] is True and sub["epoch"] and sub["offset"] == 0
        offsets = [publish(uni_hub, channel, {"n": i})["offset"] for i in range(5)]
        pubs = [await next_pub(reader) for _ in range(5)]
        assert [p["pub"]["data"] for p in pubs] == [{"n": i} for i in range(5)]
        assert [p["pub"]["offset"] for p in pubs] == offsets
        assert {p["channel"] for p in pubs} == {channel}
        assert set(pubs[0]) == {"channel", "pub"}  # Centrifugo's push, no Clarion cursor


async def test_http_stream_ping_is_an_empty_push(uni_hub: Hub) -> None:
    async with http_stream(uni_hub, {"token": token("ann", channels=[room()])}) as reader:
        assert "connect" in await next_push(reader)
        deadline = time.monotonic() + T
        while time.monotonic() < deadline:
            push = await next_push(reader, skip_pings=False)
            if push == {}:
                break
        else:
            raise AssertionError("no {} ping within 10 s (ping_interval = 1)")


async def test_http_stream_subs_in_request_and_join_leave(uni_hub: Hub) -> None:
    channel = room()
    async with httpx.AsyncClient(timeout=T) as client:
        # The channel is asked for in subs (allowed client-side: allow_subscribe_for_client);
        # a private namespace one is ignored, as Centrifugo ignores it.
        request = {"token": token("ann"), "subs": {channel: {}, "private:x": {}}}
        async with http_stream(uni_hub, request, client=client) as ann:
            connect = (await next_push(ann))["connect"]
            assert set(connect["subs"]) == {channel}
            assert (await next_push(ann)) == {
                "channel": channel, "join": {"info": {"client": connect["client"],
                                                      "user": "ann"}}}
            async with http_stream(uni_hub, {"token": token("bob"), "subs": {channel: {}}},
                                   client=client) as bob:
                bob_id = (await next_push(bob))["connect"]["client"]
                join = await next_push(ann)
                assert join["join"]["info"] == {"client": bob_id, "user": "bob"}
            leave = await next_push(ann)
            assert leave == {"channel": channel,
                             "leave": {"info": {"client": bob_id, "user": "bob"}}}


async def test_http_stream_recovers_from_position_in_connect_request(uni_hub: Hub) -> None:
    channel = room()
    tok = token("cy", channels=[channel])
    async with http_stream(uni_hub, {"token": tok}) as reader:
        epoch = (await next_push(reader))["connect"]["subs"][channel]["epoch"]
        publish(uni_hub, channel, {"n": 0})
        last = (await next_pub(reader))["pub"]["offset"]
    missed = [publish(uni_hub, channel, {"n": i})["offset"] for i in (1, 2, 3)]
    again = {"token": tok, "subs": {channel: {"recover": True, "offset": last, "epoch": epoch}}}
    async with http_stream(uni_hub, again) as reader:
        sub = (await next_push(reader))["connect"]["subs"][channel]
        assert sub["recovered"] is True
        assert [p["data"] for p in sub["publications"]] == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert [p["offset"] for p in sub["publications"]] == missed
        assert sub["offset"] == missed[-1]
        publish(uni_hub, channel, {"n": 4})
        assert (await next_pub(reader))["pub"]["data"] == {"n": 4}


async def test_http_stream_unrecoverable_position(uni_hub: Hub) -> None:
    channel = f"small:{uuid.uuid4().hex[:8]}"
    tok = token("cy", channels=[channel])
    async with http_stream(uni_hub, {"token": tok}) as reader:
        epoch = (await next_push(reader))["connect"]["subs"][channel]["epoch"]
    for i in range(5):  # history keeps 2: offsets 1..3 are gone
        publish(uni_hub, channel, {"n": i})
    again = {"token": tok, "subs": {channel: {"recover": True, "offset": 0, "epoch": epoch}}}
    async with http_stream(uni_hub, again) as reader:
        sub = (await next_push(reader))["connect"]["subs"][channel]
        assert sub["recovered"] is False
        assert "publications" not in sub
        assert sub["offset"] == 5 and sub["epoch"] == epoch
        publish(uni_hub, channel, {"n": 5})
        assert (await next_pub(reader))["pub"] == {"data": {"n": 5}, "offset": 6}
    wrong_epoch = {"token": tok, "subs": {channel: {"recover": True, "offset": 5,
                                                    "epoch": "not-it"}}}
    async with http_stream(uni_hub, wrong_epoch) as reader:
        assert (await next_push(reader))["connect"]["subs"][channel]["recovered"] is False


async def test_http_stream_ticket_is_single_use(uni_hub: Hub) -> None:
    channel = room()
    ticket = uni_hub.api("ticket", {"user": "dee", "channels": [channel]}).json()
    ticket = ticket["result"]["ticket"]
    async with http_stream(uni_hub, {"token": ticket}) as reader:
        assert channel in (await next_push(reader))["connect"]["subs"]
        publish(uni_hub, channel, {"n": 1})
        assert (await next_pub(reader))["pub"]["data"] == {"n": 1}
    async with http_stream(uni_hub, {"token": ticket}) as reader:
        assert await next_push(reader) == {"disconnect": {"code": 3500,
                                                          "reason": "invalid token"}}
        with pytest.raises(EOFError):
            await reader.next(T)


async def test_bad_tokens_get_centrifugo_disconnects(uni_hub: Hub) -> None:
    cases = [
        ({"token": "not-a-jwt"}, 3500, "invalid token"),
        ({"token": token("eve")[:-4] + "AAAA"}, 3500, "invalid token"),
        ({"token": token("eve", exp=int(time.time()) - 60)}, 3005, "connection expired"),
        ({}, 3500, "invalid token"),  # anonymous, not allowed here
        ({"token": token("eve", channels=["nowhere:x"])}, 3501, "bad request"),
    ]
    for request, code, reason in cases:
        async with http_stream(uni_hub, request) as reader:
            assert await next_push(reader) == {"disconnect": {"code": code, "reason": reason}}
            with pytest.raises(EOFError):
                await reader.next(T)


async def test_anonymous_allowed_by_config(hub_factory: HubFactory) -> None:
    hub = hub_factory("allow_anonymous_connect_without_token = true\n"
                      "[namespaces.open]\nallow_subscribe_for_client = true\n"
                      "allow_subscribe_for_anonymous = true\n")
    async with http_stream(hub, {"subs": {"open:news": {}}}) as reader:
        connect = (await next_push(reader))["connect"]
        assert set(connect["subs"]) == {"open:news"}
        publish(hub, "open:news", {"hi": 1})
        assert (await next_pub(reader))["pub"]["data"] == {"hi": 1}
    async with http_stream(hub, b"") as reader:  # an empty body is the empty request
        assert (await next_push(reader))["connect"]["subs"] == {}


async def test_bad_requests_are_refused_with_http_errors(uni_hub: Hub) -> None:
    url = f"{uni_hub.url}/connection/uni_http_stream"
    async with httpx.AsyncClient(timeout=T) as client:
        bad = await client.post(url, content=b"{not json")
        assert bad.status_code == 400
        assert "malformed connect request" in bad.json()["error"]["message"]
        wrong_type = await client.post(url, content=b'{"token": 5}')
        assert wrong_type.status_code == 400
        at_limit = json.dumps({"token": token("ann"), "name": ""}).encode()
        at_limit = at_limit[:-3] + b" " * (65536 - len(at_limit)) + at_limit[-3:]
        assert len(at_limit) == 65536
        async with client.stream("POST", url, content=at_limit) as ok:
            assert ok.status_code == 200
        too_big = await client.post(url, content=at_limit + b" ")
        assert too_big.status_code == 413
        assert "65536" in too_big.json()["error"]["message"]
        get = await client.get(url)
        assert get.status_code == 405
        evil = await client.post(url, content=b"{}", headers={"Origin": "https://evil.example"})
        assert evil.status_code == 403
        preflight = await client.options(url, headers={
            "Origin": f"http://127.0.0.1:{uni_hub.port}",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == (
            f"http://127.0.0.1:{uni_hub.port}")


async def test_server_api_disconnect_ends_the_stream(uni_hub: Hub) -> None:
    async with http_stream(uni_hub, {"token": token("fay", channels=[room()])}) as reader:
        assert "connect" in await next_push(reader)
        answer = uni_hub.api("disconnect", {"user": "fay", "disconnect": {
            "code": 4000, "reason": "bye now"}}).json()
        assert "error" not in answer, answer
        assert await next_event(reader) == {"disconnect": {"code": 4000, "reason": "bye now"}}
        with pytest.raises(EOFError):
            await reader.next(T)


async def test_slow_reader_is_dropped_and_others_get_everything(
        hub_factory: HubFactory) -> None:
    hub = hub_factory("client_queue_max_size = 65536\n" + ROOM)
    channel = room()
    request = json.dumps({"token": token("slow", channels=[channel])}).encode()
    raw = socket.create_connection(("127.0.0.1", hub.port))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.sendall(b"POST /connection/uni_http_stream HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                % (len(request), request))
    try:
        async with http_stream(hub, {"token": token("fast", channels=[channel])}) as fast:
            assert "connect" in await next_push(fast)
            payload = "x" * 10_000
            count = 400  # 4 MB for a reader that reads nothing
            async with httpx.AsyncClient(timeout=T) as client:
                for i in range(count):
                    resp = await client.post(f"{hub.url}/api/publish", headers={
                        "X-API-Key": API_KEY}, json={"channel": channel,
                                                     "data": {"i": i, "p": payload}})
                    assert resp.status_code == 200
                    assert (await next_pub(fast))["pub"]["data"]["i"] == i
                metrics = (await client.get(f"{hub.url}/metrics")).text
        slow = [line for line in metrics.splitlines()
                if line.startswith('clarion_disconnects_total{code="3008"}')]
        assert slow and float(slow[0].split()[-1]) >= 1, metrics
    finally:
        raw.close()


# -- uni_sse -------------------------------------------------------------------------------------


async def test_sse_with_cf_connect_and_post(uni_hub: Hub) -> None:
    channel = room()
    url = f"{uni_hub.url}/connection/uni_sse"
    cf_connect = json.dumps({"token": token("gus", channels=[channel])})
    async with httpx.AsyncClient(timeout=T) as client:
        async with client.stream("GET", url, params={"cf_connect": cf_connect}) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            reader = SSEReader(resp)
            connect = (await reader.next(T)).json["connect"]
            assert channel in connect["subs"]
            publish(uni_hub, channel, {"n": 1})
            ev = await reader.next(T)
            while "pub" not in ev.json:  # a ping, the join
                ev = await reader.next(T)
            assert ev.json == {"channel": channel, "pub": {"data": {"n": 1}, "offset": 1}}
            assert ev.id is None and ev.event is None  # Centrifugo sends data: only
            ping = await reader.next(T)
            while ping.json != {}:
                ping = await reader.next(T)
        async with client.stream("POST", url, content=cf_connect) as resp:
            reader = SSEReader(resp)
            assert channel in (await reader.next(T)).json["connect"]["subs"]
        bad = await client.get(url, params={"cf_connect": "{oops"})
        assert bad.status_code == 400
        async with client.stream("GET", url, params={"cf_connect": '{"token":"x"}'}) as resp:
            reader = SSEReader(resp)
            assert (await reader.next(T)).json == {
                "disconnect": {"code": 3500, "reason": "invalid token"}}


# -- uni_websocket -------------------------------------------------------------------------------


def ws_url(hub: Hub) -> str:
    return f"ws://127.0.0.1:{hub.port}/connection/uni_websocket"


async def ws_next(ws: Any, *, skip_pings: bool = True) -> dict[str, Any]:
    while True:
        push = json.loads(await asyncio.wait_for(ws.recv(), T))
        if push or not skip_pings:
            return push  # type: ignore[no-any-return]


async def ws_pub(ws: Any) -> dict[str, Any]:
    while True:
        push = await ws_next(ws)
        if "pub" in push:
            return push


async def test_websocket_connect_message_then_pushes_and_pings(uni_hub: Hub) -> None:
    channel = room()
    async with websockets.connect(ws_url(uni_hub)) as ws:
        await ws.send(json.dumps({"token": token("hal"), "subs": {channel: {}}}))
        connect = (await ws_next(ws))["connect"]
        assert channel in connect["subs"]
        assert (await ws_next(ws))["join"]["info"]["user"] == "hal"
        for i in range(3):
            publish(uni_hub, channel, {"n": i})
        got = [await ws_next(ws) for _ in range(3)]
        assert [g["pub"]["data"] for g in got] == [{"n": 0}, {"n": 1}, {"n": 2}]
        await ws.send("anything after the connect request is ignored")
        assert await ws_next(ws, skip_pings=False) == {}  # the ping, each second here
        # websockets answers the protocol-level pings too: the connection stays up.
        await asyncio.sleep(2.5)
        publish(uni_hub, channel, {"n": 3})
        assert (await ws_pub(ws))["pub"]["data"] == {"n": 3}


async def test_websocket_cf_connect_in_url_and_recovery(uni_hub: Hub) -> None:
    channel = room()
    tok = token("ida", channels=[channel])
    url = ws_url(uni_hub) + "?" + str(httpx.QueryParams(
        {"cf_connect": json.dumps({"token": tok})}))
    async with websockets.connect(url) as ws:
        sub = (await ws_next(ws))["connect"]["subs"][channel]
        publish(uni_hub, channel, {"n": 0})
        last = (await ws_pub(ws))["pub"]["offset"]
    publish(uni_hub, channel, {"n": 1})
    async with websockets.connect(ws_url(uni_hub)) as ws:
        await ws.send(json.dumps({"token": tok, "subs": {channel: {
            "recover": True, "offset": last, "epoch": sub["epoch"]}}}))
        sub = (await ws_next(ws))["connect"]["subs"][channel]
        assert sub["recovered"] is True
        assert [p["data"] for p in sub["publications"]] == [{"n": 1}]


async def test_websocket_bad_connect_requests(uni_hub: Hub) -> None:
    async with websockets.connect(ws_url(uni_hub)) as ws:
        await ws.send("{nope")
        push = await ws_next(ws)
        assert push["disconnect"]["code"] == 3501
        with pytest.raises(ConnectionClosed) as closed:
            await ws_next(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 3501
    async with websockets.connect(ws_url(uni_hub), max_size=None) as ws:
        await ws.send(json.dumps({"token": "x" * 70_000}))
        with pytest.raises(ConnectionClosed) as closed:
            await ws_next(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    async with websockets.connect(ws_url(uni_hub)) as ws:
        await ws.send(json.dumps({"token": token("eve")[:-3] + "xyz"}))
        assert await ws_next(ws) == {"disconnect": {"code": 3500, "reason": "invalid token"}}
        with pytest.raises(ConnectionClosed) as closed:
            await ws_next(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 3500


async def test_websocket_without_connect_request_is_closed_stale(
        hub_factory: HubFactory) -> None:
    hub = hub_factory("client_stale_close_delay = 1\n" + ROOM)
    async with websockets.connect(ws_url(hub)) as ws:
        assert await ws_next(ws) == {"disconnect": {"code": 3502, "reason": "stale"}}
        with pytest.raises(ConnectionClosed):
            await ws_next(ws)


async def test_websocket_origin_refused(uni_hub: Hub) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(ws_url(uni_hub), origin="https://evil.example"):
            pass
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("path", ["/connection/uni_websocket", "/connection/websocket"])
def test_websocket_handshake_refusals_are_the_same_on_both_endpoints(
        uni_hub: Hub, path: str) -> None:
    url = uni_hub.url + path
    good = {"upgrade": "websocket", "connection": "Upgrade", "sec-websocket-version": "13",
            "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="}
    with httpx.Client(timeout=T) as client:
        assert client.post(url, headers=good).status_code == 405
        assert client.get(url).status_code == 426
        assert client.get(url, headers={**good, "upgrade": "h2c"}).status_code == 400
        assert client.get(url, headers={**good, "connection": "close"}).status_code == 400
        old = client.get(url, headers={**good, "sec-websocket-version": "8"})
        assert old.status_code == 426 and old.headers["sec-websocket-version"] == "13"
        bad_key = client.get(url, headers={**good, "sec-websocket-key": "short"})
        assert bad_key.status_code == 400
        assert "Sec-WebSocket-Key" in bad_key.json()["error"]["message"]
        foreign = client.get(url, headers={**good, "origin": "https://evil.example"})
        assert foreign.status_code == 403


async def test_shutdown_tells_every_uni_client(hub_factory: HubFactory) -> None:
    hub = hub_factory(ROOM)
    async with websockets.connect(ws_url(hub)) as ws, \
            http_stream(hub, {"token": token("jo", channels=[room()])}) as reader:
        await ws.send(json.dumps({"token": token("jo")}))
        assert "connect" in await ws_next(ws)
        assert "connect" in await next_push(reader)
        hub.process.terminate()
        assert await next_event(reader) == {"disconnect": {"code": 3001, "reason": "shutdown"}}
        assert await ws_next(ws) == {"disconnect": {"code": 3001, "reason": "shutdown"}}


# -- the server API's subscribe and unsubscribe ---------------------------------------------------

UNI_KINDS = ["uni_http_stream", "uni_sse", "uni_websocket"]


@contextlib.asynccontextmanager
async def uni_client(hub: Hub, kind: str, connect: Any) -> AsyncIterator[
        Callable[[], Awaitable[dict[str, Any]]]]:
    """A connection on any of the three endpoints; yields "the next push that is not a ping"."""
    if kind == "uni_http_stream":
        async with http_stream(hub, connect) as reader:
            yield lambda: next_push(reader)
    elif kind == "uni_sse":
        async with httpx.AsyncClient(timeout=T) as client, client.stream(
                "GET", f"{hub.url}/connection/uni_sse",
                params={"cf_connect": json.dumps(connect)}) as resp:
            assert resp.status_code == 200
            sse_reader = SSEReader(resp)

            async def next_sse() -> dict[str, Any]:
                while True:
                    push = (await sse_reader.next(T)).json
                    if push:
                        return push  # type: ignore[no-any-return]

            yield next_sse
    else:
        async with websockets.connect(ws_url(hub)) as ws:
            await ws.send(json.dumps(connect))
            yield lambda: ws_next(ws)


async def skip_joins(next_: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    while True:
        push = await next_()
        if not ({"join", "leave"} & set(push)):
            return push


@pytest.mark.parametrize("kind", UNI_KINDS)
async def test_server_api_subscribe_then_unsubscribe(uni_hub: Hub, kind: str) -> None:
    """Centrifugo tells a uni client of a server-side subscribe and unsubscribe with pushes
    (centrifuge client.go: encodeReply sends the Push alone on a unidirectional transport)."""
    fixed, later = room(), room()
    user = f"api-{kind}"
    async with uni_client(uni_hub, kind, {"token": token(user, channels=[fixed])}) as next_:
        assert list((await next_())["connect"]["subs"]) == [fixed]
        publish(uni_hub, later, {"n": 0})  # before the subscribe: in history only
        answer = uni_hub.api("subscribe", {"user": user, "channel": later,
                                           "data": {"why": "invited"}}).json()
        assert "error" not in answer, answer
        push = await skip_joins(next_)
        assert set(push) == {"channel", "subscribe"} and push["channel"] == later, push
        sub = push["subscribe"]
        assert sub["data"] == {"why": "invited"}
        assert sub["recoverable"] is True and sub["epoch"] and sub["offset"] == 1
        publish(uni_hub, later, {"n": 1})
        assert await skip_joins(next_) == {"channel": later, "pub": {"data": {"n": 1},
                                                                    "offset": 2}}
        answer = uni_hub.api("unsubscribe", {"user": user, "channel": later}).json()
        assert "error" not in answer, answer
        assert await skip_joins(next_) == {"channel": later, "unsubscribe": {
            "code": 2000, "reason": "server unsubscribe"}}
        publish(uni_hub, later, {"n": 2})  # not for this client any more
        publish(uni_hub, fixed, {"n": 3})
        assert await skip_joins(next_) == {"channel": fixed, "pub": {"data": {"n": 3},
                                                                    "offset": 1}}
        # A second subscribe of a channel it has is no push at all (Centrifugo: already
        # subscribed); the stream goes on with the next publication.
        assert uni_hub.api("subscribe", {"user": user, "channel": fixed}).status_code == 200
        publish(uni_hub, fixed, {"n": 4})
        assert (await skip_joins(next_))["pub"]["data"] == {"n": 4}


async def test_server_api_subscribe_recovers_since_a_position(uni_hub: Hub) -> None:
    channel = room()
    first = publish(uni_hub, channel, {"n": 1})
    publish(uni_hub, channel, {"n": 2})
    async with http_stream(uni_hub, {"token": token("rey")}) as reader:
        assert (await next_push(reader))["connect"]["subs"] == {}
        answer = uni_hub.api("subscribe", {"user": "rey", "channel": channel, "recover_since": {
            "offset": first["offset"], "epoch": first["epoch"]}}).json()
        assert "error" not in answer, answer
        sub = (await next_event(reader))["subscribe"]
        assert sub["recovered"] is True
        assert [p["data"] for p in sub["publications"]] == [{"n": 2}]
        publish(uni_hub, channel, {"n": 3})
        assert (await next_pub(reader))["pub"] == {"data": {"n": 3}, "offset": 3}


# -- two nodes on Redis ----------------------------------------------------------------------------


async def test_two_nodes_on_redis_subscribe_on_a_publish_on_b(hub_factory: HubFactory) -> None:
    if not redis_up():
        if in_ci():
            pytest.fail("no Redis at 127.0.0.1:6379")
        pytest.skip("no Redis at 127.0.0.1:6379")
    prefix = f"t{uuid.uuid4().hex[:12]}"
    config = f'broker = "redis://127.0.0.1:6379/0"\n[redis]\nprefix = "{prefix}"\n' + ROOM
    node_a, node_b = hub_factory(config), hub_factory(config)
    channel = room()
    tok = token("kim", channels=[channel])
    async with http_stream(node_a, {"token": tok}) as reader:
        epoch = (await next_push(reader))["connect"]["subs"][channel]["epoch"]
        publish(node_b, channel, {"n": 1})
        assert (await next_pub(reader))["pub"] == {"data": {"n": 1}, "offset": 1}
    publish(node_b, channel, {"n": 2})
    async with websockets.connect(ws_url(node_b)) as ws:  # resumes on the other node
        await ws.send(json.dumps({"token": tok, "subs": {channel: {
            "recover": True, "offset": 1, "epoch": epoch}}}))
        sub = (await ws_next(ws))["connect"]["subs"][channel]
        assert sub["recovered"] is True
        assert [p["data"] for p in sub["publications"]] == [{"n": 2}]
        publish(node_a, channel, {"n": 3})
        assert (await ws_pub(ws))["pub"]["data"] == {"n": 3}


async def test_two_nodes_server_api_subscribe_on_b_reaches_a_client_on_a(
        hub_factory: HubFactory) -> None:
    if not redis_up():
        if in_ci():
            pytest.fail("no Redis at 127.0.0.1:6379")
        pytest.skip("no Redis at 127.0.0.1:6379")
    prefix = f"t{uuid.uuid4().hex[:12]}"
    config = f'broker = "redis://127.0.0.1:6379/0"\n[redis]\nprefix = "{prefix}"\n' + ROOM
    node_a, node_b = hub_factory(config), hub_factory(config)
    channel = room()
    async with http_stream(node_a, {"token": token("lia")}) as reader:
        assert (await next_push(reader))["connect"]["subs"] == {}
        answer = node_b.api("subscribe", {"user": "lia", "channel": channel}).json()
        assert "error" not in answer, answer
        assert (await next_event(reader))["channel"] == channel
        publish(node_b, channel, {"n": 1})
        assert (await next_pub(reader))["pub"] == {"data": {"n": 1}, "offset": 1}
        answer = node_b.api("unsubscribe", {"user": "lia", "channel": channel}).json()
        assert "error" not in answer, answer
        assert await next_event(reader) == {"channel": channel, "unsubscribe": {
            "code": 2000, "reason": "server unsubscribe"}}


# -- Chromium's own EventSource on uni_sse ---------------------------------------------------------

UNI_SSE_JS = """
([request]) => {
  window.events = [];
  const url = new URL('/connection/uni_sse', location.href);
  url.searchParams.append('cf_connect', JSON.stringify(request));
  const es = new EventSource(url);
  window.es = es;
  es.onerror = () => window.events.push({type: 'error', readyState: es.readyState});
  es.onmessage = (e) => window.events.push({type: 'message', data: JSON.parse(e.data)});
}
"""


@pytest.fixture
def browser() -> Iterator[Any]:
    """Chromium for one test (test_browser's fixture is module-scoped): playwright's sync API
    keeps an event loop running, which must be gone before this module's asyncio tests."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("python playwright is not installed")
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} is missing (run scripts/install-test-deps)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.mark.browser
def test_chromium_eventsource_with_cf_connect_recovers(browser: Any, uni_hub: Hub) -> None:
    channel = room()
    tok = token("lea", channels=[channel])
    context, page = open_hub_page(browser, uni_hub)
    try:
        page.evaluate(UNI_SSE_JS, [{"token": tok}])
        events = wait_events(page, "e.data && e.data.connect")
        connect = next(e["data"]["connect"] for e in events if "connect" in e.get("data", {}))
        epoch = connect["subs"][channel]["epoch"]
        for i in range(3):
            publish(uni_hub, channel, {"text": f"live{i}"})
        events = wait_events(page, "e.data && e.data.pub && e.data.pub.data.text === 'live2'")
        pubs = [e["data"] for e in events if "pub" in e.get("data", {})]
        assert [p["pub"]["data"]["text"] for p in pubs] == ["live0", "live1", "live2"]
        assert all(p["channel"] == channel for p in pubs)
        wait_events(page, "e.data && Object.keys(e.data).length === 0")  # a {} ping
        page.evaluate("window.es.close()")
        for i in range(2):
            publish(uni_hub, channel, {"text": f"missed{i}"})
        offset = pubs[-1]["pub"]["offset"]
        page.evaluate(UNI_SSE_JS, [{"token": tok, "subs": {
            channel: {"recover": True, "offset": offset, "epoch": epoch}}}])
        events = wait_events(page, "e.data && e.data.connect")
        sub = next(e["data"]["connect"] for e in events
                   if "connect" in e.get("data", {}))["subs"][channel]
        assert sub["recovered"] is True
        assert [p["data"]["text"] for p in sub["publications"]] == ["missed0", "missed1"]
        publish(uni_hub, channel, {"text": "after"})
        wait_events(page, "e.data && e.data.pub && e.data.pub.data.text === 'after'")
        assert not [e for e in events_of(page) if e["type"] == "error"]
    finally:
        context.close()


# -- limits, expiry, presence ----------------------------------------------------------------------


async def test_connection_limit_counts_uni_connections(hub_factory: HubFactory) -> None:
    hub = hub_factory("max_connections = 1\n" + ROOM)
    async with http_stream(hub, {"token": token("max", channels=[room()])}) as first:
        assert "connect" in await next_push(first)
        async with httpx.AsyncClient(timeout=T) as client:
            refused = await client.post(f"{hub.url}/connection/uni_http_stream", content=b"{}")
            assert refused.status_code == 503
            refused = await client.get(f"{hub.url}/connection/uni_sse")
            assert refused.status_code == 503
        async with websockets.connect(ws_url(hub)) as ws:
            assert await ws_next(ws) == {"disconnect": {"code": 3504,
                                                        "reason": "connection limit"}}


async def test_expiring_token_ends_the_connection_with_3005(hub_factory: HubFactory) -> None:
    hub = hub_factory("client_expired_close_delay = 0\n" + ROOM)
    expiring = token("ned", channels=[room()], exp=int(time.time()) + 2)
    async with http_stream(hub, {"token": expiring}) as reader:
        connect = (await next_push(reader))["connect"]
        assert connect["expires"] is True and 0 <= connect["ttl"] <= 2
        assert await next_event(reader) == {"disconnect": {"code": 3005,
                                                           "reason": "connection expired"}}


async def test_uni_clients_are_in_presence(uni_hub: Hub) -> None:
    channel = room()
    async with http_stream(uni_hub, {"token": token("oli", channels=[channel])}) as reader:
        client_id = (await next_push(reader))["connect"]["client"]
        async with httpx.AsyncClient(timeout=T) as client:
            answer = (await client.post(f"{uni_hub.url}/api/presence", json={
                "channel": channel}, headers={"X-API-Key": API_KEY})).json()
        assert answer["result"]["presence"][client_id]["user"] == "oli"


# -- the connect proxy -----------------------------------------------------------------------------


async def test_connect_proxy_authenticates_a_uni_client_by_cookie(
        hub_factory: HubFactory) -> None:
    with ProxyBackend() as backend:
        hub = hub_factory(f'proxy_connect_endpoint = "{backend.url("connect")}"\n'
                          'proxy_http_headers = ["Cookie"]\n' + ROOM)
        channel = room()
        backend.answer("connect", {"result": {
            "user": "42", "data": {"welcome": True}, "channels": [channel],
            "subs": {"room:extra": {"data": {"topic": "tea"}}}}})
        url = f"{hub.url}/connection/uni_sse"
        cf_connect = json.dumps({"data": {"page": "/inbox"}, "name": "feed", "version": "2",
                                 "subs": {room(): {}}})  # ignored: the backend decides
        async with httpx.AsyncClient(timeout=T) as client, client.stream(
                "GET", url, params={"cf_connect": cf_connect},
                headers={"Cookie": "sessionid=abc"}) as resp:
            reader = SSEReader(resp)
            connect = (await reader.next(T)).json["connect"]
            assert connect["data"] == {"welcome": True}
            assert set(connect["subs"]) == {channel, "room:extra"}
            assert connect["subs"]["room:extra"]["data"] == {"topic": "tea"}
            (sent,) = backend.requests("connect")
            assert sent.body["transport"] == "uni_sse"
            assert sent.body["client"] == connect["client"]
            assert (sent.body["name"], sent.body["version"]) == ("feed", "2")
            assert sent.body["data"] == {"page": "/inbox"}
            assert sent.headers["cookie"] == "sessionid=abc"

        backend.answer("connect", {"disconnect": {"code": 4501, "reason": "who are you"}})
        async with http_stream(hub, {}) as reader:
            assert await next_push(reader) == {"disconnect": {"code": 4501,
                                                              "reason": "who are you"}}
        backend.answer("connect", {"error": {"code": 103, "message": "permission denied"}})
        async with http_stream(hub, {}) as reader:
            assert await next_push(reader) == {"disconnect": {"code": 3507,
                                                              "reason": "permission denied"}}
