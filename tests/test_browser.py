"""Headless Chromium against a real hub: raw EventSource on /connection/sse, clarion.js over
SSE, and the `clarion demo` chat page.

Uses Python playwright with Debian's /usr/bin/chromium (scripts/install-test-deps installs it;
playwright never downloads a browser here). Skipped when chromium or playwright is missing,
unless CI is set, where that is a failure.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from conftest import CHAT_NAMESPACE, HMAC_SECRET, Hub, HubFactory

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CLARION_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOT_DIR = Path(os.environ.get("CLARION_SCREENSHOT_DIR", "/tmp"))


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"{reason}; CI must run scripts/install-test-deps")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
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


def connection_token(user: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 3600}, HMAC_SECRET, algorithm="HS256")


def publish(hub: Hub, channel: str, data: object) -> dict[str, Any]:
    r = hub.api("publish", {"channel": channel, "data": data})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "error" not in body, body
    return body["result"]  # type: ignore[no-any-return]


def open_hub_page(browser: Any, hub: Hub) -> tuple[Any, Any]:
    """A page on the hub's origin (EventSource and fetch are same-origin from there)."""
    context = browser.new_context()
    page = context.new_page()
    page.on("console", lambda m: print(f"[console.{m.type}] {m.text}"))
    page.on("pageerror", lambda e: print(f"[pageerror] {e}"))
    page.goto(f"{hub.url}/static/clarion.js")
    return context, page


def events_of(page: Any) -> list[dict[str, Any]]:
    return page.evaluate("window.events")  # type: ignore[no-any-return]


def wait_events(page: Any, predicate_js: str, timeout: float = 10_000,
                count: int = 1) -> list[dict[str, Any]]:
    try:
        page.wait_for_function(
            f"(window.events || []).filter(e => {predicate_js}).length >= {count}",
            timeout=timeout,
        )
    except Exception as exc:
        raise AssertionError(f"timed out waiting for {predicate_js}; events: "
                             f"{json.dumps(events_of(page), indent=1)}") from exc
    return events_of(page)


def pub_texts(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["pub"]["data"]["text"] for e in events if "pub" in e.get("data", {})]


RAW_SSE_JS = """
([url]) => {
  window.events = [];
  const es = new EventSource(url);
  window.es = es;
  es.onopen = () => window.events.push({type: 'open'});
  es.onerror = () => window.events.push({type: 'error', readyState: es.readyState});
  es.onmessage = (e) => window.events.push(
    {type: 'message', id: e.lastEventId, data: JSON.parse(e.data)});
  es.addEventListener('unrecoverable', (e) => window.events.push(
    {type: 'unrecoverable', data: JSON.parse(e.data)}));
}
"""


def test_eventsource_receives_and_resumes_with_cursor(browser: Any, hub: Hub) -> None:
    channel = f"chat:sse-{uuid.uuid4().hex[:8]}"
    context, page = open_hub_page(browser, hub)
    try:
        token = connection_token("eve")
        page.evaluate(RAW_SSE_JS, [f"/connection/sse?channel={channel}&token={token}"])
        events = wait_events(page, "e.data && e.data.connect")
        connect = next(e for e in events if e.get("data", {}).get("connect"))["data"]["connect"]
        assert connect["session"]
        assert connect["subs"][channel]["recoverable"] is True

        offsets = [publish(hub, channel, {"text": f"live{i}"})["offset"] for i in range(3)]
        events = wait_events(page, "e.data && e.data.pub && e.data.pub.data.text === 'live2'")
        pubs = [e for e in events if "pub" in e.get("data", {})]
        assert pub_texts(events) == ["live0", "live1", "live2"]
        assert [p["data"]["pub"]["offset"] for p in pubs] == offsets
        assert all(p["data"]["channel"] == channel for p in pubs)
        assert all(p["id"] for p in pubs), "each publication carries an event id (the cursor)"
        cursor = pubs[-1]["id"]

        # Drop the stream, publish while away, resume from the cursor with a new EventSource.
        page.evaluate("window.es.close()")
        for i in range(2):
            publish(hub, channel, {"text": f"missed{i}"})
        resume = f"/connection/sse?channel={channel}&token={token}&cursor={cursor}"
        page.evaluate(RAW_SSE_JS, [resume])
        wait_events(page, "e.data && e.data.pub && e.data.pub.data.text === 'missed1'")
        publish(hub, channel, {"text": "after"})
        events = wait_events(page, "e.data && e.data.pub && e.data.pub.data.text === 'after'")
        assert pub_texts(events) == ["missed0", "missed1", "after"]
        assert not [e for e in events if e["type"] == "unrecoverable"]
    finally:
        context.close()


