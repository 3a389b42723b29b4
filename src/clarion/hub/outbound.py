"""Outgoing bytes of one connection: coalesced per loop turn, bounded, never unbounded.

Everything queued for a connection during two turns of the event loop leaves in one write. When
the socket's buffer passes its high-water mark the transport pauses us; what arrives meanwhile
waits in a backlog, and a backlog over ``client_queue_max_size`` bytes means the client is too
slow: it is told so (3008) and closed, and it recovers from history when it comes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

SOCKET_HIGH_WATER = 64 * 1024


class Flusher:
    """Collects the connections that have something to write and flushes them once per turn."""

    __slots__ = ("_after", "_dirty", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 after: Callable[[], None] | None = None) -> None:
        self._loop = loop
        self._after = after
        self._dirty: list[Outbound] = []
        self._scheduled = False

    def mark(self, out: Outbound) -> None:
        self._dirty.append(out)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_next_turn)

    def _flush_next_turn(self) -> None:
        # The flush waits one more turn of the loop. A request read in the poll that came
        # after the first write was queued runs as a task in the turn after that poll: flushed
        # at once, every publication made in separate requests (cent, the Django helpers)
        # would get a flush of its own, one write per subscriber each, while the publications
        # that arrived during one flush never left in one write. One turn later, every request
        # read meanwhile has run; the cost is one extra poll (microseconds).
        self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for out in dirty:
            out.flush()
        if self._after is not None:
            self._after()


class Outbound:
    __slots__ = ("_backlog", "_backlog_size", "_flusher", "_on_slow", "_paused", "_pending",
                 "closing", "max_queue", "transport")

    def __init__(self, transport: asyncio.Transport, flusher: Flusher, max_queue: int,
                 on_slow: Callable[[], None]) -> None:
        self.transport = transport
        self._flusher = flusher
        self.max_queue = max_queue
        self._on_slow = on_slow
        self._pending: list[bytes] | None = None
        self._backlog: list[bytes] | None = None
        self._backlog_size = 0
        self._paused = False
        self.closing = False
        transport.set_write_buffer_limits(high=SOCKET_HIGH_WATER)

    def queue(self, data: bytes) -> None:
        pending = self._pending
        if pending is None:
            if self.closing:
                return
            self._pending = [data]
            self._flusher.mark(self)
        else:
            pending.append(data)

    def frame(self, chunks: list[bytes]) -> bytes:
        """Transports that wrap writes (chunked encoding) override this."""
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def flush(self) -> None:
        pending = self._pending
        self._pending = None
        if not pending or self.closing:
            return
        data = self.frame(pending)
        if self._paused:
            backlog = self._backlog
            if backlog is None:
                self._backlog = [data]
            else:
                backlog.append(data)
            self._backlog_size += len(data)
            if self._backlog_size > self.max_queue:
                self._backlog = None
                self._backlog_size = 0
                self._on_slow()
            return
        self.transport.write(data)

    def write_now(self, data: bytes) -> None:
        """Write past the queue (close frames, handshake answers)."""
        self.flush()
        self.transport.write(data)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        backlog = self._backlog
        if backlog:
            self._backlog = None
            self._backlog_size = 0
            self.transport.write(b"".join(backlog))

    @property
    def buffered(self) -> int:
        return self._backlog_size + self.transport.get_write_buffer_size()
