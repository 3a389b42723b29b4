"""Fast load clients for the Clarion benchmarks.

Subscribers are raw uvloop ``asyncio.Protocol`` objects: each does its own HTTP/WebSocket
handshake and then only counts occurrences of a byte pattern (``b'"pub":'``) in every
``data_received`` chunk with ``bytes.count``.  No frame parsing: a TCP read may hold many
WebSocket frames, a frame many ``\\n``-separated JSON messages, and an HTTP chunk many lines;
the count is the same.  A pattern split across two reads is caught by re-counting the last
``len(pattern) - 1`` bytes of the previous read glued to the head of the next one.

Subscriber processes (``multiprocessing``, spawn) each hold ~1000-2500 connections and talk to
the parent over a ``Pipe``: they send periodic progress (``min`` count over live connections,
total count, time of the last counted delivery) and, on request, a report with the per-message
receive-time marks used for latency (for message ``k`` the time at which the *last* connection
of that process saw its count pass ``k``; the parent takes the max over processes).

The parent side (:class:`SubscriberPool`, :class:`HttpClient`, :func:`run_throughput`,
:func:`run_latency`) runs on uvloop in the benchmark script, which is also the publisher.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import multiprocessing as mp
import os
import resource
import socket
import ssl as ssl_module
import statistics
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

PATTERN = b'"pub":'
PAYLOAD_SIZE = 100

# Client->server frames must be masked; an all-zero mask key is legal and leaves bytes as-is.
_ZERO_MASK = b"\x00\x00\x00\x00"


def ws_text_frame(payload: bytes) -> bytes:
    """A masked client text frame (mask key 0)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 65536:
        head = bytes([0x81, 0x80 | 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", n)
    return head + _ZERO_MASK + payload


CF_PONG = ws_text_frame(b"{}")  # Centrifugo protocol pong: an empty command
CF_PING = b"\x81\x02{}"  # server ping: unmasked text frame "{}"
WS_CLOSE = bytes([0x88, 0x82]) + _ZERO_MASK + struct.pack("!H", 1000)

CENTRIFUGO_INIT = ws_text_frame(
    b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"bench:fan"}}'
)


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1_000_000
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def make_data(seq: int, ts: float, size: int = PAYLOAD_SIZE) -> dict[str, Any]:
    """A publication ``data`` object whose JSON encoding is exactly ``size`` bytes."""
    base = {"ts": ts, "seq": seq, "pad": ""}
    n = len(json.dumps(base, separators=(",", ":")))
    base["pad"] = "x" * max(0, size - n)
    return base


def data_json(seq: int, ts: float, size: int = PAYLOAD_SIZE) -> str:
    return json.dumps(make_data(seq, ts, size), separators=(",", ":"))


# --------------------------------------------------------------------------------------------
# Subscriber side (runs in the child processes)
# --------------------------------------------------------------------------------------------


@dataclass
class Target:
    host: str
    port: int
    path: str
    mode: str = "ws"  # "ws" or "stream"
    init_frame: bytes | None = CENTRIFUGO_INIT  # sent after the 101 (ws mode only)
    ready_marker: bytes = b'"id":2'  # seen after the handshake => subscribed
    centrifugo_pings: bool = True  # answer {"}"} app-level pings with {}
    extra_headers: tuple[tuple[str, str], ...] = ()
    method: str = "GET"
    body: bytes = b""  # sent with a Content-Length (e.g. the first commands of http_stream)

    def request(self) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if self.mode == "ws":
            key = base64.b64encode(os.urandom(16)).decode()
            lines += [
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {key}",
                "Sec-WebSocket-Version: 13",
            ]
        else:
            lines += ["Accept: */*", "Connection: keep-alive"]
        lines += [f"{k}: {v}" for k, v in self.extra_headers]
        if self.body:
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


class Group:
    """Per-process state shared by all subscriber connections of that process."""

    def __init__(self) -> None:
        self.conns: list[Sub] = []
        self.total = 0
        self.t_last = 0.0
        self.marks: list[float] | None = None
        self.close_codes: dict[str, int] = {}
        self.closed = 0
        self.first_close = 0.0
        self.last_close = 0.0
        self.pings = 0  # Centrifugo-protocol pings answered
        self.handshake_errors: dict[str, int] = {}

    def live(self) -> list[Sub]:
        return [c for c in self.conns if c.ready and not c.lost and not c.excluded]

    def min_count(self) -> int:
        counts = [c.count for c in self.conns if c.ready and not c.lost and not c.excluded]
        return min(counts) if counts else 0


