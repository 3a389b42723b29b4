"""Webhook delivery: Clarion's PostgreSQL outbox + ``clarion_worker`` vs django-webhook (Celery,
Redis broker), in the same run, to the same fast local receiver.

Both sides deliver to ``bench/webhooks/receiver.py`` (uvloop + httptools, its own process,
answers 204 at once, records arrival time, ``sent_at`` from the body and the event key).

Throughput (pre-loaded): with no worker running, write N events (Clarion: ``BenchHook().send``
in transactions of 1,000 -> outbox rows; django-webhook: N ``Order`` saves -> N Celery tasks
queued in Redis), then start the worker(s) and count receiver requests; deliveries/s = requests
from the first delivery to the last.  Clarion: 1 and 2 ``python -m django clarion_worker
--exit-when-idle`` processes.  django-webhook: ``celery worker --pool prefork -c 1`` and ``-c 2``
(one Celery worker, 1 or 2 pool processes, ``--without-heartbeat --without-gossip
--without-mingle``), with ``CELERY_DB_REUSE_MAX`` set so its pool processes keep their
database connection (Celery's default opens one per task: ``--peer-as-shipped``).
django-webhook's own settings are its defaults (an audit ``WebhookEvent`` row per delivery,
topic lookups cached per process for a minute).

Reported with each configuration: worker CPU (process trees, from the first delivery on),
CPU of the PostgreSQL backends of the benchmark's database (only when the same backends
lived through the run), the receiver's CPU and the whole machine's (other work on this shared
box shows up there).

Latency (light load): worker(s) running and idle (warmed up by one event), then one event per
transaction / one save at ``--latency-rate`` per second for ``--latency-seconds``;
event-to-first-attempt = receiver arrival - ``sent_at`` (time.time() just before the send/save).

PostgreSQL at 127.0.0.1:5432 (user postgres, trust): databases ``clarion_bench_<pid>`` and
``djwebhook_bench_<pid>`` are copied from a migrated ``*_tpl`` template for each configuration
and dropped at the end (leftovers of killed runs are dropped by the next run).
Redis: a private ``redis-server`` on a free port (else ``--redis-url``).

    python bench/webhook_delivery.py            # full: 50,000 Clarion / 3,000 peer events
    python bench/webhook_delivery.py --quick    # smoke run, under 2 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from importlib.util import find_spec
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import loadclient as lc

WH_DIR = os.path.join(common.BENCH_DIR, "webhooks")
PEER_DIR = os.path.join(WH_DIR, "peer_project")
CLARION_DIR = os.path.join(WH_DIR, "clarion_project")
# per run (pid suffix): concurrent runs, or other work on the shared server, cannot clobber them
CLARION_DB = f"clarion_bench_{os.getpid()}"
PEER_DB = f"djwebhook_bench_{os.getpid()}"
PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"

TARGET_DPS = 5000  # deliveries/s with one Clarion worker process
TARGET_RATIO = 10  # x django-webhook
TARGET_P50_MS = 100  # event -> first attempt

CONFIGS = [  # (key, side, processes) in report order
    ("clarion-1", "clarion", 1),
    ("clarion-2", "clarion", 2),
    ("djwebhook-1", "django-webhook", 1),
    ("djwebhook-2", "django-webhook", 2),
]
LABEL = {
    "clarion-1": "clarion, 1 worker process",
    "clarion-2": "clarion, 2 worker processes",
    "djwebhook-1": "django-webhook, celery -c 1",
    "djwebhook-2": "django-webhook, celery -c 2",
}


# --------------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------------


class Proc(common.Server):
    """A background process with no HTTP health check (redis-server, Celery, clarion_worker);
    own session, stopped with its process group on exit like every ``common.Server``."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None,
                 cwd: str | None = None) -> None:  # fmt: skip
        super().__init__(name, argv, 0, "", env=env, cwd=cwd)
        self.exit_time: float | None = None
        self.exit_cpu: float | None = None  # CPU seconds at exit (read while a zombie)

    async def start(self, timeout: float = 0) -> None:
        self.log = open(self.log_path, "wb")  # noqa: SIM115, ASYNC230
        self.proc = subprocess.Popen(  # noqa: ASYNC220
            self.argv, stdout=self.log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
            preexec_fn=common._preexec,
        )  # fmt: skip
        common._live.append(self)

    async def wait_exit(self) -> int:
        """Wait for the exit; its CPU time is read from /proc before the zombie is reaped."""
        assert self.proc is not None
        proc = self.proc

        def wait() -> int:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
                self.exit_time = time.time()
                self.exit_cpu = own_cpu(proc.pid)
            rc = proc.wait()
            self.exit_time = self.exit_time or time.time()
            return rc

        return await asyncio.get_running_loop().run_in_executor(None, wait)


