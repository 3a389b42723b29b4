"""Server process management and scenario plumbing shared by the benchmark scripts."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import loadclient as lc

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
PY = sys.executable
HOST = "127.0.0.1"

CLARION_CONFIG = """\
api_key = "bench"
allow_anonymous_connect_without_token = true
{extra}
[namespaces.bench]
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true

[namespaces.hist]
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true
history_size = 100
history_ttl = "300s"
"""

# The hub's Redis broker in the benchmarks: its own key prefix (Pub/Sub names are not per
# database, and the tests may share this Redis), so a run never sees another's messages.
REDIS_URL = os.environ.get("CLARION_BENCH_REDIS", "redis://127.0.0.1:6379/0")
REDIS_PREFIX = "clarionbench-hub"


def redis_broker_config(url: str = "") -> str:
    """Top-level TOML for a hub on the benchmark's Redis (goes last: it opens a table)."""
    return f'broker = "{url or REDIS_URL}"\n[redis]\nprefix = "{REDIS_PREFIX}"\n'

_live: list[Server] = []


def _preexec() -> None:
    """Child setup: own session, die with the parent, max open files."""
    os.setsid()
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    lc.raise_nofile()


class Server:
    """A server under test run as a subprocess in its own session (stopped on exit)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        health_path: str = "/health",
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        pid_for_stats: Callable[[Server], int] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.health_path = health_path
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd or REPO
        self.tmp = tempfile.mkdtemp(prefix=f"bench-{name}-")
        self.log_path = os.path.join(self.tmp, "server.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._pid_for_stats = pid_for_stats

    @property
    def pid(self) -> int:
        assert self.proc is not None
        if self._pid_for_stats:
            return self._pid_for_stats(self)
        return self.proc.pid

    async def start(self, timeout: float = 30) -> None:
        self.log = open(self.log_path, "wb")  # noqa: SIM115, ASYNC230
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - starting a server, once
            self.argv,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            preexec_fn=_preexec,
        )
        _live.append(self)
        ok = await lc.wait_http(HOST, self.port, self.health_path, timeout)
        if not ok or self.proc.poll() is not None:
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"{self.name} did not come up on port {self.port}:\n{tail}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server + helpers
            except (ProcessLookupError, PermissionError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
        # anything left in the session (e.g. pushpin helpers)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.log.close()
        if self in _live:
            _live.remove(self)

    def cleanup(self, keep_logs: bool = False) -> None:
        if not keep_logs:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _stop_all() -> None:
    for s in list(_live):
        s.stop()


atexit.register(_stop_all)
for _sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, lambda *_: sys.exit(1))


async def background_load(seconds: float = 1.0) -> dict[str, float]:
    """Machine CPU use before a benchmark starts (other work on a shared box skews figures)."""
    a = lc.machine_cpu()
    await asyncio.sleep(seconds)
    return lc.machine_cpu_delta(a, lc.machine_cpu())


async def note_background(
    results: dict[str, Any], log: Callable[[str], None] = print, wait: float = 30.0
) -> None:
    """Wait (up to ``wait`` s) for the machine to be quiet, and record how busy it was:
    other work on a shared box skews every figure."""
    end = time.time() + wait
    while True:
        bg = await background_load()
        if bg["busy_pct"] <= 15 or time.time() >= end:
            break
    results["background_cpu"] = bg
    if bg["busy_pct"] > 15:
        of = (os.cpu_count() or 1) * 100
        log(
            f"  !! the machine is already {bg['busy_pct']:.0f}% busy (of {of}%) before the "
            "benchmark: figures will be low and noisy"
        )


def loopback_write_floor(n: int = 2000, rounds: int = 5) -> float:
    """Microseconds one 150-byte write to a loopback TCP socket costs on this machine (best of
    ``rounds`` passes over ``n`` sockets, nobody reading meanwhile).  A single-process server
    needs at least n x this to get one message to n subscribers."""
    import socket

    srv = socket.socket()
    srv.bind((HOST, 0))
    srv.listen(4096)
    pairs = []
    try:
        for _ in range(n):
            c = socket.create_connection(srv.getsockname())
            s, _ = srv.accept()
            pairs.append((c, s))
        msg = b"\x81\x7e\x00\x92" + b"x" * 146
        best = float("inf")
        for _ in range(rounds):
            t = time.perf_counter()
            for _, s in pairs:
                s.send(msg)
            best = min(best, time.perf_counter() - t)
            for c, _ in pairs:
                c.recv(65536)
        return best / n * 1e6
    finally:
        for c, s in pairs:
            c.close()
            s.close()
        srv.close()


def clarion_available() -> tuple[bool, str]:
    try:
        r = subprocess.run(
            [PY, "-m", "clarion", "serve", "--help"],
            capture_output=True,
            timeout=30,
            cwd=REPO,
        )
    except subprocess.TimeoutExpired:
        return False, "`python -m clarion serve --help` timed out"
    if r.returncode != 0:
        err = (r.stderr or r.stdout).decode("utf-8", "replace").strip().splitlines()
        return False, (err[-1] if err else f"exit {r.returncode}")
    return True, ""


def clarion_server(
    port: int | None = None, extra_config: str = "", extra_args: list[str] | None = None
) -> Server:
    """The hub as the brief runs it; ``extra_config`` is top-level TOML (e.g. ping_interval),
    ``extra_args`` more CLI flags (e.g. ["--workers", "2"]); env CLARION_BENCH_CONFIG and
    CLARION_BENCH_ARGS add to them from outside."""
    port = port or lc.free_port()
    # Before the caller's: that may end in a table ([redis]) that would swallow these keys.
    extra_config = os.environ.get("CLARION_BENCH_CONFIG", "") + "\n" + extra_config
    args = (extra_args or []) + os.environ.get("CLARION_BENCH_ARGS", "").split()
    srv = Server("clarion", [], port, "/health")
    cfg = os.path.join(srv.tmp, "clarion.toml")
    with open(cfg, "w") as f:
        f.write(CLARION_CONFIG.format(extra=extra_config.strip()))
    srv.argv = [PY, "-m", "clarion", "serve", "--port", str(port), "--config", cfg, *args]
    return srv


def baseline_server(port: int | None = None) -> Server:
    port = port or lc.free_port()
    argv = [PY, os.path.join(BENCH_DIR, "baseline_uvloop.py"), "--serve", "--port", str(port)]
    return Server("baseline", argv, port, "/health")


def channels_server(layer: str, runner: str = "uvicorn", port: int | None = None) -> Server:
    port = port or lc.free_port()
    peers = os.path.join(BENCH_DIR, "peers")
    env = {
        "BENCH_CHANNEL_LAYER": layer,
        "DJANGO_SETTINGS_MODULE": "channels_app.settings",
        "PYTHONPATH": peers,
    }
    if runner == "uvicorn":
        argv = [
            PY, "-m", "uvicorn", "channels_app.asgi:application",
            "--host", HOST, "--port", str(port),
            "--loop", "uvloop", "--http", "httptools",
            "--ws-ping-interval", "3600", "--ws-ping-timeout", "3600",
            "--backlog", "4096", "--log-level", "warning", "--no-access-log",
            "--lifespan", "off", "--ws", os.environ.get("BENCH_UVICORN_WS", "auto"),
        ]  # fmt: skip
    else:
        argv = [
            PY, "-m", "daphne", "-b", HOST, "-p", str(port),
            "--ping-interval", "3600", "--ping-timeout", "3600",
            "-v", "0", "channels_app.asgi:application",
        ]  # fmt: skip
    return Server(f"channels-{layer}-{runner}", argv, port, "/health", env=env, cwd=peers)


async def flush_redis_prefix(prefix: bytes = b"clarionbench", db: int = 15) -> None:
    """Delete leftover keys of this benchmark (channels_redis: own db, own prefix; the hub's
    Redis broker: its own prefix)."""
    try:
        import redis.asyncio as aioredis
    except ImportError:
        return
    r = aioredis.Redis(host=HOST, port=6379, db=db)
    try:
        keys = [k async for k in r.scan_iter(match=prefix + b"*", count=1000)]
        if keys:
            await r.delete(*keys)
    finally:
        await r.aclose()


async def fanout_scenario(
    server: Server,
    target: lc.Target,
    publisher: Any,
    subscribers: int,
    *,
    duration: float,
    window: int,
    batch: int = 20,
    latency: list[tuple[float, int]] | None = None,
    per_process: int = 2500,
    drain_timeout: float = 20,
    warmup_timeout: float = 30,
    connect_concurrency: int = 200,
    publish_concurrency: int = 4,
    profile_path: str | None = None,
) -> dict[str, Any]:
    """Connect ``subscribers`` clients, then throughput (and optionally paced latency)."""
    pool = lc.SubscriberPool()
    out: dict[str, Any] = {"server": server.name, "subscribers": subscribers}
    try:
        rss0 = lc.tree_rss_kb(server.pid)
        info = await pool.start(
            target, subscribers, per_process=per_process, concurrency=connect_concurrency
        )
        out["connect"] = info
        out["rss_kb_before"] = rss0
        out["rss_kb_connected"] = lc.tree_rss_kb(server.pid)
        if info["ok"] == 0:
            out["error"] = f"no subscriber connected: {info}"
            return out
        out["warmup"] = await lc.sync_warmup(pool, publisher.one, warmup_timeout)
        spy = None
        if profile_path and duration > 0 and shutil.which("py-spy"):
            # sample the server during the throughput phase (non-blocking: no pauses)
            spy = subprocess.Popen(  # noqa: ASYNC220
                ["py-spy", "record", "--nonblocking", "--pid", str(server.pid),
                 "--duration", str(max(1, int(duration))), "--rate", "250",
                 "-o", profile_path],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        if duration > 0:
            out["throughput"] = await lc.run_throughput(
                pool,
                publisher.batch,
                server.pid,
                subscribers,
                duration=duration,
                batch=batch,
                window=window,
                drain_timeout=drain_timeout,
                concurrency=publish_concurrency,
            )
        if spy is not None:
            for _ in range(100):
                if spy.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            if spy.poll() is None:
                spy.kill()
            out["profile"] = profile_path if os.path.exists(profile_path or "") else None  # noqa: ASYNC240
        for rate, count in latency or []:
            out.setdefault("latency", []).append(
                await lc.run_latency(
                    pool,
                    publisher,
                    server.pid,
                    subscribers,
                    rate=rate,
                    count=count,
                    drain_timeout=drain_timeout,
                )
            )
        out["publish_errors"] = dict(publisher.errors)
        out["server_alive"] = server.alive()
    finally:
        await pool.close()
    return out


def summarize_errors(r: dict[str, Any]) -> str:
    bits = []
    c = r.get("connect", {})
    if c.get("failed"):
        bits.append(
            f"{c['failed']} failed to connect {c.get('connect_errors') or ''}"
            f"{c.get('handshake_errors') or ''}"
        )
    w = r.get("warmup", {})
    if w.get("cold"):
        bits.append(f"{w['cold']} got no warm-up message")
    for k, x in [("throughput", r.get("throughput") or {})] + [
        (f"latency@{la['rate']:g}/s", la) for la in r.get("latency") or []
    ]:
        if x.get("closed"):
            bits.append(f"{k}: {x['closed']} disconnected {x.get('close_codes')}")
        if x.get("missing"):
            bits.append(f"{k}: {x['missing']:,} deliveries missing")
        if k.startswith("latency") and not x.get("complete"):
            bits.append(f"{k}: not all messages delivered in time")
        if k.startswith("latency") and x.get("achieved_rate", 0) < 0.95 * x.get("rate", 0):
            bits.append(f"{k}: publisher only reached {x['achieved_rate']}/s")
    if r.get("publish_errors"):
        bits.append(f"publish errors {r['publish_errors']}")
    if r.get("error"):
        bits.append(r["error"])
    if r.get("server_alive") is False:
        bits.append("SERVER DIED")
    return "; ".join(bits)


async def run_server_suite(
    make_server: Callable[[], Server],
    make_target: Callable[[Server], lc.Target],
    make_publisher: Callable[[Server], Any],
    counts: list[int],
    *,
    duration: float,
    window: int,
    latency_at: dict[int, list[tuple[float, int]]],
    batch: int = 20,
    log: Callable[[str], None] = print,
    per_process: int = 2500,
    drain_timeout: float = 20,
    warmup_timeout: float = 30,
    before_start: Callable[[], Awaitable[None]] | None = None,
    connect_concurrency: int = 200,
    publish_concurrency: int = 4,
    profile_at: list[int] | None = None,
) -> dict[str, Any]:
    """Start one server, run each subscriber count against it, stop it."""
    if before_start:
        await before_start()
    server = make_server()
    res: dict[str, Any] = {"server": server.name, "runs": {}}
    res["background_cpu"] = await background_load(0.5)
    try:
        await server.start()
    except RuntimeError as e:
        res["error"] = str(e)
        log(f"  !! {server.name}: {e}")
        return res
    try:
        for n in counts:
            t0 = time.time()
            publisher = make_publisher(server)
            r = await fanout_scenario(
                server,
                make_target(server),
                publisher,
                n,
                duration=duration,
                window=window,
                batch=batch,
                latency=latency_at.get(n),
                per_process=per_process,
                drain_timeout=drain_timeout,
                warmup_timeout=warmup_timeout,
                connect_concurrency=connect_concurrency,
                publish_concurrency=publish_concurrency,
                profile_path=(
                    os.path.join(BENCH_DIR, "results", f"profile-{server.name}-{n}.svg")
                    if n in (profile_at or [])
                    else None
                ),
            )
            publisher.close()
            if r.get("profile"):
                log(f"  py-spy profile of the throughput phase: {r['profile']}")
            res["runs"][str(n)] = r
            tp = r.get("throughput") or {}
            msg = f"  {server.name:<22} {n:>6} subs: "
            if tp:
                msg += f"{lc.fmt_num(tp.get('deliveries_per_s'))} deliveries/s"
                msg += f" (server CPU {tp.get('server_cpu_pct')}%)"
            for la in r.get("latency") or []:
                msg += f", p50 {la.get('p50_ms')} / p99 {la.get('p99_ms')} ms @ {la['rate']:g}/s"
            msg += f"  [{time.time() - t0:.0f}s]"
            err = summarize_errors(r)
            if err:
                msg += f"\n    !! {err}"
            log(msg)
            if not server.alive():
                log(f"  !! {server.name} exited; log tail:\n{server.log_tail()}")
                break
    finally:
        res["log_tail"] = server.log_tail(60)
        server.stop()
        trouble = bool(res.get("error")) or any(summarize_errors(r) for r in res["runs"].values())
        server.cleanup(keep_logs=trouble)  # keep the server's log only when something went wrong
        if trouble:
            res["log"] = server.log_path
    return res


def get(d: Any, *path: Any) -> Any:
    for p in path:
        if isinstance(d, dict):
            d = d.get(p)
        elif isinstance(d, list) and isinstance(p, int) and -len(d) <= p < len(d):
            d = d[p]
        else:
            return None
        if d is None:
            return None
    return d


def latency_of(run: Any, rate: float) -> dict[str, Any]:
    for la in get(run, "latency") or []:
        if abs(la["rate"] - rate) < 1e-9:
            return la  # type: ignore[no-any-return]
    return {}


def ratio(a: Any, b: Any, invert: bool = False) -> str:
    if not a or not b:
        return "-"
    r = (b / a) if invert else (a / b)
    return f"{r:,.1f}x"


def run_main(coro: Awaitable[Any]) -> Any:
    lc.raise_nofile()
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Pushpin (Debian package): its configuration comes from tests/pushpin.py, the one launcher
# the tests and the benchmarks share (own config dir, ports, run dir, zurl; see there)
# --------------------------------------------------------------------------------------------

sys.path.insert(0, os.path.join(REPO, "tests"))
import pushpin as _pushpin  # noqa: E402  (tests/pushpin.py)


class PushpinServer(Server):
    """``pushpin --config <tmp>/pushpin.conf`` plus the tiny GRIP origin it proxies to.

    The config is :func:`tests/pushpin.write_config` with the handler's rate limit
    (``message_rate``/``message_hwm``) unset: a fan-out benchmark must not measure it."""

    def __init__(self) -> None:
        self.origin_port = lc.free_port()
        super().__init__("pushpin", [], 0, "/")
        self.pushpin = _pushpin.write_config(
            self.tmp, self.origin_port, rate_limit=False, ipc_prefix="bench-"
        )
        self.http_port = self.pushpin.http_port
        self.publish_port = self.pushpin.publish_port
        self.port = self.publish_port  # Server.start waits for the control API on "/"
        self.conf = str(self.pushpin.conf)
        self.argv = self.pushpin.argv
        self.origin: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 30) -> None:
        self.origin = subprocess.Popen(  # noqa: ASYNC220
            [PY, os.path.join(BENCH_DIR, "peers", "grip_origin.py"), str(self.origin_port)],
            preexec_fn=_preexec,
        )
        await super().start(timeout)
        end = time.time() + timeout
        while time.time() < end:  # condure's listener
            try:
                _, w = await asyncio.open_connection(HOST, self.http_port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.2)
        self.stop()
        raise RuntimeError(f"pushpin did not listen on {self.http_port}:\n{self.log_tail()}")

    def stop(self) -> None:
        super().stop()
        if self.origin is not None and self.origin.poll() is None:
            self.origin.terminate()
            try:
                self.origin.wait(5)
            except subprocess.TimeoutExpired:
                self.origin.kill()


def pushpin_available() -> tuple[bool, str]:
    return _pushpin.pushpin_available()


# Columns of every report table (bench/summary.py joins the rows of all benchmarks).
HEADER = ["metric", "Clarion", "peer", "peer value", "ratio", "target", "met"]
