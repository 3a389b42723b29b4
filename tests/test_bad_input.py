"""Bad input on the WebSocket transport: every case gets Centrifugo's documented answer and
the hub goes on serving everyone else.

Each test connects a well-behaved `Watcher` (the `websockets` library, subscribed to a chat
channel) *before* the misbehaving client, and ends with `assert_still_serving`: a publication
through the server API must still reach the watcher. Clients that must break the WebSocket
framing itself (unmasked frames, a reader that stops reading) use `RawWebSocket`, a few lines of
RFC 6455 over a plain non-blocking socket.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import API_KEY, CHAT_NAMESPACE, HMAC_SECRET, Hub, HubFactory

WAIT = 4.0  # seconds any single expected event may take before the test fails

# A namespace a client may not subscribe to, and one it may subscribe to but not publish in.
LOCKED_NAMESPACES = """
[namespaces.locked]
presence = true

[namespaces.readonly]
allow_subscribe_for_client = true
"""


# -- tokens ----------------------------------------------------------------------------------


def connection_token(user: str = "alice", ttl: int = 3600, secret: str = HMAC_SECRET) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + ttl}, secret, algorithm="HS256")


def unique_channel(prefix: str = "chat") -> str:
    return f"{prefix}:{uuid.uuid4().hex[:12]}"


# -- server API --------------------------------------------------------------------------------


async def api(hub: Hub, method: str, body: object) -> Any:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        resp = await client.post(f"{hub.url}/api/{method}", json=body,
                                 headers={"X-API-Key": API_KEY})
    assert resp.status_code == 200, resp.text
    return resp.json()


async def publish(hub: Hub, channel: str, data: object) -> Any:
    answer = await api(hub, "publish", {"channel": channel, "data": data})
    assert "error" not in answer, answer
    return answer["result"]


# -- a client on the `websockets` library ------------------------------------------------------


async def ws_open(hub: Hub, **kwargs: Any) -> ClientConnection:
    return await connect(hub.ws_url, proxy=None, open_timeout=WAIT, close_timeout=1, **kwargs)


async def ws_reply(ws: ClientConnection, cmd_id: int) -> dict[str, Any]:
    """The reply to command ``cmd_id``; pushes and server pings are skipped."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        timeout = deadline - asyncio.get_running_loop().time()
        frame = await asyncio.wait_for(ws.recv(), max(timeout, 0.01))
        for line in str(frame).split("\n"):
            if not line.strip():
                continue
            msg = json.loads(line)
            if msg.get("id") == cmd_id:
                return msg  # type: ignore[no-any-return]


async def ws_command(ws: ClientConnection, cmd_id: int, method: str,
                     params: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps({"id": cmd_id, method: params}))
    return await ws_reply(ws, cmd_id)


async def ws_connected(hub: Hub, user: str = "alice", **kwargs: Any) -> ClientConnection:
    ws = await ws_open(hub, **kwargs)
    reply = await ws_command(ws, 1, "connect", {"token": connection_token(user)})
    assert "connect" in reply, reply
    return ws


async def expect_close(ws: ClientConnection) -> tuple[int, str]:
    """Read until the hub closes the connection; the code and reason of its close frame."""
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(WAIT):
            while True:
                await ws.recv()
    rcvd = info.value.rcvd
    assert rcvd is not None, "the connection ended without a close frame from the hub"
    return rcvd.code, rcvd.reason


# -- the well-behaved client ---------------------------------------------------------------------


class Watcher:
    """Connected and subscribed before the bad client; reads everything all the time."""

    def __init__(self, ws: ClientConnection, channel: str) -> None:
        self.ws = ws
        self.channel = channel
        self.pubs: asyncio.Queue[Any] = asyncio.Queue()
        self.received = 0
        self.closed: ConnectionClosed | None = None
        self._progress = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, hub: Hub, channel: str | None = None) -> Watcher:
        channel = channel or unique_channel()
        ws = await ws_connected(hub, "watcher")
        reply = await ws_command(ws, 2, "subscribe", {"channel": channel})
        assert "subscribe" in reply, reply
        return cls(ws, channel)

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                for line in str(frame).split("\n"):
                    if not line.strip():
                        continue
                    msg = json.loads(line)
                    push = msg.get("push")
                    if push and push.get("channel") == self.channel and "pub" in push:
                        self.received += 1
                        self.pubs.put_nowait(push["pub"]["data"])
                        self._progress.set()
        except ConnectionClosed as exc:
            self.closed = exc
            self._progress.set()

    async def wait_received(self, n: int) -> None:
        """Until ``n`` publications have arrived in all (or the connection closed)."""
        async with asyncio.timeout(WAIT):
            while self.received < n and self.closed is None:
                self._progress.clear()
                await self._progress.wait()

    async def next_pub(self) -> Any:
        return await asyncio.wait_for(self.pubs.get(), WAIT)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.ws.close()