def own_cpu(pid: int) -> float | None:
    """utime + stime + reaped children's, in seconds (None if the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class PgCpu:
    """CPU seconds of the PostgreSQL backends connected to database ``db`` (other projects'
    tests share this server: only our database's backends are counted).  ``sample()`` notes
    each backend's CPU; a backend's share is its last sample minus its first, so backends
    that close before the end still count (up to their last sample)."""

    def __init__(self, db: str) -> None:
        self.mark = f" {db} ".encode()
        self.seen: dict[int, list[float]] = {}  # pid -> [first, last]
        self.initial: set[int] | None = None
        self.tick = os.sysconf("SC_CLK_TCK")

    def sample(self) -> None:
        now: set[int] = set()
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as fh:
                    cmd = fh.read()
                if not cmd.startswith(b"postgres: ") or self.mark not in cmd:
                    continue
                with open(f"/proc/{d}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            v = (int(fields[11]) + int(fields[12])) / self.tick
            self.seen.setdefault(int(d), [v, v])[1] = v
            now.add(int(d))
        if self.initial is None:
            self.initial = now

    def seconds(self) -> float:
        return sum(last - first for first, last in self.seen.values())

    def started(self) -> int:
        """Backends that appeared after the first sample (their CPU before it is missed)."""
        return len(set(self.seen) - (self.initial or set()))


async def quiet_machine(r: dict[str, Any], log: Any, wait: float) -> None:
    """Before each configuration: wait (up to ``wait`` s) for other work on the shared box to
    stop, and record how busy it was."""
    end = time.time() + wait
    while True:
        bg = await common.background_load(1.0)
        if bg["busy_pct"] <= 15 or time.time() >= end:
            break
    r["background_cpu"] = bg
    if bg["busy_pct"] > 15:
        log(f"    (machine {bg['busy_pct']:.0f}% busy before this run: figures will be low)")


async def py_spy_dump(pid: int) -> str:
    """Thread stacks of a (stuck) process, if py-spy is installed."""
    exe = shutil.which("py-spy") or os.path.join(os.path.dirname(common.PY), "py-spy")
    if not os.path.exists(exe):  # noqa: ASYNC240
        return "(py-spy not installed)"
    rc, out, err = await run_cmd([exe, "dump", "--pid", str(pid)], dict(os.environ), common.REPO,
                                 timeout=30)  # fmt: skip
    return out if rc == 0 else f"py-spy dump failed: {err.strip()}"


async def run_cmd(argv: list[str], env: dict[str, str], cwd: str, timeout: float = 300
                  ) -> tuple[int, str, str]:  # fmt: skip
    """Run a helper to completion (own session; killed with its group on timeout)."""
    p = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(p.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, 9)
        await p.wait()
        return -9, "", f"timed out after {timeout:g} s: {' '.join(argv[:6])}"
    return p.returncode or 0, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def last_json(out: str) -> dict[str, Any]:
    for line in reversed(out.strip().splitlines()):
        with contextlib.suppress(ValueError):
            v = json.loads(line)
            if isinstance(v, dict):
                return v
    return {}


def tail(text: str, n: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


# --------------------------------------------------------------------------------------------
# Redis (a private redis-server on a free port, so FLUSHALL is safe)
# --------------------------------------------------------------------------------------------


async def redis_cmd(port: int, *args: str, db: int = 0) -> bytes:
    parts = [["SELECT", str(db)], list(args)] if db else [list(args)]
    out = b""
    r, w = await asyncio.wait_for(asyncio.open_connection(common.HOST, port), 5)
    try:
        for cmd in parts:
            w.write(f"*{len(cmd)}\r\n".encode() + b"".join(
                f"${len(a.encode())}\r\n{a}\r\n".encode() for a in cmd))  # fmt: skip
            out = await asyncio.wait_for(r.readline(), 5)
    finally:
        w.close()
    return out.strip()


class Redis:
    def __init__(self, url: str | None) -> None:
        self.url = url
        self.proc: Proc | None = None
        self.port = 6379
        self.db = 0

    async def start(self) -> None:
        if self.url:
            rest = self.url.split("//", 1)[1]
            hostport, _, db = rest.partition("/")
            self.port = int(hostport.rsplit(":", 1)[1]) if ":" in hostport else 6379
            self.db = int(db or 0)
        else:
            exe = shutil.which("redis-server")
            if exe is None:
                raise RuntimeError("no redis-server binary; pass --redis-url redis://HOST:PORT/DB")
            self.port = lc.free_port()
            self.proc = Proc("redis", [exe, "--port", str(self.port), "--bind", common.HOST,
                                       "--save", "", "--appendonly", "no"])  # fmt: skip
            await self.proc.start()
            self.url = f"redis://{common.HOST}:{self.port}/0"
        end = time.time() + 15
        while True:
            try:
                if await redis_cmd(self.port, "PING") == b"+PONG":
                    return
            except (OSError, TimeoutError):
                pass
            if time.time() > end:
                raise RuntimeError(f"Redis on port {self.port} does not answer PING")
            await asyncio.sleep(0.2)

    async def flush(self) -> None:
        await redis_cmd(self.port, "FLUSHALL" if self.proc else "FLUSHDB", db=self.db)

    async def llen(self, key: str) -> int:
        v = await redis_cmd(self.port, "LLEN", key, db=self.db)
        return int(v[1:]) if v.startswith(b":") else -1

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc.cleanup()


# --------------------------------------------------------------------------------------------
# receiver
# --------------------------------------------------------------------------------------------


class Receiver:
    def __init__(self) -> None:
        self.port = lc.free_port()
        argv = [common.PY, os.path.join(WH_DIR, "receiver.py"), "--port", str(self.port)]
        self.server = common.Server("receiver", argv, self.port, "/health")
        self.url = f"http://{common.HOST}:{self.port}/hook"
        self.http = lc.HttpClient(common.HOST, self.port)

    async def start(self) -> None:
        await self.server.start()

    async def stats(self, samples: bool = False) -> dict[str, Any]:
        status, body = await self.http.request("GET", "/stats?samples=1" if samples else "/stats")
        if status != 200:
            raise RuntimeError(f"receiver /stats answered {status}")
        return json.loads(body)  # type: ignore[no-any-return]

    async def reset(self) -> None:
        await self.http.request("POST", "/reset")

    def stop(self) -> None:
        self.http.close()
        self.server.stop()
        self.server.cleanup()


async def wait_for(
    rx: Receiver, n: int, timeout: float, stall: float = 30.0, procs: list[Proc] | None = None,
    watch: list[Proc] | None = None, db: str | None = None,
) -> tuple[dict[str, Any], str, dict[str, Any]]:  # fmt: skip
    """Poll the receiver until it has ``n`` distinct events; also stop waiting when every
    process in ``procs`` has exited (plus 3 s of grace), on ``stall`` s without progress, or
    at ``timeout``.  For the ``watch`` processes, CPU seconds (process trees) and machine CPU
    are noted at the first delivery seen and at the end, so start-up work is left out."""
    start = time.time()
    last_n, last_change, exited_at = -1, start, None
    cpu: dict[str, Any] = {"first": None, "final": {}, "machine_first": None}
    pg = PgCpu(db) if db else None
    next_pg = 0.0

    def tree_cpu() -> dict[int, float]:
        out = {}
        for p in watch or []:
            if p.alive():
                out[p.pid] = lc.proc_tree_cpu(p.pid)
            elif p.exit_cpu is not None and p.proc is not None:
                out[p.proc.pid] = p.exit_cpu
        return out

    def done(st: dict[str, Any], why: str) -> tuple[dict[str, Any], str, dict[str, Any]]:
        cpu["receiver_final"] = st.get("cpu_s")
        if pg is not None and cpu["first"] is not None:
            pg.sample()
            cpu["pg_s"], cpu["pg_started"] = pg.seconds(), pg.started()
        cpu["final"] = tree_cpu()
        cpu["machine_final"] = lc.machine_cpu()
        cpu["time_final"] = time.time()
        return st, why, cpu

    while True:
        st = await rx.stats()
        now = time.time()
        if cpu["first"] is None and st["requests"]:
            cpu["first"] = tree_cpu()
            cpu["machine_first"] = lc.machine_cpu()
            cpu["time_first"] = now
            cpu["receiver_first"] = st.get("cpu_s")
        if pg is not None and cpu["first"] is not None and now >= next_pg:
            pg.sample()  # every 0.25 s: a scan of /proc costs a few ms
            next_pg = now + 0.25
        if st["unique"] >= n:
            return done(st, "ok")
        if st["unique"] != last_n:
            last_n, last_change = st["unique"], now
        if procs and not any(p.alive() for p in procs):
            exited_at = exited_at or now
            if now - exited_at > 3:
                return done(st, f"worker(s) exited with {st['unique']:,} of {n:,} delivered")
        if now - last_change > stall:
            return done(st, f"stalled at {st['unique']:,} of {n:,} for {stall:g} s")
        if now - start > timeout:
            return done(st, f"timed out at {st['unique']:,} of {n:,} after {timeout:g} s")
        await asyncio.sleep(0.1)


def cpu_figures(cpu: dict[str, Any], procs: list[Proc], delivered: int) -> dict[str, Any]:
    """Worker CPU seconds in total (with start-up) and from the first delivery to the end."""
    final = dict(cpu.get("final") or {})
    for p in procs:  # exact figures for processes that exited (read as zombies)
        if p.exit_cpu is not None and p.proc is not None:
            final[p.proc.pid] = p.exit_cpu
    out: dict[str, Any] = {"worker_cpu_s": round(sum(final.values()), 2)}
    first = cpu.get("first")
    if first is not None:
        during = sum(v - first.get(pid, 0.0) for pid, v in final.items())
        out["worker_cpu_s_delivering"] = round(during, 2)
        if delivered:
            out["worker_cpu_ms_per_delivery"] = round(during / delivered * 1000, 3)
    rf, rl = cpu.get("receiver_first"), cpu.get("receiver_final")
    span = (cpu.get("time_final") or 0) - (cpu.get("time_first") or 0)
    if rf is not None and rl is not None and span > 0:
        out["receiver_cpu_pct_delivering"] = round((rl - rf) / span * 100, 1)
    pg = cpu.get("pg_s")
    if pg is not None and span > 0:
        out["postgres_cpu_pct_delivering"] = round(pg / span * 100, 1)
        out["postgres_backends_started"] = cpu.get("pg_started")
        if delivered:
            out["postgres_cpu_ms_per_delivery"] = round(pg / delivered * 1000, 3)
    if span > 0:
        for k in ("worker_cpu_s_delivering",):
            if k in out:
                out["worker_cpu_pct_delivering"] = round(out[k] / span * 100, 1)
    if cpu.get("machine_first") and cpu.get("machine_final"):
        out["machine_cpu_delivering"] = lc.machine_cpu_delta(cpu["machine_first"],
                                                             cpu["machine_final"])  # fmt: skip
    return out


def throughput_figures(st: dict[str, Any], n: int, t_start: float) -> dict[str, Any]:
    """deliveries/s from the receiver's first to its last request, plus the middle 80 %."""
    arr = sorted(s[0] for s in st.get("samples") or [])
    out: dict[str, Any] = {
        "events": n,
        "requests": st["requests"],
        "unique": st["unique"],
        "duplicates": st["requests"] - st["unique"],
        "missing": max(0, n - st["unique"]),
        "no_signature": st["no_signature"],
        "no_sent_at": st["no_sent_at"],
        "connections": st["connections"],
    }
    if st["requests"] >= 2 and st["last"] > st["first"]:
        span = st["last"] - st["first"]
        out["first_to_last_s"] = round(span, 3)
        out["deliveries_per_s"] = round((st["requests"] - 1) / span, 1)
        out["start_to_first_s"] = round(st["first"] - t_start, 3)
        out["start_to_last_s"] = round(st["last"] - t_start, 3)
    if len(arr) >= 50:
        a, b = arr[len(arr) // 10], arr[len(arr) * 9 // 10]
        if b > a:
            out["middle80_per_s"] = round((len(arr) * 9 // 10 - len(arr) // 10) / (b - a), 1)
    return out


def latency_figures(st: dict[str, Any], expected: int) -> dict[str, Any]:
    first: dict[str, tuple[float, float]] = {}
    for arrival, sent, key in st.get("samples") or []:
        if sent is None or key is None:
            continue
        if key not in first or arrival < first[key][0]:
            first[key] = (arrival, sent)
    lat = sorted((a - s) * 1000 for a, s in first.values())
    out: dict[str, Any] = {"expected": expected, "received": len(lat),
                           "missing": max(0, expected - len(lat))}  # fmt: skip
    if lat:

        def pct(q: float) -> float:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 1)

        out.update(p50_ms=pct(0.50), p90_ms=pct(0.90), p99_ms=pct(0.99),
                   max_ms=round(lat[-1], 1), min_ms=round(lat[0], 1),
                   mean_ms=round(sum(lat) / len(lat), 1))  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------
# databases
# --------------------------------------------------------------------------------------------


def pg_exec(*sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as c:
        for s in sql:
            c.execute(s)


def recreate_db(name: str, template: str | None = None) -> None:
    tpl = f" TEMPLATE {template}" if template else ""
    pg_exec(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}{tpl}")


def drop_stale_dbs() -> list[str]:
    """Drop the databases of earlier runs that were killed before cleaning up."""
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as c:
        names = [row[0] for row in c.execute(
            "SELECT datname FROM pg_database WHERE datname ~ "
            "'^(clarion_bench|djwebhook_bench)_[0-9]+(_tpl)?$'")]  # fmt: skip
    stale = []
    for name in names:
        pid = int(name.removesuffix("_tpl").rsplit("_", 1)[1])
        if pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            stale.append(name)
    drop_db(*stale)
    return stale


def drop_db(*names: str) -> None:
    with contextlib.suppress(Exception):
        pg_exec(*(f"DROP DATABASE IF EXISTS {n} WITH (FORCE)" for n in names))


async def migrate_template(side: str, env: dict[str, str], cwd: str, tpl: str) -> str | None:
    """Migrate a fresh ``tpl`` database (copied per run: CREATE DATABASE ... TEMPLATE)."""
    recreate_db(tpl)
    rc, out, err = await run_cmd([common.PY, "-m", "django", "migrate", "-v", "0"],
                                 env, cwd, timeout=180)  # fmt: skip
    if rc != 0:
        return f"{side}: `python -m django migrate` failed (exit {rc}):\n{tail(err or out, 40)}"
    return None


def side_env(side: str, db: str, redis_url: str = "", reuse: int = 0) -> dict[str, str]:
    base = os.environ.get("PYTHONPATH", "")
    if side == "clarion":
        d = {"DJANGO_SETTINGS_MODULE": "clarion_bench.settings", "CLARION_BENCH_DB": db,
             "PYTHONPATH": CLARION_DIR + (os.pathsep + base if base else "")}  # fmt: skip
    else:
        d = {"DJANGO_SETTINGS_MODULE": "djwh_bench.settings", "DJWH_BENCH_DB": db,
             "DJWH_BENCH_BROKER": redis_url, "DJWH_BENCH_DB_REUSE_MAX": str(reuse or ""),
             "PYTHONPATH": PEER_DIR + (os.pathsep + base if base else "")}  # fmt: skip
    return {**os.environ, **d, "PYTHONUNBUFFERED": "1"}


# --------------------------------------------------------------------------------------------
# scenarios
# --------------------------------------------------------------------------------------------


async def latency_phase(rx: Receiver, drive: list[str], env: dict[str, str], cwd: str,
                        args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """Worker(s) running: one warm-up event, then paced events; event -> first attempt."""
    await rx.reset()
    rc, out, err = await run_cmd([*drive, "--paced", "1", "1", "--first", "900000000"], env, cwd)
    if rc != 0:
        return {"error": f"warm-up event failed (exit {rc}):\n{tail(err or out)}"}
    warm = 15 if args.quick else 30
    _, why, _ = await wait_for(rx, 1, timeout=warm, stall=warm)
    if why != "ok":
        return {"error": f"warm-up event not delivered: {why}"}
    await asyncio.sleep(0.5)
    await rx.reset()
    expected = int(args.latency_rate * args.latency_seconds)
    bg0 = lc.machine_cpu()
    paced = ["--paced", str(args.latency_rate), str(args.latency_seconds), "--first", "1000000000"]
    rc, out, err = await run_cmd([*drive, *paced], env, cwd, timeout=args.latency_seconds + 120)
    if rc != 0:
        return {"error": f"paced sends failed (exit {rc}):\n{tail(err or out)}"}
    _, why, _ = await wait_for(rx, expected, timeout=60, stall=10 if args.quick else 20)
    res = latency_figures(await rx.stats(samples=True), expected)
    res["rate"] = args.latency_rate
    res["machine_cpu"] = lc.machine_cpu_delta(bg0, lc.machine_cpu())
    res["driver"] = last_json(out).get("paced")
    if why != "ok":
        res["error"] = why
    return res


async def clarion_available(env: dict[str, str]) -> tuple[bool, str]:
    hooks = os.path.join(common.REPO, "src", "clarion", "django", "hooks.py")
    if not os.path.exists(hooks):  # noqa: ASYNC240
        return False, "src/clarion/django/hooks.py does not exist yet"
    rc, out, err = await run_cmd([common.PY, "-m", "django", "help", "clarion_worker"], env,
                                 CLARION_DIR, timeout=60)  # fmt: skip
    if rc != 0:
        return False, f"`python -m django help clarion_worker` failed (exit {rc}):\n" + tail(
            err or out, 30
        )
    return True, ""


async def run_clarion(rx: Receiver, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    res: dict[str, Any] = {}
    tpl = CLARION_DB + "_tpl"
    env = side_env("clarion", CLARION_DB)
    ok, why = await clarion_available(env)
    if not ok:
        log(f"  !! Clarion webhooks not available: {why}")
        return {"error": why}
    err = await migrate_template("clarion", side_env("clarion", tpl), CLARION_DIR, tpl)
    if err:
        log(f"  !! {err}")
        return {"error": err}
    drive = [common.PY, os.path.join(CLARION_DIR, "drive.py")]
    worker_argv = [common.PY, "-m", "django", "clarion_worker"]
    n = args.events
    for w in args.workers:
        key = f"clarion-{w}"
        r: dict[str, Any] = {"processes": w}
        res[key] = r
        await quiet_machine(r, log, 5 if args.quick else 20)
        t0 = time.time()
        workers: list[Proc] = []
        try:
            recreate_db(CLARION_DB, tpl)
            await rx.reset()
            rc, out, err = await run_cmd(
                [*drive, "--setup", rx.url, "--preload", str(n), "--batch", str(args.batch)],
                env, CLARION_DIR, timeout=600,
            )  # fmt: skip
            if rc != 0:
                r["error"] = f"setup/preload failed (exit {rc}):\n{tail(err or out, 40)}"
                log(f"  !! {key}: {r['error']}")
                continue
            r["preload"] = last_json(out).get("preload")
            workers = [Proc(f"clarion-worker-{i}", [*worker_argv, "--exit-when-idle"], env,
                            CLARION_DIR) for i in range(w)]  # fmt: skip
            bg0 = lc.machine_cpu()
            t_start = time.time()
            for p in workers:
                await p.start()
            waits = [asyncio.ensure_future(p.wait_exit()) for p in workers]
            _st, why, cpu = await wait_for(rx, n, timeout=args.timeout, stall=30,
                                          procs=workers, watch=workers, db=CLARION_DB)  # fmt: skip
            await asyncio.wait(waits, timeout=30)
            r["machine_cpu"] = lc.machine_cpu_delta(bg0, lc.machine_cpu())
            r["throughput"] = throughput_figures(await rx.stats(samples=True), n, t_start)
            r.update(cpu_figures(cpu, workers, r["throughput"]["unique"]))
            r["worker_exit"] = [p.proc.returncode if p.proc else None for p in workers]
            ends = [p.exit_time for p in workers if p.exit_time]
            if ends:
                r["worker_wall_s"] = round(max(ends) - t_start, 3)
            if why != "ok":
                r["throughput"]["error"] = why
            bad = [p for p in workers if p.proc and p.proc.returncode not in (0, None)]
            if bad or why != "ok":
                r["worker_log"] = {p.name: p.log_tail(60) for p in workers}
            for p in workers:
                p.stop()
            # latency: worker(s) running (not --exit-when-idle), idle, warmed up
            workers = [Proc(f"clarion-worker-{i}", worker_argv, env, CLARION_DIR)
                       for i in range(w)]  # fmt: skip
            for p in workers:
                await p.start()
            r["latency"] = await latency_phase(rx, drive, env, CLARION_DIR, args)
            if r["latency"].get("error") or not all(p.alive() for p in workers):
                r.setdefault("worker_log", {}).update(
                    {p.name + " (latency)": p.log_tail(60) for p in workers})  # fmt: skip
                r["worker_stacks"] = {p.name: await py_spy_dump(p.pid)
                                      for p in workers if p.alive()}  # fmt: skip
        except Exception as e:  # noqa: BLE001  # one configuration's failure, reported
            r["error"] = f"{type(e).__name__}: {e}"
        finally:
            for p in workers:
                p.stop()
                p.cleanup()
        log_line(log, key, r, time.time() - t0)
    return res


async def run_peer(rx: Receiver, redis: Redis, args: argparse.Namespace, log: Any
                   ) -> dict[str, Any]:  # fmt: skip
    res: dict[str, Any] = {}
    missing = [m for m in ("celery", "django_webhook", "psycopg") if not find_spec(m)]
    if missing:
        why = (f"not installed: {', '.join(missing)}; pip install 'django-webhook==0.0.15' "
               "'celery[redis]' 'psycopg[binary]'")  # fmt: skip
        log(f"  !! django-webhook not available: {why}")
        return {"error": why}
    tpl = PEER_DB + "_tpl"
    reuse = 0 if args.peer_as_shipped else 1_000_000
    env = side_env("django-webhook", PEER_DB, redis.url or "", reuse)
    err = await migrate_template("django-webhook", side_env("django-webhook", tpl, redis.url or ""),
                                 PEER_DIR, tpl)  # fmt: skip
    if err:
        log(f"  !! {err}")
        return {"error": err}
    drive = [common.PY, os.path.join(PEER_DIR, "drive.py")]
    n = args.peer_events
    for c in args.workers:
        key = f"djwebhook-{c}"
        r: dict[str, Any] = {"processes": c, "pool": "prefork", "db_reuse_max": reuse}
        res[key] = r
        await quiet_machine(r, log, 5 if args.quick else 20)
        t0 = time.time()
        worker: Proc | None = None
        try:
            recreate_db(PEER_DB, tpl)
            await redis.flush()
            await rx.reset()
            rc, out, err = await run_cmd([*drive, "--setup", rx.url, "--preload", str(n)], env,
                                         PEER_DIR, timeout=600)  # fmt: skip
            if rc != 0:
                r["error"] = f"setup/preload failed (exit {rc}):\n{tail(err or out, 40)}"
                log(f"  !! {key}: {r['error']}")
                continue
            r["preload"] = last_json(out).get("preload")
            r["queued"] = await redis.llen("celery")
            worker = Proc(f"celery-c{c}", [
                common.PY, "-m", "celery", "-A", "djwh_bench", "worker",
                "--pool", "prefork", "-c", str(c), "-n", f"bench-c{c}@%h",
                "--without-heartbeat", "--without-gossip", "--without-mingle",
                "--loglevel", "WARNING",
            ], env, PEER_DIR)  # fmt: skip
            bg0 = lc.machine_cpu()
            t_start = time.time()
            await worker.start()
            _st, why, cpu = await wait_for(rx, n, timeout=args.timeout, stall=30,
                                          procs=[worker], watch=[worker], db=PEER_DB)  # fmt: skip
            r["machine_cpu"] = lc.machine_cpu_delta(bg0, lc.machine_cpu())
            r["throughput"] = throughput_figures(await rx.stats(samples=True), n, t_start)
            r.update(cpu_figures(cpu, [worker], r["throughput"]["unique"]))
            if why != "ok":
                r["throughput"]["error"] = why
                r["worker_log"] = {worker.name: worker.log_tail(60)}
            await asyncio.sleep(0.5)
            r["latency"] = await latency_phase(rx, drive, env, PEER_DIR, args)
            if r["latency"].get("error") or not worker.alive():
                r.setdefault("worker_log", {})[worker.name + " (latency)"] = worker.log_tail(60)
                if worker.alive():
                    r["worker_stacks"] = {worker.name: await py_spy_dump(worker.pid)}
        except Exception as e:  # noqa: BLE001  # one configuration's failure, reported
            r["error"] = f"{type(e).__name__}: {e}"
        finally:
            if worker is not None:
                worker.stop()
                worker.cleanup()
        log_line(log, key, r, time.time() - t0)
    return res


def log_line(log: Any, key: str, r: dict[str, Any], took: float) -> None:
    tp, la = r.get("throughput") or {}, r.get("latency") or {}
    msg = f"  {LABEL.get(key, key):<30} {lc.fmt_num(tp.get('deliveries_per_s'))} deliveries/s"
    msg += f" ({lc.fmt_num(tp.get('unique'))} of {lc.fmt_num(tp.get('events'))} events"
    if tp.get("start_to_last_s") is not None:
        msg += f", start->last {tp['start_to_last_s']:.1f} s"
    msg += f"), p50 {la.get('p50_ms', '-')} / p99 {la.get('p99_ms', '-')} ms  [{took:.0f}s]"
    log(msg)
    for what, x in (("error", r), ("throughput", tp), ("latency", la)):
        if x.get("error"):
            log(f"    !! {what}: {x['error']}")
    for name, text in (r.get("worker_log") or {}).items():
        if text.strip():
            log(f"    -- {name} log tail:\n" + "\n".join("       " + s for s in
                                                       text.splitlines()[-25:]))  # fmt: skip
    for name, text in (r.get("worker_stacks") or {}).items():
        log(f"    -- {name} stacks (py-spy dump):\n" + "\n".join("       " + s for s in
                                                            text.splitlines()[:60]))  # fmt: skip


# --------------------------------------------------------------------------------------------
# main + report
# --------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {"args": vars(args)}
    which = args.only or ["clarion", "django-webhook"]
    t0 = time.time()
    print(f"Webhook delivery benchmark: {', '.join(which)} "
          f"({args.events:,} Clarion / {args.peer_events:,} django-webhook events pre-loaded; "
          f"latency {args.latency_rate:g}/s for {args.latency_seconds:g} s)")  # fmt: skip
    await common.note_background(results)
    with contextlib.suppress(Exception):
        results["dropped_stale_dbs"] = drop_stale_dbs()
    rx = Receiver()
    redis = Redis(args.redis_url)
    try:
        await rx.start()
        if "clarion" in which:
            results["clarion"] = await run_clarion(rx, args, print)
        if "django-webhook" in which:
            try:
                await redis.start()
                results["django-webhook"] = await run_peer(rx, redis, args, print)
            except (RuntimeError, OSError) as e:
                print(f"  !! django-webhook: {e}")
                results["django-webhook"] = {"error": str(e)}
    finally:
        rx.stop()
        redis.stop()
        if not args.keep_db:
            drop_db(CLARION_DB, CLARION_DB + "_tpl", PEER_DB, PEER_DB + "_tpl")
    results["seconds"] = round(time.time() - t0, 1)
    print_report(results)
    print("saved", lc.save_result("webhook_delivery", results))
    return 0


HEADER = common.HEADER


def _row(results: dict[str, Any], key: str) -> dict[str, Any]:
    side = "clarion" if key.startswith("clarion") else "django-webhook"
    return common.get(results, side, key) or {}


def report_rows(results: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
    g = common.get
    rows: list[list[Any]] = []
    for w in (1, 2):
        c = g(_row(results, f"clarion-{w}"), "throughput", "deliveries_per_s")
        p = g(_row(results, f"djwebhook-{w}"), "throughput", "deliveries_per_s")
        target = f">= {TARGET_DPS:,}/s and >= {TARGET_RATIO}x peer" if w == 1 else (
            f">= {TARGET_RATIO}x peer")  # fmt: skip
        met: str = "n/a"
        if c and p:
            ok = c >= TARGET_RATIO * p and (w != 1 or c >= TARGET_DPS)
            met = "yes" if ok else "NO"
        elif c and w == 1:
            met = "yes" if c >= TARGET_DPS else "NO"
        rows.append([f"webhook deliveries/s, {w} worker process{'es' if w > 1 else ''}",
                     lc.fmt_num(c), f"django-webhook celery -c {w}", lc.fmt_num(p),
                     common.ratio(c, p), target, met])  # fmt: skip
    for w in (1, 2):
        c = g(_row(results, f"clarion-{w}"), "latency") or {}
        p = g(_row(results, f"djwebhook-{w}"), "latency") or {}
        cp = c.get("p50_ms")
        rate = c.get("rate") or p.get("rate") or 0
        met = ("yes" if cp <= TARGET_P50_MS else "NO") if cp is not None else "n/a"
        rows.append([f"webhook event->first attempt p50 / p99 ms @ {rate:g}/s, {w} worker"
                     f"{'s' if w > 1 else ''}", _pp(c), f"django-webhook celery -c {w}", _pp(p),
                     _p50_ratio(cp, p.get("p50_ms")),
                     f"p50 <= {TARGET_P50_MS} ms", met])  # fmt: skip
    problems: list[str] = []
    for side in ("clarion", "django-webhook"):
        res = results.get(side) or {}
        if res.get("error"):
            problems.append(f"{side}: {res['error'].splitlines()[0]}")
        for key, r in res.items():
            if not isinstance(r, dict):
                continue
            for what, x in (("", r), ("throughput: ", r.get("throughput") or {}),
                            ("latency: ", r.get("latency") or {})):  # fmt: skip
                if x.get("error"):
                    problems.append(f"{LABEL.get(key, key)}: {what}{x['error'].splitlines()[0]}")
            tp = r.get("throughput") or {}
            if tp.get("duplicates"):
                problems.append(f"{LABEL.get(key, key)}: {tp['duplicates']:,} duplicate requests")
            if side == "clarion" and tp.get("no_signature"):
                problems.append(f"{LABEL.get(key, key)}: {tp['no_signature']:,} unsigned requests")
    return rows, problems


def print_report(results: dict[str, Any]) -> None:
    g = common.get
    matrix = []
    for key, _side, _w in CONFIGS:
        r = _row(results, key)
        tp, la = r.get("throughput") or {}, r.get("latency") or {}
        matrix.append([
            LABEL[key],
            lc.fmt_num(tp.get("deliveries_per_s")), lc.fmt_num(tp.get("middle80_per_s")),
            _ms(la.get("p50_ms")), _ms(la.get("p99_ms")),
            f"{lc.fmt_num(tp.get('unique'))}/{lc.fmt_num(tp.get('events'))}" if tp else "-",
            f"{tp['start_to_last_s']:.1f}" if tp.get("start_to_last_s") is not None else "-",
            lc.fmt_num(g(r, "worker_cpu_ms_per_delivery"), 2),
            _pct(g(r, "worker_cpu_pct_delivering")),
            _pct(g(r, "postgres_cpu_pct_delivering"))
            + ("*" if (g(r, "postgres_backends_started") or 0) > 4 else ""),
            f"{g(r, 'machine_cpu_delivering', 'busy_pct') or 0:.0f}%"
            if r.get("machine_cpu_delivering") else "-",
        ])  # fmt: skip
    lc.print_table(
        "Webhook deliveries to a local receiver (deliveries/s: receiver, first->last request; "
        "latency: event -> first attempt)",
        ["config", "deliveries/s", "middle 80%/s", "p50 ms", "p99 ms", "delivered",
         "start->last s", "worker CPU ms/delivery", "worker CPU", "PG CPU", "machine busy"],
        matrix,
    )  # fmt: skip
    if any((g(_row(results, k), "postgres_backends_started") or 0) > 4 for k, _, _ in CONFIGS):
        print("* new PostgreSQL backends during the run (a connection per task): their CPU "
              "before the first sample is missed\n")  # fmt: skip
    rows, problems = report_rows(results)
    lc.print_table("Webhook delivery vs targets", HEADER, rows)
    if problems:
        print("Problems seen:")
        for p in problems:
            print("  -", p)


def _p50_ratio(ours: float | None, peer: float | None) -> str:
    if not ours or not peer:
        return "-"
    return f"{peer / ours:.1f}x lower" if ours <= peer else f"{ours / peer:.1f}x higher"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:.0f}%"


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:,.1f}"


def _pp(la: dict[str, Any]) -> str:
    if not la or la.get("p50_ms") is None:
        return "-"
    return f"{la['p50_ms']:.1f} / {la['p99_ms']:.1f}"


def cli() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="5,000 Clarion / 500 peer events, 5 s of latency (under 2 minutes)",
    )
    ap.add_argument("--only", nargs="+", choices=["clarion", "django-webhook"])
    ap.add_argument("--events", type=int, help="Clarion events pre-loaded (default 50,000)")
    ap.add_argument(
        "--peer-events",
        type=int,
        help="django-webhook events pre-loaded (default 3,000: it runs ~100/s here)",
    )
    ap.add_argument("--batch", type=int, default=1000, help="Clarion events per transaction")
    ap.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="worker processes (Clarion) / pool size (Celery)",
    )
    ap.add_argument("--latency-rate", type=float, default=50.0)
    ap.add_argument("--latency-seconds", type=float)
    ap.add_argument("--timeout", type=float, default=240, help="max seconds per throughput run")
    ap.add_argument(
        "--peer-as-shipped",
        action="store_true",
        help="leave Celery's default of a new DB connection per task (default: the peer's "
        "workers keep theirs, CELERY_DB_REUSE_MAX)",
    )
    ap.add_argument("--redis-url", help="use this Redis (FLUSHDB'd!) instead of a private one")
    ap.add_argument("--keep-db", action="store_true", help="leave the bench databases behind")
    args = ap.parse_args()
    if args.events is None:
        args.events = 5000 if args.quick else 50000
    if args.peer_events is None:
        args.peer_events = 500 if args.quick else 3000
    if args.latency_seconds is None:
        args.latency_seconds = 5.0 if args.quick else 10.0
    sys.exit(common.run_main(main(args)))


if __name__ == "__main__":
    cli()
