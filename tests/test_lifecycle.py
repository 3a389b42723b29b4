"""Process lifecycle: graceful shutdown, idle-connection housekeeping, token expiry."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import httpx
import websockets
from tests.conftest import CHAT_NAMESPACE, Hub, HubFactory, token


async def connect(hub: Hub, tok: str, channel: str | None = None) -> Any:
    ws = await websockets.connect(hub.ws_url)
    frame = json.dumps({"id": 1, "connect": {"token": tok}})
    if channel:
        frame += "\n" + json.dumps({"id": 2, "subscribe": {"channel": channel}})
    await ws.send(frame)
    replies = 0
    while replies < (2 if channel else 1):
        for line in (await asyncio.wait_for(ws.recv(), 5)).split("\n"):
            msg = json.loads(line)
            assert "error" not in msg, msg
            replies += "id" in msg
    return ws


async def test_graceful_shutdown_tells_clients_to_reconnect(hub: Hub) -> None:
    ws = await connect(hub, token("a"), "chat:s")
    started = time.monotonic()
    hub.process.send_signal(signal.SIGTERM)
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None
        assert (closed.rcvd.code, closed.rcvd.reason) == (3001, "shutdown")
    assert hub.process.wait(15) == 0
    assert time.monotonic() - started < 12  # within shutdown_timeout (10 s) and change
    assert "hub stopped" in hub.output()


async def test_stale_connection_without_connect_is_closed(hub_factory: Any) -> None:
    hub = hub_factory("client_stale_close_delay = 1\n" + CHAT_NAMESPACE)
    ws = await websockets.connect(hub.ws_url)
    try:
        await asyncio.wait_for(ws.recv(), 6)
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 3502


async def test_client_that_never_pongs_is_closed(hub_factory: Any) -> None:
    hub = hub_factory("ping_interval = 1\npong_timeout = 1\n" + CHAT_NAMESPACE)
    ws = await connect(hub, token("b"))
    pings = 0
    try:
        while True:
            msg = await asyncio.wait_for(ws.recv(), 8)
            pings += msg == "{}"
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 3012
    assert pings >= 1


async def test_client_that_pongs_stays(hub_factory: Any) -> None:
    hub = hub_factory("ping_interval = 1\npong_timeout = 1\n" + CHAT_NAMESPACE)
    ws = await connect(hub, token("c"), "chat:p")
    pings = 0
    while pings < 3:
        if await asyncio.wait_for(ws.recv(), 5) == "{}":
            pings += 1
            await ws.send("{}")
    hub.api("publish", {"channel": "chat:p", "data": {"alive": True}})
    push = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert push["push"]["pub"]["data"] == {"alive": True}
    await ws.close()


async def test_expired_connection_without_refresh_is_closed(hub_factory: Any) -> None:
    hub = hub_factory("client_expired_close_delay = 0\n" + CHAT_NAMESPACE)
    ws = await connect(hub, token("d", exp=int(time.time()) + 2))
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 8)
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None
        assert (closed.rcvd.code, closed.rcvd.reason) == (3005, "connection expired")


async def test_late_connect_is_not_judged_by_a_ping_it_never_got(hub_factory: Any) -> None:
    """A socket opened before a ping round but connected after it must not get 3012."""
    hub = hub_factory("ping_interval = 2\npong_timeout = 1\n" + CHAT_NAMESPACE)
    ws = await websockets.connect(hub.ws_url)
    await asyncio.sleep(2.5)  # a ping round passes before this client connects
    await ws.send(json.dumps({"id": 1, "connect": {"token": token("late")}}))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            msg = await asyncio.wait_for(ws.recv(), deadline - time.monotonic())
        except TimeoutError:
            break
        if msg == "{}":
            await ws.send("{}")
    assert ws.close_code is None  # still open
    await ws.close()


def test_sighup_to_one_hub_process_is_ignored_with_a_warning(hub_factory: HubFactory) -> None:
    # Its default would end the process at once, without the graceful shutdown; only a
    # supervisor (--workers) can reload.
    hub = hub_factory()
    hub.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "SIGHUP ignored" not in hub.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "SIGHUP ignored" in hub.output()
    assert hub.process.poll() is None
    assert httpx.get(f"{hub.url}/health", timeout=5).status_code == 200
