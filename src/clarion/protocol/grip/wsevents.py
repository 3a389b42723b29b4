"""WebSocket-over-HTTP: the ``application/websocket-events`` codec and GRIP control messages.

An event is ``TYPE\\r\\n`` or ``TYPE <hex length>\\r\\n<content>\\r\\n``. Types: OPEN, TEXT,
BINARY, PING, PONG, CLOSE (content: 2-byte big-endian code, then a UTF-8 reason) and
DISCONNECT. With the ``grip`` extension, messages from the origin that start with ``c:`` are
control messages (JSON) and every other message must start with the message prefix (``m:``
unless the origin chose another, possibly empty, with ``message-prefix``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgspec

from clarion.errors import GripError
from clarion.protocol.grip.headers import parse_list

CONTENT_TYPE = "application/websocket-events"
TYPES = frozenset({b"OPEN", b"TEXT", b"BINARY", b"PING", b"PONG", b"CLOSE", b"DISCONNECT"})
DEFAULT_PREFIX = "m:"
CONTROL_PREFIX = b"c:"
CONTROL_TYPES = frozenset({"subscribe", "unsubscribe", "detach", "session", "set-meta",
                           "keep-alive", "send-delayed", "flush-delayed"})


@dataclass(slots=True)
class Event:
    type: str
    content: bytes | None = None

    def encode(self) -> bytes:
        if self.content is None:
            return self.type.encode() + b"\r\n"
        return b"%b %x\r\n%b\r\n" % (self.type.encode(), len(self.content), self.content)


def encode(events: list[Event]) -> bytes:
    return b"".join(e.encode() for e in events)


def decode(data: bytes) -> list[Event]:
    """All events in ``data``; a truncated or malformed event is a GripError."""
    events: list[Event] = []
    pos = 0
    end = len(data)
    while pos < end:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            raise GripError(f"websocket-events: unterminated event line at byte {pos}")
        line = data[pos:eol]
        kind, _, size = line.partition(b" ")
        if kind not in TYPES:
            raise GripError(f"websocket-events: unknown event type {kind[:20]!r}")
        pos = eol + 2
        if not size:
            events.append(Event(kind.decode()))
            continue
        try:
            length = int(size, 16)
        except ValueError:
            raise GripError(f"websocket-events: bad hex length {size[:20]!r}") from None
        if length < 0 or pos + length + 2 > end:
            raise GripError(f"websocket-events: {kind.decode()} content of {length} bytes "
                            "is truncated")
        content = data[pos:pos + length]
        if data[pos + length:pos + length + 2] != b"\r\n":
            raise GripError(f"websocket-events: {kind.decode()} content not followed by CRLF")
        events.append(Event(kind.decode(), content))
        pos += length + 2
    return events


def close_content(code: int | None, reason: str = "") -> bytes:
    if code is None:
        return b""
    return struct.pack("!H", code) + reason.encode()


def parse_close(content: bytes | None) -> tuple[int | None, str]:
    if not content or len(content) < 2:
        return None, ""
    return struct.unpack("!H", content[:2])[0], content[2:].decode("utf-8", "replace")


def grip_extension(header: str | None) -> str | None:
    """The message prefix an origin chose with ``Sec-WebSocket-Extensions: grip``, or None
    when it did not turn the extension on."""
    if not header:
        return None
    for params in parse_list([header]):
        if params[0][0] == "grip":
            opts = dict(params[1:])
            prefix = opts.get("message-prefix")
            return DEFAULT_PREFIX if prefix is None else prefix
    return None


class Control(msgspec.Struct, forbid_unknown_fields=False):
    type: str
    channel: str | None = None
    filters: list[str] = []
    id: str | None = None
    name: str | None = None
    value: str | None = None
    content: str | None = None
    content_bin: str | None = msgspec.field(name="content-bin", default=None)
    message_type: str = msgspec.field(name="message-type", default="text")
    timeout: int | None = None
    mode: str = "idle"


_control = msgspec.json.Decoder(Control)


def parse_control(message: bytes) -> Control:
    """A ``c:{...}`` control message (``message`` without the ``c:``)."""
    try:
        ctl = _control.decode(message)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise GripError(f"control message: {exc}") from None
    except RecursionError:  # msgspec's answer to JSON nested deeper than the stack
        raise GripError("control message: nested too deeply") from None
    if ctl.type not in CONTROL_TYPES:
        raise GripError(f"control message: unknown type {ctl.type!r}")
    if ctl.type in ("subscribe", "unsubscribe") and not ctl.channel:
        raise GripError(f"control message: {ctl.type} needs a channel")
    return ctl


def control_message(type: str, **fields: Any) -> bytes:
    return CONTROL_PREFIX + msgspec.json.encode({"type": type, **fields})
