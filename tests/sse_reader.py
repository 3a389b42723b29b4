"""Reads a real SSE or NDJSON response with httpx, event by event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Event:
    data: str = ""
    id: str | None = None
    event: str | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> Any:
        return json.loads(self.data)


class _Lines:
    """Lines of a response, pumped by a task so that a timed-out wait loses nothing
    (cancelling a wait on the async generator itself would close it)."""

    def __init__(self, response: httpx.Response) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.ended_by: Exception | None = None
        self._task = asyncio.ensure_future(self._pump(response.aiter_lines()))

    async def _pump(self, lines: AsyncIterator[str]) -> None:
        try:
            async for line in lines:
                await self._queue.put(line)
        except (httpx.StreamClosed, httpx.ReadError) as exc:
            # The test closed the response, or the hub closed the stream: both end it.
            self.ended_by = exc
        finally:
            await self._queue.put(None)

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        line = await self._queue.get()
        if line is None:
            self._queue.put_nowait(None)
            raise StopAsyncIteration
        return line


class SSEReader:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = _Lines(response)
        self.comments: list[str] = []
        self.retry: int | None = None
        self._partial = Event()

    async def next(self, timeout: float = 5.0, *, dataless: bool = False) -> Event:
        """The next event; with ``dataless`` also one without data (e.g. ``event: x\ndata:``),
        which the spec does not dispatch."""
        return await asyncio.wait_for(self._next(dataless), timeout)

    async def _next(self, dataless: bool = False) -> Event:
        ev = self._partial
        has_field = bool(ev.data or ev.id or ev.event)
        async for line in self._lines:
            if line == "":
                if has_field and (ev.data or dataless):
                    self._partial = Event()
                    return ev
                # Per the spec an event without data is not dispatched (e.g. "retry:").
                ev, has_field = Event(), False
                self._partial = ev
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            has_field = True
            if name == "data":
                ev.data = value if not ev.data else ev.data + "\n" + value
            elif name == "id":
                ev.id = value
            elif name == "event":
                ev.event = value
            elif name == "retry":
                self.retry = int(value)
        raise EOFError("stream ended")


    async def next_pub(self, timeout: float = 5.0) -> Event:
        """The next publication or position event, skipping join/leave pushes."""
        while True:
            ev = await self.next(timeout)
            if ev.event is not None or not ({"join", "leave"} & set(ev.json)):
                return ev


class LineReader:
    def __init__(self, response: httpx.Response) -> None:
        self._lines = _Lines(response)
        self.blank = 0

    async def next(self, timeout: float = 5.0) -> Any:
        async def read() -> Any:
            async for line in self._lines:
                if line.strip():
                    return json.loads(line)
                self.blank += 1
            raise EOFError("stream ended")

        return await asyncio.wait_for(read(), timeout)

    async def next_pub(self, timeout: float = 5.0) -> Any:
        while True:
            line = await self.next(timeout)
            if not ({"join", "leave"} & set(line)):
                return line
