"""What every connection the hub holds open (WebSocket, SSE, stream) shares: its outgoing
queue, how it says goodbye, and the bounded wait for a goodbye to be read."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from clarion.errors import Disconnect
from clarion.hub.http import Takeover
from clarion.hub.outbound import Outbound
from clarion.protocol import codes

if TYPE_CHECKING:
    from clarion.hub.app import Hub

CLOSE_GRACE = 5.0  # how long a closing connection may keep its socket to flush its goodbye


class HeldConnection(Takeover):
    __slots__ = ("hub", "out", "transport")

    hub: Hub
    out: Outbound
    transport: asyncio.Transport

    def farewell(self, exc: Disconnect) -> None:
        """Write the transport's own way of saying ``exc`` (a close frame, a last event)."""
        raise NotImplementedError

    def disconnect(self, exc: Disconnect) -> None:
        if self.out.closing:
            return
        self.hub.metrics.disconnects[exc.code] += 1
        self.farewell(exc)
        self.out.closing = True
        self.transport.close()
        self.hub.loop.call_later(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        # A client that never reads would keep the socket (and its buffer) forever.
        if self.transport.get_write_buffer_size() or not self.transport.is_closing():
            self.transport.abort()

    def _slow(self) -> None:
        self.disconnect(Disconnect(*codes.SLOW))

    def pause_writing(self) -> None:
        self.out.pause_writing()

    def resume_writing(self) -> None:
        self.out.resume_writing()
