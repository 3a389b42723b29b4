"""SSE, NDJSON streaming and long-polling, read by httpx from a real hub."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
from tests.conftest import Hub, token
from tests.sse_reader import LineReader, SSEReader


def publish(hub: Hub, channel: str, data: Any) -> dict[str, Any]:
    answer = hub.api("publish", {"channel": channel, "data": data}).json()
    assert "result" in answer, answer
    return answer["result"]  # type: ignore[no-any-return]


async def test_sse_delivers_and_resumes_with_last_event_id(hub: Hub) -> None:
    url = f"{hub.url}/connection/sse"
    params = {"channel": "chat:sse", "token": token("ann")}
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", url, params=params) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            reader = SSEReader(resp)
            connect = (await reader.next()).json["connect"]
            assert connect["subs"]["chat:sse"]["epoch"]
            assert connect["session"].startswith("ses_")
            for i in range(3):
                publish(hub, "chat:sse", {"n": i})
            events = [await reader.next_pub() for _ in range(3)]
        assert [e.json["pub"]["data"] for e in events] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert [e.json["channel"] for e in events] == ["chat:sse"] * 3
        assert all(e.id for e in events)
        last_id = events[-1].id

        for i in range(3, 6):  # missed while away
            publish(hub, "chat:sse", {"n": i})
        params = {"channel": "chat:sse", "token": token("ann")}
        async with client.stream("GET", url, params=params,
                                 headers={"Last-Event-ID": last_id or ""}) as resp:
            reader = SSEReader(resp)
            connect = (await reader.next()).json["connect"]
            assert connect["subs"]["chat:sse"]["recovered"] is True
            missed = [(await reader.next_pub()).json["pub"]["data"] for _ in range(3)]
            assert missed == [{"n": 3}, {"n": 4}, {"n": 5}]
            publish(hub, "chat:sse", {"n": 6})
            assert (await reader.next_pub()).json["pub"]["data"] == {"n": 6}


async def test_sse_ticket_is_single_use_and_session_resumes(hub: Hub) -> None:
    answer = hub.api("ticket", {"user": "bea", "info": {"name": "Bea"}}).json()
    ticket = answer["result"]["ticket"]
    url = f"{hub.url}/connection/sse"
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", url, params={"channel": "chat:t", "token": ticket}) as r:
            assert r.status_code == 200
            reader = SSEReader(r)
            session = (await reader.next()).json["connect"]["session"]
            publish(hub, "chat:t", {"n": 1})
            ev = await reader.next_pub()
        again = await client.get(url, params={"channel": "chat:t", "token": ticket})
        assert again.status_code == 401
        assert again.json()["error"]["code"] == 3500
        publish(hub, "chat:t", {"n": 2})
        async with client.stream("GET", url, params={"channel": "chat:t", "session": session,
                                                     "cursor": ev.id}) as r:
            assert r.status_code == 200
            reader = SSEReader(r)
            await reader.next()
            assert (await reader.next_pub()).json["pub"]["data"] == {"n": 2}


async def test_sse_unrecoverable_position_is_a_clear_event(hub_factory: Any) -> None:
    hub = hub_factory("""