def test_eventsource_is_told_when_its_cursor_cannot_be_resumed(browser: Any, hub: Hub) -> None:
    channel = f"chat:sse-{uuid.uuid4().hex[:8]}"
    context, page = open_hub_page(browser, hub)
    try:
        token = connection_token("eve")
        page.evaluate(RAW_SSE_JS, [f"/connection/sse?channel={channel}&token={token}"])
        wait_events(page, "e.data && e.data.connect")
        publish(hub, channel, {"text": "one"})
        events = wait_events(page, "e.data && e.data.pub")
        cursor = next(e for e in events if "pub" in e.get("data", {}))["id"]
        page.evaluate("window.es.close()")
        # The same position in another epoch (as after a hub restart without history).
        offset, epoch, rest = cursor.split(":", 2)
        other_epoch = "0" * len(epoch) if epoch != "0" * len(epoch) else "1"
        stale = f"{offset}:{other_epoch}:{rest}"
        resume = f"/connection/sse?channel={channel}&token={token}&cursor={stale}"
        page.evaluate(RAW_SSE_JS, [resume])
        events = wait_events(page, "e.type === 'unrecoverable'")
        lost = next(e for e in events if e["type"] == "unrecoverable")["data"]
        assert lost["channel"] == channel
        publish(hub, channel, {"text": "two"})
        events = wait_events(page, "e.data && e.data.pub && e.data.pub.data.text === 'two'")
        assert pub_texts(events) == ["two"]
    finally:
        context.close()


def test_eventsource_resumes_with_last_event_id_after_a_drop(browser: Any, hub: Hub) -> None:
    """The hub drops the stream; the browser's own EventSource reconnect sends Last-Event-ID
    (the URL has no cursor) and the hub replays what was published meanwhile."""
    channel = f"chat:sse-{uuid.uuid4().hex[:8]}"
    context, page = open_hub_page(browser, hub)
    try:
        token = connection_token("eve")
        page.evaluate(RAW_SSE_JS, [f"/connection/sse?channel={channel}&token={token}"])
        wait_events(page, "e.data && e.data.connect")
        publish(hub, channel, {"text": "first"})
        wait_events(page, "e.data && e.data.pub")

        r = hub.api("disconnect", {"user": "eve",
                                   "disconnect": {"code": 3001, "reason": "test drop"}})
        assert r.status_code == 200 and "error" not in r.json(), r.text
        events = wait_events(page, "e.type === 'error'")
        assert [e for e in events if e.get("data", {}).get("disconnect")], "disconnect event first"
        # The hub asks for `retry: 2000`: publish before the browser comes back.
        for i in range(3):
            publish(hub, channel, {"text": f"missed{i}"})
        assert len([e for e in events_of(page) if e.get("data", {}).get("connect")]) == 1
        events = wait_events(page, "e.data && e.data.pub && e.data.pub.data.text === 'missed2'",
                             timeout=20_000)
        publish(hub, channel, {"text": "after"})
        events = wait_events(page, "e.data && e.data.pub && e.data.pub.data.text === 'after'")
        assert pub_texts(events) == ["first", "missed0", "missed1", "missed2", "after"]
        connects = [e for e in events if e.get("data", {}).get("connect")]
        assert len(connects) == 2, "the EventSource reconnected by itself"
    finally:
        context.close()


def test_clarion_js_over_sse_receives_resumes_and_refuses_to_publish(
    browser: Any, hub: Hub
) -> None:
    channel = f"chat:sse-{uuid.uuid4().hex[:8]}"
    context, page = open_hub_page(browser, hub)
    try:
        token = connection_token("sam")
        page.evaluate(
            """async ([channel, token]) => {
              const { Clarion } = await import('/static/clarion.js');
              window.events = [];
              const push = (type, ctx) =>
                window.events.push({type, ...JSON.parse(JSON.stringify(ctx || {}))});
              const client = new Clarion(location.origin, {
                token, transports: ['sse'], minReconnectDelay: 200, maxReconnectDelay: 1000,
              });
              client.on('connected', (ctx) => push('connected', ctx));
              client.on('connecting', (ctx) => push('connecting', ctx));
              window.client = client;
              window.sub = client.subscribe(channel, {
                onSubscribed: (ctx) => push('subscribed', ctx),
                onPublication: (ctx) => push('publication', ctx),
                onUnrecoverable: (ctx) => push('unrecoverable', ctx),
              });
              client.connect();
            }""",
            [channel, token],
        )
        wait_events(page, "e.type === 'subscribed'")
        events = events_of(page)
        assert [e["transport"] for e in events if e["type"] == "connected"] == ["sse"]

        for i in range(2):
            publish(hub, channel, {"text": f"live{i}"})
        wait_events(page, "e.type === 'publication' && e.data.text === 'live1'")

        error = page.evaluate(
            "window.sub.publish({text: 'nope'})"
            ".then(() => null, (e) => ({code: e.code, message: e.message}))"
        )
        assert error is not None and error["code"] == "transport_readonly", error
        assert "WebSocket" in error["message"]

        context.set_offline(True)
        wait_events(page, "e.type === 'connecting'")
        for i in range(3):
            publish(hub, channel, {"text": f"missed{i}"})
        context.set_offline(False)
        wait_events(page, "e.type === 'publication' && e.data.text === 'missed2'", timeout=20_000)
        publish(hub, channel, {"text": "after"})
        events = wait_events(page, "e.type === 'publication' && e.data.text === 'after'")
        texts = [e["data"]["text"] for e in events if e["type"] == "publication"]
        assert texts == ["live0", "live1", "missed0", "missed1", "missed2", "after"], texts
        assert len([e for e in events if e["type"] == "connected"]) == 2
        assert not [e for e in events if e["type"] == "unrecoverable"]
    finally:
        context.close()


