"""WebSocket-over-HTTP (``clarion.protocol.grip.wsevents``): ``application/websocket-events``
bodies from an origin or a proxy, and ``c:`` control messages. Documented error: GripError.
Decoded events must encode back to the same bytes."""

from __future__ import annotations

import contextlib

import _harness

with _harness.instrumented():
    from clarion.errors import GripError
    from clarion.protocol.grip import wsevents


def TestOneInput(data: bytes) -> None:
    try:
        events = wsevents.decode(data)
    except GripError:
        events = []
    again = wsevents.encode(events)
    assert wsevents.decode(again) == events
    for event in events:
        if event.type == "CLOSE":
            wsevents.parse_close(event.content)
        if event.content is not None and event.content.startswith(wsevents.CONTROL_PREFIX):
            with contextlib.suppress(GripError):
                wsevents.parse_control(event.content[2:])
    with contextlib.suppress(GripError):
        wsevents.parse_control(data)


SEEDS = [
    b"OPEN\r\nTEXT 5\r\nhello\r\nCLOSE 2\r\n\x03\xe8\r\n",
    b'TEXT 2d\r\nc:{"type":"subscribe","channel":"c","filters":[]}\r\nDISCONNECT\r\n',
    b'{"type":"keep-alive","content":"x","timeout":5,"mode":"interval"}',
    b"BINARY 0\r\n\r\nPING\r\n",
]

if __name__ == "__main__":
    _harness.main(TestOneInput, SEEDS)