class Sub(asyncio.Protocol):
    __slots__ = (
        "buf",
        "count",
        "excluded",
        "g",
        "last",
        "lost",
        "ready",
        "ready_fut",
        "status",
        "t",
        "tail",
        "target",
        "ws",
    )

    def __init__(self, g: Group, target: Target, ready_fut: asyncio.Future[bool]) -> None:
        self.g = g
        self.target = target
        self.ready_fut = ready_fut
        self.t: asyncio.Transport | None = None
        self.buf = b""
        self.ready = False
        self.lost = False
        self.excluded = False
        self.count = 0
        self.tail: bytes | None = None
        self.last = b""
        self.status = 0  # 0 = waiting for response head, 1 = head ok
        self.ws = target.mode == "ws"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]
        transport.write(self.target.request())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.ready:
            n = data.count(PATTERN)
            tail = self.tail
            if tail is not None:
                n += (tail + data[:5]).count(PATTERN)
            if len(data) >= 5:
                self.tail = data[-5:]
            else:  # the tail is of the stream, not of this (tiny) read
                self.tail = ((tail or b"") + data)[-5:]
            # kept for reading the close code in connection_lost
            self.last = data if len(data) >= 64 else self.last[-64:] + data
            if n:
                c = self.count
                self.count = c + n
                g = self.g
                g.total += n
                now = time.time()
                g.t_last = now
                marks = g.marks
                if marks is not None:
                    end = c + n
                    if end > len(marks):
                        end = len(marks)
                    for k in range(c, end):
                        marks[k] = now
            if self.ws:
                if b"\x89" in data:
                    self._answer_ws_ping(data)
                if self.target.centrifugo_pings and (
                    CF_PING in data or (tail is not None and CF_PING in tail[-3:] + data[:3])
                ):
                    self.t.write(CF_PONG)  # type: ignore[union-attr]
                    self.g.pings += 1
            return
        self._handshake(data)

    def _answer_ws_ping(self, data: bytes) -> None:
        i = data.find(b"\x89")
        while i >= 0:
            if i + 1 < len(data):
                ln = data[i + 1] & 0x7F
                if ln <= 125 and i + 2 + ln <= len(data):
                    payload = data[i + 2 : i + 2 + ln]
                    self.t.write(bytes([0x8A, 0x80 | ln]) + _ZERO_MASK + payload)  # type: ignore[union-attr]
            i = data.find(b"\x89", i + 1)

    def _handshake(self, data: bytes) -> None:
        self.buf += data
        if self.status == 0:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                if len(self.buf) > 65536:
                    self._fail("header too large")
                return
            head = self.buf[:i]
            self.buf = self.buf[i + 4 :]
            line = head.split(b"\r\n", 1)[0]
            want = b" 101" if self.ws else b" 200"
            if want not in line[:13]:
                self._fail(line.decode("latin-1")[:80])
                return
            self.status = 1
            if self.ws and self.target.init_frame:
                self.t.write(self.target.init_frame)  # type: ignore[union-attr]
        j = self.buf.find(self.target.ready_marker)
        if j >= 0:
            self.ready = True
            rest = self.buf[j + len(self.target.ready_marker) :]
            self.buf = b""
            self.tail = None
            if not self.ready_fut.done():
                self.ready_fut.set_result(True)
            if rest:  # e.g. a server ping right behind the subscribe reply, in the same read
                self.data_received(rest)
        elif len(self.buf) > 65536:
            self._fail("no ready marker")
        elif b'"error"' in self.buf:
            self._fail("error reply: " + self.buf[-200:].decode("latin-1"))

    def _fail(self, why: str) -> None:
        g = self.g
        g.handshake_errors[why] = g.handshake_errors.get(why, 0) + 1
        if not self.ready_fut.done():
            self.ready_fut.set_result(False)
        if self.t is not None:
            self.t.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.ready_fut.done():
            self.ready_fut.set_result(False)
        if self.ready:
            g = self.g
            g.closed += 1
            now = time.time()
            g.first_close = g.first_close or now
            g.last_close = now
            code = self._close_code()
            g.close_codes[code] = g.close_codes.get(code, 0) + 1

    def _close_code(self) -> str:
        if not self.ws:
            return "eof"
        data = self.last
        i = data.rfind(b"\x88")
        while i >= 0:
            if i + 3 < len(data):
                ln = data[i + 1] & 0x7F
                if 2 <= ln <= 125 and i + 2 + ln == len(data):
                    code = struct.unpack("!H", data[i + 2 : i + 4])[0]
                    reason = data[i + 4 : i + 2 + ln].decode("utf-8", "replace")
                    return f"{code} {reason}".strip()
            i = data.rfind(b"\x88", 0, i)
        return "no close frame"