def test_clarion_js_over_sse_resumes_a_ticket_connection_with_its_session(
    browser: Any, hub: Hub
) -> None:
    """A ticket is single-use: after the hub drops the stream, clarion.js reopens it with
    `session=` (from the connect event) and `cursor=` — no new ticket needed."""
    channel = f"chat:sse-{uuid.uuid4().hex[:8]}"
    r = hub.api("ticket", {"user": "tia", "info": {"name": "Tia"}})
    assert r.status_code == 200, r.text
    ticket = r.json()["result"]["ticket"]
    context, page = open_hub_page(browser, hub)
    try:
        page.evaluate(
            """async ([channel, ticket]) => {
              const { Clarion } = await import('/static/clarion.js');
              window.events = [];
              window.esUrls = [];
              window.tokenCalls = 0;
              class RecordingEventSource extends EventSource {
                constructor(url, opts) { super(url, opts); window.esUrls.push(url); }
              }
              const push = (type, ctx) =>
                window.events.push({type, ...JSON.parse(JSON.stringify(ctx || {}))});
              const client = new Clarion(location.origin, {
                token: ticket, transports: ['sse'], eventsource: RecordingEventSource,
                minReconnectDelay: 200, maxReconnectDelay: 1000,
                getToken: async () => { window.tokenCalls++; throw new Error('no new ticket'); },
              });
              client.on('connected', (ctx) => push('connected', ctx));
              client.on('connecting', (ctx) => push('connecting', ctx));
              window.client = client;
              client.subscribe(channel, {
                onPublication: (ctx) => push('publication', ctx),
                onUnrecoverable: (ctx) => push('unrecoverable', ctx),
              });
              client.connect();
            }""",
            [channel, ticket],
        )
        wait_events(page, "e.type === 'connected'")
        publish(hub, channel, {"text": "one"})
        wait_events(page, "e.type === 'publication' && e.data.text === 'one'")

        r = hub.api("disconnect", {"user": "tia", "disconnect": {"code": 3001, "reason": "drop"}})
        assert r.status_code == 200 and "error" not in r.json(), r.text
        publish(hub, channel, {"text": "two"})
        wait_events(page, "e.type === 'connected'", count=2)
        events = wait_events(page, "e.type === 'publication' && e.data.text === 'two'")
        publish(hub, channel, {"text": "three"})
        events = wait_events(page, "e.type === 'publication' && e.data.text === 'three'")
        texts = [e["data"]["text"] for e in events if e["type"] == "publication"]
        assert texts == ["one", "two", "three"], texts
        urls = page.evaluate("window.esUrls")
        assert "token=" in urls[0] and "session=" not in urls[0]
        assert "session=ses_" in urls[1] and "cursor=" in urls[1], urls
        assert "token=" not in urls[1]
        assert len([e for e in events if e["type"] == "connected"]) == 2, urls
        assert page.evaluate("window.tokenCalls") == 0
    finally:
        context.close()


# ---- the demo chat ----------------------------------------------------------------------

def join_demo(browser: Any, hub: Hub, name: str) -> tuple[Any, Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 720})
    page = context.new_page()
    page.on("console", lambda m: print(f"[{name} console.{m.type}] {m.text}"))
    page.on("pageerror", lambda e: print(f"[{name} pageerror] {e}"))
    page.goto(f"{hub.url}/")
    page.fill("#name", name)
    page.click("#join")
    page.wait_for_selector("#status[data-state='connected']", timeout=10_000)
    return context, page


def send(page: Any, text: str) -> None:
    page.fill("#message", text)
    page.click("#send")
    page.wait_for_function("document.querySelector('#message').value === ''", timeout=10_000)


def message_texts(page: Any) -> list[str]:
    return page.eval_on_selector_all(  # type: ignore[no-any-return]
        "#messages .message", "els => els.map(e => e.querySelector('.text').textContent)"
    )


