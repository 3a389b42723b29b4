"""Proxies to the app's backend (docs/topics/proxies.md): a real hub process, a real backend
(Starlette under uvicorn, tests/proxy_backend.py) and real clients (centrifuge-python, and
the `websockets` library where a test reads the exact frames)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import pytest
from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectedContext,
    DisconnectedContext,
    ReplyError,
    ServerSubscribedContext,
)
from websockets.asyncio.client import ClientConnection, connect

from centrifuge_support import wait_changed
from clarion.errors import ConfigError
from clarion.hub.backend import KINDS
from clarion.hub.config import load_config
from clarion.protocol import proxy as pp
from conftest import Hub, HubFactory, free_port, token
from proxy_backend import ProxyBackend, raw, sleeping

T = 10.0  # the bound of every wait (never a measurement)
COOKIE = "sessionid=s3cr3t-cookie-value"

NAMESPACES = """
[namespaces.room]
proxy_subscribe = true
proxy_publish = true
proxy_sub_refresh = true
presence = true
history_size = 10
history_ttl = 60

[namespaces.plain]
allow_subscribe_for_client = true
allow_publish_for_client = true
"""


def proxy_config(backend: ProxyBackend, *, timeout: str = "2s", retries: int = 2,
                 kinds: tuple[str, ...] = KINDS) -> str:
    lines = [f'proxy_{kind}_endpoint = "{backend.url(kind)}"\n'
             f'proxy_{kind}_timeout = "{timeout}"' for kind in kinds]
    return "\n".join([
        *lines,
        'proxy_http_headers = ["Cookie", "X-Forwarded-For", "User-Agent"]',
        f"proxy_retries = {retries}",
        "[proxy_static_http_headers]",
        '"X-Hub-Secret" = "hub-to-backend-secret"',
        NAMESPACES,
    ])


@pytest.fixture
def backend() -> Iterator[ProxyBackend]:
    with ProxyBackend() as b:
        yield b


@pytest.fixture
def proxied(hub_factory: HubFactory, backend: ProxyBackend) -> Hub:
    return hub_factory(proxy_config(backend))


# -- a raw client: the exact frames ------------------------------------------------------------


class Raw:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0
        self.pushes: list[dict[str, Any]] = []

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        cmd_id = self.next_id
        await self.ws.send(json.dumps({"id": cmd_id, method: params}))
        while True:
            frame = await asyncio.wait_for(self.ws.recv(), T)
            for line in str(frame).splitlines():
                msg = json.loads(line)
                if msg.get("id") == cmd_id:
                    return msg
                if msg:
                    self.pushes.append(msg)
                else:
                    await self.ws.send("{}")  # the server's ping: pong


@asynccontextmanager
async def raw_client(hub: Hub, headers: dict[str, str] | None = None) -> AsyncIterator[Raw]:
    async with connect(hub.ws_url, additional_headers=headers or {"Cookie": COOKIE},
                       open_timeout=T) as ws:
        yield Raw(ws)


async def closed_with(ws: ClientConnection) -> int:
    """The close code the hub ends the connection with (pings answered meanwhile)."""
    try:
        while True:
            frame = await asyncio.wait_for(ws.recv(), T)
            if frame == "{}":
                await ws.send("{}")
    except Exception:  # noqa: BLE001 - websockets raises ConnectionClosed*; the code is read below
        assert ws.close_code is not None
        return ws.close_code


class Events(ClientEventHandler):
    def __init__(self) -> None:
        self.connected: list[ConnectedContext] = []
        self.disconnected: list[DisconnectedContext] = []
        self.server_subs: dict[str, ServerSubscribedContext] = {}
        self.changed = asyncio.Event()

    async def on_connected(self, ctx: ConnectedContext) -> None:
        self.connected.append(ctx)
        self.changed.set()

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self.disconnected.append(ctx)
        self.changed.set()

    async def on_subscribed(self, ctx: ServerSubscribedContext) -> None:
        self.server_subs[ctx.channel] = ctx
        self.changed.set()


def metrics(hub: Hub) -> dict[tuple[str, str], float]:
    """clarion_proxy_requests_total by (proxy, outcome)."""
    text = httpx.get(f"{hub.url}/metrics", timeout=T).text
    out = {}
    for labels, value in re.findall(r"^clarion_proxy_requests_total\{([^}]*)\} (\S+)$", text,
                                    re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        out[(found["proxy"], found["outcome"])] = float(value)
    return out


# -- connect ---------------------------------------------------------------------------------------


async def test_connect_by_cookie_with_channels_subs_data_and_rpc(
        proxied: Hub, backend: ProxyBackend) -> None:
    backend.answer("connect", {"result": {
        "user": "42", "info": {"name": "Ada"}, "data": {"welcome": True},
        "channels": ["plain:news"],
        "subs": {"room:1": {"info": {"role": "owner"}, "data": {"topic": "tea"}}},
        "meta": {"tenant": "t1"}}})
    backend.answer("rpc", {"result": {"data": {"answer": 2019}}})
    events = Events()
    client = Client(proxied.ws_url, events=events, name="py-test", data={"page": "/inbox"},
                    headers={"Cookie": COOKIE, "Authorization": "Bearer not-forwarded",
                             "User-Agent": "proxy-test", "X-Forwarded-For": "6.6.6.6"})
    await client.connect()
    try:
        await wait_changed(events.changed,
                           lambda: bool(events.connected) and len(events.server_subs) == 2, T)
        assert events.connected[0].data == {"welcome": True}
        assert events.server_subs["room:1"].data == {"topic": "tea"}
        (sent,) = backend.requests("connect")
        assert sent.body["client"] == events.connected[0].client
        assert sent.body["transport"] == "websocket"
        assert (sent.body["protocol"], sent.body["encoding"]) == ("json", "json")
        assert sent.body["name"] == "py-test"
        assert sent.body["data"] == {"page": "/inbox"}
        assert "user" not in sent.body
        # Only the listed headers, the hub's own view of the client address (not the one the
        # client claims), the static one.
        assert sent.headers["cookie"] == COOKIE
        assert sent.headers["user-agent"] == "proxy-test"
        assert sent.headers["x-forwarded-for"] == "127.0.0.1"
        assert sent.headers["x-hub-secret"] == "hub-to-backend-secret"
        assert "authorization" not in sent.headers
        assert sent.headers["content-type"] == "application/json"

        members = proxied.api("presence", {"channel": "room:1"}).json()["result"]["presence"]
        (member,) = members.values()
        assert member["user"] == "42"
        assert member["conn_info"] == {"name": "Ada"}
        assert member["chan_info"] == {"role": "owner"}

        result = await client.rpc("getCurrentPrice", {"object_id": 12})
        assert result.data == {"answer": 2019}
        (call,) = backend.requests("rpc")
        assert call.body["user"] == "42"
        assert call.body["method"] == "getCurrentPrice"
        assert call.body["data"] == {"object_id": 12}
        assert call.body["meta"] == {"tenant": "t1"}
        assert call.headers["cookie"] == COOKIE
    finally:
        await client.disconnect()
    counted = metrics(proxied)
    assert counted[("connect", "ok")] == 1
    assert counted[("rpc", "ok")] == 1


async def test_connect_with_a_token_does_not_ask_the_backend(
        proxied: Hub, backend: ProxyBackend) -> None:
    async with raw_client(proxied) as c:
        reply = await c.call("connect", {"token": token("bob")})
    assert "connect" in reply
    assert backend.requests("connect") == []


async def test_connect_refused_by_error_and_by_disconnect(
        proxied: Hub, backend: ProxyBackend) -> None:
    backend.answer("connect", {"error": {"code": 403, "message": "login first"}})
    async with raw_client(proxied) as c:
        reply = await c.call("connect", {})
        assert reply["error"] == {"code": 403, "message": "login first"}
    backend.answer("connect", {"disconnect": {"code": 4501, "reason": "unauthorized"}})
    async with raw_client(proxied) as c:
        await c.ws.send(json.dumps({"id": 1, "connect": {}}))
        assert await closed_with(c.ws) == 4501
        assert c.ws.close_reason == "unauthorized"
    # The SDK sees the terminal disconnect too, and does not reconnect.
    events = Events()
    client = Client(proxied.ws_url, events=events, headers={"Cookie": COOKIE})
    await client.connect()
    try:
        await wait_changed(events.changed, lambda: bool(events.disconnected), T)
        assert events.disconnected[0].code == 4501
    finally:
        await client.disconnect()
    assert metrics(proxied)[("connect", "error")] == 3


async def test_anonymous_user_from_the_backend(proxied: Hub, backend: ProxyBackend) -> None:
    backend.answer("connect", {"result": {"user": ""}})
    async with raw_client(proxied) as c:
        reply = await c.call("connect", {})
        assert "connect" in reply


# -- subscribe, publish, sub_refresh -----------------------------------------------------------


async def _subscribe_answer(body: dict[str, Any]) -> tuple[int, bytes]:
    if body["channel"].endswith(":no"):
        return 200, b'{"error":{"code":403,"message":"not in this room"}}'
    return 200, msgspec.json.encode({"result": {
        "info": {"seat": 7}, "data": {"greeting": "hi " + body["user"]},
        "override": {"presence": {"value": False}}}})


async def test_subscribe_proxy_allows_and_denies(proxied: Hub, backend: ProxyBackend) -> None:
    backend.answer("connect", {"result": {"user": "42"}})
    backend.answer("subscribe", _subscribe_answer)
    async with raw_client(proxied) as c:
        await c.call("connect", {})
        ok = await c.call("subscribe", {"channel": "room:yes", "data": {"why": "chat"}})
        assert ok["subscribe"]["data"] == {"greeting": "hi 42"}
        denied = await c.call("subscribe", {"channel": "room:no"})
        assert denied["error"] == {"code": 403, "message": "not in this room"}
        # Channels without proxy_subscribe keep their allow_* rules.
        plain = await c.call("subscribe", {"channel": "plain:x"})
        assert "subscribe" in plain
        # The override turned presence off for this subscription.
        members = proxied.api("presence", {"channel": "room:yes"}).json()["result"]["presence"]
        assert members == {}
    sent = {r.body["channel"]: r.body for r in backend.requests("subscribe")}
    assert set(sent) == {"room:yes", "room:no"}
    assert sent["room:yes"]["data"] == {"why": "chat"}
    assert sent["room:yes"]["user"] == "42"


async def test_publish_proxy_rewrites_and_rejects(proxied: Hub, backend: ProxyBackend) -> None:
    backend.answer("connect", {"result": {"user": "42"}})
    backend.answer("subscribe", {"result": {}})

    async def publish_answer(body: dict[str, Any]) -> tuple[int, bytes]:
        text = body["data"]["text"]
        if text.isupper():
            return 200, b'{"error":{"code":1001,"message":"no shouting"}}'
        return 200, msgspec.json.encode(
            {"result": {"data": {"text": text.upper(), "by": body["user"]},
                        "skip_history": True}})

    backend.answer("publish", publish_answer)
    async with raw_client(proxied) as c:
        await c.call("connect", {})
        await c.call("subscribe", {"channel": "room:pub"})
        assert await c.call("publish", {"channel": "room:pub", "data": {"text": "hello"}}) == {
            "id": 3, "publish": {}}
        rejected = await c.call("publish", {"channel": "room:pub", "data": {"text": "LOUD"}})
        assert rejected["error"] == {"code": 1001, "message": "no shouting"}
        # The subscriber got the backend's version, once; history kept nothing of it.
        await c.call("presence_stats", {"channel": "room:pub"})  # a round trip after the pub
        pubs = [p["push"]["pub"]["data"] for p in c.pushes if "pub" in p.get("push", {})]
        assert pubs == [{"text": "HELLO", "by": "42"}]
    hist = proxied.api("history", {"channel": "room:pub", "limit": 10}).json()["result"]
    assert hist.get("publications", []) == []
    assert len(backend.requests("publish")) == 2


def prolonging(extra: dict[str, Any] | None = None) -> Any:
    """A refresh answer one second past the time of the request (a fixed expire_at would be
    in the past by the next refresh, and that expires the connection)."""
    async def answer(request: dict[str, Any]) -> tuple[int, bytes]:
        return 200, msgspec.json.encode(
            {"result": {"expire_at": int(time.time()) + 1, **(extra or {})}})
    return answer


async def test_sub_refresh_prolongs_then_expires(proxied: Hub, backend: ProxyBackend) -> None:
    backend.answer("connect", {"result": {"user": "42"}})
    backend.answer("subscribe", {"result": {"expire_at": int(time.time()) + 1}})
    backend.answer("sub_refresh", prolonging())
    async with raw_client(proxied) as c:
        await c.call("connect", {})
        reply = await c.call("subscribe", {"channel": "room:timed"})
        assert "expires" not in reply["subscribe"]  # the hub asks the backend, not the client
        deadline = time.monotonic() + T
        while len(backend.requests("sub_refresh")) < 2:  # prolonged once, asked again
            assert time.monotonic() < deadline, "no sub_refresh request"
            await c.call("ping", {})
            await asyncio.sleep(0.2)
        assert backend.requests("sub_refresh")[0].body["channel"] == "room:timed"
        backend.answer("sub_refresh", {"result": {"expired": True}})
        assert await closed_with(c.ws) == 3006


# -- refresh -----------------------------------------------------------------------------------


async def test_refresh_proxy_prolongs_then_expires(proxied: Hub, backend: ProxyBackend) -> None:
    backend.answer("connect", {"result": {"user": "42", "expire_at": int(time.time()) + 1}})
    backend.answer("refresh", prolonging({"info": {"v": 2}}))
    async with raw_client(proxied) as c:
        reply = await c.call("connect", {})
        assert "expires" not in reply["connect"]
        deadline = time.monotonic() + T
        while len(backend.requests("refresh")) < 2:
            assert time.monotonic() < deadline, "no refresh request"
            await c.call("ping", {})
            await asyncio.sleep(0.2)
        first = backend.requests("refresh")[0]
        assert first.body["user"] == "42"
        assert first.headers["cookie"] == COOKIE
        backend.answer("refresh", {"result": {"expired": True}})
        assert await closed_with(c.ws) == 3005


@pytest.mark.parametrize("kind", ["refresh", "sub_refresh"])
async def test_a_refresh_answering_an_expiry_already_past_expires(
        proxied: Hub, backend: ProxyBackend, kind: str) -> None:
    # Asking again every second would get the same answer forever: the connection (or the
    # subscription) is expired at once.
    soon = int(time.time()) + 1
    backend.answer("connect", {"result": {"user": "42", "expire_at": soon if kind ==
                                          "refresh" else 0}})
    backend.answer("subscribe", {"result": {"expire_at": soon}})
    backend.answer(kind, {"result": {"expire_at": int(time.time()) - 60}})
    async with raw_client(proxied) as c:
        await c.call("connect", {})
        if kind == "sub_refresh":
            await c.call("subscribe", {"channel": "room:timed"})
        assert await closed_with(c.ws) == (3005 if kind == "refresh" else 3006)
    assert len(backend.requests(kind)) == 1


async def test_a_refresh_that_fails_unexpectedly_is_asked_again_later() -> None:
    # A unit test of the session's bookkeeping (no backend raises anything but
    # BackendUnavailable on purpose): a refresh call that fails in an unexpected way must
    # not stay "in flight" for ever (never refreshed, never expired).
    from clarion.hub.session import ProxyState, Session

    class Failing(Session):
        __slots__ = ()

        def _user_base(self) -> dict[str, Any]:
            return {"client": "c", "transport": "websocket", "protocol": "json",
                    "encoding": "json", "user": "42"}

        async def _answer(self, kind: str, request: pp.ProxyRequest) -> pp.Answer:
            raise RuntimeError("a bug")

    session = Failing.__new__(Failing)
    session.proxy = state = ProxyState(())
    state.refresh_at = float("inf")  # as check_expiry sets it before the call
    state.sub_refresh_at["room:x"] = float("inf")
    with pytest.raises(RuntimeError):
        await session._proxy_refresh()
    with pytest.raises(RuntimeError):
        await session._proxy_sub_refresh("room:x", None)  # type: ignore[arg-type]
    now = time.time()
    assert now < state.refresh_at < float("inf")
    assert now < state.sub_refresh_at["room:x"] < float("inf")


# -- rpc ---------------------------------------------------------------------------------------


async def test_rpc_without_proxy_is_108(hub: Hub) -> None:
    client = Client(hub.ws_url, token=token("bob"))
    await client.connect()
    try:
        with pytest.raises(ReplyError) as refused:
            await client.rpc("anything", {})
        assert refused.value.code == 108
    finally:
        await client.disconnect()


async def test_rpc_error_from_the_backend(proxied: Hub, backend: ProxyBackend) -> None:
    backend.answer("connect", {"result": {"user": "42"}})
    backend.answer("rpc", {"error": {"code": 404, "message": "no such method",
                                     "temporary": True}})
    client = Client(proxied.ws_url, headers={"Cookie": COOKIE})
    await client.connect()
    try:
        with pytest.raises(ReplyError) as failed:
            await client.rpc("nope", {})
        assert (failed.value.code, failed.value.message, failed.value.temporary) == (
            404, "no such method", True)
    finally:
        await client.disconnect()


# -- a backend that fails ----------------------------------------------------------------------


@pytest.mark.parametrize(("answer", "reason"), [
    (raw(503, b"maintenance"), "status 503"),
    (raw(200, b"<html>oops</html>"), "not JSON"),
    (raw(200, b'{"result": {"user": 42}}'), "$.result.user"),
    (raw(200, b'{"result": {"user": "1"}, "error": {"code": 403}}'), "exactly one"),
    (raw(403, b'{"result": {"user": "1"}}'), "status 403"),
])
async def test_connect_when_the_backend_fails(proxied: Hub, backend: ProxyBackend,
                                              answer: Any, reason: str) -> None:
    backend.answer("connect", answer)
    async with raw_client(proxied) as c:
        reply = await c.call("connect", {})
    assert reply["error"] == {"code": 100, "message": "internal server error",
                              "temporary": True}
    # A 5xx is retried (connect is idempotent); garbage and other statuses are not.
    assert len(backend.requests("connect")) == (3 if reason == "status 503" else 1)
    log = proxied.output()
    assert "proxy request failed" in log and reason in log
    assert "s3cr3t" not in log and "hub-to-backend-secret" not in log
    assert metrics(proxied)[("connect", "unavailable")] == 1


async def test_backend_down(hub_factory: HubFactory, backend: ProxyBackend) -> None:
    down = f"http://127.0.0.1:{free_port()}/connect"
    hub = hub_factory(f'proxy_connect_endpoint = "{down}"\nproxy_retries = 1\n')
    async with raw_client(hub) as c:
        reply = await c.call("connect", {})
    assert reply["error"]["code"] == 100
    failed = [ln for ln in hub.output().splitlines() if "proxy request failed" in ln]
    assert len(failed) == 1, failed
    assert "ConnectError" in failed[0] and "attempts=2" in failed[0]  # retried once


async def test_publish_is_not_retried(proxied: Hub, backend: ProxyBackend) -> None:
    backend.answer("connect", {"result": {"user": "42"}})
    backend.answer("publish", raw(502, b"bad gateway"))
    async with raw_client(proxied) as c:
        await c.call("connect", {})
        reply = await c.call("publish", {"channel": "room:p", "data": {"text": "x"}})
    assert reply["error"]["code"] == 100
    assert len(backend.requests("publish")) == 1
    assert metrics(proxied)[("publish", "unavailable")] == 1


async def test_a_hung_backend_stalls_only_its_own_client(
        hub_factory: HubFactory, backend: ProxyBackend) -> None:
    hub = hub_factory(proxy_config(backend, timeout="3s", retries=0))
    backend.answer("connect", sleeping(30, {"result": {"user": "late"}}))
    async with raw_client(hub) as other, raw_client(hub) as stuck:
        assert "connect" in await other.call("connect", {"token": token("bob")})
        await stuck.ws.send(json.dumps({"id": 1, "connect": {}}))
        deadline = time.monotonic() + T
        while not backend.requests("connect"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        # The backend holds the stuck client's connect: everyone else is served meanwhile.
        for _ in range(3):
            reply = await other.call("subscribe", {"channel": "plain:live"})
            assert "subscribe" in reply or reply["error"]["code"] == 105
            assert "publish" in await other.call("publish", {"channel": "plain:live",
                                                             "data": {"n": 1}})
        # Until the timeout ends the stuck one's connect with error 100.
        msg = json.loads(await asyncio.wait_for(stuck.ws.recv(), T))
        assert msg["error"]["code"] == 100


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "message"), [
    ({"proxy_connect_endpoint": "ftp://x/"}, "proxy_connect_endpoint: must be an http"),
    ({"proxy_rpc_endpoint": "localhost:3000"}, "proxy_rpc_endpoint: must be an http"),
    ({"proxy_rpc_timeout": "0s"}, "proxy_rpc_timeout: must be more than 0"),
    ({"proxy_rpc_timeout": "2m"}, "at most 60 seconds"),
    ({"proxy_http_headers": ["Bad Header"]}, "'Bad Header' is not a header name"),
    ({"proxy_static_http_headers": {"Host": "x"}}, "Host is set by the hub"),
    ({"proxy_static_http_headers": {"TE": "x"}}, "TE is set by the hub"),
    ({"proxy_http_headers": ["Cookie", "content-type"]},
     "proxy_http_headers: content-type is set by the hub, it cannot be forwarded"),
    ({"proxy_http_headers": ["Upgrade"]}, "Upgrade is set by the hub"),
    ({"proxy_http_headers": ["Keep-Alive"]}, "Keep-Alive is set by the hub"),
    ({"proxy_http_headers": ["Trailer"]}, "Trailer is set by the hub"),
    ({"proxy_static_http_headers": {"X-A": "a\r\nb"}}, "line break"),
    ({"proxy_retries": 9}, "proxy_retries: must be between 0 and 5"),
    ({"proxy_publish": True}, "proxy_publish: needs proxy_publish_endpoint"),
    ({"namespaces": {"n": {"proxy_subscribe": True}}},
     "[namespaces.n] proxy_subscribe: needs proxy_subscribe_endpoint"),
])
def test_config_errors(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as bad:
        load_config(environ={}, overrides=config)
    assert message in str(bad.value)


def test_config_from_environment() -> None:
    config = load_config(environ={
        "CLARION_PROXY_CONNECT_ENDPOINT": "https://app.internal/clarion/connect",
        "CLARION_PROXY_CONNECT_TIMEOUT": "500ms",
        "CLARION_PROXY_HTTP_HEADERS": "Cookie, Authorization",
        "CLARION_PROXY_STATIC_HTTP_HEADERS": '{"X-Hub-Secret": "s"}',
    })
    assert config.proxy_connect_endpoint == "https://app.internal/clarion/connect"
    assert config.seconds("proxy_connect_timeout") == 0.5
    assert config.proxy_http_headers == ["Cookie", "Authorization"]
    assert config.proxy_static_http_headers == {"X-Hub-Secret": "s"}
    with pytest.raises(ConfigError, match="JSON object"):
        load_config(environ={"CLARION_PROXY_STATIC_HTTP_HEADERS": "X-A: b"})


# -- the answers' shapes (unit tests of clarion.protocol.proxy) ---------------------------------


@pytest.mark.parametrize(("body", "message"), [
    (b'{"result": {}}', "Object missing required field `user` - at `$.result`"),
    (b'{"result": {"user": "1", "expire_at": "soon"}}', "at `$.result.expire_at`"),
    (b'{"result": {"user": "1", "subs": {"a": {"override": {"presence": true}}}}}',
     "at `$.result.subs[...].override.presence`"),
    (b'{"error": {"code": 99}}', "error.code: must be between 100 and 1999"),
    (b'{"disconnect": {"code": 1000}}', "disconnect.code: must be between 3000 and 4999"),
    (b'{"result": {"user": "1", "b64info": "bm90IGpzb24="}}', "b64info must be base64 of JSON"),
    (b'{}', "exactly one of result, error and disconnect"),
    (b"{", "not JSON"),
    (b"[1]", "wrong shape: Expected `object`, got `array`"),
])
def test_answer_errors_name_the_field(body: bytes, message: str) -> None:
    with pytest.raises(pp.ProxyAnswerError) as bad:
        pp.decode_answer(body, pp.ConnectResult)
    assert message in str(bad.value)


def test_answer_base64_payloads_and_long_reasons() -> None:
    answer = pp.decode_answer(b'{"result": {"data": null, "b64data": "eyJhIjogMX0="}}',
                              pp.RPCResult)
    assert pp.json_payload(answer.result, "data") == b'{"a": 1}'
    long = pp.decode_answer(b'{"disconnect": {"code": 4500, "reason": "%s"}}' % (b"x" * 300),
                            pp.RPCResult)
    assert long.disconnect is not None and len(long.disconnect.reason) == pp.MAX_REASON_BYTES


def test_requests_always_carry_user_protocol_and_encoding() -> None:
    body = msgspec.json.decode(pp.encode_request(pp.RefreshRequest(
        client="c", transport="sse", protocol="json", encoding="json", user="")))
    assert body == {"client": "c", "transport": "sse", "protocol": "json", "encoding": "json",
                    "user": ""}


# -- clarion check ------------------------------------------------------------------------------


def test_clarion_check_reaches_the_backend_and_masks_secrets(
        tmp_path: Any, backend: ProxyBackend) -> None:
    import subprocess
    import sys

    down = f"http://127.0.0.1:{free_port()}/rpc"
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f"""
api_key = "k"
proxy_connect_endpoint = "http://user:pa55word@127.0.0.1:{backend.port}/proxy/connect"
proxy_rpc_endpoint = "{down}"
[proxy_static_http_headers]
"X-Clarion-Proxy-Secret" = "a-shared-secret-value"
""")
    run = subprocess.run([sys.executable, "-m", "clarion", "check", "--config", str(cfg),
                          "--timeout", "2"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr
    assert f"proxy connect http://user:********@127.0.0.1:{backend.port}/proxy/connect: " \
           "reachable" in run.stdout
    assert f"proxy rpc {down}:" in run.stderr
    assert '"X-Clarion-Proxy-Secret" = "********"' in run.stdout
    assert "pa55word" not in run.stdout + run.stderr
    assert "a-shared-secret-value" not in run.stdout + run.stderr
    assert backend.requests("connect") == []  # reached, never called


# -- the npm centrifuge client under Node ---------------------------------------------------------

NODE_SCRIPT = r"""
import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

