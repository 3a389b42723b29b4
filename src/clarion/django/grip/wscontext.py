"""``request.wscontext``: one WebSocket-over-HTTP request as gripcontrol's ``WebSocketContext``.

The proxy batches a client's activity into ``POST`` requests with ``application/websocket-events``
bodies; the view reads the events and queues its answer, and the middleware writes the reply
(``OPEN`` if accepted, the queued events, ``CLOSE`` if closed). Behaviour is gripcontrol 4's:
``recv()`` answers every ``PING`` it passes with a ``PONG``, messages the view sends are prefixed
``m:`` (the ``grip`` extension's default message prefix), control messages ``c:``.
"""

from __future__ import annotations

import copy
from typing import Any

from clarion.protocol.grip import wsevents
from clarion.protocol.grip.wsevents import Event

MESSAGE_PREFIX = b"m:"
_READABLE = frozenset({"TEXT", "BINARY", "CLOSE", "DISCONNECT"})


def _bytes(message: str | bytes) -> bytes:
    return message.encode("utf-8") if isinstance(message, str) else message


class WebSocketContext:
    """The events of one WebSocket-over-HTTP request and the answer being built.

    Attributes as gripcontrol's: ``id`` (the ``Connection-Id``), ``in_events``, ``read_index``,
    ``accepted``, ``closed``, ``close_code`` (the client's, after ``recv()`` returned None),
    ``out_close_code``, ``out_events``, ``orig_meta`` and ``meta`` (change ``meta`` to store
    connection meta in the proxy; removed keys are deleted there), ``grip_prefix``.
    """

    def __init__(self, id: str | None, meta: dict[str, str], in_events: list[Event],
                 grip_prefix: str = "") -> None:
        self.id = id
        self.in_events = in_events
        self.read_index = 0
        self.accepted = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed = False
        self.out_close_code: int | None = None
        self.out_close_reason = ""
        self.out_events: list[Event] = []
        self.orig_meta = meta
        self.meta: dict[str, str] = copy.deepcopy(meta)
        self.grip_prefix = grip_prefix

    def is_opening(self) -> bool:
        """Whether this request opens the connection (its first event is ``OPEN``)."""
        return bool(self.in_events) and self.in_events[0].type == "OPEN"

    def accept(self) -> None:
        self.accepted = True

    def close(self, code: int | None = None, reason: str = "") -> None:
        """Close the connection after this reply. Without a code the ``CLOSE`` event carries
        none (the client sees 1005, "no status"); gripcontrol would send an invalid code 0."""
        self.closed = True
        self.out_close_code = code if code is not None else 0
        self.out_close_reason = reason

    def can_recv(self) -> bool:
        self.handle_upcoming_pings_and_pongs()
        return any(e.type in _READABLE for e in self.in_events[self.read_index:])

    def recv_event(self) -> Event:
        """The next TEXT, BINARY, CLOSE or DISCONNECT event as it came (answering pings on the
        way); IndexError when there is none."""
        self.handle_upcoming_pings_and_pongs()
        while self.read_index < len(self.in_events):
            event = self.in_events[self.read_index]
            self.read_index += 1
            if event.type in _READABLE:
                return event
            if event.type == "PING":
                self.out_events.append(Event("PONG", event.content))
        raise IndexError("read from empty buffer")

    def recv(self) -> str | bytes | None:
        """The next message: ``str`` for TEXT, ``bytes`` for BINARY, None when the client
        closed (``close_code`` then holds its code). A DISCONNECT (the client went away without
        a close) raises OSError, as in gripcontrol."""
        event = self.recv_event()
        if event.type == "TEXT":
            return (event.content or b"").decode("utf-8")
        if event.type == "BINARY":
            return event.content or b""
        if event.type == "CLOSE":
            self.close_code, self.close_reason = wsevents.parse_close(event.content)
            return None
        raise OSError("client disconnected unexpectedly")

    def send(self, message: str | bytes) -> None:
        self.out_events.append(Event("TEXT", MESSAGE_PREFIX + _bytes(message)))

    def send_binary(self, message: str | bytes) -> None:
        self.out_events.append(Event("BINARY", MESSAGE_PREFIX + _bytes(message)))

    def send_control(self, message: str | bytes) -> None:
        """A raw control message (JSON text, without the ``c:``)."""
        self.out_events.append(Event("TEXT", wsevents.CONTROL_PREFIX + _bytes(message)))

    def _control(self, type: str, **fields: Any) -> None:
        self.out_events.append(Event("TEXT", wsevents.control_message(type, **fields)))

    def subscribe(self, channel: str, filters: list[str] | None = None) -> None:
        """Subscribe the connection to ``channel`` (``GRIP_PREFIX`` prepended)."""
        if filters:
            self._control("subscribe", channel=self.grip_prefix + channel, filters=filters)
        else:
            self._control("subscribe", channel=self.grip_prefix + channel)

    def unsubscribe(self, channel: str) -> None:
        self._control("unsubscribe", channel=self.grip_prefix + channel)

    def detach(self) -> None:
        """Let the proxy keep the connection without calling the origin again."""
        self._control("detach")

    def handle_upcoming_pings_and_pongs(self) -> None:
        while (self.read_index < len(self.in_events)
               and self.in_events[self.read_index].type in ("PING", "PONG")):
            event = self.in_events[self.read_index]
            self.read_index += 1
            if event.type == "PING":
                self.out_events.append(Event("PONG", event.content))

    # -- the reply (used by the middleware) ------------------------------------------------

    def meta_changes(self) -> dict[str, str]:
        """``Set-Meta-*`` headers to send: changed or new keys (lower-cased) with their
        values, removed keys with an empty value."""
        current = {k.lower(): v for k, v in self.meta.items()}
        changes = {k: "" for k in self.orig_meta if k not in current}
        changes.update({k: v for k, v in current.items() if self.orig_meta.get(k) != v})
        return changes

    def reply_events(self) -> list[Event]:
        events: list[Event] = []
        if self.accepted:
            events.append(Event("OPEN"))
        events.extend(self.out_events)
        if self.closed:
            code = self.out_close_code or None
            events.append(Event("CLOSE", wsevents.close_content(code, self.out_close_reason)
                                if code is not None else None))
        return events

    def reply_body(self) -> bytes:
        return wsevents.encode(self.reply_events())
