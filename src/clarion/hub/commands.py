"""The command loop of a bidirectional connection, whatever carries its frames.

A WebSocket reads frames of client-protocol commands from its socket; an emulated connection
(HTTP streaming, SSE) gets them from ``/emulation`` requests, possibly forwarded by another
node. Either way they go through this one loop: frames run one after another in arrival
order, each command through ``Session.command`` (rate limit, permission checks, replies), a
reply is queued before the next command runs, and work that must follow a reply (going live
after a subscribe) runs after the reply was flushed.
"""

from __future__ import annotations

import asyncio
import time

from clarion.errors import Disconnect
from clarion.hub.held import HeldConnection
from clarion.hub.session import Session
from clarion.protocol import client as proto
from clarion.protocol import codes

# Frames waiting beyond this many: the source is paused (a WebSocket stops reading its
# socket); below RESUME_BELOW it goes on.
PAUSE_ABOVE = 64
RESUME_BELOW = 16


class CommandConnection(HeldConnection):
    """A connection whose session speaks the client protocol both ways."""

    __slots__ = ("_busy", "_inbox", "session")

    session: Session

    def _start_inbox(self) -> None:
        self._inbox: list[tuple[bytes, asyncio.Future[None] | None]] = []
        self._busy = False

    # -- what each transport provides -------------------------------------------------------

    def send(self, body: bytes) -> None:
        """Queue one reply or push frame (a compact JSON document) to the client."""
        raise NotImplementedError

    def ping(self) -> None:
        raise NotImplementedError

    def pause_input(self) -> None:
        """Too many frames wait: stop taking more if the transport can."""

    def resume_input(self) -> None:
        """The backlog is short again."""

    # -- the loop ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Frames received and not yet run."""
        return len(self._inbox)

    def feed(self, frame: bytes, done: asyncio.Future[None] | None = None) -> None:
        """Queue one frame of commands; ``done`` resolves once it has run (or the connection
        ended before it could)."""
        if self.out.closing:
            if done is not None and not done.done():
                done.set_result(None)
            return
        self._inbox.append((frame, done))
        if len(self._inbox) > PAUSE_ABOVE:
            self.pause_input()
        if not self._busy:
            self._busy = True
            self.hub.spawn(self._process())

    async def _process(self) -> None:
        session = self.session
        inbox = self._inbox
        cancelled = False
        try:
            while inbox and not self.out.closing:
                frame, done = inbox.pop(0)
                try:
                    await self._run_frame(session, frame)
                finally:
                    if done is not None and not done.done():
                        done.set_result(None)
                if len(inbox) < RESUME_BELOW and not self.out.closing:
                    self.resume_input()
        except asyncio.CancelledError:
            cancelled = True
            raise
        except Disconnect as exc:
            self.disconnect(exc)
        except Exception:
            self.hub.log.exception("command failed", client=session.id)
            self.disconnect(Disconnect(*codes.SERVER_ERROR))
        finally:
            self._busy = False
            if cancelled or self.out.closing:
                # Cancelled (the hub shutting down): the frames left will not run either, and
                # an /emulation request waiting on one must get its answer now, not when its
                # socket is torn down.
                self._drop_inbox()

    async def _run_frame(self, session: Session, frame: bytes) -> None:
        self.hub.metrics.messages_in += 1
        for cmd in proto.decode_commands(frame):
            if cmd.id == 0 and not cmd.method():
                # An empty command is the client's pong.
                session.last_pong = time.monotonic()
                session.ping_sent = 0.0
                continue
            reply = await session.command(cmd)
            if reply is not None:
                self.send(reply)
            if session.post_reply:
                self.out.flush()
                await session.run_post_reply()

    def _drop_inbox(self) -> None:
        """The connection ended: frames still waiting will not run; nobody waits for them."""
        waiting, self._inbox = self._inbox, []
        for _, done in waiting:
            if done is not None and not done.done():
                done.set_result(None)
