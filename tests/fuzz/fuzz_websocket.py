"""RFC 6455 frames from a client (``clarion.protocol.websocket``): FrameReader.feed,
parse_close and the handshake key. Documented error: FrameError, with the close code to send.

The first input byte picks a chunk size, so the reader is also fed in pieces; the messages must
be the same as when it is fed everything at once (the property the hub relies on: TCP splits
frames anywhere)."""

from __future__ import annotations

import struct

import _harness

with _harness.instrumented():
    from clarion.errors import FrameError
    from clarion.protocol import websocket as ws

MAX_SIZE = 1024


def _messages(data: bytes, chunk: int) -> list[tuple[int, bytes]]:
    reader = ws.FrameReader(MAX_SIZE)
    out: list[tuple[int, bytes]] = []
    for i in range(0, len(data), chunk):
        out += reader.feed(data[i:i + chunk])
    return out


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    chunk, data = data[0] % 16 + 1, data[1:]
    try:
        whole = _messages(data, len(data) or 1)
    except FrameError:
        whole = None
    try:
        pieces = _messages(data, chunk)
    except FrameError:
        pieces = None
    # A stream that fails at once fails in pieces too; one that succeeds gives the same messages
    # (in pieces it may fail later than at once, never the other way round).
    if whole is not None:
        assert pieces == whole, (whole, pieces)
    for opcode, payload in whole or ():
        if opcode == ws.CLOSE:
            try:
                code, reason = ws.parse_close(payload)
            except FrameError:
                continue
            assert ws.close_frame(code, reason)[2:4] == struct.pack("!H", code)
    key = data[:24].decode("latin-1")
    if ws.valid_client_key(key):
        ws.accept_key(key)


SEEDS = [
    b"\x00\x81\x85\x01\x02\x03\x04ignore",
    b"\x03" + bytes([0x81, 0x85, 0, 0, 0, 0]) + b"hello",
    b"\x01" + bytes([0x01, 0x83, 0, 0, 0, 0]) + b"abc" + bytes([0x80, 0x82, 0, 0, 0, 0]) + b"de",
    b"\x00" + bytes([0x88, 0x84, 0, 0, 0, 0]) + b"\x03\xe8ok",
    b"\x05" + bytes([0x89, 0x80, 1, 2, 3, 4, 0x8A, 0x80, 1, 2, 3, 4]),
    b"\x00" + bytes([0x82, 0xFE, 0x00, 0x80, 0, 0, 0, 0]) + bytes(128),
    b"\x00dGhlIHNhbXBsZSBub25jZQ==",
]

if __name__ == "__main__":
    _harness.main(TestOneInput, SEEDS)
