"""django-eventstream in GRIP mode behind a real GRIP proxy (issue 3).

django-eventstream is the heaviest user of GRIP: its SSE view answers a proxied request with a
stream hold on ``events-<channel>; prev-id=<id>; filter=build-id; filter=skip-users`` plus
``user-anonymous; filter=require-sub``, ``Grip-Set-Meta`` (``id_format``, ``user``),
``Grip-Keep-Alive`` and a ``Grip-Link: <...>; rel=next``; ``send_event`` stores the event
(DjangoModelStorage, sqlite) and publishes ``http-stream`` content with an ``%I`` id placeholder,
``content-filters: ["build-id"]``, ``id``/``prev-id``.  The proxy must render the event id, keep
the sequence and let a client resume with ``Last-Event-ID``.

Runs for proxy in {pushpin, clarion}; the origin uses the real django-grip (django-eventstream
imports it itself).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import jwt
import pytest

from conftest import (
    GripOrigin,
    GripOriginFactory,
    GripProxy,
    GripProxyFactory,
    free_port,
    grip_sig,
)
from sse_reader import Event, SSEReader

# Grip-Sig keys are Pushpin's default "changeme": PyJWT warns that it is short
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

PROXIES = ["pushpin", "clarion"]
WAIT = 30.0


@dataclass
class EventStreamStack:
    proxy: GripProxy
    origin: GripOrigin

    async def send(self, client: httpx.AsyncClient, channel: str, text: str) -> None:
        """``send_event(channel, "message", {"text": text})`` in the origin (published to the
        proxy before the answer)."""
        r = await client.post(f"{self.origin.url}/es/send", data={"channel": channel, "text": text})
        assert (r.status_code, r.text) == (200, "Ok\n"), r.text

    async def store(self, client: httpx.AsyncClient, channel: str, text: str) -> None:
        """Store an event without publishing it (a lost publish)."""
        r = await client.post(
            f"{self.origin.url}/es/store", data={"channel": channel, "text": text}
        )
        assert (r.status_code, r.text) == (200, "Ok\n"), r.text


@pytest.fixture(params=PROXIES)
def es(
    request: pytest.FixtureRequest,
    grip_proxy_factory: GripProxyFactory,
    grip_origin_factory: GripOriginFactory,
) -> Iterator[EventStreamStack]:
    origin_port = free_port()
    proxy = grip_proxy_factory(request.param, origin_port, over_http=True)
    origin = grip_origin_factory(
        proxy.control_uri, impl="django_grip", port=origin_port, eventstream=True
    )
    yield EventStreamStack(proxy, origin)
    for name, output in ((f"{request.param} proxy", proxy.output), ("origin", origin.output)):
        with contextlib.suppress(OSError):
            print(f"\n===== {name} (last 12000 chars)\n{output()[-12000:]}")


@contextlib.asynccontextmanager
async def sse(
    client: httpx.AsyncClient, url: str, last_event_id: str | None = None
) -> AsyncIterator[SSEReader]:
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with client.stream("GET", url, headers=headers) as resp:
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert not [k for k in resp.headers if k.lower().startswith("grip-")], resp.headers
        yield SSEReader(resp)


async def stream_open(reader: SSEReader) -> None:
    """The initial body (2 KiB padding comment, ``event: stream-open``): the hold is set up."""
    ev = await reader.next(WAIT, dataless=True)
    assert (ev.event, ev.data) == ("stream-open", ""), ev


async def next_message(reader: SSEReader) -> Event:
    """The next ``message`` event (keep-alives and stream-open carry no data and are skipped
    by SSEReader; anything else is a failure)."""
    ev = await reader.next(WAIT)
    assert ev.event == "message", ev
    return ev


async def test_send_event_is_delivered_over_sse(es: EventStreamStack) -> None:
    channel = f"ch{uuid.uuid4().hex[:8]}"
    url = f"{es.proxy.url}/events/?channel={channel}"
    async with httpx.AsyncClient(timeout=httpx.Timeout(WAIT, read=None)) as c, sse(c, url) as r:
        await stream_open(r)
        for i in range(1, 4):
            await es.send(c, channel, f"hello {i}")
        for i in range(1, 4):
            ev = await next_message(r)
            assert ev.json == {"text": f"hello {i}"}
            assert ev.id == f"{channel}:{i}"  # the proxy rendered %I (build-id filter)


async def test_last_event_id_resumes_missed_events(es: EventStreamStack) -> None:
    channel = f"ch{uuid.uuid4().hex[:8]}"
    url = f"{es.proxy.url}/events/?channel={channel}"
    async with httpx.AsyncClient(timeout=httpx.Timeout(WAIT, read=None)) as c:
        async with sse(c, url) as r:
            await stream_open(r)
            await es.send(c, channel, "one")
            first = await next_message(r)
            assert (first.json, first.id) == ({"text": "one"}, f"{channel}:1")

        # disconnected: these two are missed
        await es.send(c, channel, "two")
        await es.send(c, channel, "three")

        async with sse(c, url, last_event_id=first.id) as r:
            two, three = await next_message(r), await next_message(r)
            assert (two.json, two.id) == ({"text": "two"}, f"{channel}:2")
            assert (three.json, three.id) == ({"text": "three"}, f"{channel}:3")
            # and the resumed stream is live
            await es.send(c, channel, "four")
            four = await next_message(r)
            assert (four.json, four.id) == ({"text": "four"}, f"{channel}:4")


async def test_lost_publish_is_recovered_through_next_link(es: EventStreamStack) -> None:
    """Event 2 is stored but never published; event 3's ``prev-id=2`` does not follow what the
    client has (1), so the proxy fetches the hold's next link (``GET /events/?...&link=next&
    recover=true&es-meta=...`` with ``Grip-Last: events-<ch>; last-id=1``) and the origin
    answers with events 2 and 3."""
    channel = f"ch{uuid.uuid4().hex[:8]}"
    url = f"{es.proxy.url}/events/?channel={channel}"
    async with httpx.AsyncClient(timeout=httpx.Timeout(WAIT, read=None)) as c, sse(c, url) as r:
        await stream_open(r)
        await es.send(c, channel, "one")
        one = await next_message(r)
        assert (one.json, one.id) == ({"text": "one"}, f"{channel}:1")
        await es.store(c, channel, "two")
        await es.send(c, channel, "three")
        two, three = await next_message(r), await next_message(r)
        assert (two.json, two.id) == ({"text": "two"}, f"{channel}:2")
        assert (three.json, three.id) == ({"text": "three"}, f"{channel}:3")
        await es.send(c, channel, "four")
        four = await next_message(r)
        assert (four.json, four.id) == ({"text": "four"}, f"{channel}:4")


async def test_origin_answers_hold_instructions(grip_origin_factory: GripOriginFactory) -> None:
    """What django-eventstream answers a request Pushpin signed: the instructions a proxy has
    to follow (checked on the origin alone; nothing is published)."""
    origin = grip_origin_factory(
        f"http://127.0.0.1:{free_port()}", impl="django_grip", eventstream=True
    )
    channel = f"ch{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=WAIT) as c:
        r = await c.get(
            f"{origin.url}/events/", params={"channel": channel},
            headers={"Grip-Sig": grip_sig(), "Accept": "text/event-stream"},
        )  # fmt: skip
    assert r.status_code == 200, origin.output()
    assert r.headers["Content-Type"] == "text/event-stream"
    assert r.text == ":" + " " * 2048 + "\n\nevent: stream-open\ndata:\n\n"
    assert r.headers["Grip-Hold"] == "stream"
    assert r.headers["Grip-Channel"] == (
        f"events-{channel}; prev-id=0; filter=build-id; filter=skip-users, "
        "user-anonymous; filter=require-sub"
    )
    keep_alive = "event: keep-alive\\ndata:\\n\\n; format=cstring; timeout=20"
    assert r.headers["Grip-Keep-Alive"] == keep_alive
    meta = r.headers["Grip-Set-Meta"]
    assert f'id_format="{channel}:%(events-{channel})s"' in meta
    assert 'user="anonymous"' in meta
    link = r.headers["Grip-Link"]
    assert link.startswith(f"</events/?channel={channel}&link=next&recover=true&es-meta=")
    assert link.endswith(">; rel=next")
    es_meta = link[link.index("es-meta=") + len("es-meta=") : link.index(">")]
    claims = jwt.decode(es_meta, options={"verify_signature": False})
    assert (claims["iss"], claims["channels"], claims["user"]) == ("es", [channel], "anonymous")
