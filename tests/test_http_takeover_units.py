"""A handler that fails after taking its connection over (a stream's head is out) must not get
an HTTP 500 written into that stream's body: the connection ends unfinished instead."""

from __future__ import annotations

import asyncio
from typing import Any

from clarion.hub.app import Hub
from clarion.hub.config import Config
from clarion.hub.http import HttpProtocol, Request, Response, Takeover


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Stream(Takeover):
    def __init__(self) -> None:
        self.lost: list[BaseException | None] = []

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


async def test_a_failure_after_a_takeover_ends_the_stream_without_an_http_answer() -> None:
    hub = Hub(Config())
    hub._loop = asyncio.get_running_loop()  # what start() sets; no listener is needed here
    stream = Stream()

    async def handler(request: Request, http: HttpProtocol) -> Response | Takeover:
        http.takeover = stream
        assert http.transport is not None
        http.transport.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        raise RuntimeError("broken after the head")

    transport = Transport()
    http = HttpProtocol(hub, handler, 1024)
    http.connection_made(transport)
    http.data_received(b"GET /connection/stream HTTP/1.1\r\nHost: hub\r\n\r\n")
    for _ in range(10):
        await asyncio.sleep(0)
    assert transport.closed
    assert transport.written == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    assert len(stream.lost) == 1 and isinstance(stream.lost[0], RuntimeError)
    assert hub.metrics.failures["handler"] == 1
