"""Soak: the hub under steady load with churn for many minutes; memory and file descriptors
must stay flat and every publication must reach every subscriber exactly once.

    python bench/soak.py                  # 15,000 connections, 10 minutes (not run in CI)
    python bench/soak.py --quick          # 1.5 minutes, to try it
    python bench/soak.py --minutes 30 --churn 2 --rate 100

One ``clarion serve`` (memory broker, namespace ``soak`` with history, recovery and presence)
holds ``--connections`` WebSocket clients speaking Centrifugo's JSON protocol (``connect``, then
``subscribe`` to ``--subs`` of ``--channels`` channels), spread over client processes of
``--per-process`` connections each.  Meanwhile:

- **churn**: every second each client process closes ``--churn`` % of its connections (a WebSocket
  close frame, then it reads on until the hub closes) and opens as many new ones;
- **publications**: ``--rate`` per second over ``POST /api/publish``, round-robin over the
  channels, each channel's publications one after another (so a channel's acknowledgement times
  grow with its offsets); ``data`` carries the send time, for latency;
- **presence**: ``--presence-rate`` client ``presence`` commands per second (on a channel the
  connection is subscribed to; the reply must list the connection itself), and
  ``--api-presence-rate`` server API ``presence`` + ``presence_stats`` calls per second.

Every ``--sample`` seconds the hub's VmRSS (/proc/PID/status), open descriptors (/proc/PID/fd)
and CPU are read.  Checks (the run exits 1 if one fails):

- **flat**: the baseline is the first sample at or after the warm-up (``--warmup`` minutes);
  the largest later sample must be at most ``--tolerance`` % (5) above it, for RSS and for fds;
- **accounting**: each subscription records the offsets it received (a byte counter per
  offset above the offset of its subscribe reply, S).  Its required set is every acknowledged
  publication of its channel with offset > S and an acknowledgement received before the client
  sent its close frame (all of them for a subscription open at the end).  The hub fans a
  publication out to its subscribers' queues before it answers the publish, and flushes those
  queues before it answers a close frame (unless its socket buffer is full: that connection's
  backlog is dropped, and shows here as lost), so the rule is exact: lost = required offsets never
  received, duplicated = offsets received more than once, stale = offsets <= S;
- no connection closed by the hub, no failed connect, subscribe, publish or presence call;
- at the end, with churn stopped, ``presence_stats`` of every channel and ``info`` agree with
  the subscriptions and connections the clients hold (entries of closed clients are gone).

No peer runs: Centrifugo cannot be installed here, and the peers of the other benchmarks
(Django Channels, Pushpin) have neither this protocol nor history or presence; the output says so.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import json
import math
import multiprocessing as mp
import os
import random
import resource
import statistics
import struct
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import loadclient as lc

NAMESPACE = "soak"
CONFIG = """\
api_key = "bench"
allow_anonymous_connect_without_token = true
{extra}