async def assert_still_serving(hub: Hub, watcher: Watcher) -> None:
    """The hub still delivers to the client that behaved; it stays connected."""
    marker = {"still": uuid.uuid4().hex}
    await publish(hub, watcher.channel, marker)
    while True:
        data = await watcher.next_pub()
        if data == marker:
            break
    assert watcher.closed is None, f"the well-behaved client was closed: {watcher.closed!r}"
    assert hub.process.poll() is None, "the hub process exited"
    await watcher.close()


# -- a hand-made RFC 6455 client on a plain socket ------------------------------------------------


class RawWebSocket:
    """Reads only when asked to: a client that stops reading really stops."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.eof = False

    @classmethod
    async def open(cls, hub: Hub, *, rcvbuf: int = 0, origin: str | None = None) -> RawWebSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            # Before connect(), so the advertised window stays small.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        raw = cls(sock)
        await raw.loop.sock_connect(sock, ("127.0.0.1", hub.port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET /connection/websocket HTTP/1.1", f"Host: 127.0.0.1:{hub.port}",
                 "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13"]
        if origin is not None:
            lines.append(f"Origin: {origin}")
        await raw.loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in raw.buf:
            await raw._fill()
            assert not raw.eof, f"handshake answer cut short: {bytes(raw.buf)!r}"
        head, _, rest = bytes(raw.buf).partition(b"\r\n\r\n")
        raw.buf = bytearray(rest)
        status = head.split(b"\r\n", 1)[0]
        assert status.startswith(b"HTTP/1.1 101"), head
        return raw

    async def _fill(self) -> None:
        async with asyncio.timeout(WAIT):
            chunk = await self.loop.sock_recv(self.sock, 65536)
        if not chunk:
            self.eof = True
        self.buf += chunk

    async def send_frame(self, opcode: int, payload: bytes, *, masked: bool = True) -> None:
        head = bytearray([0x80 | opcode])
        n = len(payload)
        mask_bit = 0x80 if masked else 0
        if n < 126:
            head.append(mask_bit | n)
        elif n < 65536:
            head += struct.pack("!BH", mask_bit | 126, n)
        else:
            head += struct.pack("!BQ", mask_bit | 127, n)
        if masked:
            mask = os.urandom(4)
            head += mask
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await self.loop.sock_sendall(self.sock, bytes(head) + payload)

    async def send_json(self, obj: object) -> None:
        await self.send_frame(0x1, json.dumps(obj).encode())

    async def recv_frame(self) -> tuple[int, bytes] | None:
        """The next whole frame from the hub, None at end of stream."""
        while True:
            buf = self.buf
            if len(buf) >= 2:
                assert not buf[1] & 0x80, "the hub masked a frame"
                n = buf[1] & 0x7F
                head = 2
                if n == 126 and len(buf) >= 4:
                    (n,) = struct.unpack_from("!H", buf, 2)
                    head = 4
                elif n == 127 and len(buf) >= 10:
                    (n,) = struct.unpack_from("!Q", buf, 2)
                    head = 10
                if (n < 126 or head > 2) and len(buf) >= head + n:
                    opcode = buf[0] & 0x0F
                    payload = bytes(buf[head:head + n])
                    del buf[:head + n]
                    return opcode, payload
            if self.eof:
                return None
            await self._fill()

    async def reply(self, cmd_id: int) -> dict[str, Any]:
        while True:
            frame = await self.recv_frame()
            assert frame is not None, "connection closed while waiting for a reply"
            opcode, payload = frame
            assert opcode == 0x1, (opcode, payload)
            for line in payload.split(b"\n"):
                if line.strip():
                    msg = json.loads(line)
                    if msg.get("id") == cmd_id:
                        return msg  # type: ignore[no-any-return]

    async def close_code(self) -> tuple[int, str]:
        """Read until the hub's close frame; its code and reason."""
        while True:
            frame = await self.recv_frame()
            assert frame is not None, "the hub ended the stream without a close frame"
            opcode, payload = frame
            if opcode == 0x8:
                (code,) = struct.unpack("!H", payload[:2])
                return code, payload[2:].decode()

    def close(self) -> None:
        self.sock.close()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS line")


def metric_value(hub: Hub, name: str, labels: dict[str, str]) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{hub.url}/metrics", timeout=5, trust_env=False).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                return float(sample.value)
    return 0.0


