"""RFC 6455 framing for the server side, sans-IO.

Written here rather than taken from wsproto because the fan-out path needs what a per-connection
state machine cannot give: a frame encoded once and written as the same bytes to every
subscriber, and a reader cheap enough to keep on tens of thousands of idle connections.
"""

from __future__ import annotations

import base64
import hashlib
import struct

from clarion.errors import FrameError

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONTINUATION = 0x0
TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8
PING = 0x9
PONG = 0xA

# Close codes from RFC 6455 section 7.4.1.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value for a client's Sec-WebSocket-Key."""
    digest = hashlib.sha1(key.strip().encode("ascii") + _GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def valid_client_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except ValueError:
        return False


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame, as a server sends it."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def text_frame(payload: bytes) -> bytes:
    return encode_frame(TEXT, payload)


def close_frame(code: int, reason: str = "") -> bytes:
    # A control frame's payload is at most 125 bytes: 2 for the code, 123 for the reason.
    # Cut on a character boundary: a close reason must stay valid UTF-8.
    raw = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(CLOSE, struct.pack("!H", code) + raw)


def parse_close(payload: bytes) -> tuple[int, str]:
    """(code, reason) of a CLOSE frame; 1005 when it carries no code."""
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise FrameError("close frame with a one-byte payload")
    (code,) = struct.unpack("!H", payload[:2])
    if code < 1000 or code in (1004, 1005, 1006, 1015) or 1016 <= code < 3000 or code >= 5000:
        raise FrameError(f"invalid close code {code}")
    try:
        return code, payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError("close reason is not valid UTF-8", CLOSE_INVALID_DATA) from None


def _unmask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    if n == 0:
        return b""
    # XOR as one big integer: far faster in CPython than a per-byte loop.
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


def _check_text(opcode: int, message: bytes) -> None:
    if opcode == TEXT and not message.isascii():
        try:
            message.decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError("text message is not valid UTF-8", CLOSE_INVALID_DATA) from None


class FrameReader:
    """Turns bytes from a client into whole messages: (opcode, payload) pairs.

    Control frames come out as soon as they are complete, even between the fragments of a
    message. Anything against the RFC raises FrameError with the close code to send.
    """

    __slots__ = ("_buffer", "_fragments", "_fragments_opcode", "_fragments_size", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragments_opcode = 0
        self._fragments_size = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buffer
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            fin = b0 & 0x80
            if b0 & 0x70:
                raise FrameError("reserved bits set without a negotiated extension")
            opcode = b0 & 0x0F
            if not b1 & 0x80:
                raise FrameError("client frames must be masked")
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                (length,) = struct.unpack_from("!H", buf, pos + 2)
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                (length,) = struct.unpack_from("!Q", buf, pos + 2)
                head = 10
            if opcode >= 0x8:
                if length > 125 or not fin:
                    raise FrameError("control frames must be short and unfragmented")
                if opcode not in (CLOSE, PING, PONG):
                    raise FrameError(f"unknown control opcode {opcode:#x}")
            elif opcode not in (CONTINUATION, TEXT, BINARY):
                raise FrameError(f"unknown data opcode {opcode:#x}")
            if length + self._fragments_size > self.max_size and opcode < 0x8:
                raise FrameError(
                    f"message larger than the {self.max_size}-byte limit", CLOSE_TOO_BIG
                )
            total = head + 4 + length
            if end - pos < total:
                break
            mask = bytes(buf[pos + head : pos + head + 4])
            payload = _unmask(bytes(buf[pos + head + 4 : pos + total]), mask)
            pos += total
            if opcode >= 0x8:
                out.append((opcode, payload))
            elif opcode == CONTINUATION:
                if not self._fragments_opcode:
                    raise FrameError("continuation frame without a message to continue")
                self._append_fragment(payload)
                if fin:
                    message = b"".join(self._fragments)
                    _check_text(self._fragments_opcode, message)
                    out.append((self._fragments_opcode, message))
                    self._reset_fragments()
            elif self._fragments_opcode:
                raise FrameError("new message started inside a fragmented one")
            elif fin:
                _check_text(opcode, payload)
                out.append((opcode, payload))
            else:
                self._fragments_opcode = opcode
                self._append_fragment(payload)
        del buf[:pos]
        return out

    def _append_fragment(self, payload: bytes) -> None:
        self._fragments.append(payload)
        self._fragments_size += len(payload)

    def _reset_fragments(self) -> None:
        self._fragments = []
        self._fragments_opcode = 0
        self._fragments_size = 0
