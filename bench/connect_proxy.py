"""Connection set-up rate through the connect proxy (a Django backend under gunicorn) against
set-up with a JWT (no proxy), same hub, same run, same machine.

One hub (``clarion serve``) with its connect proxy pointed at tests/proxy_site's
``clarion.django.proxy`` views, served by gunicorn (``--gunicorn-workers`` threaded workers,
SQLite sessions, the site's CONNECT_INFO hook on). Users are signed up first; then
``--concurrency`` clients each open a WebSocket, send ``connect`` and wait for the reply, close,
and start again, for ``--duration`` seconds per way:

* **jwt**: ``{"connect": {"token": <HS256 JWT>}}``: the hub checks the signature itself;
* **proxy**: ``{"connect": {}}`` with the user's ``Cookie``: the hub asks Django, which loads
  the session and the user, runs the hook and answers ``{"result": {"user": …}}``.

Every reply is checked: a proxy set-up counts only when the reply carries the hook's
``{"hello": <username>}`` (the backend answered for that user), a JWT one when it has a client
id. Both ways run ``--repeat`` times in alternating order; the report gives the medians, the
set-up latency (p50/p99) and the CPU per set-up of the hub and of gunicorn (all workers).

    python bench/connect_proxy.py            # 5 s per way, 3 rounds
    python bench/connect_proxy.py --quick    # 2 s per way, 1 round
    python bench/connect_proxy.py --clients  # only the HTTP clients, per request

``--clients`` compares the hub's backend client (``clarion.outbound``) with httpx, which it
replaced: sequential proxy-sized POSTs (a connect request's body, Cookie, Origin and a secret
header) to bench/webhooks/receiver.py (httptools, answers 204 at once, its own process), CPU
time of this process per request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import httpx
import jwt
import loadclient as lc

TESTS = os.path.join(common.REPO, "tests")
SECRET = "bench-proxy-shared-secret-" + "z" * 16
HMAC = "bench-hmac-secret-long-enough-for-hs256-signatures"
WAYS = ("jwt", "proxy")
KEY = base64.b64encode(b"connect-proxy-be").decode()


def site_env(db: str) -> dict[str, str]:
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "proxy_site.settings",
            "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]),
            "PROXY_SITE_DB": db, "PROXY_SITE_SECRET": SECRET,
            "PROXY_SITE_NETWORKS": "127.0.0.1/32"}


def hub_config(site_port: int) -> str:
    return (f'token_hmac_secret = "{HMAC}"\n'
            f'proxy_connect_endpoint = "http://{common.HOST}:{site_port}/clarion/connect/"\n'
            f'proxy_connect_timeout = "5s"\n'
            f'proxy_http_headers = ["Cookie"]\n'
            f'proxy_static_http_headers = {{"X-Clarion-Proxy-Secret" = "{SECRET}"}}\n')


def handshake(port: int, cookie: str | None) -> bytes:
    lines = ["GET /connection/websocket HTTP/1.1", f"Host: {common.HOST}:{port}",
             "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {KEY}",
             "Sec-WebSocket-Version: 13"]
    if cookie:
        lines.append(f"Cookie: sessionid={cookie}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Tally:
    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.latencies: list[float] = []
        self.failures: dict[str, int] = {}

    def fail(self, why: str) -> None:
        self.failed += 1
        self.failures[why] = self.failures.get(why, 0) + 1


async def set_up(port: int, way: str, user: dict[str, str], tally: Tally) -> None:
    """One WebSocket: handshake, connect, the reply, close."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(common.HOST, port)
    try:
        writer.write(handshake(port, user["session"] if way == "proxy" else None))
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            tally.fail(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            return
        connect = (b'{"id":1,"connect":{}}' if way == "proxy" else
                   b'{"id":1,"connect":{"token":"' + user["token"].encode() + b'"}}')
        writer.write(lc.ws_text_frame(connect))
        data = b""
        reply = None
        while reply is None:
            chunk = await reader.read(65536)
            if not chunk:
                tally.fail("closed before the reply")
                return
            data += chunk
            reply = reply_of(data)
        if "error" in reply:
            tally.fail(f"error {reply['error'].get('code')}")
            return
        result = reply.get("connect", {})
        if not result.get("client") or (
                way == "proxy" and result.get("data") != {"hello": user["name"]}):
            tally.fail("reply without the expected result")
            return
        tally.ok += 1
        tally.latencies.append(time.perf_counter() - t0)
        writer.write(lc.WS_CLOSE)
    finally:
        writer.close()


async def run_way(port: int, way: str, users: list[dict[str, str]], seconds: float,
                  concurrency: int) -> Tally:
    tally = Tally()
    stop = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        n = index
        while time.perf_counter() < stop:
            user = users[n % len(users)]
            n += concurrency
            try:
                await asyncio.wait_for(set_up(port, way, user, tally), 30)
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                tally.fail(type(exc).__name__)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return tally


def reply_of(data: bytes) -> dict[str, Any] | None:
    """The reply to command 1 in the server's WebSocket frames so far (unmasked; a text frame
    holds one or more newline-separated JSON messages), or None while it is incomplete."""
    at = 0
    while at + 2 <= len(data):
        opcode, size = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if size == 126:
            size, at = int.from_bytes(data[at:at + 2], "big"), at + 2
        elif size == 127:
            size, at = int.from_bytes(data[at:at + 8], "big"), at + 8
        if at + size > len(data):
            return None
        payload, at = data[at:at + size], at + size
        if opcode != 1:
            continue
        for line in payload.split(b"\n"):
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if isinstance(message, dict) and message.get("id") == 1:
                    return message
    return None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def migrate(env: dict[str, str]) -> bool:
    done = subprocess.run([sys.executable, "-m", "django", "migrate", "--noinput"],
                          cwd=TESTS, env=env, capture_output=True, timeout=300)
    if done.returncode != 0:
        print(done.stdout.decode() + done.stderr.decode(), file=sys.stderr)
    return done.returncode == 0


def sign_up(site_port: int, count: int) -> list[dict[str, str]]:
    """``count`` users signed up on the site, each with its own session."""
    users = []
    with httpx.Client(base_url=f"http://{common.HOST}:{site_port}", timeout=30) as c:
        for i in range(count):
            name = f"bench{i}"
            r = c.post("/signup/", data={"username": name})
            r.raise_for_status()
            users.append({"name": name, "id": str(r.json()["id"]),
                          "session": c.cookies["sessionid"]})
            c.cookies.clear()
    return users


def start_profile(pid: int, seconds: float, path: str) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the hub during one proxy round (non-blocking: it never pauses it).
    A path ending in .svg gets a flame graph, anything else py-spy's raw collapsed stacks
    (one line per stack with its count: grep-able, and the input of flamegraph.pl)."""
    spy_bin = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(spy_bin):
        print("--profile: py-spy not found", file=sys.stderr)
        return None
    fmt = "flamegraph" if path.endswith(".svg") else "raw"
    return subprocess.Popen(
        [spy_bin, "record", "--nonblocking", "--pid", str(pid), "--rate", "250",
         "--duration", str(max(1, int(seconds))), "--format", fmt, "-o", path],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def finish_profile(spy: subprocess.Popen[bytes], path: str) -> None:
    for _ in range(100):
        if spy.poll() is not None:
            break
        await asyncio.sleep(0.1)
    if spy.poll() is None:
        spy.kill()
        spy.wait()
    print(f"py-spy profile of the hub (last proxy round): {path}", flush=True)


PROXY_BODY = (b'{"client":"0a5b8c1e-51c4-4e4f-9d3e-8f0c2b6d7e11","transport":"websocket",'
              b'"protocol":"json","encoding":"json"}')
PROXY_HEADERS = [("Cookie", "sessionid=" + "k" * 32), ("Origin", "http://example.com"),
                 ("X-Clarion-Proxy-Secret", SECRET), ("Content-Type", "application/json")]


async def cpu_per_request(one: Any, requests: int) -> float:
    """Microseconds of this process's CPU per call of ``one`` (after a warm-up)."""
    for _ in range(200):
        await one()
    cpu0 = time.process_time()
    for _ in range(requests):
        status = await one()
        if status != 204:
            raise RuntimeError(f"unexpected status {status}")
    return (time.process_time() - cpu0) / requests * 1e6


async def with_httpx(url: str, requests: int) -> float:
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as client:
        async def one() -> int:
            async with client.stream("POST", url, content=PROXY_BODY, headers=PROXY_HEADERS,
                                     timeout=5) as resp:
                async for _chunk in resp.aiter_bytes():
                    pass
                return int(resp.status_code)
        return await cpu_per_request(one, requests)


async def with_outbound(url: str, requests: int) -> float:
    sys.path.insert(0, os.path.join(common.REPO, "src"))
    from clarion import outbound

    client = outbound.Client()
    endpoint = outbound.Endpoint.parse(url)

    async def one() -> int:
        resp = await client.request("POST", endpoint, headers=PROXY_HEADERS, body=PROXY_BODY,
                                    timeout=5)
        return resp.status
    try:
        return await cpu_per_request(one, requests)
    finally:
        await client.aclose()


async def compare_clients(requests: int) -> int:
    port = lc.free_port()
    receiver = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, os.path.join(common.BENCH_DIR, "webhooks", "receiver.py"),
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://{common.HOST}:{port}/clarion/connect/"
    results: dict[str, list[float]] = {"clarion.outbound": [], "httpx": []}
    try:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection(common.HOST, port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break
        for _ in range(2):
            results["clarion.outbound"].append(await with_outbound(url, requests))
            results["httpx"].append(await with_httpx(url, requests))
    finally:
        receiver.terminate()
        receiver.wait()
    rows = [[name, lc.fmt_num(min(v), 1), lc.fmt_num(statistics.median(v), 1)]
            for name, v in results.items()]
    lc.print_table(f"HTTP client CPU per proxy-sized request, {requests} sequential requests "
                   f"x 2 rounds", ["client", "best us", "median us"], rows)
    return 0


async def main(args: argparse.Namespace) -> int:
    if args.clients:
        return await compare_clients(args.client_requests)
    ok, why = common.clarion_available()
    if not ok:
        print(f"clarion is not runnable: {why}", file=sys.stderr)
        return 2
    base = tempfile.mkdtemp(prefix="bench-connect-proxy-")
    db = os.path.join(base, "site.sqlite3")
    env = site_env(db)
    if not await asyncio.to_thread(migrate, env):
        return 2
    site_port = lc.free_port()
    site = common.Server("gunicorn", [
        sys.executable, "-m", "gunicorn", "--worker-class", "gthread",
        "--workers", str(args.gunicorn_workers), "--threads", str(args.gunicorn_threads),
        "--bind", f"{common.HOST}:{site_port}", "--chdir", TESTS, "--no-control-socket",
        "--log-level", "warning", "proxy_site.wsgi:application"],
        site_port, "/ping/", env=env, cwd=TESTS)
    await site.start(60)
    hub = common.clarion_server(extra_config=hub_config(site_port))
    await hub.start()
    try:
        users = await asyncio.to_thread(sign_up, site_port, args.users)
        now = int(time.time())
        for user in users:
            user["token"] = jwt.encode({"sub": user["id"], "iat": now, "exp": now + 86400},
                                       HMAC, algorithm="HS256")
        for way in WAYS:  # warm-up: connections, caches, gunicorn's threads
            await run_way(hub.port, way, users, 1.0, args.concurrency)
        runs: dict[str, list[dict[str, Any]]] = {w: [] for w in WAYS}
        for rnd in range(args.repeat):
            for way in (WAYS if rnd % 2 == 0 else WAYS[::-1]):
                spy = None
                if args.profile and way == "proxy" and rnd == args.repeat - 1:
                    spy = start_profile(hub.pid, args.duration, args.profile)
                cpu0 = (lc.proc_tree_cpu(hub.pid), lc.proc_tree_cpu(site.pid))
                t0 = time.perf_counter()
                tally = await run_way(hub.port, way, users, args.duration, args.concurrency)
                elapsed = time.perf_counter() - t0
                cpu1 = (lc.proc_tree_cpu(hub.pid), lc.proc_tree_cpu(site.pid))
                if spy is not None:
                    await finish_profile(spy, args.profile)
                n = max(tally.ok, 1)
                runs[way].append({
                    "rate": tally.ok / elapsed, "ok": tally.ok, "failed": tally.failed,
                    "failures": tally.failures,
                    "p50_ms": percentile(tally.latencies, 0.5) * 1000,
                    "p99_ms": percentile(tally.latencies, 0.99) * 1000,
                    "hub_cpu_ms": (cpu1[0] - cpu0[0]) / n * 1000,
                    "django_cpu_ms": (cpu1[1] - cpu0[1]) / n * 1000,
                })
                print(f"round {rnd + 1} {way:5s}: {tally.ok / elapsed:8.1f} set-ups/s "
                      f"({tally.failed} failed {tally.failures or ''})", flush=True)
    finally:
        hub.stop()
        site.stop()

    def med(way: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[way])

    rows = [[way, lc.fmt_num(med(way, "rate"), 1), lc.fmt_num(med(way, "p50_ms"), 2),
             lc.fmt_num(med(way, "p99_ms"), 2), lc.fmt_num(med(way, "hub_cpu_ms"), 3),
             lc.fmt_num(med(way, "django_cpu_ms"), 3),
             str(sum(r["failed"] for r in runs[way]))] for way in WAYS]
    lc.print_table(
        f"Connection set-up (WebSocket + connect), {args.concurrency} clients, "
        f"{args.duration:g} s x {args.repeat}, medians; Django: gunicorn "
        f"{args.gunicorn_workers}x{args.gunicorn_threads} threads, SQLite sessions",
        ["way", "set-ups/s", "p50 ms", "p99 ms", "hub CPU ms/set-up",
         "gunicorn CPU ms/set-up", "failed"], rows)
    print(f"JWT / connect proxy: {common.ratio(med('jwt', 'rate'), med('proxy', 'rate'))} "
          f"the set-up rate")
    path = lc.save_result("connect_proxy", {"args": vars(args), "runs": runs})
    print(f"saved {path}")
    return 0 if all(r["ok"] for way in WAYS for r in runs[way]) else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per way and round")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (ways alternate in order)")
    ap.add_argument("--concurrency", type=int, default=16, help="clients setting up at once")
    ap.add_argument("--users", type=int, default=200, help="signed-up users to cycle through")
    ap.add_argument("--gunicorn-workers", type=int, default=2)
    ap.add_argument("--gunicorn-threads", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="2 s per way, 1 round")
    ap.add_argument("--clients", action="store_true",
                    help="only compare the HTTP clients (clarion.outbound, httpx) per request")
    ap.add_argument("--client-requests", type=int, default=4000)
    ap.add_argument("--profile", metavar="PATH",
                    help="py-spy the hub during the last proxy round: PATH.svg a flame graph, "
                         "else raw collapsed stacks")
    parsed = ap.parse_args()
    if parsed.quick:
        parsed.duration, parsed.repeat = 2.0, 1
    sys.exit(common.run_main(main(parsed)))