# -- malformed frames and commands ----------------------------------------------------------------


async def test_malformed_json_closes_3501(hub: Hub) -> None:
    watcher = await Watcher.start(hub)
    ws = await ws_connected(hub)
    await ws.send("{this is not json")
    assert await expect_close(ws) == (3501, "bad request")
    await assert_still_serving(hub, watcher)


async def test_wrong_shape_command_closes_3501(hub: Hub) -> None:
    watcher = await Watcher.start(hub)
    ws = await ws_connected(hub)
    await ws.send(json.dumps({"id": 2, "subscribe": {"channel": 5}}))
    assert await expect_close(ws) == (3501, "bad request")
    await assert_still_serving(hub, watcher)


async def test_command_before_connect_closes_3501(hub: Hub) -> None:
    watcher = await Watcher.start(hub)
    ws = await ws_open(hub)
    await ws.send(json.dumps({"id": 1, "subscribe": {"channel": watcher.channel}}))
    assert await expect_close(ws) == (3501, "bad request")
    await assert_still_serving(hub, watcher)


async def test_second_connect_closes_3501(hub: Hub) -> None:
    watcher = await Watcher.start(hub)
    ws = await ws_connected(hub)
    await ws.send(json.dumps({"id": 2, "connect": {"token": connection_token()}}))
    assert await expect_close(ws) == (3501, "bad request")
    await assert_still_serving(hub, watcher)


@pytest.mark.parametrize("command", [
    {"id": 7, "no_such_method": {"channel": "chat:x"}},
    {"id": 7},
])
async def test_unknown_or_empty_method_is_error_104(hub: Hub, command: dict[str, Any]) -> None:
    """A command with an id but no method Clarion knows: 104 "method not found"; the connection
    stays usable (Centrifugo ignores unknown fields, so both decode to a method-less command)."""
    watcher = await Watcher.start(hub)
    ws = await ws_connected(hub)
    await ws.send(json.dumps(command))
    reply = await ws_reply(ws, 7)
    assert reply["error"] == {"code": 104, "message": "method not found"}
    ok = await ws_command(ws, 8, "subscribe", {"channel": unique_channel()})
    assert "subscribe" in ok, ok
    await ws.close()
    await assert_still_serving(hub, watcher)


async def test_oversized_frame_closes_1009(hub_factory: HubFactory) -> None:
    hub = hub_factory("client_max_message_size = 1024\n" + CHAT_NAMESPACE)
    watcher = await Watcher.start(hub)
    ws = await ws_connected(hub)
    big = json.dumps({"id": 2, "publish": {"channel": watcher.channel, "data": "x" * 4000}})
    await ws.send(big)
    code, _ = await expect_close(ws)
    assert code == 1009
    await assert_still_serving(hub, watcher)


async def test_unmasked_client_frame_closes_1002(hub: Hub) -> None:
    watcher = await Watcher.start(hub)
    raw = await RawWebSocket.open(hub)
    try:
        await raw.send_json({"id": 1, "connect": {"token": connection_token()}})
        assert "connect" in await raw.reply(1)
        await raw.send_frame(0x1, json.dumps({"id": 2, "presence": {"channel": "chat:x"}})
                             .encode(), masked=False)
        code, _ = await raw.close_code()
        assert code == 1002
    finally:
        raw.close()
    await assert_still_serving(hub, watcher)


# -- authentication -------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [
    connection_token(secret="a-different-secret-that-is-long-enough-too"),
    "garbage",
    "not.a.jwt",
], ids=["bad-signature", "garbage", "three-garbage-parts"])
async def test_invalid_token_closes_3500(hub: Hub, token: str) -> None:
    watcher = await Watcher.start(hub)
    ws = await ws_open(hub)
    await ws.send(json.dumps({"id": 1, "connect": {"token": token}}))
    assert await expect_close(ws) == (3500, "invalid token")
    await assert_still_serving(hub, watcher)


async def test_expired_token_is_error_109(hub: Hub) -> None:
    watcher = await Watcher.start(hub)
    ws = await ws_open(hub)
    reply = await ws_command(ws, 1, "connect", {"token": connection_token(ttl=-60)})
    assert reply["error"]["code"] == 109
    assert reply["error"]["message"] == "token expired"
    # Not connected: a retry with a fresh token works on the same connection.
    reply = await ws_command(ws, 2, "connect", {"token": connection_token()})
    assert "connect" in reply, reply
    await ws.close()
    await assert_still_serving(hub, watcher)