[namespaces.soak]
history_size = {history_size}
history_ttl = "300s"
force_recovery = true
presence = true
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true
allow_presence_for_subscriber = true
allow_presence_for_anonymous = true
"""
PEER_NOTE = (
    "no peer soak: Centrifugo (the natural peer) has no Debian or PyPI package, so it cannot "
    "be installed here; Pushpin and Django Channels have neither this protocol nor history "
    "and presence, and Channels tops out at a few thousand deliveries/s here (fanout_ws)"
)

LAT_BUCKET_S = 0.0001  # delivery latency histogram: 0.1 ms buckets up to 2 s
LAT_BUCKETS = 20_000
CONN_BUCKET_S = 0.001  # connect+subscribe time: 1 ms buckets up to 30 s
CONN_BUCKETS = 30_000
PRESENCE_ID0 = 1000  # command ids from here on are presence calls

# --------------------------------------------------------------------------------------------
# Client side (child processes)
# --------------------------------------------------------------------------------------------


class Track:
    """What one subscription received: counts[i] = times offset base + 1 + i arrived."""

    __slots__ = ("base", "counts", "hi", "ooo", "stale")

    def __init__(self, base: int) -> None:
        self.base = base
        self.counts = bytearray()
        self.stale = 0
        self.ooo = 0
        self.hi = base

    def add(self, offset: int) -> None:
        i = offset - self.base - 1
        if i < 0:
            self.stale += 1
            return
        counts = self.counts
        if i >= len(counts):
            counts.extend(bytes(i + 1 - len(counts)))
        if counts[i] < 255:
            counts[i] += 1
        if offset < self.hi:
            self.ooo += 1
        else:
            self.hi = offset


class State:
    """Per-process counters and the subscriptions that have ended."""

    def __init__(self) -> None:
        self.live: list[Conn] = []  # ready and not closing, for churn and presence picks
        self.all: set[Conn] = set()
        self.done: list[tuple[str, Track, float]] = []  # (channel, track, close time)
        self.deliveries = 0
        self.connects = 0
        self.connect_failed: dict[str, int] = {}
        self.churn_closes = 0
        self.unexpected: dict[str, int] = {}
        self.unexpected_tracks = 0
        self.unsolicited = 0
        self.presence_ok = 0
        self.presence_bad: dict[str, int] = {}
        self.presence_ms: list[float] = []
        self.pings = 0
        self.lat = [0] * LAT_BUCKETS
        self.lat_over = 0
        self.lat_max = 0.0
        self.conn_hist = [0] * CONN_BUCKETS

    def fail(self, where: dict[str, int], why: str) -> None:
        where[why] = where.get(why, 0) + 1


class Conn(asyncio.Protocol):
    __slots__ = (
        "buf",
        "channels",
        "client",
        "closing",
        "fut",
        "pending",
        "s",
        "t",
        "t0",
        "t_close",
        "tracks",
        "upgraded",
    )

    def __init__(self, s: State, channels: list[str], fut: asyncio.Future[bool]) -> None:
        self.s = s
        self.channels = channels
        self.fut = fut
        self.t: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.client = ""
        self.tracks: dict[str, Track] = {}
        self.pending: dict[int, tuple[str, float]] = {}  # presence id -> (channel, sent at)
        self.closing = False
        self.t_close = 0.0
        self.t0 = time.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        self.t.write(
            (
                "GET /connection/websocket HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return
            if b" 101" not in buf[:13]:
                self._fail("HTTP " + bytes(buf[:40]).decode("latin-1").split("\r\n")[0])
                return
            del buf[: i + 4]
            self.upgraded = True
            cmds = ['{"id":1,"connect":{}}'] + [
                f'{{"id":{k + 2},"subscribe":{{"channel":"{c}"}}}}'
                for k, c in enumerate(self.channels)
            ]
            self.send("\n".join(cmds).encode())
        n = len(buf)
        i = 0
        while n - i >= 2:
            ln = buf[i + 1] & 0x7F
            h = 2
            if ln == 126:
                if n - i < 4:
                    break
                ln = (buf[i + 2] << 8) | buf[i + 3]
                h = 4
            elif ln == 127:
                if n - i < 10:
                    break
                ln = int.from_bytes(buf[i + 2 : i + 10], "big")
                h = 10
            if n - i < h + ln:
                break
            op = buf[i] & 0x0F
            payload = bytes(buf[i + h : i + h + ln])
            i += h + ln
            if op == 1:
                self._text(payload)
            elif op == 8:
                self._server_close(payload)
            elif op == 9:
                self.t.write(bytes([0x8A, 0x80 | len(payload)]) + lc._ZERO_MASK + payload)  # type: ignore[union-attr]
        if i:
            del buf[:i]

    def send(self, body: bytes) -> None:
        self.t.write(lc.ws_text_frame(body))  # type: ignore[union-attr]

    def _text(self, payload: bytes) -> None:
        s = self.s
        if payload == b"{}":  # the hub's ping
            if not self.closing:
                self.t.write(lc.CF_PONG)  # type: ignore[union-attr]
                s.pings += 1
            return
        now = time.time()
        for line in payload.split(b"\n"):
            msg = json.loads(line)
            push = msg.get("push")
            if push is not None:
                pub = push.get("pub")
                if pub is None:
                    continue
                track = self.tracks.get(push["channel"])
                if track is None:
                    s.unsolicited += 1
                    continue
                track.add(pub["offset"])
                s.deliveries += 1
                d = now - pub["data"]["ts"]
                k = int(d / LAT_BUCKET_S)
                if 0 <= k < LAT_BUCKETS:
                    s.lat[k] += 1
                else:
                    s.lat_over += 1
                if d > s.lat_max:
                    s.lat_max = d
                continue
            self._reply(msg, now)

    def _reply(self, msg: dict[str, Any], now: float) -> None:
        s = self.s
        cid = msg.get("id", 0)
        err = msg.get("error")
        if cid >= PRESENCE_ID0:
            _, sent = self.pending.pop(cid, ("", now))
            if err is not None:
                s.fail(s.presence_bad, f"error {err.get('code')} {err.get('message')}")
            elif self.client not in msg["presence"]["presence"]:
                s.fail(s.presence_bad, "reply lacks the asking client")
            else:
                s.presence_ok += 1
                s.presence_ms.append((now - sent) * 1000)
            return
        if err is not None:
            self._fail(f"command {cid}: error {err.get('code')} {err.get('message')}")
            return
        if cid == 1:
            self.client = msg["connect"]["client"]
        elif 2 <= cid < 2 + len(self.channels):
            self.tracks[self.channels[cid - 2]] = Track(msg["subscribe"]["offset"])
            if len(self.tracks) == len(self.channels) and not self.fut.done():
                k = int((now - self.t0) / CONN_BUCKET_S)
                s.conn_hist[min(k, CONN_BUCKETS - 1)] += 1
                s.connects += 1
                s.live.append(self)
                self.fut.set_result(True)

    def presence(self, cid: int) -> None:
        channel = random.choice(self.channels)
        self.pending[cid] = (channel, time.time())
        self.send(f'{{"id":{cid},"presence":{{"channel":"{channel}"}}}}'.encode())

    def close(self) -> None:
        """Client-initiated close; reading goes on until the hub closes, so every publication
        the hub queued before it read the close frame still arrives (and counts)."""
        self.closing = True
        self.t_close = time.time()
        self.s.churn_closes += 1
        self.t.write(lc.WS_CLOSE)  # type: ignore[union-attr]

    def _server_close(self, payload: bytes) -> None:
        if not self.closing:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            self.s.fail(self.s.unexpected, f"{code} {payload[2:].decode('utf-8', 'replace')}")
            self.closing = True
            self.t_close = -1.0  # marks: closed by the hub, left out of the accounting
        self.t.close()  # type: ignore[union-attr]

    def _fail(self, why: str) -> None:
        self.s.fail(self.s.connect_failed, why[:120])
        if not self.fut.done():
            self.fut.set_result(False)
        self.t.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        s = self.s
        s.all.discard(self)
        if not self.fut.done():
            self.fut.set_result(False)
            s.fail(s.connect_failed, "closed during the handshake")
        if not self.closing and self.fut.result():
            s.fail(s.unexpected, "EOF without a close frame")
            self.t_close = -1.0
        elif not self.closing:
            return
        if self.t_close < 0:  # churn took the others out of ``live`` already
            with contextlib.suppress(ValueError):
                s.live.remove(self)
        for ch, track in self.tracks.items():
            if self.t_close < 0:
                s.unexpected_tracks += 1
            else:
                s.done.append((ch, track, self.t_close))
        self.tracks = {}


async def _child_async(conn: Any, spec: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    s = State()
    rng = random.Random(spec["seed"])
    channels = spec["channels"]
    host, port, nsubs = spec["host"], spec["port"], spec["subs"]
    sem = asyncio.Semaphore(spec["concurrency"])
    pid_base = PRESENCE_ID0

    async def open_one() -> None:
        async with sem:
            fut: asyncio.Future[bool] = loop.create_future()
            c = Conn(s, rng.sample(channels, nsubs), fut)
            try:
                await loop.create_connection(lambda: c, host, port)
            except OSError as e:
                s.fail(s.connect_failed, f"{type(e).__name__}: {e}"[:120])
                return
            s.all.add(c)
            try:
                await asyncio.wait_for(asyncio.shield(fut), 30)
            except TimeoutError:
                s.fail(s.connect_failed, "no subscribe reply in 30 s")
                c.t.close()  # type: ignore[union-attr]

    t0 = time.time()
    await asyncio.gather(*(open_one() for _ in range(spec["n"])))
    conn.send(("ready", {"ok": len(s.live), "failed": dict(s.connect_failed),
                         "seconds": time.time() - t0}))  # fmt: skip

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
    churning = False
    churn_per_s = spec["n"] * spec["churn"] / 100
    presence_per_s = spec["presence_rate"]
    openers: set[asyncio.Task[None]] = set()

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def progress() -> tuple[Any, ...]:
        return ("p", {"live": len(s.live), "deliveries": s.deliveries, "connects": s.connects,
                      "closes": s.churn_closes, "connect_failed": sum(s.connect_failed.values()),
                      "unexpected": sum(s.unexpected.values()), "cpu": cpu()})  # fmt: skip

    async def ticker() -> None:
        # Churn and presence calls are spread over the second in 10 steps, so the hub sees a
        # steady trickle rather than a burst at every whole second.
        nonlocal pid_base
        owed_churn = owed_presence = 0.0
        last_progress = last_tick = 0.0
        while True:
            await asyncio.sleep(0.1)
            now = time.time()
            # by elapsed time, not per tick: a busy process wakes up later than asked
            step = min(1.0, now - last_tick) if last_tick else 0.1
            last_tick = now
            if churning:
                owed_churn += churn_per_s * step
                while owed_churn >= 1 and s.live:
                    owed_churn -= 1
                    i = rng.randrange(len(s.live))
                    c = s.live[i]
                    s.live[i] = s.live[-1]
                    s.live.pop()
                    c.close()
                    task = loop.create_task(open_one())
                    openers.add(task)
                    task.add_done_callback(openers.discard)
                owed_presence += presence_per_s * step
                while owed_presence >= 1 and s.live:
                    owed_presence -= 1
                    pid_base += 1
                    rng.choice(s.live).presence(pid_base)
            now = time.time()
            if now - last_progress >= 1:
                last_progress = now
                conn.send(progress())

    tick = loop.create_task(ticker())
    while True:
        msg = await inbox.get()
        cmd = msg[0]
        if cmd == "churn":
            churning = msg[1]
            if not churning:
                # wait for the replacements and for closing connections to end
                if openers:
                    await asyncio.gather(*list(openers), return_exceptions=True)
                end = time.time() + 15
                while any(c.closing for c in s.all) and time.time() < end:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            conn.send(("churn", churning))
        elif cmd == "measure":
            s.lat = [0] * LAT_BUCKETS
            s.lat_over = 0
            s.lat_max = 0.0
            s.conn_hist = [0] * CONN_BUCKETS
            s.presence_ms = []
            conn.send(("measure", progress()[1]))
        elif cmd == "holdings":
            subs: dict[str, int] = {}
            for c in s.live:
                for ch in c.tracks:
                    subs[ch] = subs.get(ch, 0) + 1
            conn.send(("holdings", {"connections": len(s.live), "subs": subs,
                                    "open_sockets": len(s.all)}))  # fmt: skip
        elif cmd == "verify":
            conn.send(("verify", _verify(s, msg[1])))
        elif cmd in ("close", "exit"):
            tick.cancel()
            for c in list(s.all):
                if c.t is not None:
                    c.t.close()
            await asyncio.sleep(0.2)
            if cmd == "close":
                with contextlib.suppress(OSError):
                    conn.send(("closed", {}))
            return


def _verify(s: State, acks: dict[str, list[float | None]]) -> dict[str, Any]:
    """Apply the accounting rule (module docstring) to every subscription this process held.

    ``acks[ch][o]`` is when the publisher got the answer for offset ``o`` (None: never
    answered, so not required).  The times grow with the offset (one publication per channel
    at a time), so "acknowledged before t" is a prefix found by bisection."""
    prefix: dict[str, list[float]] = {}
    holes: dict[str, list[int]] = {}
    for ch, a in acks.items():
        arr = [-math.inf]
        last = -math.inf
        for o in range(1, len(a)):
            if a[o] is None:
                holes.setdefault(ch, []).append(o)
            else:
                last = a[o]  # type: ignore[assignment]
            arr.append(last)
        prefix[ch] = arr
    out = {"subscriptions": 0, "required": 0, "lost": 0, "duplicated": 0, "stale": 0,
           "out_of_order": 0, "after_close": 0, "lost_examples": []}  # fmt: skip
    tracks = [(ch, t, t_close) for ch, t, t_close in s.done]
    tracks += [(ch, t, math.inf) for c in s.live for ch, t in c.tracks.items()]
    for ch, t, t_close in tracks:
        arr = prefix.get(ch, [-math.inf])
        last = bisect.bisect_left(arr, t_close) - 1  # highest offset acked before t_close
        n_req = span = max(0, last - t.base)
        seg = t.counts[:span]
        got = len(seg) - seg.count(0)
        lost = n_req - got
        for o in holes.get(ch, ()):
            if t.base < o <= last:
                n_req -= 1
                if o - t.base - 1 >= len(seg) or seg[o - t.base - 1] == 0:
                    lost -= 1
        counts = t.counts
        out["subscriptions"] += 1
        out["required"] += n_req
        out["lost"] += lost
        out["duplicated"] += sum(counts) - (len(counts) - counts.count(0))
        out["stale"] += t.stale
        out["out_of_order"] += t.ooo
        out["after_close"] += sum(counts[span:]) if t_close != math.inf else 0
        if lost and len(out["lost_examples"]) < 5:
            miss = [t.base + 1 + i for i in range(len(seg)) if seg[i] == 0][:5]
            out["lost_examples"].append(
                {
                    "channel": ch,
                    "subscribed_at": t.base,
                    "required_up_to": last,
                    "missing": miss or "tail",
                }
            )
    out.update(
        unexpected=dict(s.unexpected),
        unexpected_subscriptions=s.unexpected_tracks,
        connect_failed=dict(s.connect_failed),
        unsolicited=s.unsolicited,
        presence_ok=s.presence_ok,
        presence_bad=dict(s.presence_bad),
        presence_ms=s.presence_ms,
        pings=s.pings,
        lat={i: n for i, n in enumerate(s.lat) if n},
        lat_over=s.lat_over,
        lat_max=s.lat_max,
        conn_hist={i: n for i, n in enumerate(s.conn_hist) if n},
    )
    return out


def child_main(conn: Any, spec: dict[str, Any]) -> None:
    lc.run_child(_child_async, conn, spec)


# --------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------


class Clients:
    """The client processes, and the latest progress each has sent."""

    def __init__(self) -> None:
        self.procs: list[Any] = []
        self.pipes: list[Any] = []
        self.replies: list[asyncio.Queue[Any]] = []
        self.progress: list[dict[str, Any]] = []

    async def start(self, spec: dict[str, Any], n: int, per_process: int) -> list[Any]:
        ctx = mp.get_context("spawn")
        loop = asyncio.get_running_loop()
        nproc = max(1, -(-n // per_process))
        base, extra = divmod(n, nproc)
        for i in range(nproc):
            parent, child = ctx.Pipe()
            sp = {**spec, "n": base + (1 if i < extra else 0), "seed": i}
            p = ctx.Process(target=child_main, args=(child, sp), daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.pipes.append(parent)
            self.replies.append(asyncio.Queue())
            self.progress.append({})
            loop.add_reader(parent.fileno(), self._on_readable, i)
            os.set_blocking(parent.fileno(), True)  # as in the child: whole messages only
        return await asyncio.gather(*(self._expect(i, "ready", 300) for i in range(nproc)))

    def _on_readable(self, i: int) -> None:
        try:
            while self.pipes[i].poll():
                msg = self.pipes[i].recv()
                if msg[0] == "p":
                    self.progress[i] = msg[1]
                else:
                    self.replies[i].put_nowait(msg)
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(self.pipes[i].fileno())
            self.replies[i].put_nowait(("dead", {}))

    async def _expect(self, i: int, kind: str, timeout: float) -> Any:
        while True:
            msg = await asyncio.wait_for(self.replies[i].get(), timeout)
            if msg[0] == kind:
                return msg[1]
            if msg[0] == "dead":
                self.procs[i].join(2)
                raise RuntimeError(
                    f"client process {self.procs[i].pid} died (exit code {self.procs[i].exitcode})"
                )

    async def all(self, cmd: tuple[Any, ...], kind: str, timeout: float = 120) -> list[Any]:
        for p in self.pipes:
            p.send(cmd)
        return await asyncio.gather(
            *(self._expect(i, kind, timeout) for i in range(len(self.pipes)))
        )

    def total(self, key: str) -> float:
        return sum(p.get(key, 0) for p in self.progress)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for p in self.pipes:
            with contextlib.suppress(OSError):
                p.send(("close",))
        for i in range(len(self.pipes)):
            with contextlib.suppress(RuntimeError, TimeoutError):
                await self._expect(i, "closed", 10)
        for p, conn in zip(self.procs, self.pipes, strict=True):
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(conn.fileno())
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=2)
            conn.close()


class Publisher:
    """``--rate`` publications/s, one task per channel so each channel's publications are
    acknowledged in offset order (the accounting rule relies on it)."""

    def __init__(self, port: int, channels: list[str], rate: float) -> None:
        self.port = port
        self.channels = channels
        self.rate = rate
        self.acks: dict[str, list[float | None]] = {c: [None] for c in channels}
        self.epochs: dict[str, set[str]] = {c: set() for c in channels}
        self.sent = 0
        self.acked = 0
        self.errors: dict[str, int] = {}
        self.ms: list[float] = []
        self.late = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        t0 = time.time() + 0.1
        n = len(self.channels)
        for j, ch in enumerate(self.channels):
            self._tasks.append(
                asyncio.create_task(self._run(ch, t0 + j / self.rate, n / self.rate))
            )

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _run(self, ch: str, first: float, every: float) -> None:
        http = lc.HttpClient(common.HOST, self.port)
        headers = {"X-API-Key": "bench", "Content-Type": "application/json"}
        k = 0
        try:
            while not self._stop.is_set():
                delay = first + k * every - time.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
                    if self._stop.is_set():
                        return
                elif delay < -every:
                    self.late += 1
                k += 1
                ts = time.time()
                body = f'{{"channel":"{ch}","data":{{"ts":{ts!r},"seq":{self.sent}}}}}'
                self.sent += 1
                try:
                    status, resp = await http.request(
                        "POST", "/api/publish", body.encode(), headers
                    )
                except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                    self._err(f"{type(e).__name__}: {e}")
                    continue
                now = time.time()
                if status != 200 or b'"result"' not in resp:
                    self._err(f"HTTP {status}: {resp[:120]!r}")
                    continue
                res = json.loads(resp)["result"]
                o = res["offset"]
                a = self.acks[ch]
                if o < len(a):
                    self._err(f"offset {o} of {ch} answered twice or out of order")
                    continue
                a.extend([None] * (o - len(a)))  # a gap: offsets nobody acknowledged
                a.append(now)
                self.epochs[ch].add(res["epoch"])
                self.acked += 1
                self.ms.append((now - ts) * 1000)
        finally:
            http.close()

    def _err(self, what: str) -> None:
        self.errors[what[:160]] = self.errors.get(what[:160], 0) + 1


class ApiPresence:
    """Server API ``presence`` and ``presence_stats`` on random channels."""

    def __init__(self, port: int, channels: list[str], rate: float) -> None:
        self.port = port
        self.channels = channels
        self.rate = rate
        self.calls = 0
        self.errors: dict[str, int] = {}
        self.ms: list[float] = []
        self.members: list[int] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.rate > 0:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        http = lc.HttpClient(common.HOST, self.port)
        headers = {"X-API-Key": "bench"}
        try:
            while True:
                await asyncio.sleep(1 / self.rate)
                ch = random.choice(self.channels)
                body = json.dumps({"channel": ch}).encode()
                for method in ("presence", "presence_stats"):
                    t = time.time()
                    try:
                        status, resp = await http.request("POST", f"/api/{method}", body, headers)
                    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                        self._err(f"{method}: {type(e).__name__}: {e}")
                        continue
                    self.calls += 1
                    if status != 200 or b'"result"' not in resp:
                        self._err(f"{method}: HTTP {status}: {resp[:120]!r}")
                        continue
                    self.ms.append((time.time() - t) * 1000)
                    if method == "presence":
                        self.members.append(len(json.loads(resp)["result"]["presence"]))
        finally:
            http.close()

    def _err(self, what: str) -> None:
        self.errors[what[:160]] = self.errors.get(what[:160], 0) + 1


def hub_sample(pid: int) -> dict[str, Any]:
    return {
        "t": time.time(),
        "rss_kb": lc.rss_kb(pid),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "cpu_s": lc.proc_tree_cpu(pid),
    }


def pct(sorted_vals: list[float], p: float) -> float | None:
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, max(0, math.ceil(p / 100 * len(sorted_vals)) - 1))]


def hist_pct(hist: list[int], bucket_s: float, p: float) -> float | None:
    """The upper edge (ms) of the bucket holding the p-th percentile."""
    total = sum(hist)
    if not total:
        return None
    want = p / 100 * total
    acc = 0
    for i, n in enumerate(hist):
        acc += n
        if acc >= want:
            return round((i + 1) * bucket_s * 1000, 2)
    return None


def flatness(samples: list[dict[str, Any]], key: str, t_warm: float, tol: float) -> dict[str, Any]:
    after = [x for x in samples if x["t"] >= t_warm]
    if len(after) < 2:
        return {"ok": False, "why": "fewer than 2 samples after the warm-up"}
    base = after[0][key]
    peak = max(x[key] for x in after)
    last = after[-1][key]
    # least-squares slope over the post-warm-up samples, per minute
    ts = [(x["t"] - after[0]["t"]) / 60 for x in after]
    vs = [x[key] for x in after]
    mt, mv = statistics.fmean(ts), statistics.fmean(vs)
    den = sum((t - mt) ** 2 for t in ts) or 1
    slope = sum((t - mt) * (v - mv) for t, v in zip(ts, vs, strict=True)) / den
    return {
        "baseline": base,
        "max": peak,
        "last": last,
        "min": min(vs),
        "max_pct": round((peak / base - 1) * 100, 2) if base else None,
        "last_pct": round((last / base - 1) * 100, 2) if base else None,
        "slope_per_min": round(slope, 1),
        "ok": bool(base) and peak <= base * (1 + tol / 100),
    }


async def main(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {"args": vars(args), "peer": PEER_NOTE}
    channels = [f"{NAMESPACE}:{i}" for i in range(args.channels)]
    n = args.connections
    print(
        f"Soak: {n:,} WebSocket connections x {args.subs} of {args.channels} channels, "
        f"churn {args.churn:g} %/s, {args.rate:g} publications/s, {args.minutes:g} min "
        f"(warm-up {args.warmup:g} min)  (machine: {os.cpu_count()} CPUs)",
        flush=True,
    )
    await common.note_background(results)
    ok, why = common.clarion_available()
    if not ok:
        print(f"  !! Clarion hub not available: {why}")
        return 1
    port = lc.free_port()
    server = common.Server("clarion", [], port, "/health")
    cfg = os.path.join(server.tmp, "clarion.toml")
    with open(cfg, "w") as f:  # noqa: ASYNC230 - once, before the hub starts
        f.write(CONFIG.format(extra=args.extra_config, history_size=args.history_size))
    server.argv = [common.PY, "-m", "clarion", "serve", "--port", str(port), "--config", cfg]
    await server.start()
    pid = server.pid
    clients = Clients()
    publisher = Publisher(port, channels, args.rate)
    api_presence = ApiPresence(port, channels, args.api_presence_rate)
    samples: list[dict[str, Any]] = []
    failures: list[str] = []
    try:
        samples.append({**hub_sample(pid), "phase": "idle"})
        spec = {
            "host": common.HOST, "port": port, "channels": channels, "subs": args.subs,
            "churn": args.churn, "presence_rate": args.presence_rate / -(-n // args.per_process),
            "concurrency": 100,
        }  # fmt: skip
        t0 = time.time()
        ready = await clients.start(spec, n, args.per_process)
        connected = sum(r["ok"] for r in ready)
        results["connect"] = {
            "ok": connected,
            "failed": lc._merge_counts(r["failed"] for r in ready),
            "seconds": round(time.time() - t0, 1),
            "processes": len(ready),
        }
        print(f"  {connected:,} connected and subscribed in {time.time() - t0:.0f} s "
              f"({len(ready)} client processes)", flush=True)  # fmt: skip
        if connected < n:
            failures.append(f"{n - connected} of {n} initial connections failed: "
                            f"{results['connect']['failed']}")  # fmt: skip

        t_start = time.time()
        t_warm = t_start + args.warmup * 60
        t_end = t_start + args.minutes * 60
        publisher.start()
        api_presence.start()
        await clients.all(("churn", True), "churn")
        m0: dict[str, Any] | None = None
        pub0 = 0
        machine0 = lc.machine_cpu()
        machine_w = None
        next_print = t_start + 30
        while True:
            now = time.time()
            if now >= t_end:
                break
            await asyncio.sleep(min(args.sample, t_end - now))
            x = hub_sample(pid)
            x.update(
                live=int(clients.total("live")),
                deliveries=int(clients.total("deliveries")),
                published=publisher.acked,
                connects=int(clients.total("connects")),
            )
            samples.append(x)
            if m0 is None and x["t"] >= t_warm:
                m0 = {
                    "t": x["t"],
                    "cpu_s": x["cpu_s"],
                    "progress": await clients.all(("measure",), "measure"),
                }
                pub0 = publisher.acked
                machine_w = lc.machine_cpu()
                x["phase"] = "warm-up end"
            if not server.alive():
                failures.append("the hub exited")
                break
            if x["t"] >= next_print or x["t"] >= t_end:
                next_print += 30
                print(
                    f"  {x['t'] - t_start:5.0f} s  live {x['live']:,}  RSS "
                    f"{x['rss_kb'] / 1024:.1f} MiB  fds {x['fds']:,}  published "
                    f"{x['published']:,}  delivered {x['deliveries']:,}  connects "
                    f"{x['connects']:,}",
                    flush=True,
                )

        t_stop = time.time()
        await publisher.stop()
        await api_presence.stop()
        await clients.all(("churn", False), "churn", timeout=60)
        machine = lc.machine_cpu_delta(machine_w or machine0, lc.machine_cpu())
        final_progress = list(clients.progress)
        # drain: the last publications may still be on their way
        last, still = clients.total("deliveries"), time.time()
        while time.time() - still < 2 and time.time() - t_stop < 30:
            await asyncio.sleep(0.5)
            cur = clients.total("deliveries")
            if cur != last:
                last, still = cur, time.time()
        await asyncio.sleep(1.0)  # the hub's detach tasks of the last closed connections

        # presence and info must match what the clients hold
        holdings = await clients.all(("holdings",), "holdings")
        held = {"connections": sum(h["connections"] for h in holdings),
                "subs": lc._merge_counts(h["subs"] for h in holdings)}  # fmt: skip
        http = lc.HttpClient(common.HOST, port)
        hdr = {"X-API-Key": "bench"}
        mismatch = {}
        for ch in channels:
            _, resp = await http.request("POST", "/api/presence_stats",
                                         json.dumps({"channel": ch}).encode(), hdr)  # fmt: skip
            got = json.loads(resp)["result"]["num_clients"]
            if got != held["subs"].get(ch, 0):
                mismatch[ch] = {"presence": got, "clients_hold": held["subs"].get(ch, 0)}
        _, resp = await http.request("POST", "/api/info", b"{}", hdr)
        info = json.loads(resp)["result"]["nodes"][0]
        http.close()
        results["end_state"] = {"clients_hold": held["connections"],
                                "clients_hold_subs": sum(held["subs"].values()),
                                "info": info, "presence_mismatch": mismatch}  # fmt: skip
        if mismatch:
            failures.append(f"presence_stats disagrees with the clients on {len(mismatch)} "
                            f"channels, e.g. {next(iter(mismatch.items()))}")  # fmt: skip
        if info.get("num_clients") != held["connections"]:
            failures.append(f"info num_clients {info.get('num_clients')} != "
                            f"{held['connections']} connections the clients hold")  # fmt: skip
        n_subs = sum(held["subs"].values())
        if info.get("num_subs") not in (None, n_subs):
            failures.append(
                f"info num_subs {info.get('num_subs')} != {n_subs} subscriptions the clients hold"
            )
        samples.append({**hub_sample(pid), "phase": "end (churn stopped)"})

        # accounting
        vs = await clients.all(("verify", publisher.acks), "verify", timeout=300)
        acc = {k: sum(v[k] for v in vs) for k in ("subscriptions", "required", "lost",
               "duplicated", "stale", "out_of_order", "after_close", "unsolicited",
               "unexpected_subscriptions", "presence_ok", "pings")}  # fmt: skip
        acc["lost_examples"] = [e for v in vs for e in v["lost_examples"]][:5]
        acc["unexpected"] = lc._merge_counts(v["unexpected"] for v in vs)
        acc["connect_failed"] = lc._merge_counts(v["connect_failed"] for v in vs)
        acc["presence_bad"] = lc._merge_counts(v["presence_bad"] for v in vs)
        lat = [0] * LAT_BUCKETS
        conn_hist = [0] * CONN_BUCKETS
        for v in vs:
            for i, k in v["lat"].items():
                lat[i] += k
            for i, k in v["conn_hist"].items():
                conn_hist[i] += k
        pres_ms = sorted(x for v in vs for x in v["presence_ms"])
        results["accounting"] = acc
        for what, k in (("lost", "lost"), ("duplicated", "duplicated"), ("stale", "stale"),
                        ("delivered out of order", "out_of_order"),
                        ("publications for channels not subscribed", "unsolicited")):  # fmt: skip
            if acc[k]:
                failures.append(f"{acc[k]:,} deliveries {what}")
        if acc["unexpected"]:
            failures.append(f"the hub closed {sum(acc['unexpected'].values())} connections: "
                            f"{acc['unexpected']}")  # fmt: skip
        if acc["connect_failed"]:
            failures.append(f"failed connects: {acc['connect_failed']}")
        if acc["presence_bad"]:
            failures.append(f"client presence calls failed: {acc['presence_bad']}")
        if publisher.errors:
            failures.append(f"publish errors: {publisher.errors}")
        if api_presence.errors:
            failures.append(f"server API presence errors: {api_presence.errors}")
        if any(len(e) > 1 for e in publisher.epochs.values()):
            failures.append("a channel changed epoch during the run")

        # rates over the measured window (after the warm-up)
        if m0 is None:
            failures.append("the run ended before the warm-up did")
            m0 = {
                "t": t_start,
                "cpu_s": samples[0]["cpu_s"],
                "progress": [{}] * len(final_progress),
            }
        win = t_stop - m0["t"]
        d = {
            k: sum(p.get(k, 0) for p in final_progress) - sum(p.get(k, 0) for p in m0["progress"])
            for k in ("deliveries", "connects", "closes", "cpu")
        }
        cpu_hub = [x for x in samples if m0["t"] <= x["t"] <= t_stop]
        hub_cpu = (
            ((cpu_hub[-1]["cpu_s"] - m0["cpu_s"]) / win * 100) if cpu_hub and win > 0 else None
        )
        results["rates"] = {
            "window_s": round(win, 1),
            "publications_per_s": round((publisher.acked - pub0) / win, 1) if win > 0 else None,
            "deliveries_per_s": round(d["deliveries"] / win, 0) if win > 0 else None,
            "connects_per_s": round(d["connects"] / win, 1) if win > 0 else None,
            "disconnects_per_s": round(d["closes"] / win, 1) if win > 0 else None,
            "hub_cpu_pct": round(hub_cpu, 1) if hub_cpu is not None else None,
            "clients_cpu_pct": round(d["cpu"] / win * 100, 1) if win > 0 else None,
            "machine": machine,
            "latency_p50_ms": hist_pct(lat, LAT_BUCKET_S, 50),
            "latency_p99_ms": hist_pct(lat, LAT_BUCKET_S, 99),
            "latency_max_ms": round(max(v["lat_max"] for v in vs) * 1000, 1),
            "latency_over_2s": sum(v["lat_over"] for v in vs),
            "connect_p50_ms": hist_pct(conn_hist, CONN_BUCKET_S, 50),
            "connect_p99_ms": hist_pct(conn_hist, CONN_BUCKET_S, 99),
            "client_presence_calls": acc["presence_ok"],
            "client_presence_p50_ms": round(pct(pres_ms, 50) or 0, 2),
            "client_presence_p99_ms": round(pct(pres_ms, 99) or 0, 2),
            "api_presence_calls": api_presence.calls,
            "api_presence_p99_ms": round(pct(sorted(api_presence.ms), 99) or 0, 2),
            "api_presence_members_mean": (round(statistics.fmean(api_presence.members))
                                          if api_presence.members else None),
            "publish_p99_ms": round(pct(sorted(publisher.ms), 99) or 0, 2),
            "published_total": publisher.acked,
            "publisher_late": publisher.late,
        }  # fmt: skip
        results["rss"] = flatness(samples[:-1], "rss_kb", t_warm, args.tolerance)
        results["fds"] = flatness(samples[:-1], "fds", t_warm, args.tolerance)
        for k in ("rss", "fds"):
            f = results[k]
            if not f["ok"]:
                failures.append(f"{k} not flat: {f}")
        results["samples"] = samples
    finally:
        results["log_tail"] = server.log_tail(40)
        await clients.close()
        server.stop()
        server.cleanup(keep_logs=bool(failures))
        if failures:
            results["log"] = server.log_path
    results["failures"] = failures
    print_report(results)
    print("saved", lc.save_result("soak_quick" if args.quick else "soak", results))
    return 1 if failures else 0


def report_rows(results: dict[str, Any]) -> list[list[Any]]:
    a = argparse.Namespace(**results["args"])
    r = results.get("rates", {})
    acc = results.get("accounting", {})
    rss, fds = results.get("rss", {}), results.get("fds", {})
    tol = f"<= +{a.tolerance:g} %"
    peer = "-"
    none = "not run"

    def met(ok: Any) -> str:
        return "yes" if ok else "NO"

    def mib(kb: Any) -> str:
        return f"{kb / 1024:,.1f}" if kb else "-"

    return [
        ["connections held (target)", f"{a.connections:,}", peer, none, "-", "", ""],
        [f"RSS MiB at warm-up end ({a.warmup:g} min)", mib(rss.get("baseline")), peer, none,
         "-", "", ""],
        ["RSS MiB max / last after warm-up",
         f"{mib(rss.get('max'))} / {mib(rss.get('last'))}", peer, none, "-",
         tol, met(rss.get("ok"))],
        ["RSS change max / last, slope KB/min",
         f"{rss.get('max_pct')} % / {rss.get('last_pct')} %, {rss.get('slope_per_min')}",
         peer, none, "-", "", ""],
        ["open fds at warm-up end", lc.fmt_num(fds.get("baseline")), peer, none, "-", "", ""],
        ["open fds max / last after warm-up",
         f"{lc.fmt_num(fds.get('max'))} / {lc.fmt_num(fds.get('last'))}", peer, none, "-",
         tol, met(fds.get("ok"))],
        ["publications/s (acknowledged)", lc.fmt_num(r.get("publications_per_s"), 1), peer,
         none, "-", f"{a.rate:g}", ""],
        ["deliveries/s", lc.fmt_num(r.get("deliveries_per_s")), peer, none, "-", "", ""],
        ["connects/s (churn) / disconnects/s",
         f"{r.get('connects_per_s')} / {r.get('disconnects_per_s')}", peer, none, "-",
         f"{a.connections * a.churn / 100:g}", ""],
        ["connect+subscribe p50 / p99 ms",
         f"{r.get('connect_p50_ms')} / {r.get('connect_p99_ms')}", peer, none, "-", "", ""],
        ["delivery latency p50 / p99 / max ms",
         f"{r.get('latency_p50_ms')} / {r.get('latency_p99_ms')} / {r.get('latency_max_ms')}",
         peer, none, "-", "", ""],
        ["presence calls client / API (p99 ms)",
         f"{lc.fmt_num(r.get('client_presence_calls'))} ({r.get('client_presence_p99_ms')}) / "
         f"{lc.fmt_num(r.get('api_presence_calls'))} ({r.get('api_presence_p99_ms')})",
         peer, none, "-", "", ""],
        ["hub CPU % (of one core) / clients CPU %",
         f"{r.get('hub_cpu_pct')} / {r.get('clients_cpu_pct')}", peer, none, "-", "", ""],
        ["subscriptions accounted / deliveries required",
         f"{lc.fmt_num(acc.get('subscriptions'))} / {lc.fmt_num(acc.get('required'))}",
         peer, none, "-", "", ""],
        ["lost / duplicated / stale / out of order",
         f"{acc.get('lost')} / {acc.get('duplicated')} / {acc.get('stale')} / "
         f"{acc.get('out_of_order')}", peer, none, "-", "0 / 0 / 0 / 0",
         met(acc and not any(acc.get(k) for k in ("lost", "duplicated", "stale", "out_of_order")))],
        ["closed by the hub / failed connects",
         f"{sum((acc.get('unexpected') or {}).values())} / "
         f"{sum((acc.get('connect_failed') or {}).values())}", peer, none, "-", "0 / 0",
         met(acc and not acc.get("unexpected") and not acc.get("connect_failed"))],
        ["presence = clients' subscriptions at the end",
         "yes" if not (results.get("end_state") or {}).get("presence_mismatch") else "NO",
         peer, none, "-", "", ""],
    ]  # fmt: skip


def print_report(results: dict[str, Any]) -> None:
    lc.print_table("Soak (hub RSS/fds flat after warm-up; every publication exactly once)",
                   common.HEADER, report_rows(results))  # fmt: skip
    m = (results.get("rates") or {}).get("machine") or {}
    bg = (results.get("background_cpu") or {}).get("busy_pct")
    print(f"Machine: {os.cpu_count()} CPUs; busy before the run {bg} %, during the measured "
          f"window {m.get('busy_pct')} % (of {(os.cpu_count() or 1) * 100} %)")  # fmt: skip
    print(f"Peer: {results['peer']}")
    if results.get("failures"):
        print("FAILED:")
        for f in results["failures"]:
            print("  -", f)
    else:
        print("All checks passed.")


def cli() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--connections", type=int, default=15000)
    ap.add_argument("--per-process", type=int, default=2500, help="connections per client process")
    ap.add_argument("--channels", type=int, default=50)
    ap.add_argument("--subs", type=int, default=2, help="channels each connection subscribes to")
    ap.add_argument("--churn", type=float, default=1.0,
                    help="%% of connections closed and replaced every second")  # fmt: skip
    ap.add_argument("--rate", type=float, default=50.0, help="publications per second")
    ap.add_argument("--presence-rate", type=float, default=10.0,
                    help="client presence commands per second (all processes)")  # fmt: skip
    ap.add_argument("--api-presence-rate", type=float, default=1.0,
                    help="server API presence + presence_stats pairs per second")  # fmt: skip
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0, help="minutes before the flat check")
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between hub samples")
    ap.add_argument("--tolerance", type=float, default=5.0, help="%% RSS/fd growth allowed")
    ap.add_argument("--history-size", type=int, default=100)
    ap.add_argument("--extra-config", default="", help="more top-level hub TOML")
    ap.add_argument("--quick", action="store_true", help="1.5 minutes, 45 s warm-up")
    args = ap.parse_args()
    if args.quick:
        # the warm-up must hold the first ping round (25 s) and presence refresh (20 s): their
        # bursts set the allocator's high-water mark, which RSS then keeps
        args.minutes, args.warmup, args.sample = 1.5, 0.75, 2.0
    if args.subs > args.channels:
        ap.error("--subs must be at most --channels")
    sys.exit(common.run_main(main(args)))


if __name__ == "__main__":
    cli()