def wait_messages(page: Any, texts: list[str], timeout: float = 15_000) -> None:
    try:
        page.wait_for_function(
            """(want) => {
              const got = [...document.querySelectorAll('#messages .message .text')]
                .map(e => e.textContent);
              return want.every(t => got.includes(t));
            }""",
            arg=texts, timeout=timeout,
        )
    except Exception as exc:
        raise AssertionError(f"messages {texts} not all shown; got {message_texts(page)}") from exc


def presence_users(page: Any) -> list[str]:
    return page.eval_on_selector_all(  # type: ignore[no-any-return]
        "#presence .user", "els => els.map(e => e.dataset.user)"
    )


def wait_presence(page: Any, users: list[str], timeout: float = 10_000) -> None:
    try:
        page.wait_for_function(
            """(want) => {
              const got = [...document.querySelectorAll('#presence .user')]
                .map(e => e.dataset.user).sort();
              return JSON.stringify(got) === JSON.stringify(want);
            }""",
            arg=sorted(users), timeout=timeout,
        )
    except Exception as exc:
        raise AssertionError(f"presence is {presence_users(page)}, want {sorted(users)}") from exc


@pytest.fixture
def demo_hub(hub_factory: HubFactory) -> Hub:
    return hub_factory(CHAT_NAMESPACE, "--demo")


def test_demo_chat_two_users_and_a_network_drop(browser: Any, demo_hub: Hub) -> None:
    hub = demo_hub
    alice_ctx, alice = join_demo(browser, hub, "alice")
    bob_ctx, bob = join_demo(browser, hub, "bob")
    try:
        wait_presence(alice, ["alice", "bob"])
        wait_presence(bob, ["alice", "bob"])

        send(alice, "hi bob!")
        wait_messages(bob, ["hi bob!"])
        send(bob, "hey alice!")
        wait_messages(alice, ["hi bob!", "hey alice!"])
        author = alice.eval_on_selector_all(
            "#messages .message", "els => els.map(e => e.querySelector('.author').textContent)"
        )
        assert author == ["alice", "bob"]

        # Bob's network drops; alice keeps chatting; the server publishes too.
        bob_ctx.set_offline(True)
        bob.wait_for_selector("#status:not([data-state='connected'])", timeout=10_000)
        missed = ["are you there?", "bob?", "I'll wait…"]
        for text in missed:
            send(alice, text)
        publish(hub, "chat:lobby", {"text": "server notice", "name": "hub"})
        wait_messages(alice, [*missed, "server notice"])
        time.sleep(1.0)
        bob_ctx.set_offline(False)

        bob.wait_for_selector("#status[data-state='connected']", timeout=20_000)
        want = ["hi bob!", "hey alice!", *missed, "server notice"]
        wait_messages(bob, want)
        bob.wait_for_timeout(500)  # anything duplicated would have arrived by now
        assert message_texts(bob) == want
        assert message_texts(alice) == want
        received = bob.evaluate("window.clarionDemo.received")
        assert len(received) == len(set(received)), f"duplicate deliveries: {received}"
        # After the drop bob is back in everyone's presence list.
        wait_presence(alice, ["alice", "bob"])
        wait_presence(bob, ["alice", "bob"])

        send(bob, "back, sorry — wifi")
        wait_messages(alice, [*want, "back, sorry — wifi"])

        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        alice.screenshot(path=str(SCREENSHOT_DIR / "clarion-demo-alice.png"))
        bob.screenshot(path=str(SCREENSHOT_DIR / "clarion-demo-bob.png"))
    finally:
        alice_ctx.close()
        bob_ctx.close()


def test_demo_join_screen(browser: Any, demo_hub: Hub) -> None:
    context = browser.new_context(viewport={"width": 1100, "height": 720})
    page = context.new_page()
    try:
        page.goto(f"{demo_hub.url}/")
        assert page.is_visible("#name") and page.is_visible("#join")
        assert page.get_attribute("#status", "data-state") == "disconnected"
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT_DIR / "clarion-demo-join.png"))
        page.click("#join")  # empty name: refused client-side, no connection
        page.wait_for_timeout(300)
        assert page.is_visible("#name")
        assert page.get_attribute("#status", "data-state") == "disconnected"
    finally:
        context.close()


def test_clarion_js_loads_as_a_module_from_a_page_on_another_origin(browser: Any,
                                                                    hub: Hub) -> None:
    # A Django page ({% clarion_script %}) is on the app's origin and the hub on another:
    # module scripts are fetched with CORS, so the hub must allow it.
    import http.server
    import threading

    page_html = (f"<script type=module>import {{ Clarion }} from "
                 f"'{hub.url}/static/clarion.js'; window.loaded = typeof Clarion;</script>")

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = page_html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://localhost:{server.server_address[1]}/")
        page.wait_for_function("window.loaded !== undefined", timeout=10_000)
        assert page.evaluate("window.loaded") == "function"
    finally:
        context.close()
        server.shutdown()
        server.server_close()