async def test_no_token_without_anonymous_closes_3500(hub: Hub) -> None:
    watcher = await Watcher.start(hub)
    ws = await ws_open(hub)
    await ws.send(json.dumps({"id": 1, "connect": {}}))
    assert await expect_close(ws) == (3500, "invalid token")
    await assert_still_serving(hub, watcher)


async def test_ticket_is_single_use(hub: Hub) -> None:
    watcher = await Watcher.start(hub)
    answer = await api(hub, "ticket", {"user": "42"})
    ticket = answer["result"]["ticket"]
    first = await ws_open(hub)
    reply = await ws_command(first, 1, "connect", {"token": ticket})
    assert "connect" in reply, reply
    second = await ws_open(hub)
    await second.send(json.dumps({"id": 1, "connect": {"token": ticket}}))
    assert await expect_close(second) == (3500, "invalid token")
    await first.close()
    await assert_still_serving(hub, watcher)


async def test_expired_ticket_closes_3500(hub: Hub) -> None:
    watcher = await Watcher.start(hub)
    answer = await api(hub, "ticket", {"user": "42", "ttl": 1})
    assert answer["result"]["expires_in"] == 1
    await asyncio.sleep(1.3)
    ws = await ws_open(hub)
    await ws.send(json.dumps({"id": 1, "connect": {"token": answer["result"]["ticket"]}}))
    assert await expect_close(ws) == (3500, "invalid token")
    await assert_still_serving(hub, watcher)


# -- permissions and limits -----------------------------------------------------------------------


@pytest.mark.parametrize(("channel", "code", "message"), [
    ("locked:room", 103, "permission denied"),
    ("nowhere:room", 102, "unknown channel"),
])
async def test_subscribe_refused(hub_factory: HubFactory, channel: str, code: int,
                                 message: str) -> None:
    hub = hub_factory(CHAT_NAMESPACE + LOCKED_NAMESPACES)
    watcher = await Watcher.start(hub)
    ws = await ws_connected(hub)
    reply = await ws_command(ws, 2, "subscribe", {"channel": channel})
    assert reply["error"] == {"code": code, "message": message}
    # An error reply is not a disconnect.
    assert "subscribe" in await ws_command(ws, 3, "subscribe", {"channel": unique_channel()})
    await ws.close()
    await assert_still_serving(hub, watcher)


async def test_publish_without_permission_is_103(hub_factory: HubFactory) -> None:
    hub = hub_factory(CHAT_NAMESPACE + LOCKED_NAMESPACES)
    watcher = await Watcher.start(hub)
    ws = await ws_connected(hub)
    # readonly: subscribing is allowed, publishing is not.
    assert "subscribe" in await ws_command(ws, 2, "subscribe", {"channel": "readonly:news"})
    reply = await ws_command(ws, 3, "publish", {"channel": "readonly:news", "data": {"x": 1}})
    assert reply["error"] == {"code": 103, "message": "permission denied"}
    # chat allows publishing for subscribers only: not subscribed to this one.
    reply = await ws_command(ws, 4, "publish", {"channel": unique_channel(), "data": {"x": 1}})
    assert reply["error"] == {"code": 103, "message": "permission denied"}
    await ws.close()
    await assert_still_serving(hub, watcher)
    assert watcher.received == 1  # nothing the refused publishes sent got through


async def test_already_subscribed_is_105(hub: Hub) -> None:
    watcher = await Watcher.start(hub)
    ws = await ws_connected(hub)
    channel = unique_channel()
    assert "subscribe" in await ws_command(ws, 2, "subscribe", {"channel": channel})
    reply = await ws_command(ws, 3, "subscribe", {"channel": channel})
    assert reply["error"] == {"code": 105, "message": "already subscribed"}
    await ws.close()
    await assert_still_serving(hub, watcher)


async def test_channel_limit_is_106(hub_factory: HubFactory) -> None:
    hub = hub_factory("client_channel_limit = 2\n" + CHAT_NAMESPACE)
    watcher = await Watcher.start(hub)
    ws = await ws_connected(hub)
    assert "subscribe" in await ws_command(ws, 2, "subscribe", {"channel": unique_channel()})
    assert "subscribe" in await ws_command(ws, 3, "subscribe", {"channel": unique_channel()})
    reply = await ws_command(ws, 4, "subscribe", {"channel": unique_channel()})
    assert reply["error"] == {"code": 106, "message": "limit exceeded"}
    await ws.close()
    await assert_still_serving(hub, watcher)