async def _child_async(conn: Any, spec: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    target = Target(**spec["target"])
    n = spec["n"]
    g = Group()
    sem = asyncio.Semaphore(spec.get("concurrency", 200))
    t0 = time.time()
    deadline = t0 + spec.get("lifetime", 600)
    connect_errors: dict[str, int] = {}

    async def one() -> None:
        async with sem:
            fut: asyncio.Future[bool] = loop.create_future()
            sub = Sub(g, target, fut)
            try:
                await loop.create_connection(lambda: sub, target.host, target.port)
            except OSError as e:
                k = type(e).__name__ + ": " + str(e)[:60]
                connect_errors[k] = connect_errors.get(k, 0) + 1
                return
            g.conns.append(sub)
            try:
                await asyncio.wait_for(fut, spec.get("ready_timeout", 30))
            except TimeoutError:
                g.handshake_errors["timeout"] = g.handshake_errors.get("timeout", 0) + 1

    await asyncio.gather(*(one() for _ in range(n)))
    ok = sum(1 for c in g.conns if c.ready and not c.lost)
    conn.send(
        (
            "ready",
            {
                "ok": ok,
                "failed": n - ok,
                "connect_errors": connect_errors,
                "handshake_errors": g.handshake_errors,
                "seconds": time.time() - t0,
            },
        )
    )

    inbox: asyncio.Queue[Any] = asyncio.Queue()

    def on_readable() -> None:
        try:
            while conn.poll():
                inbox.put_nowait(conn.recv())
        except (EOFError, OSError):
            inbox.put_nowait(("exit",))
            loop.remove_reader(conn.fileno())

    loop.add_reader(conn.fileno(), on_readable)
    # uvloop makes the fd non-blocking, and recv() of a message larger than one read would
    # then fail half way (BlockingIOError) instead of waiting for the rest
    os.set_blocking(conn.fileno(), True)
    progress_task: asyncio.Task[None] | None = None

    async def progress(interval: float) -> None:
        while True:
            conn.send(("p", g.min_count(), g.total, g.t_last, g.closed))
            await asyncio.sleep(interval)

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    while True:
        try:
            msg = await asyncio.wait_for(inbox.get(), max(0.1, deadline - time.time()))
        except TimeoutError:
            msg = ("exit",)
        cmd = msg[0]
        if cmd == "reset":
            marks_n, exclude_cold = msg[1], msg[2]
            excluded = 0
            for c in g.conns:
                if exclude_cold and c.ready and not c.lost and c.count == 0:
                    c.excluded = True
                if c.excluded:
                    excluded += 1
                c.count = 0
            g.total = 0
            g.t_last = 0.0
            g.marks = [0.0] * marks_n if marks_n else None
            conn.send(("reset", {"excluded": excluded, "cpu": cpu()}))
        elif cmd == "progress":
            if progress_task:
                progress_task.cancel()
                progress_task = None
            if msg[1]:
                progress_task = asyncio.create_task(progress(msg[1]))
        elif cmd == "report":
            live = g.live()
            counts = [c.count for c in live]
            conn.send(
                (
                    "report",
                    {
                        "live": len(live),
                        "total": g.total,
                        "min": min(counts) if counts else 0,
                        "max": max(counts) if counts else 0,
                        "t_last": g.t_last,
                        "closed": g.closed,
                        "close_codes": dict(g.close_codes),
                        "pings": g.pings,
                        "first_close": g.first_close,
                        "last_close": g.last_close,
                        "marks": g.marks,
                        "cpu": cpu(),
                    },
                )
            )
        elif cmd == "close" or cmd == "exit":
            if progress_task:
                progress_task.cancel()
            for c in g.conns:
                if c.t is not None and not c.lost:
                    if target.mode == "ws" and c.ready:
                        c.t.write(WS_CLOSE)
                    c.t.close()
            await asyncio.sleep(0.2)
            if cmd == "close":
                with contextlib.suppress(OSError):
                    conn.send(("closed", {}))
            return


def run_child(main: Callable[[Any, dict[str, Any]], Awaitable[None]], conn: Any,
              spec: dict[str, Any]) -> None:
    """A client process's entry: the file limit raised, uvloop, ``main(conn, spec)``."""
    raise_nofile()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(conn, spec))


def child_main(conn: Any, spec: dict[str, Any]) -> None:
    run_child(_child_async, conn, spec)


# --------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------


class _Child:
    def __init__(self, proc: Any, conn: Any, n: int) -> None:
        self.proc = proc
        self.conn = conn
        self.n = n
        self.replies: asyncio.Queue[Any] = asyncio.Queue()
        self.min = 0
        self.total = 0
        self.t_last = 0.0
        self.closed = 0