const { HUB_URL: url, HUB_COOKIE: cookie } = process.env;
// What a browser does on its own: send the page's cookies with the WebSocket handshake.
class CookieWebSocket extends WebSocket {
  constructor(address, protocols) {
    super(address, protocols, { headers: { Cookie: cookie } });
  }
}
const out = {};
const client = new Centrifuge(url, { websocket: CookieWebSocket, name: 'node-test',
                                     data: { from: 'node' } });
client.on('connected', (ctx) => { out.connected = ctx.data; });
client.on('subscribed', (ctx) => { out.serverSub = ctx.channel; });
client.connect();
await client.ready(10000);
out.rpc = (await client.rpc('getCurrentPrice', { object_id: 12 })).data;
try {
  await client.rpc('broken', {});
} catch (err) {
  out.rpcError = { code: err.code, message: err.message };
}
client.disconnect();
process.stdout.write(JSON.stringify(out) + '\n');
process.exit(0);
"""


def test_npm_centrifuge_client_connects_by_cookie_and_calls_rpc(
        proxied: Hub, backend: ProxyBackend) -> None:
    import shutil
    import subprocess
    from pathlib import Path

    from conftest import in_ci

    js_dir = Path(__file__).resolve().parent / "js"
    node = shutil.which("node")
    if node is None or not (js_dir / "node_modules" / "centrifuge").is_dir():
        if in_ci():
            pytest.fail("node or tests/js/node_modules missing; run scripts/install-test-deps")
        pytest.skip("node or tests/js/node_modules missing (scripts/install-test-deps)")

    async def connect_answer(body: dict[str, Any]) -> tuple[int, bytes]:
        return 200, msgspec.json.encode({"result": {
            "user": "ada", "data": {"hello": body.get("data")}, "channels": ["plain:feed"]}})

    async def rpc_answer(body: dict[str, Any]) -> tuple[int, bytes]:
        if body["method"] == "broken":
            return 200, b'{"error": {"code": 1500, "message": "broken on purpose"}}'
        return 200, msgspec.json.encode({"result": {"data": {"price": 7, "for": body["user"]}}})

    backend.answer("connect", connect_answer)
    backend.answer("rpc", rpc_answer)
    run = subprocess.run([node, "--input-type=module", "-"], input=NODE_SCRIPT,
                         capture_output=True, text=True, cwd=js_dir, timeout=60,
                         env={**os.environ, "HUB_URL": proxied.ws_url, "HUB_COOKIE": COOKIE})
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["connected"] == {"hello": {"from": "node"}}
    assert seen["serverSub"] == "plain:feed"
    assert seen["rpc"] == {"price": 7, "for": "ada"}
    assert seen["rpcError"] == {"code": 1500, "message": "broken on purpose"}
    (sent,) = backend.requests("connect")
    assert sent.headers["cookie"] == COOKIE
    assert sent.body["name"] == "node-test"


async def test_a_client_gone_during_its_connect_or_subscribe_leaves_nothing(
        hub_factory: HubFactory, backend: ProxyBackend) -> None:
    hub = hub_factory(proxy_config(backend, timeout="30s", retries=0))
    release = threading.Event()
    loop = asyncio.get_running_loop()

    def held(then: dict[str, Any]) -> Any:
        async def answer(body: dict[str, Any]) -> tuple[int, bytes]:
            # The backend runs in another thread's loop: a thread-safe event.
            await asyncio.to_thread(release.wait, 30)
            return 200, msgspec.json.encode(then)
        return answer

    backend.answer("connect", held({"result": {"user": "42", "channels": ["plain:a"]}}))
    async with raw_client(hub) as c:
        await c.ws.send(json.dumps({"id": 1, "connect": {}}))
        deadline = loop.time() + T
        while not backend.requests("connect"):
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
    # The client is gone; now the backend answers. The session handles the answer in the
    # same step as the call is counted, so once it is counted the outcome is there to see.
    release.set()
    deadline = loop.time() + T
    while metrics(hub).get(("connect", "ok")) != 1:
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
    info = hub.api("info", {}).json()["result"]["nodes"][0]
    assert info["num_clients"] == 0
    assert info["num_channels"] == 0

    # The same for a subscribe the backend holds.
    release.clear()
    backend.answer("connect", {"result": {"user": "42"}})
    backend.answer("subscribe", held({"result": {}}))
    async with raw_client(hub) as c:
        await c.call("connect", {})
        await c.ws.send(json.dumps({"id": 2, "subscribe": {"channel": "room:held"}}))
        deadline = loop.time() + T
        while not backend.requests("subscribe"):
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
    release.set()
    deadline = loop.time() + T
    while metrics(hub).get(("subscribe", "ok")) != 1:
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
    info = hub.api("info", {}).json()["result"]["nodes"][0]
    assert (info["num_clients"], info["num_channels"]) == (0, 0)
    assert hub.api("presence", {"channel": "room:held"}).json()["result"]["presence"] == {}


async def test_unidirectional_connect_through_the_proxy(
        proxied: Hub, backend: ProxyBackend) -> None:
    backend.answer("connect", {"result": {"user": "42", "channels": ["plain:uni"],
                                          "data": {"hello": "uni"}}})
    async with httpx.AsyncClient(timeout=T) as http, http.stream(
            "POST", f"{proxied.url}/connection/uni_http_stream", content=b"{}",
            headers={"Cookie": COOKIE}) as resp:
        assert resp.status_code == 200
        lines = resp.aiter_lines()
        first = json.loads(await asyncio.wait_for(anext(lines), T))
        assert first["connect"]["data"] == {"hello": "uni"}
        assert "plain:uni" in first["connect"]["subs"]
    (sent,) = backend.requests("connect")
    assert sent.body["transport"] == "uni_http_stream"
    assert sent.headers["cookie"] == COOKIE


async def test_shutdown_closes_the_backend_client(proxied: Hub, backend: ProxyBackend) -> None:
    import signal

    backend.answer("connect", {"result": {"user": "42"}})
    async with raw_client(proxied) as c:
        assert "connect" in await c.call("connect", {})
        proxied.process.send_signal(signal.SIGTERM)
        assert await closed_with(c.ws) == 3001
    assert await asyncio.to_thread(proxied.process.wait, 15) == 0
    log = proxied.output()
    assert "hub stopped" in log
    assert "Traceback" not in log and "Unclosed" not in log
