"""Ceiling: a bare uvloop WebSocket broadcast server, measured in the same harness.

``--serve --port P`` runs the server: WebSocket handshake on /connection/websocket, one canned
Centrifugo-style connect+subscribe reply, and ``POST /api/publish`` / ``POST /api/batch`` (same
bodies as the hub's server API) that encode the batch once into one text frame (pushes joined
by ``\\n``) and write the same bytes to every subscriber; publications that arrive in the same
loop iteration are coalesced into one frame.  Nothing else: no channels, no
history, no per-client state.  Without ``--serve`` the script benchmarks it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B85"
SUBS: set[asyncio.Transport] = set()
REPLY = b'{"id":1,"connect":{"client":"x","version":"0"}}\n{"id":2,"subscribe":{}}'
SLOW_LIMIT = 4 * 1024 * 1024
offset = 0


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes([0x80 | opcode, n]) + payload
    if n < 65536:
        return bytes([0x80 | opcode, 126]) + struct.pack("!H", n) + payload
    return bytes([0x80 | opcode, 127]) + struct.pack("!Q", n) + payload


PENDING: list[bytes] = []


def broadcast(datas: list[object]) -> None:
    """Queue pushes; everything queued in one loop iteration goes out as one frame."""
    global offset
    if not PENDING:
        asyncio.get_running_loop().call_soon(flush)
    for d in datas:
        offset += 1
        PENDING.append(
            b'{"push":{"channel":"bench:fan","pub":{"data":%s,"offset":%d}}}'
            % (json.dumps(d, separators=(",", ":")).encode(), offset)
        )


def flush() -> None:
    buf = frame(b"\n".join(PENDING))
    PENDING.clear()
    for t in list(SUBS):
        t.write(buf)
        if t.get_write_buffer_size() > SLOW_LIMIT:
            SUBS.discard(t)
            t.write(frame(struct.pack("!H", 3008) + b"slow", 0x8))
            t.close()


class Conn(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""
        self.ws = False
        self.subscribed = False

    def connection_lost(self, exc: Exception | None) -> None:
        SUBS.discard(self.t)

    def data_received(self, data: bytes) -> None:
        if self.ws:
            if not self.subscribed:
                self.subscribed = True
                SUBS.add(self.t)
                self.t.write(frame(REPLY))
            elif data[:1] == b"\x88":
                self.t.close()
            return
        self.buf += data
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            lines = self.buf[:i].decode("latin-1").split("\r\n")
            hdrs = {
                k.strip().lower(): v.strip()
                for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)
            }
            method, path = lines[0].split()[:2]
            n = int(hdrs.get("content-length", "0"))
            if len(self.buf) < i + 4 + n:
                return
            body, self.buf = self.buf[i + 4 : i + 4 + n], self.buf[i + 4 + n :]
            if path.startswith("/connection/websocket"):
                key = hdrs["sec-websocket-key"].encode()
                acc = base64.b64encode(hashlib.sha1(key + GUID).digest())
                self.t.write(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n"
                )
                self.ws = True
                if self.buf:
                    rest, self.buf = self.buf, b""
                    self.data_received(rest)
                return
            if method == "POST" and path == "/api/batch":
                cmds = json.loads(body)["commands"]
                broadcast([c["publish"]["data"] for c in cmds])
                resp = b'{"replies":[%s]}' % b",".join([b'{"publish":{}}'] * len(cmds))
            elif method == "POST" and path == "/api/publish":
                broadcast([json.loads(body)["data"]])
                resp = b'{"result":{}}'
            else:
                resp = b'{"status":"ok"}'
            self.t.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(resp), resp)
            )


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(Conn, "127.0.0.1", port, backlog=4096)
    async with srv:
        await srv.serve_forever()


# --------------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> None:
    import common
    import loadclient as lc

    print(f"Baseline bare-uvloop broadcast server: {args.subscribers} subscribers")
    bg: dict[str, object] = {}
    await common.note_background(bg)
    lat = {n: [(args.latency_rate, args.latency_count)] for n in args.latency_at}
    res = await common.run_server_suite(
        common.baseline_server,
        lambda s: lc.Target(common.HOST, s.port, "/connection/websocket"),
        lambda s: lc.CentrifugoApiPublisher(lc.HttpClient(common.HOST, s.port)),
        args.subscribers,
        duration=args.duration,
        window=args.window,
        latency_at=lat,
    )
    rows = []
    for n, r in res["runs"].items():
        tp = r.get("throughput") or {}
        rows.append(
            [
                f"deliveries/s @ {int(n):,}",
                lc.fmt_num(tp.get("deliveries_per_s")),
                f"{tp.get('server_cpu_pct')}%",
                common.summarize_errors(r) or "ok",
            ]
        )
        for la in r.get("latency") or []:
            rows.append(
                [
                    f"p50 / p99 ms @ {int(n):,}, {la['rate']:g}/s",
                    f"{la.get('p50_ms')} / {la.get('p99_ms')}",
                    f"{la.get('server_cpu_pct')}%",
                    "",
                ]
            )
    lc.print_table(
        "Baseline (ceiling of this harness on this machine)",
        ["metric", "baseline", "server CPU", "notes"],
        rows,
    )
    print("saved", lc.save_result("baseline_uvloop", {"args": vars(args), "baseline": res, **bg}))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--serve", action="store_true", help="run the server instead of the benchmark")
    ap.add_argument("--port", type=int, default=8010)
    ap.add_argument("--subscribers", type=int, nargs="+", default=[1000, 5000, 10000])
    ap.add_argument("--duration", type=float, default=8.0, help="throughput seconds per point")
    ap.add_argument("--window", type=int, default=200, help="max messages in flight")
    ap.add_argument("--latency-at", type=int, nargs="*", default=[1000, 5000])
    ap.add_argument("--latency-rate", type=float, default=100.0)
    ap.add_argument("--latency-count", type=int, default=500)
    args = ap.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(serve(args.port))
    else:
        import common

        common.run_main(bench(args))


if __name__ == "__main__":
    main()