class SubscriberPool:
    """Spawns subscriber processes and aggregates what they report."""

    def __init__(self) -> None:
        self.children: list[_Child] = []
        self.progress_event = asyncio.Event()
        self.ready_info: dict[str, Any] = {}

    async def start(
        self,
        target: Target,
        n: int,
        per_process: int = 2500,
        concurrency: int = 200,
        lifetime: float = 600,
        ready_timeout: float = 60,
    ) -> dict[str, Any]:
        ctx = mp.get_context("spawn")
        loop = asyncio.get_running_loop()
        nproc = max(1, -(-n // per_process))
        base, extra = divmod(n, nproc)
        spec_target = {k: getattr(target, k) for k in target.__dataclass_fields__}
        t0 = time.time()
        for i in range(nproc):
            cnt = base + (1 if i < extra else 0)
            parent_conn, child_conn = ctx.Pipe()
            spec = {
                "target": spec_target,
                "n": cnt,
                "concurrency": concurrency,
                "lifetime": lifetime,
                "ready_timeout": ready_timeout,
            }
            p = ctx.Process(target=child_main, args=(child_conn, spec), daemon=True)
            p.start()
            child_conn.close()
            ch = _Child(p, parent_conn, cnt)
            self.children.append(ch)
            loop.add_reader(parent_conn.fileno(), self._on_readable, ch)
            # as in the child: a report larger than one pipe read must arrive whole
            os.set_blocking(parent_conn.fileno(), True)
        infos = await asyncio.gather(
            *(self._expect(ch, "ready", ready_timeout + 60) for ch in self.children)
        )
        agg: dict[str, Any] = {
            "requested": n,
            "ok": sum(i["ok"] for i in infos),
            "failed": sum(i["failed"] for i in infos),
            "processes": nproc,
            "seconds": time.time() - t0,
            "connect_errors": _merge_counts(i["connect_errors"] for i in infos),
            "handshake_errors": _merge_counts(i["handshake_errors"] for i in infos),
        }
        self.ready_info = agg
        return agg

    def _on_readable(self, ch: _Child) -> None:
        try:
            while ch.conn.poll():
                msg = ch.conn.recv()
                if msg[0] == "p":
                    _, ch.min, ch.total, ch.t_last, ch.closed = msg
                    self.progress_event.set()
                else:
                    ch.replies.put_nowait(msg)
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(ch.conn.fileno())
            ch.replies.put_nowait(("dead", {}))

    async def _expect(self, ch: _Child, kind: str, timeout: float) -> dict[str, Any]:
        while True:
            msg = await asyncio.wait_for(ch.replies.get(), timeout)
            if msg[0] == kind:
                return msg[1]  # type: ignore[no-any-return]
            if msg[0] == "dead":
                raise RuntimeError(f"subscriber process {ch.proc.pid} died")

    async def _all(self, cmd: tuple[Any, ...], kind: str, timeout: float = 60) -> list[Any]:
        for ch in self.children:
            ch.conn.send(cmd)
        return await asyncio.gather(*(self._expect(ch, kind, timeout) for ch in self.children))

    async def reset(self, marks: int = 0, exclude_cold: bool = False) -> dict[str, Any]:
        rs = await self._all(("reset", marks, exclude_cold), "reset")
        for ch in self.children:
            ch.min = ch.total = 0
            ch.t_last = 0.0
        return {"excluded": sum(r["excluded"] for r in rs), "cpu": sum(r["cpu"] for r in rs)}

    def set_progress(self, interval: float) -> None:
        for ch in self.children:
            ch.conn.send(("progress", interval))

    @property
    def min(self) -> int:
        return min(ch.min for ch in self.children)

    @property
    def total(self) -> int:
        return sum(ch.total for ch in self.children)

    @property
    def closed(self) -> int:
        return sum(ch.closed for ch in self.children)

    async def wait_progress(self, timeout: float = 0.05) -> None:
        self.progress_event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.progress_event.wait(), timeout)

    async def wait_min(self, target: int, timeout: float, stall: float = 5.0) -> bool:
        """Wait until every live subscriber has ``target`` messages; give up after
        ``timeout`` s, or after ``stall`` s without any new delivery."""
        now = time.time()
        end = now + timeout
        last_total, last_change = self.total, now
        while now < end:
            if self.min >= target:
                return True
            await self.wait_progress(0.1)
            now = time.time()
            if self.total != last_total:
                last_total, last_change = self.total, now
            elif now - last_change > stall:
                break
        return self.min >= target

    async def report(self) -> dict[str, Any]:
        rs = await self._all(("report",), "report")
        marks = None
        if rs and rs[0]["marks"] is not None:
            marks = [max(col) for col in zip(*(r["marks"] for r in rs), strict=True)]
        return {
            "live": sum(r["live"] for r in rs),
            "total": sum(r["total"] for r in rs),
            "min": min(r["min"] for r in rs),
            "max": max(r["max"] for r in rs),
            "t_last": max(r["t_last"] for r in rs),
            "closed": sum(r["closed"] for r in rs),
            "close_codes": _merge_counts(r["close_codes"] for r in rs),
            "pings": sum(r["pings"] for r in rs),
            "first_close": min((r["first_close"] for r in rs if r["first_close"]), default=0.0),
            "last_close": max((r["last_close"] for r in rs), default=0.0),
            "marks": marks,
            "cpu": sum(r["cpu"] for r in rs),
        }

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for ch in self.children:
            with contextlib.suppress(OSError):
                ch.conn.send(("close",))
        for ch in self.children:
            with contextlib.suppress(RuntimeError, TimeoutError):
                await self._expect(ch, "closed", 10)
        for ch in self.children:
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(ch.conn.fileno())
            ch.proc.join(timeout=5)
            if ch.proc.is_alive():
                ch.proc.kill()
                ch.proc.join(timeout=2)
            ch.conn.close()
        self.children = []


def _merge_counts(dicts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


# --------------------------------------------------------------------------------------------
# Minimal keep-alive HTTP/1.1 client for the publisher
# --------------------------------------------------------------------------------------------


async def read_http_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
    close = hdrs.get("connection", "").lower() == "close"
    if "content-length" in hdrs:
        body = await reader.readexactly(int(hdrs["content-length"]))
    elif hdrs.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        body = await reader.read()
        close = True
    return status, body, close


class HttpClient:
    """Keep-alive HTTP/1.1 client: ``request`` (send, await the response) or ``send``
    (pipelined: write now, a background task reads responses in order)."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None,
                 ssl: ssl_module.SSLContext | None = None) -> None:
        self.host = host
        self.port = port
        self.headers = headers or {}
        self.ssl = ssl  # a hub serving TLS itself (bench/nginx.py's direct-tls)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.requests = 0
        self.outstanding = 0
        self.pipeline_errors: dict[str, int] = {}
        self._pipe_task: asyncio.Task[None] | None = None
        self._on_response: Callable[[int, bytes], None] | None = None
        self._idle = asyncio.Event()

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port,
                                                                 ssl=self.ssl)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _encode(self, method: str, path: str, body: bytes, headers: dict[str, str] | None) -> bytes:
        h = {**self.headers, **(headers or {})}
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in h.items())
        head += f"Content-Length: {len(body)}\r\n\r\n"
        return head.encode() + body

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, bytes]:
        try:
            return await asyncio.wait_for(self._request(method, path, body, headers), timeout)
        except TimeoutError:
            self.close()
            raise ConnectionError(f"no response to {method} {path} in {timeout:g} s") from None

    async def _request(
        self, method: str, path: str, body: bytes, headers: dict[str, str] | None
    ) -> tuple[int, bytes]:
        assert self._pipe_task is None, "pipelining in progress"
        for attempt in range(2):
            if self.writer is None:
                await self._connect()
            assert self.reader is not None and self.writer is not None
            try:
                self.writer.write(self._encode(method, path, body, headers))
                status, resp, close = await read_http_response(self.reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
                continue
            self.requests += 1
            if close:
                self.close()
            return status, resp
        raise RuntimeError("unreachable")

    async def start_pipeline(self, on_response: Callable[[int, bytes], None]) -> None:
        self.close()  # a fresh connection: an idle keep-alive one may be closed by now
        await self._connect()
        self.pipeline_errors.clear()
        self._on_response = on_response
        self._idle.set()
        self._pipe_task = asyncio.create_task(self._pipe_reader())

    def send(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        assert self._pipe_task is not None
        if self.writer is None or self.writer.is_closing() or self._pipe_task.done():
            k = "pipeline: send on a closed connection"
            self.pipeline_errors[k] = self.pipeline_errors.get(k, 0) + 1
            return
        self.outstanding += 1
        self._idle.clear()
        self.writer.write(self._encode(method, path, body, headers))

    async def _pipe_reader(self) -> None:
        assert self.reader is not None
        try:
            while True:
                status, body, close = await read_http_response(self.reader)
                self.requests += 1
                self.outstanding -= 1
                if self._on_response:
                    self._on_response(status, body)
                if self.outstanding == 0:
                    self._idle.set()
                if close:
                    raise ConnectionError("server closed a pipelined connection")
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            k = f"pipeline: {type(e).__name__}: {e}"[:120]
            self.pipeline_errors[k] = self.pipeline_errors.get(k, 0) + 1
            self._idle.set()

    async def stop_pipeline(self, timeout: float = 10) -> int:
        """Wait for outstanding responses; returns how many never came."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        left = self.outstanding
        if self._pipe_task:
            self._pipe_task.cancel()
            self._pipe_task = None
        if left:
            self.close()
            self.outstanding = 0
        return left

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = self.reader = None


# --------------------------------------------------------------------------------------------
# Publishers: how to push N messages into the system under test
# --------------------------------------------------------------------------------------------

PublishBatch = Callable[[int, int], Awaitable[None]]  # (first_seq, count)
PublishOne = Callable[[int, float], Awaitable[None]]  # (seq, send_ts)


class _Publisher:
    http: HttpClient

    def __init__(self) -> None:
        self.errors: dict[str, int] = {}
        self._spare: list[HttpClient] = []

    async def _request(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """A request on an idle keep-alive connection (concurrent callers get their own)."""
        http = self._spare.pop() if self._spare else HttpClient(self.http.host, self.http.port,
                                                                     ssl=self.http.ssl)
        try:
            return await http.request("POST", path, body, headers)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
            http.close()
            self._err(f"publish request failed: {type(e).__name__}: {e}"[:160])
            return 599, b""
        finally:
            self._spare.append(http)

    def close(self) -> None:
        self.http.close()
        for h in self._spare:
            h.close()
        self._spare.clear()

    def _err(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def _check(self, status: int, resp: bytes) -> None:  # overridden
        if status == 599:  # already counted by _request
            return
        if status != 200:
            self._err(f"HTTP {status}: {resp[:120]!r}")

    def _one_request(self, seq: int, ts: float) -> tuple[str, bytes, dict[str, str]]:
        raise NotImplementedError

    async def one(self, seq: int, ts: float) -> None:
        path, body, headers = self._one_request(seq, ts)
        status, resp = await self._request(path, body, headers)
        self._check(status, resp)

    # Paced single publishes for latency runs.  "pipeline": HTTP/1.1 pipelining on one
    # connection (no waiting on responses, so a slow response cannot hold back the schedule,
    # and order is kept).  "queue": for servers that close the connection after each request
    # (Pushpin's publish endpoint): a single worker sends queued publishes one after another.
    paced_mode = "pipeline"

    async def start_paced(self) -> None:
        if self.paced_mode == "pipeline":
            await self.http.start_pipeline(self._check)
        else:
            self._queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
            self._worker = asyncio.create_task(self._drain_queue())

    async def _drain_queue(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            try:
                await self.one(*item)
            except Exception as e:  # noqa: BLE001 - keep publishing, report what failed
                self._err(f"publish: {type(e).__name__}: {e}"[:120])

    async def one_nowait(self, seq: int, ts: float) -> None:
        if self.paced_mode == "pipeline":
            path, body, headers = self._one_request(seq, ts)
            self.http.send("POST", path, body, headers)
        else:
            self._queue.put_nowait((seq, ts))

    async def stop_paced(self) -> None:
        if self.paced_mode != "pipeline":
            self._queue.put_nowait(None)
            try:
                await asyncio.wait_for(self._worker, 30)
            except TimeoutError:
                self._err("paced publish queue did not drain")
            return
        left = await self.http.stop_pipeline()
        if left:
            self._err(f"{left} publish responses never arrived")
        for k, v in self.http.pipeline_errors.items():
            self.errors[k] = self.errors.get(k, 0) + v
        self.http.pipeline_errors.clear()


class CentrifugoApiPublisher(_Publisher):
    """POST /api/batch and /api/publish (Clarion, and the baseline/peers that mimic it)."""

    def __init__(self, http: HttpClient, channel: str = "bench:fan", api_key: str = "bench"):
        super().__init__()
        self.http = http
        self.channel = channel
        self.headers = {"X-API-Key": api_key, "Content-Type": "application/json"}

    def _check(self, status: int, resp: bytes) -> None:
        if status == 599:  # already counted by _request
            return
        if status != 200:
            self._err(f"HTTP {status}: {resp[:120]!r}")
        elif b'"error"' in resp:
            self._err(f"reply error: {resp[:160]!r}")

    async def batch(self, first: int, count: int) -> None:
        now = time.time()
        cmds = ",".join(
            f'{{"publish":{{"channel":"{self.channel}","data":{data_json(first + i, now)}}}}}'
            for i in range(count)
        )
        body = f'{{"commands":[{cmds}]}}'.encode()
        status, resp = await self._request("/api/batch", body, self.headers)
        self._check(status, resp)

    def _one_request(self, seq: int, ts: float) -> tuple[str, bytes, dict[str, str]]:
        body = f'{{"channel":"{self.channel}","data":{data_json(seq, ts)}}}'.encode()
        return "/api/publish", body, self.headers


class PushpinPublisher(_Publisher):
    """POST /publish/ to Pushpin's HTTP publish endpoint, http-stream format."""

    paced_mode = "queue"  # its control server answers "Connection: close"

    def __init__(self, http: HttpClient, channel: str = "fan"):
        super().__init__()
        self.http = http
        self.channel = channel
        self.headers = {"Content-Type": "application/json"}

    def _item(self, seq: int, ts: float) -> dict[str, Any]:
        content = '{"pub":{"data":' + data_json(seq, ts) + "}}\n"
        return {"channel": self.channel, "formats": {"http-stream": {"content": content}}}

    async def batch(self, first: int, count: int) -> None:
        now = time.time()
        items = [self._item(first + i, now) for i in range(count)]
        body = json.dumps({"items": items}, separators=(",", ":")).encode()
        status, resp = await self._request("/publish/", body, self.headers)
        self._check(status, resp)

    def _one_request(self, seq: int, ts: float) -> tuple[str, bytes, dict[str, str]]:
        body = json.dumps({"items": [self._item(seq, ts)]}, separators=(",", ":")).encode()
        return "/publish/", body, self.headers


# --------------------------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------------------------


def proc_tree_cpu(pid: int) -> float:
    """CPU seconds (user+sys) of ``pid`` and all its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rfind(")") + 2 :].split()
        p = int(d)
        stats[p] = fields
        children.setdefault(int(fields[1]), []).append(p)
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        f = stats.get(p)
        if f:
            total += (int(f[11]) + int(f[12])) / tick
        todo.extend(children.get(p, []))
    return total


def machine_cpu() -> list[int]:
    """Aggregate /proc/stat jiffies: user nice system idle iowait irq softirq steal."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def machine_cpu_delta(a: list[int], b: list[int]) -> dict[str, float]:
    d = [y - x for x, y in zip(a, b, strict=True)]
    total = sum(d) or 1
    ncpu = os.cpu_count() or 1
    return {
        "busy_pct": round((total - d[3] - d[4]) / total * 100 * ncpu, 1),
        "softirq_pct": round(d[6] / total * 100 * ncpu, 1),
        "steal_pct": round(d[7] / total * 100 * ncpu, 1),
    }


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def tree_rss_kb(pid: int) -> int:
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        p = int(d)
        ppid = int(s[s.rfind(")") + 2 :].split()[1])
        if p == pid or ppid == pid:
            with contextlib.suppress(OSError):
                total += rss_kb(p)
    return total


async def sync_warmup(
    pool: SubscriberPool, publish_one: PublishOne, timeout: float = 30
) -> dict[str, Any]:
    """Publish one message and wait until every live subscriber has it; then reset.

    Subscribers that did not get it within ``timeout`` are excluded from flow control and
    reported as ``cold``."""
    await pool.reset()
    pool.set_progress(0.01)
    await asyncio.sleep(0.05)
    await publish_one(-1, time.time())
    t0 = time.time()
    ok = await pool.wait_min(1, timeout)
    took = time.time() - t0
    r = await pool.reset(exclude_cold=not ok)
    return {"warmup_ok": ok, "warmup_seconds": round(took, 3), "cold": r["excluded"]}


async def run_throughput(
    pool: SubscriberPool,
    publish_batch: PublishBatch,
    server_pid: int | None,
    subscribers: int,
    duration: float = 10.0,
    batch: int = 20,
    window: int = 200,
    warm: float = 1.0,
    drain_timeout: float = 20.0,
    progress_interval: float = 0.005,
    concurrency: int = 4,
) -> dict[str, Any]:
    """Publish batches for ``duration`` s, keeping at most ``window`` messages not yet seen by
    the slowest live subscriber; deliveries/s is end-to-end (all deliveries / first publish
    to last delivery after draining), and also in steady state over [warm, duration] from the
    children's running totals."""
    cpu_clients0 = (await pool.reset())["cpu"]
    pool.set_progress(progress_interval)
    await asyncio.sleep(0.05)
    published = 0
    stalls = 0
    t_first = time.time()
    t_warm = t_first + min(warm, duration / 4)
    t_stop = t_first + duration
    samples: list[tuple[float, int, float, list[int]]] = []

    async def sampler() -> None:
        # independent of the publisher, which may block on a slow server's response
        while True:
            samples.append(
                (
                    time.time(),
                    pool.total,
                    proc_tree_cpu(server_pid) if server_pid else 0.0,
                    machine_cpu(),
                )
            )
            await asyncio.sleep(0.05)

    sampling = asyncio.create_task(sampler())

    async def publisher() -> None:
        # ``concurrency`` of these run at once, each on its own connection, so a server that
        # answers a publish only after fanning it out is still kept busy
        nonlocal published, stalls
        while time.time() < t_stop:
            if published - pool.min + batch <= window:
                first = published
                published += batch
                await publish_batch(first, batch)
            else:
                stalls += 1
                await pool.wait_progress(0.05)

    await asyncio.gather(*(publisher() for _ in range(concurrency)))
    await asyncio.sleep(0.06)
    sampling.cancel()
    inside = [x for x in samples if t_warm <= x[0] <= t_stop]
    steady = server_cpu = None
    machine: dict[str, float] = {}
    if len(inside) >= 2:
        (ta, na, ca, ma), (tb, nb, cb, mb) = inside[0], inside[-1]
        steady = (nb - na) / (tb - ta)
        server_cpu = (cb - ca) / (tb - ta) if server_pid else None
        machine = machine_cpu_delta(ma, mb)
    # drain
    await pool.wait_min(published, drain_timeout)
    pool.set_progress(0)
    await asyncio.sleep(0.05)
    rep = await pool.report()
    live = rep["live"]
    e2e_time = (rep["t_last"] - t_first) if rep["t_last"] else None
    e2e = (rep["total"] / e2e_time) if e2e_time else None
    expected = published * live
    return {
        "subscribers": subscribers,
        "live": live,
        "published": published,
        "delivered": rep["total"],
        "expected": expected,
        "missing": max(0, expected - rep["total"]),
        # primary figure: everything delivered / (last delivery - first publish), so a server
        # that buffers and delivers late is not flattered; the steady-state figure (running
        # totals between ``warm`` and the end of publishing) is kept for comparison
        "deliveries_per_s": e2e,
        "deliveries_per_s_steady": steady,
        "messages_per_s": (e2e / live) if e2e and live else None,
        "seconds": round(time.time() - t_first, 2),
        "batch": batch,
        "window": window,
        "publish_concurrency": concurrency,
        "closed": rep["closed"],
        "close_codes": rep["close_codes"],
        "closes_at_s": _close_times(rep, t_first),
        "pings_answered": rep["pings"],
        "server_cpu_pct": round(server_cpu * 100, 1) if server_cpu is not None else None,
        "client_cpu_pct": round((rep["cpu"] - cpu_clients0) / (time.time() - t_first) * 100, 1),
        "machine": machine,
    }


def _close_times(rep: dict[str, Any], t0: float) -> list[float] | None:
    """When the first and last lost connection went, in seconds from the phase's start."""
    if not rep.get("first_close"):
        return None
    return [round(rep["first_close"] - t0, 2), round(rep["last_close"] - t0, 2)]


async def run_latency(
    pool: SubscriberPool,
    publisher: Any,
    server_pid: int | None,
    subscribers: int,
    rate: float = 100.0,
    count: int = 500,
    drain_timeout: float = 20.0,
    keep_samples: bool = False,
) -> dict[str, Any]:
    """Paced single publishes, pipelined on one keep-alive connection (so a slow response
    cannot delay the schedule, and order is kept); latency of message k = max over
    subscribers of receive time minus send time (publish-to-last-delivery)."""
    cpu_clients0 = (await pool.reset(marks=count))["cpu"]
    pool.set_progress(0.02)
    await publisher.start_paced()
    await asyncio.sleep(0.05)
    sends: list[float] = []
    cpu0 = proc_tree_cpu(server_pid) if server_pid else 0.0
    m0 = machine_cpu()
    t0 = time.time() + 0.02
    late = 0
    for i in range(count):
        target = t0 + i / rate
        delay = target - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.5 / rate:
            late += 1
        ts = time.time()
        sends.append(ts)
        await publisher.one_nowait(i, ts)
    t_end = time.time()
    server_cpu = (proc_tree_cpu(server_pid) - cpu0) / (t_end - t0) if server_pid else None
    machine = machine_cpu_delta(m0, machine_cpu())
    await pool.wait_min(count, drain_timeout)
    await publisher.stop_paced()
    pool.set_progress(0)
    await asyncio.sleep(0.05)
    rep = await pool.report()
    marks = rep["marks"] or []
    lats = [(m - s) * 1000 for m, s in zip(marks, sends, strict=False) if m > 0]
    lats_sorted = sorted(lats)

    def pct(p: float) -> float | None:
        if not lats_sorted:
            return None
        i = min(len(lats_sorted) - 1, max(0, round(p / 100 * len(lats_sorted)) - 1))
        return round(lats_sorted[i], 2)

    out: dict[str, Any] = {
        "subscribers": subscribers,
        "live": rep["live"],
        "rate": rate,
        "messages": count,
        "measured": len(lats),
        "complete": rep["min"] >= count,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": round(max(lats), 2) if lats else None,
        "mean_ms": round(statistics.fmean(lats), 2) if lats else None,
        "late_sends": late,
        "achieved_rate": round(count / (t_end - t0), 1),
        "closed": rep["closed"],
        "close_codes": rep["close_codes"],
        "closes_at_s": _close_times(rep, t0),
        "server_cpu_pct": round(server_cpu * 100, 1) if server_cpu is not None else None,
        "client_cpu_pct": round((rep["cpu"] - cpu_clients0) / (time.time() - t0) * 100, 1),
        "machine": machine,
    }
    if keep_samples:
        out["samples"] = [round(x, 2) for x in lats]  # in send order
        out["drain_s"] = round(rep["t_last"] - sends[-1], 3) if rep["t_last"] and sends else None
    return out


# --------------------------------------------------------------------------------------------
# Misc helpers for the scripts
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


async def wait_http(host: str, port: int, path: str, timeout: float = 20.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        try:
            c = HttpClient(host, port)
            status, _ = await asyncio.wait_for(c.request("GET", path), 2)
            c.close()
            if status < 500:
                return True
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
            pass
        await asyncio.sleep(0.2)
    return False


def fmt_num(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if digits:
            return f"{v:,.{digits}f}"
        return f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print()
    print(title)
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in cells[1:]:
        cols = enumerate(zip(r, widths, strict=True))
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in cols))
    print(flush=True)


def save_result(name: str, payload: dict[str, Any]) -> str:
    d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"{name}.json")
    payload = {"name": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **payload}
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)
    return path