[namespaces.small]
history_size = 2
history_ttl = 300
allow_subscribe_for_client = true
""")
    url = f"{hub.url}/connection/sse"
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", url,
                                 params={"channel": "small:x", "token": token("cy")}) as r:
            reader = SSEReader(r)
            await reader.next()
            publish(hub, "small:x", {"n": 0})
            first = await reader.next_pub()
        for i in range(1, 6):
            publish(hub, "small:x", {"n": i})
        async with client.stream("GET", url, params={"channel": "small:x", "token": token("cy")},
                                 headers={"Last-Event-ID": first.id or ""}) as r:
            reader = SSEReader(r)
            connect = (await reader.next()).json["connect"]
            assert connect["subs"]["small:x"]["recovered"] is False
            ev = await reader.next_pub()
            assert ev.event == "unrecoverable"
            assert ev.json["channel"] == "small:x"
            assert ev.json["offset"] == 6
            publish(hub, "small:x", {"n": 6})
            assert (await reader.next_pub()).json["pub"]["data"] == {"n": 6}


async def test_sse_multi_channel_cursor_resumes_each_channel(hub: Hub) -> None:
    url = f"{hub.url}/connection/sse"
    params = [("channel", "chat:a"), ("channel", "chat:b"), ("token", token("dee"))]
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", url, params=params) as r:
            reader = SSEReader(r)
            await reader.next()
            publish(hub, "chat:a", {"a": 1})
            publish(hub, "chat:b", {"b": 1})
            await reader.next_pub()
            last = await reader.next_pub()
        publish(hub, "chat:a", {"a": 2})
        publish(hub, "chat:b", {"b": 2})
        async with client.stream("GET", url, params=[*params, ("cursor", last.id or "")]) as r:
            reader = SSEReader(r)
            await reader.next()
            got = {tuple(sorted((await reader.next_pub()).json["pub"]["data"].items()))
                   for _ in range(2)}
            assert got == {(("a", 2),), (("b", 2),)}


async def test_sse_keepalive_and_forbidden_channel_and_origin(hub_factory: Any) -> None:
    from tests.conftest import CHAT_NAMESPACE

    hub = hub_factory("ping_interval = 1\n" + CHAT_NAMESPACE)
    url = f"{hub.url}/connection/sse"
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", url,
                                 params={"channel": "chat:k", "token": token("eve")}) as r:
            reader = SSEReader(r)
            await reader.next()
            deadline = time.monotonic() + 5
            while "ping" not in reader.comments and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    await reader.next(timeout=0.5)  # keep-alive wait
            assert "ping" in reader.comments
        denied = await client.get(url, params={"channel": "private:x", "token": token("eve")})
        assert denied.status_code == 404
        assert "private:x" in denied.json()["error"]["message"]
        no_token = await client.get(url, params={"channel": "chat:k"})
        assert no_token.status_code == 401
        evil = await client.get(url, params={"channel": "chat:k", "token": token("eve")},
                                headers={"Origin": "https://evil.example"})
        assert evil.status_code == 403


async def test_http_stream_ndjson_with_cursor(hub: Hub) -> None:
    url = f"{hub.url}/connection/stream"
    params = {"channel": "chat:nd", "token": token("fay")}
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", url, params=params) as r:
            assert r.headers["content-type"].startswith("application/x-ndjson")
            reader = LineReader(r)
            assert "connect" in await reader.next()
            publish(hub, "chat:nd", {"n": 1})
            line = await reader.next_pub()
            assert line["pub"]["data"] == {"n": 1}
            cursor = line["cursor"]
        publish(hub, "chat:nd", {"n": 2})
        async with client.stream("GET", url, params={**params, "cursor": cursor}) as r:
            reader = LineReader(r)
            assert (await reader.next())["connect"]["subs"]["chat:nd"]["recovered"] is True
            assert (await reader.next_pub())["pub"]["data"] == {"n": 2}


async def test_long_poll_cursor_wait_and_timeout(hub: Hub) -> None:
    url = f"{hub.url}/connection/poll"
    tok = token("gus")
    async with httpx.AsyncClient(timeout=20) as client:
        first = (await client.get(url, params={"channel": "chat:p", "token": tok})).json()
        assert first["pushes"] == []
        cursor, session = first["cursor"], first["session"]

        async def later() -> None:
            await asyncio.sleep(0.3)
            publish(hub, "chat:p", {"n": 1})

        task = asyncio.create_task(later())
        waited = (await client.get(url, params={"channel": "chat:p", "session": session,
                                                "cursor": cursor, "timeout": 10})).json()
        await task
        assert [p["pub"]["data"] for p in waited["pushes"]] == [{"n": 1}]

        publish(hub, "chat:p", {"n": 2})
        publish(hub, "chat:p", {"n": 3})
        caught_up = (await client.get(url, params={"channel": "chat:p", "session": session,
                                                   "cursor": waited["cursor"]})).json()
        assert [p["pub"]["data"] for p in caught_up["pushes"]] == [{"n": 2}, {"n": 3}]

        idle = (await client.get(url, params={"channel": "chat:p", "session": session,
                                              "cursor": caught_up["cursor"],
                                              "timeout": 0.5})).json()
        assert idle["pushes"] == []
        assert idle["cursor"] == caught_up["cursor"]
        bad = await client.get(url, params={"channel": "chat:p", "session": session,
                                            "cursor": "garbage"})
        assert bad.status_code == 400
