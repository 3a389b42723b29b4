"""Unit tests of ``clarion.django.grip``: headers, both call styles, Grip-Sig detection,
WebSocket-over-HTTP, the formats, and publishing with retry against a real local HTTP server.

Django runs in this process (settings configured here when nobody else did); views are real
views behind the real middleware, driven by Django's test ``Client`` and ``AsyncClient``.
The publish tests talk to a tiny ``http.server`` on a real socket: no HTTP mocks.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.http import HttpResponse, HttpResponseNotModified
from django.test import AsyncClient, Client, override_settings
from django.urls import path

import django_env

# Imported before settings exist: importing clarion.django.grip reads no settings.
from clarion.django import grip
from clarion.django.grip import config as grip_config
from clarion.django.grip import publishing as grip_publish
from clarion.django.grip.middleware import is_proxied, parse_last
from clarion.errors import GripError, PublishError
from clarion.protocol.grip import instruct as wire
from clarion.protocol.grip import sig, wsevents
from clarion.protocol.grip.items import parse_publish
from conftest import free_port

django_env.configure()

KEY = "changeme"
PROXIES = [{"key": KEY, "control_uri": "http://127.0.0.1:5561"}]


def grip_sig(key: str | bytes = KEY, iss: str = "pushpin", exp_in: int = 3600) -> str:
    key = key.encode() if isinstance(key, str) else key
    return sig.sign(iss, key, now=time.time() + exp_in - 3600)


# -- views ----------------------------------------------------------------------------------------

def hold_stream_request_style(request: Any) -> HttpResponse:
    grip.set_hold_stream(request, ["a", grip.Channel("b", prev_id="7", filters=["skip-self"])],
                         keep_alive_data="ping\n", keep_alive_timeout=20)
    return HttpResponse("[stream open]\n")


def hold_stream_response_style(request: Any) -> HttpResponse:
    response = HttpResponse("[stream open]\n")
    grip.set_hold_stream(response, "test")
    return response


def hold_longpoll(request: Any) -> HttpResponse:
    grip.set_hold_longpoll(request, "lp", timeout=30)
    return HttpResponse("timeout\n")


def hold_longpoll_304(request: Any) -> HttpResponse:
    grip.set_hold_longpoll(request, "lp")
    return HttpResponseNotModified()


def hold_with_extras(request: Any) -> HttpResponse:
    grip.set_hold_stream(request, "s")
    grip.set_meta(request, {"user": "alice", "id_format": "%(s)s"})
    grip.set_next_link(request, "/next?x=1", timeout=60)
    grip.set_hold_keep_alive(request, b"\x00\x01", 30, mode="interval")
    return HttpResponse("")


def instruct_directly(request: Any) -> HttpResponse:
    inst = request.grip.start_instruct()      # django-grip's lower-level API
    inst.add_channel("direct")
    inst.set_hold_stream()
    inst.meta["user"] = "bob"
    return HttpResponse("")


def hold_twice(request: Any) -> HttpResponse:
    grip.set_hold_stream(request, "one")
    try:
        grip.set_hold_longpoll(request, "two")
    except ValueError as exc:
        return HttpResponse(f"refused: {exc}")
    return HttpResponse("accepted")


def grip_info(request: Any) -> HttpResponse:
    return HttpResponse(json.dumps({
        "proxied": request.grip_proxied, "signed": request.grip_signed,
        "grip.proxied": request.grip.proxied, "features": sorted(request.grip.features),
        "last": request.grip.last, "wscontext": request.wscontext is not None}),
        content_type="application/json")


@grip.websocket_only
def ws_echo(request: Any) -> None:
    ws = request.wscontext
    if ws.is_opening():
        ws.accept()
        ws.subscribe("room")
    while ws.can_recv():
        message = ws.recv()
        if message is None:
            ws.close(ws.close_code)
            break
        if message == "meta":
            ws.meta["user"] = "carol"
            ws.meta.pop("gone", None)
        if message == "bye":
            ws.close(4001, "bye")
            break
        ws.send(message)


@grip.websocket_only
def ws_direct_not_empty(request: Any) -> HttpResponse:
    return HttpResponse("the view answered itself")


async def async_hold(request: Any) -> HttpResponse:
    grip.set_hold_stream(request, "async-chan")
    return HttpResponse("[async stream]\n")


@grip.websocket_only
async def async_ws(request: Any) -> None:
    ws = request.wscontext
    if ws.is_opening():
        ws.accept()
    while ws.can_recv():
        message = ws.recv()
        if message is None:
            ws.close()
            break
        ws.send(f"async:{message}")


urlpatterns = [
    path("stream-req", hold_stream_request_style),
    path("stream-resp", hold_stream_response_style),
    path("longpoll", hold_longpoll),
    path("longpoll-304", hold_longpoll_304),
    path("extras", hold_with_extras),
    path("direct", instruct_directly),
    path("twice", hold_twice),
    path("info", grip_info),
    path("ws", ws_echo),
    path("ws-answered", ws_direct_not_empty),
    path("async-hold", async_hold),
    path("async-ws", async_ws),
]

MIDDLEWARE = ["clarion.django.grip.GripMiddleware"]


@pytest.fixture(autouse=True)
def django_settings() -> Iterator[None]:
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=MIDDLEWARE, GRIP_PROXIES=PROXIES,
                           GRIP_PREFIX="", GRIP_PROXY_REQUIRED=False, GRIP_URL=None,
                           PUBLISH_SERVERS=[], GRIP_VERIFY_KEY=None):
        yield


@pytest.fixture(autouse=True)
def fresh_publisher() -> Iterator[None]:
    """Every test starts with an empty publish queue and leaves none behind."""
    yield
    instance = grip_publish._instance
    if instance is not None:
        instance.close(timeout=0)
    grip_publish._instance = None


def proxied() -> dict[str, str]:
    return {"Grip-Sig": grip_sig()}


def headers_of(response: Any) -> list[tuple[str, str]]:
    return list(response.items())


# =============================================================================================
# Instructions in headers
# =============================================================================================

def test_request_style_stream_hold_headers_parse_as_the_proxy_reads_them() -> None:
    r = Client().get("/stream-req", headers=proxied())
    assert r.status_code == 200
    assert r["Grip-Hold"] == "stream"
    assert r["Grip-Channel"] == "a, b; prev-id=7; filter=skip-self"
    assert r["Grip-Keep-Alive"] == "ping\\n; format=cstring; timeout=20"
    parsed = wire.parse(r.status_code, "OK", headers_of(r), r.content)
    assert parsed.hold == "stream"
    assert [(c.name, c.prev_id, c.filters) for c in parsed.channels] == [
        ("a", None, ()), ("b", "7", ("skip-self",))]
    assert parsed.keep_alive is not None and parsed.keep_alive.content == b"ping\n"
    assert parsed.keep_alive.timeout == 20
    assert parsed.response.body == b"[stream open]\n"


def test_response_style_of_the_seed_readme() -> None:
    r = Client().get("/stream-resp", headers=proxied())
    assert (r["Grip-Hold"], r["Grip-Channel"]) == ("stream", "test")


def test_response_style_works_without_the_middleware_too() -> None:
    with override_settings(MIDDLEWARE=[]):
        r = Client().get("/stream-resp")
    assert (r["Grip-Hold"], r["Grip-Channel"]) == ("stream", "test")


@pytest.mark.parametrize("url", ["/stream-req", "/stream-resp"])
def test_prefix_applies_once_in_both_styles(url: str) -> None:
    with override_settings(GRIP_PREFIX="myapp-"):
        r = Client().get(url, headers=proxied())
    assert r["Grip-Channel"].startswith("myapp-")
    assert "myapp-myapp-" not in r["Grip-Channel"]


def test_longpoll_with_timeout() -> None:
    r = Client().get("/longpoll", headers=proxied())
    assert (r["Grip-Hold"], r["Grip-Channel"], r["Grip-Timeout"]) == ("response", "lp", "30")
    assert r.content == b"timeout\n"


def test_longpoll_304_becomes_200_with_grip_status() -> None:
    r = Client().get("/longpoll-304", headers=proxied())
    assert r.status_code == 200
    assert r["Grip-Status"] == "304"
    assert "Grip-Timeout" not in r
    parsed = wire.parse(r.status_code, "OK", headers_of(r), r.content)
    assert parsed.response.code == 304
    assert parsed.timeout == wire.DEFAULT_TIMEOUT


def test_meta_next_link_and_binary_keep_alive() -> None:
    r = Client().get("/extras", headers=proxied())
    assert r["Grip-Set-Meta"] == "user=alice, id_format=%(s)s"
    assert r["Grip-Link"] == "</next?x=1>; rel=next; timeout=60"
    assert r["Grip-Keep-Alive"] == "AAE=; format=base64; timeout=30; mode=interval"
    parsed = wire.parse(200, "OK", headers_of(r), b"")
    assert parsed.meta == {"user": "alice", "id_format": "%(s)s"}
    assert parsed.next_link is not None
    assert (parsed.next_link.uri, parsed.next_link.timeout) == ("/next?x=1", 60)
    assert parsed.keep_alive is not None
    assert (parsed.keep_alive.content, parsed.keep_alive.mode) == (b"\x00\x01", "interval")


def test_start_instruct_of_django_grip() -> None:
    r = Client().get("/direct", headers=proxied())
    assert (r["Grip-Hold"], r["Grip-Channel"], r["Grip-Set-Meta"]) == (
        "stream", "direct", "user=bob")


def test_a_second_hold_is_refused() -> None:
    r = Client().get("/twice", headers=proxied())
    assert r.content.startswith(b"refused:")
    assert r["Grip-Channel"] == "one"


def test_keep_alive_that_would_break_the_header_goes_base64() -> None:
    # django-grip would write 'a;b' raw and the proxy would read 'b' as a parameter
    value = wire.keep_alive_header(b"a;b\\", 10)
    assert value.endswith("; format=base64; timeout=10")
    assert wire.parse(200, "", [("Grip-Hold", "stream"), ("Grip-Channel", "c"),
                                ("Grip-Keep-Alive", value)], b"").keep_alive.content == b"a;b\\"  # type: ignore[union-attr]


def test_proxy_required_gives_501_to_direct_requests_only() -> None:
    with override_settings(GRIP_PROXY_REQUIRED=True):
        direct = Client().get("/stream-req")
        forged = Client().get("/stream-req", headers={"Grip-Sig": grip_sig(key="wrong")})
        via_proxy = Client().get("/stream-req", headers=proxied())
        plain = Client().get("/info")
    assert (direct.status_code, direct.content) == (501, b"Not Implemented\n")
    assert "Grip-Hold" not in direct
    assert forged.status_code == 501
    assert via_proxy.status_code == 200 and via_proxy["Grip-Hold"] == "stream"
    assert plain.status_code == 200


def test_helpers_need_the_middleware_or_a_response() -> None:
    with pytest.raises(TypeError, match="GripMiddleware"):
        grip.set_hold_stream(object(), "c")
    with pytest.raises(ValueError, match="keep_alive_timeout"):
        grip.set_hold_stream(HttpResponse(), "c", keep_alive_data="x")
    with pytest.raises(ValueError, match="at most 5 filters"):
        grip.set_hold_stream(HttpResponse(), grip.Channel("c", filters=["skip-self"] * 6))


# =============================================================================================
# Request side: Grip-Sig, Grip-Feature, Grip-Last
# =============================================================================================

def _proxies(entries: list[dict[str, Any]], **extra: Any) -> list[grip_config.Proxy]:
    with override_settings(GRIP_PROXIES=entries, **extra):
        return grip_config.proxies()


def test_grip_sig_every_proxy_has_a_key() -> None:
    proxies = _proxies([{"key": "other", "control_uri": "http://a"},
                        {"key": KEY, "control_uri": "http://b"}])
    assert is_proxied(grip_sig(), proxies) == (True, True)
    assert is_proxied(grip_sig(key="wrong"), proxies) == (False, False)
    assert is_proxied(grip_sig(exp_in=-10), proxies) == (False, False)
    assert is_proxied("not-a-jwt", proxies) == (False, False)
    assert is_proxied(None, proxies) == (False, False)
    assert is_proxied("", proxies) == (False, False)


def test_grip_sig_without_exp_is_refused_as_gripcontrol_does() -> None:
    import jwt

    token = jwt.encode({"iss": "pushpin"}, "changeme-but-longer-than-32-bytes-for-hs256!!",
                       algorithm="HS256")
    proxies = _proxies([{"key": "changeme-but-longer-than-32-bytes-for-hs256!!"}])
    assert is_proxied(token, proxies) == (False, False)


def test_grip_sig_one_proxy_without_a_key_makes_presence_enough() -> None:
    proxies = _proxies([{"key": KEY}, {"control_uri": "http://fanout-without-key"}])
    assert is_proxied("anything", proxies) == (True, False)
    assert is_proxied(None, proxies) == (False, False)


def test_grip_sig_no_proxies_configured_is_not_proxied() -> None:
    assert is_proxied(grip_sig(), _proxies([])) == (False, False)


def test_grip_sig_verify_key_verify_iss_and_grip_verify_key() -> None:
    proxies = _proxies([{"key": "publish-key", "verify_key": KEY, "verify_iss": "pushpin"}])
    assert is_proxied(grip_sig(), proxies) == (True, True)
    assert is_proxied(grip_sig(iss="someone-else"), proxies) == (False, False)
    # verify_key alone (django-grip raises KeyError here)
    assert is_proxied(grip_sig(), _proxies([{"verify_key": KEY}])) == (True, True)
    # GRIP_VERIFY_KEY is the default verify_key
    proxies = _proxies([{"key": "publish-key"}], GRIP_VERIFY_KEY=KEY)
    assert is_proxied(grip_sig(), proxies) == (True, True)


def test_grip_url_with_base64_keys_and_settings_left_untouched() -> None:
    key = b"\x01\x02binary+/key"
    entries = [{"key": KEY, "control_uri": "http://a:5561"}]
    url = ("http://pushpin:5561/base/?iss=realm&key=base64:"
           + base64.b64encode(key).decode() + "&verify-iss=pushpin&verify-key=" + KEY + "&x=1")
    proxies = _proxies(entries, GRIP_URL=url, GRIP_VERIFY_KEY="vk")
    assert entries == [{"key": KEY, "control_uri": "http://a:5561"}]   # not mutated
    assert proxies[0].verify_key == "vk"
    assert proxies[1] == grip_config.Proxy(control_uri="http://pushpin:5561/base?x=1",
                                           control_iss="realm", key=key,
                                           verify_iss="pushpin", verify_key=KEY)
    assert is_proxied(grip_sig(), proxies[1:]) == (True, True)


def test_parse_grip_uri_matches_gripcontrol() -> None:
    gripcontrol = pytest.importorskip("gripcontrol")
    for uri in ["http://localhost:5561",
                "https://api.fanout.io/realm/r/?iss=r&key=base64:aGVsbG8rd29ybGQ=",
                "http://h:1/p?key=plain&verify-key=base64:AAE=&verify-iss=v&other=2"]:
        assert grip.parse_grip_uri(uri) == gripcontrol.parse_grip_uri(uri)


def test_bad_settings_are_named() -> None:
    from django.core.exceptions import ImproperlyConfigured

    with override_settings(GRIP_PROXIES={"key": "x"}), pytest.raises(ImproperlyConfigured,
                                                                     match="GRIP_PROXIES"):
        grip_config.proxies()
    with override_settings(GRIP_PROXIES=[{"key": 5}]), pytest.raises(ImproperlyConfigured,
                                                                     match=r"\['key'\]"):
        grip_config.proxies()
    with override_settings(PUBLISH_SERVERS=[{"iss": "x"}]), pytest.raises(
            ImproperlyConfigured, match="needs a 'uri'"):
        grip_config.publish_targets()
    with override_settings(GRIP_PUBLISH_RETRY_SECONDS=-1), pytest.raises(
            ImproperlyConfigured, match="GRIP_PUBLISH_RETRY_SECONDS"):
        grip_config.retry_seconds()


def test_request_attributes_features_and_last() -> None:
    r = Client().get("/info", headers={
        **proxied(), "Grip-Feature": "status, session, link:next",
        "Grip-Last": 'a; last-id=1, b; last-id="x,y"'})
    info = r.json()
    assert info == {"proxied": True, "signed": True, "grip.proxied": True,
                    "features": ["link:next", "session", "status"],
                    "last": {"a": "1", "b": "x,y"}, "wscontext": False}
    assert Client().get("/info").json()["proxied"] is False


def test_parse_last_ignores_garbage() -> None:
    assert parse_last('a; last-id="unterminated') == {}
    assert parse_last(None) == {}


# =============================================================================================
# WebSocket-over-HTTP
# =============================================================================================

def ws_post(client: Client, events: list[wsevents.Event], url: str = "/ws",
            **headers: str) -> Any:
    return client.post(url, data=wsevents.encode(events),
                       content_type=wsevents.CONTENT_TYPE,
                       headers={"Connection-Id": "cid-1", **proxied(), **headers})


def test_ws_open_accept_subscribe() -> None:
    r = ws_post(Client(), [wsevents.Event("OPEN")])
    assert r.status_code == 200
    assert r["Content-Type"] == wsevents.CONTENT_TYPE
    assert r["Sec-WebSocket-Extensions"] == "grip"
    events = wsevents.decode(r.content)
    assert [e.type for e in events] == ["OPEN", "TEXT"]
    assert events[1].content is not None and events[1].content.startswith(b"c:")
    control = wsevents.parse_control(events[1].content[2:])
    assert (control.type, control.channel) == ("subscribe", "room")


def test_ws_subscribe_uses_the_prefix() -> None:
    with override_settings(GRIP_PREFIX="p-"):
        r = ws_post(Client(), [wsevents.Event("OPEN")])
    content = wsevents.decode(r.content)[1].content
    assert content is not None
    assert wsevents.parse_control(content[2:]).channel == "p-room"


def test_ws_echo_with_ping_and_close() -> None:
    r = ws_post(Client(), [wsevents.Event("TEXT", b"hello"), wsevents.Event("PING", b"p"),
                           wsevents.Event("TEXT", "héllo".encode()),
                           wsevents.Event("CLOSE", wsevents.close_content(1000))])
    assert "Sec-WebSocket-Extensions" not in r
    events = [(e.type, e.content) for e in wsevents.decode(r.content)]
    assert events == [("TEXT", b"m:hello"), ("PONG", b"p"), ("TEXT", "m:héllo".encode()),
                      ("CLOSE", b"\x03\xe8")]
    assert r.content.startswith(b"TEXT 7\r\nm:hello\r\n")   # hex lengths


def test_ws_close_with_code_and_reason() -> None:
    r = ws_post(Client(), [wsevents.Event("TEXT", b"bye")])
    (close,) = wsevents.decode(r.content)
    assert wsevents.parse_close(close.content) == (4001, "bye")


def test_ws_meta_set_and_removed() -> None:
    r = ws_post(Client(), [wsevents.Event("TEXT", b"meta")], **{"Meta-User": "alice",
                                                               "Meta-Gone": "x",
                                                               "Meta-Kept_Name": "k"})
    assert r["Set-Meta-user"] == "carol"
    assert r["Set-Meta-gone"] == ""
    assert "Set-Meta-kept-name" not in r


def test_ws_bad_body_is_400() -> None:
    r = Client().post("/ws", data=b"TEXT 99\r\nshort\r\n", content_type=wsevents.CONTENT_TYPE)
    assert r.status_code == 400
    assert r.content == b"Error parsing WebSocket events.\n"


def test_websocket_only_refuses_plain_requests() -> None:
    r = Client().get("/ws")
    assert (r.status_code, r.content) == (400, b"Request must contain WebSocket events.\n")
    assert grip.websocket_only(lambda request: None).websocket_only is True  # type: ignore[attr-defined]


def test_ws_view_that_answers_itself_is_left_alone() -> None:
    r = ws_post(Client(), [wsevents.Event("OPEN")], url="/ws-answered")
    assert r.content == b"the view answered itself"


def test_wscontext_as_gripcontrol() -> None:
    ws = grip.WebSocketContext("id", {"a": "1"}, [
        wsevents.Event("OPEN"), wsevents.Event("PING", b"1"), wsevents.Event("BINARY", b"\xff"),
        wsevents.Event("PONG"), wsevents.Event("DISCONNECT")])
    assert ws.is_opening()
    assert ws.can_recv()
    assert ws.recv() == b"\xff"
    assert [(e.type, e.content) for e in ws.out_events] == [("PONG", b"1")]
    assert ws.can_recv()
    with pytest.raises(OSError, match="disconnected"):
        ws.recv()
    assert not ws.can_recv()
    with pytest.raises(IndexError):
        ws.recv()
    ws.send_binary(b"\x00")
    ws.send_control('{"type":"detach"}')
    ws.unsubscribe("c")
    ws.detach()
    ws.close()
    assert ws.out_close_code == 0
    body = wsevents.decode(ws.reply_body())
    assert [(e.type, e.content) for e in body] == [
        ("PONG", b"1"), ("BINARY", b"m:\x00"), ("TEXT", b'c:{"type":"detach"}'),
        ("TEXT", b'c:{"type":"unsubscribe","channel":"c"}'), ("TEXT", b'c:{"type":"detach"}'),
        ("CLOSE", None)]   # no code given: a bare CLOSE, not gripcontrol's invalid code 0
    assert ws.meta_changes() == {}
    ws.meta["B"] = "2"
    assert ws.meta_changes() == {"b": "2"}


def test_wscontext_events_interchange_with_gripcontrol() -> None:
    gripcontrol = pytest.importorskip("gripcontrol")
    ws = grip.WebSocketContext("id", {}, [wsevents.Event("TEXT", b"x")])
    ws.accept()
    ws.send("héllo")
    ws.subscribe("c")
    theirs = gripcontrol.WebSocketContext("id", {}, [gripcontrol.WebSocketEvent("TEXT", b"x")])
    theirs.send("héllo")
    theirs.subscribe("c")
    ours = wsevents.decode(ws.reply_body())[1:]
    decoded = gripcontrol.decode_websocket_events(
        gripcontrol.encode_websocket_events(theirs.out_events))
    assert [e.type for e in ours] == [e.type for e in decoded]
    assert ours[0].content == decoded[0].content
    assert json.loads(ours[1].content[2:]) == json.loads(decoded[1].content[2:])  # type: ignore[index]


# =============================================================================================
# Async views and the middleware's async mode
# =============================================================================================

async def test_async_view_under_async_client() -> None:
    r = await AsyncClient().get("/async-hold", headers=proxied())
    assert (r.status_code, r["Grip-Hold"], r["Grip-Channel"]) == (200, "stream", "async-chan")
    assert r.content == b"[async stream]\n"


async def test_sync_view_under_async_client_with_proxy_required() -> None:
    with override_settings(GRIP_PROXY_REQUIRED=True):
        direct = await AsyncClient().get("/longpoll")
        via_proxy = await AsyncClient().get("/longpoll", headers=proxied())
    assert direct.status_code == 501
    assert via_proxy["Grip-Hold"] == "response"


async def test_async_websocket_view() -> None:
    r = await AsyncClient().post(
        "/async-ws", data=wsevents.encode([wsevents.Event("OPEN"),
                                          wsevents.Event("TEXT", b"hi")]),
        content_type=wsevents.CONTENT_TYPE, headers=proxied())
    assert [(e.type, e.content) for e in wsevents.decode(r.content)] == [
        ("OPEN", None), ("TEXT", b"m:async:hi")]
    refused = await AsyncClient().get("/async-ws")
    assert refused.status_code == 400


def test_async_view_under_sync_client() -> None:
    r = Client().get("/async-hold", headers=proxied())
    assert r["Grip-Channel"] == "async-chan"


def test_middleware_modes() -> None:
    async def async_get_response(request: Any) -> HttpResponse:
        return HttpResponse()

    from asgiref.sync import iscoroutinefunction

    assert iscoroutinefunction(grip.GripMiddleware(async_get_response))
    assert not iscoroutinefunction(grip.GripMiddleware(lambda request: HttpResponse()))
    assert grip.GripMiddleware.sync_capable and grip.GripMiddleware.async_capable


# =============================================================================================
# Formats
# =============================================================================================

def test_format_exports() -> None:
    assert grip.HttpStreamFormat("x\n").export() == {"content": "x\n"}
    assert grip.HttpStreamFormat(b"\xff", content_filters=["build-id"]).export() == {
        "content-filters": ["build-id"], "content-bin": "/w=="}
    assert grip.HttpStreamFormat(close=True).export() == {"action": "close"}
    with pytest.raises(ValueError, match="content not set"):
        grip.HttpStreamFormat()
    assert grip.HttpResponseFormat().export() == {"body": ""}
    assert grip.HttpResponseFormat(code=200, reason="OK", headers={"A": "b"},
                                   body="hi").export() == {
        "code": 200, "reason": "OK", "headers": {"A": "b"}, "body": "hi"}
    assert grip.WebSocketMessageFormat("hi").export() == {"content": "hi"}
    assert grip.WebSocketMessageFormat(b"\x00", binary=True).export() == {"content-bin": "AA=="}
    assert grip.WebSocketMessageFormat(action="close", code=4000, reason="r").export() == {
        "action": "close", "code": 4000, "reason": "r"}


@pytest.mark.parametrize("make", [
    lambda m: m.HttpStreamFormat("x\n"),
    lambda m: m.HttpStreamFormat(b"\xff\xfe", content_filters=["build-id"]),
    lambda m: m.HttpStreamFormat(close=True),
    lambda m: m.HttpResponseFormat(code=404, reason="Nope", headers={"X": "y"}, body=b"\x00\xff"),
    lambda m: m.HttpResponseFormat(body="plain"),
    lambda m: m.WebSocketMessageFormat("text"),
    lambda m: m.WebSocketMessageFormat("bin", binary=True),
    lambda m: m.WebSocketMessageFormat(action="close", code=1001),
])
def test_formats_export_what_gripcontrol_exports(make: Any) -> None:
    gripcontrol = pytest.importorskip("gripcontrol")
    pubcontrol = pytest.importorskip("pubcontrol")
    theirs = pubcontrol.Item(make(gripcontrol)).export()
    assert grip_publish.export_formats(make(grip)) == theirs
    assert grip_publish.export_formats(make(gripcontrol)) == theirs


def test_export_formats_refuses_bad_input() -> None:
    with pytest.raises(TypeError):
        grip_publish.export_formats("text")
    with pytest.raises(TypeError):
        grip_publish.export_formats([])
    with pytest.raises(ValueError, match="more than one"):
        grip_publish.export_formats([grip.HttpStreamFormat("a"), grip.HttpStreamFormat("b")])


# =============================================================================================
# Publishing: a real HTTP server on a real socket
# =============================================================================================

class Recorder:
    """A tiny publish endpoint: records every POST; ``refuse`` channels get 400."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.refuse: set[str] = set()
        self.fail_next = 0
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                doc = json.loads(self.rfile.read(length))
                recorder.requests.append((self.path, dict(self.headers), doc))
                if recorder.fail_next:
                    recorder.fail_next -= 1
                    self._answer(503, b"busy\n")
                elif any(i["channel"] in recorder.refuse for i in doc["items"]):
                    self._answer(400, b"Invalid format: refused\n")
                else:
                    self._answer(200, b"Published\n")

            def _answer(self, code: int, text: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def items(self) -> list[dict[str, Any]]:
        return [item for _, _, doc in self.requests for item in doc["items"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.close()


def test_blocking_publish_shape_and_static_bearer(recorder: Recorder) -> None:
    with override_settings(GRIP_PROXIES=[{"control_uri": recorder.uri + "/", "key": KEY}],
                           GRIP_PREFIX="app-"):
        grip.publish("chan", grip.HttpStreamFormat("hi\n"), id="2", prev_id="1",
                     blocking=True, meta={"sender": "u1"})
    (path_, headers, doc) = recorder.requests[0]
    assert path_ == "/publish/"
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Bearer changeme"
    assert doc == {"items": [{"channel": "app-chan", "id": "2", "prev-id": "1",
                              "meta": {"sender": "u1"}, "http-stream": {"content": "hi\n"}}]}
    assert parse_publish(json.dumps(doc).encode())[0].formats.http_stream is not None  # type: ignore[union-attr]


def test_jwt_auth_and_publish_servers(recorder: Recorder) -> None:
    second = Recorder()
    try:
        with override_settings(
                GRIP_PROXIES=[{"control_uri": recorder.uri, "control_iss": "realm",
                               "key": b"realm-key-realm-key-realm-key-32b"}],
                PUBLISH_SERVERS=[{"uri": second.uri}]):
            grip.publish("c", [grip.HttpResponseFormat(body="b"),
                               grip.WebSocketMessageFormat("w")], blocking=True)
        auth = recorder.requests[0][1]["Authorization"]
        assert auth.startswith("Bearer ")
        claims = sig.verify(auth[7:], b"realm-key-realm-key-realm-key-32b", iss="realm")
        assert set(claims) == {"iss", "exp"}
        assert "Authorization" not in second.requests[0][1]
        assert second.items == recorder.items == [
            {"channel": "c", "http-response": {"body": "b"}, "ws-message": {"content": "w"}}]
    finally:
        second.close()


def test_publish_accepts_gripcontrol_formats(recorder: Recorder) -> None:
    gripcontrol = pytest.importorskip("gripcontrol")
    with override_settings(GRIP_PROXIES=[{"control_uri": recorder.uri}]):
        grip.publish("c", gripcontrol.HttpStreamFormat(b"\xff"), blocking=True)
    assert recorder.items == [{"channel": "c", "http-stream": {"content-bin": "/w=="}}]


def test_blocking_publish_failure_raises() -> None:
    port = free_port()
    results: list[tuple[bool, str]] = []
    with override_settings(GRIP_PROXIES=[{"control_uri": f"http://127.0.0.1:{port}"}]), \
            pytest.raises(PublishError, match=r"channel 'c'.*ConnectError"):
        grip.publish("c", grip.HttpStreamFormat("x"), blocking=True,
                     callback=lambda ok, msg: results.append((ok, msg)))
    assert results and results[0][0] is False


def test_bad_items_are_refused_in_the_view() -> None:
    with pytest.raises(ValueError, match="channel"):
        grip.publish("", grip.HttpStreamFormat("x"))
    with pytest.raises(TypeError, match="meta"):
        grip.publish("c", grip.HttpStreamFormat("x"), meta={"n": 1})  # type: ignore[dict-item]
    with pytest.raises(GripError, match="Invalid format"):
        grip.publish("c", grip.HttpResponseFormat(code="abc"))  # type: ignore[arg-type]


def test_nonblocking_publish_batches_in_order(recorder: Recorder) -> None:
    with override_settings(GRIP_PROXIES=[{"control_uri": recorder.uri}]):
        started = time.monotonic()
        for i in range(50):
            grip.publish("c", grip.HttpStreamFormat(f"{i}\n"), id=str(i))
        assert time.monotonic() - started < 1.0
        assert grip.publish_flush(10)
    assert [i["id"] for i in recorder.items] == [str(i) for i in range(50)]
    assert len(recorder.requests) < 50    # batched


def test_retry_while_the_proxy_is_down_then_up(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    done: list[tuple[bool, str]] = []
    with override_settings(GRIP_PROXIES=[{"control_uri": f"http://127.0.0.1:{port}"}],
                           GRIP_PUBLISH_RETRY_SECONDS=20), \
            caplog.at_level(logging.WARNING, logger="clarion.django.grip"):
        for i in range(3):
            grip.publish("down", grip.HttpStreamFormat(f"{i}\n"),
                         callback=lambda ok, msg: done.append((ok, msg)))
        time.sleep(1.0)
        assert not grip.publish_flush(0)          # still queued, being retried
        server = Recorder(port)
        try:
            assert grip.publish_flush(15)
        finally:
            server.close()
    assert [i["http-stream"]["content"] for i in server.items] == ["0\n", "1\n", "2\n"]
    assert done == [(True, "")] * 3
    assert any("retrying" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_5xx_is_retried(recorder: Recorder) -> None:
    recorder.fail_next = 2
    with override_settings(GRIP_PROXIES=[{"control_uri": recorder.uri}]):
        grip.publish("c", grip.HttpStreamFormat("x"))
        assert grip.publish_flush(10)
    assert len(recorder.requests) == 3
    assert recorder.items[-1]["channel"] == "c"


def test_give_up_after_the_retry_window(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    done: list[tuple[bool, str]] = []
    with override_settings(GRIP_PROXIES=[{"control_uri": f"http://127.0.0.1:{port}"}],
                           GRIP_PUBLISH_RETRY_SECONDS=0.5), \
            caplog.at_level(logging.ERROR, logger="clarion.django.grip"):
        grip.publish("lost-chan", grip.HttpStreamFormat("lost\n"),
                     callback=lambda ok, msg: done.append((ok, msg)))
        assert grip.publish_flush(10)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "giving up" in errors[0] and "'lost-chan'" in errors[0] and "lost\\n" in errors[0]
    assert done and done[0][0] is False and "ConnectError" in done[0][1]


def test_a_refused_item_is_dropped_alone(recorder: Recorder,
                                         caplog: pytest.LogCaptureFixture) -> None:
    recorder.refuse = {"bad"}
    with override_settings(GRIP_PROXIES=[{"control_uri": recorder.uri}]), \
            caplog.at_level(logging.ERROR, logger="clarion.django.grip"):
        # queue all three before the sender wakes, so they go in one batch first
        instance = grip_publish.publisher()
        with instance._cond:
            for channel in ("good1", "bad", "good2"):
                grip.publish(channel, grip.HttpStreamFormat("x"))
        assert grip.publish_flush(10)
    delivered = [i["channel"] for _, _, doc in recorder.requests
                 if not any(x["channel"] == "bad" for x in doc["items"]) for i in doc["items"]]
    assert delivered == ["good1", "good2"]
    assert len(recorder.requests[0][2]["items"]) == 3      # the first try was one batch
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "'bad'" in errors[0] and "400" in errors[0]


def test_full_queue_raises_instead_of_dropping() -> None:
    port = free_port()
    with override_settings(GRIP_PROXIES=[{"control_uri": f"http://127.0.0.1:{port}"}],
                           GRIP_PUBLISH_QUEUE_SIZE=2):
        grip.publish("c", grip.HttpStreamFormat("1"))
        grip.publish("c", grip.HttpStreamFormat("2"))
        with pytest.raises(PublishError, match="queue full"):
            grip.publish("c", grip.HttpStreamFormat("3"))


def test_queued_items_are_sent_at_process_exit(recorder: Recorder) -> None:
    script = f"""
import django
from django.conf import settings
settings.configure(GRIP_PROXIES=[{{"control_uri": "{recorder.uri}"}}])
django.setup()
from clarion.django.grip import HttpStreamFormat, publish
for i in range(20):
    publish("exit", HttpStreamFormat(str(i)))
"""  # and exit at once: the atexit hook flushes the queue
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert [i["http-stream"]["content"] for i in recorder.items] == [str(i) for i in range(20)]


def test_a_forked_child_does_not_inherit_the_queue(recorder: Recorder) -> None:
    dead = free_port()
    script = f"""
import logging, os, sys, time
import django
from django.conf import settings
settings.configure(GRIP_PROXIES=[{{"control_uri": "http://127.0.0.1:{dead}"}}],
                   PUBLISH_SERVERS=[], GRIP_PUBLISH_RETRY_SECONDS=60)
django.setup()
logging.basicConfig(level=logging.ERROR)
from clarion.django.grip import HttpStreamFormat, publish, publish_flush
publish("parent", HttpStreamFormat("p"))           # queued: the proxy is down
pid = os.fork()
if pid == 0:
    assert publish_flush(0), "the child inherited the parent's queue"
    settings.GRIP_PROXIES = [{{"control_uri": "{recorder.uri}"}}]
    publish("child", HttpStreamFormat("c"))        # the child gets its own sender
    assert publish_flush(10)
    sys.exit(0)                                    # atexit: nothing left to report
_, status = os.waitpid(pid, 0)
from clarion.django.grip.publishing import publisher
publisher().close(timeout=0)                       # what exit would do, without the wait
sys.exit(os.waitstatus_to_exitcode(status))
"""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    # the parent's own exit hook reports its undelivered item; the child reported nothing
    assert proc.stderr.count("not published") == 1, proc.stderr
    assert "'parent'" in proc.stderr
    assert time.monotonic() - started < 30
    assert [i["channel"] for i in recorder.items] == ["child"]


def test_no_targets_publishes_nothing_quietly() -> None:
    with override_settings(GRIP_PROXIES=[]):
        grip.publish("c", grip.HttpStreamFormat("x"))
    assert grip.publish_flush(0)
    assert grip_publish._instance is None       # no thread was started


def test_app_config() -> None:
    from clarion.django.apps import ClarionConfig

    assert (ClarionConfig.name, ClarionConfig.label) == ("clarion.django", "clarion")
