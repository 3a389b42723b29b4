"""Tiny GRIP origin for Pushpin: every request is answered with a stream hold on "fan".

python bench/peers/grip_origin.py PORT
"""

import asyncio
import sys

BODY = b"ready\n"
RESP = (
    b"HTTP/1.1 200 OK\r\nGrip-Hold: stream\r\nGrip-Channel: fan\r\n"
    b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


class Origin(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:  # GETs without bodies
            _, self.buf = self.buf.split(b"\r\n\r\n", 1)
            self.t.write(RESP)  # type: ignore[attr-defined]


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(Origin, "127.0.0.1", port, backlog=4096)
    async with srv:
        await srv.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
