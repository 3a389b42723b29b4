"""Headless Chromium: the official centrifuge-js (its browser build, dist/centrifuge.js) on a page
of the hub's origin, with WebSocket refused, over Centrifugo's bidirectional emulation
(http_stream, then sse). Uses the browser fixture and helpers of tests/test_browser.py.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from conftest import Hub
from test_browser import browser, connection_token, publish  # noqa: F401 - the fixture
from test_node_client import JS_DIR

pytestmark = pytest.mark.browser

SDK = JS_DIR / "node_modules" / "centrifuge" / "dist" / "centrifuge.js"

# Port 9 on loopback: nothing listens, so the WebSocket is refused at once.
CLIENT_JS = """
([transports, token, channel]) => {
  window.events = [];
  const push = (e) => window.events.push(e);
  const base = location.origin;
  const endpoints = {
    websocket: 'ws://127.0.0.1:9/connection/websocket',
    http_stream: base + '/connection/http_stream',
    sse: base + '/connection/sse',
  };
  const client = new Centrifuge(
    transports.map((t) => ({transport: t, endpoint: endpoints[t]})),
    {token, emulationEndpoint: base + '/emulation', minReconnectDelay: 100,
     maxReconnectDelay: 500});
  window.client = client;
  client.on('connected', (ctx) => push({type: 'connected', transport: ctx.transport}));
  client.on('disconnected', (ctx) => push({type: 'disconnected', code: ctx.code}));
  const sub = client.newSubscription(channel, {joinLeave: true});
  window.sub = sub;
  sub.on('subscribed', (ctx) => push({type: 'subscribed', recoverable: ctx.recoverable}));
  sub.on('publication', (ctx) => push({type: 'publication', data: ctx.data,
                                       offset: ctx.offset}));
  sub.subscribe();
  client.connect();
}
"""


def wait_for(page: Any, predicate_js: str, timeout: float = 15_000) -> list[dict[str, Any]]:
    try:
        page.wait_for_function(f"(window.events || []).some(e => {predicate_js})",
                               timeout=timeout)
    except Exception as exc:
        events = page.evaluate("window.events")
        raise AssertionError(f"timed out waiting for {predicate_js}; events: "
                             f"{json.dumps(events, indent=1)}") from exc
    return page.evaluate("window.events")  # type: ignore[no-any-return]


@pytest.mark.parametrize("transports", [["websocket", "http_stream", "sse"],
                                        ["websocket", "sse"]])
def test_sdk_in_chromium_over_emulation_with_websocket_refused(
        browser: Any, hub: Hub, transports: list[str]) -> None:  # noqa: F811 - the fixture
    expected = transports[1]
    channel = f"chat:browser-{uuid.uuid4().hex[:8]}"
    context = browser.new_context()
    try:
        page = context.new_page()
        page.on("console", lambda m: print(f"[console.{m.type}] {m.text}"))
        page.on("pageerror", lambda e: print(f"[pageerror] {e}"))
        page.goto(f"{hub.url}/health")  # any page of the hub's origin
        page.add_script_tag(path=str(SDK))
        page.evaluate(CLIENT_JS, [transports, connection_token("chromie"), channel])
        events = wait_for(page, "e.type === 'connected'")
        assert [e["transport"] for e in events if e["type"] == "connected"] == [expected]
        wait_for(page, "e.type === 'subscribed'")

        result = publish(hub, channel, {"text": "from the api"})
        wait_for(page, "e.type === 'publication' && e.data.text === 'from the api'")

        # Commands go by /emulation: publish, presence and history from the page.
        page.evaluate("window.sub.publish({text: 'from the page'})")
        events = wait_for(page, "e.type === 'publication' && e.data.text === 'from the page'")
        offsets = [e["offset"] for e in events if e["type"] == "publication"]
        assert offsets == [result["offset"], result["offset"] + 1]
        presence = page.evaluate("window.sub.presence().then(r => r.clients)")
        assert [c["user"] for c in presence.values()] == ["chromie"]
        history = page.evaluate(
            "window.sub.history({limit: 10}).then(r => r.publications.map(p => p.data.text))")
        assert history == ["from the api", "from the page"]
    finally:
        context.close()
