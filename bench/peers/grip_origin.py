"""Tiny GRIP origin for the GRIP benchmarks (Pushpin, and Clarion's GRIP proxy).

* Any request that is not WebSocket-over-HTTP is answered with a stream hold on "fan"
  (``Grip-Hold: stream``, ``Grip-Channel: fan``) and the body ``ready\\n``.
* ``POST`` with ``Content-Type: application/websocket-events`` (WebSocket-over-HTTP): an
  ``OPEN`` is accepted with the ``grip`` extension, a ``c:`` subscribe to "fan" and the
  message ``m:ready``; a ``CLOSE`` is answered with ``CLOSE``; anything else with no events.

python bench/peers/grip_origin.py PORT
"""

import asyncio
import sys

BODY = b"ready\n"
STREAM = (
    b"HTTP/1.1 200 OK\r\nGrip-Hold: stream\r\nGrip-Channel: fan\r\n"
    b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%b" % (len(BODY), BODY)
)


def _event(kind: bytes, content: bytes) -> bytes:
    return b"%b %x\r\n%b\r\n" % (kind, len(content), content)


def _ws(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/websocket-events\r\n%b"
        b"Content-Length: %d\r\n\r\n%b" % (extra, len(body), body)
    )


WS_OPEN = _ws(
    b"OPEN\r\n"
    + _event(b"TEXT", b'c:{"type":"subscribe","channel":"fan"}')
    + _event(b"TEXT", b"m:ready"),
    b"Sec-WebSocket-Extensions: grip\r\n",
)
WS_NOTHING = _ws(b"")


class Origin(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
            if len(self.buf) < end + 4 + length:
                return  # the body is not all here yet
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            if b"application/websocket-events" not in head:
                self.t.write(STREAM)
            elif body.startswith(b"OPEN"):
                self.t.write(WS_OPEN)
            elif body.startswith(b"CLOSE") or b"\r\nCLOSE" in body:
                self.t.write(_ws(b"CLOSE\r\n"))
            else:
                self.t.write(WS_NOTHING)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(Origin, "127.0.0.1", port, backlog=4096)
    async with srv:
        await srv.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main(int(sys.argv[1])))
    except ImportError:
        asyncio.run(main(int(sys.argv[1])))