async def test_command_rate_limit_is_111(hub_factory: HubFactory) -> None:
    hub = hub_factory("client_command_rate_limit = 0.5\nclient_command_burst = 4\n"
                      + CHAT_NAMESPACE)
    watcher = await Watcher.start(hub)  # connect + subscribe: 2 of its own burst of 4
    ws = await ws_connected(hub)  # 1 of 4
    channel = unique_channel()
    assert "subscribe" in await ws_command(ws, 2, "subscribe", {"channel": channel})  # 2 of 4
    ids = range(3, 11)
    await ws.send("\n".join(json.dumps({"id": i, "presence_stats": {"channel": channel}})
                            for i in ids))
    replies = [await ws_reply(ws, i) for i in ids]
    assert "presence_stats" in replies[0] and "presence_stats" in replies[1], replies
    limited = [r for r in replies if "error" in r]
    assert len(limited) >= 4, replies
    for reply in limited:
        assert reply["error"]["code"] == 111, reply
        assert reply["error"]["message"] == "too many requests"
    await ws.close()
    await assert_still_serving(hub, watcher)


# -- a client that never reads --------------------------------------------------------------------


async def test_client_that_stops_reading_is_closed_slow(hub_factory: HubFactory) -> None:
    """A reader that stops reading while ~10 KB publications flow is told 3008 "slow" and
    dropped once its backlog passes client_queue_max_size; the fast reader misses nothing."""
    hub = hub_factory("client_queue_max_size = 65536\n" + CHAT_NAMESPACE)
    watcher = await Watcher.start(hub)
    # The slow reader sits in 20 channels (the watcher's among them), so one broadcast call
    # sends it 20 publications of 10 KB: megabytes flow in a few dozen API calls.
    channels = [watcher.channel] + [unique_channel() for _ in range(19)]
    raw = await RawWebSocket.open(hub, rcvbuf=4096)
    try:
        await raw.send_json({"id": 1, "connect": {"token": connection_token("slowpoke")}})
        assert "connect" in await raw.reply(1)
        for n, channel in enumerate(channels, start=2):
            await raw.send_json({"id": n, "subscribe": {"channel": channel}})
            assert "subscribe" in await raw.reply(n)
        rss_before = rss_kib(hub.process.pid)
        # From here on the raw client reads nothing.
        count = 60  # x 20 channels x 10 KB = 12 MB for the slow reader
        payload = "x" * 10_000
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            for i in range(count):
                resp = await client.post(f"{hub.url}/api/broadcast",
                                         json={"channels": channels,
                                               "data": {"i": i, "p": payload}},
                                         headers={"X-API-Key": API_KEY})
                assert resp.status_code == 200, resp.text
                assert all("result" in r for r in resp.json()["result"]["responses"])
                # This process both publishes and reads for the watcher: let it keep up, as
                # a well-behaved client on its own would.
                await watcher.wait_received(i + 1)
        rss_after = rss_kib(hub.process.pid)
        # The well-behaved client got every publication, in order.
        seen = [(await watcher.next_pub())["i"] for _ in range(count)]
        assert seen == list(range(count))
        assert watcher.closed is None
        # The hub gave up on the reader: it counted a 3008 disconnect...
        assert metric_value(hub, "clarion_disconnects_total", {"code": "3008"}) >= 1
        # ...and the reader, reading at last, finds the close frame (or the socket aborted).
        got = 0
        close: tuple[int, str] | None = None
        with contextlib.suppress(ConnectionError):
            while True:
                frame = await raw.recv_frame()
                if frame is None:
                    break
                opcode, body = frame
                if opcode == 0x8:
                    close = struct.unpack("!H", body[:2])[0], body[2:].decode()
                    break
                got += body.count(b'"pub"')
        assert close is None or close == (3008, "slow"), close
        assert got < count * len(channels), "the reader got everything: never judged slow"
        # Its queue was bounded: nowhere near the 12 MB it was sent is kept for it.
        assert rss_after - rss_before < 32 * 1024, (rss_before, rss_after)
    finally:
        raw.close()
    await assert_still_serving(hub, watcher)


# -- origin checks --------------------------------------------------------------------------------


async def test_foreign_origin_refused_403(hub: Hub) -> None:
    watcher = await Watcher.start(hub)
    with pytest.raises(InvalidStatus) as info:
        await ws_open(hub, origin="http://evil.example.com")
    assert info.value.response.status_code == 403
    await assert_still_serving(hub, watcher)


@pytest.mark.parametrize("origin", ["http://localhost:3000", "http://127.0.0.1:8080"])
async def test_allowed_origin_accepted_101(hub: Hub, origin: str) -> None:
    ws = await ws_open(hub, origin=origin)
    assert ws.response is not None and ws.response.status_code == 101
    reply = await ws_command(ws, 1, "connect", {"token": connection_token()})
    assert "connect" in reply
    await ws.close()
