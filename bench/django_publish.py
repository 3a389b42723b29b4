"""Publications per second from a Django view: Clarion against Channels, same run, same machine.

Three ways a view tells browsers that something happened:

* **clarion http**: ``clarion.django.realtime.publish()``, one ``POST /api/publish`` to the
  hub on a keep-alive connection (``CLARION["HUB"]``);
* **clarion redis**: the same call with ``CLARION["BROKER"]`` set, straight into the hub's
  Redis (the hub's own Lua script, no HTTP hop);
* **channels**: ``channel_layer.group_send()`` on channels_redis, the call the Channels
  tutorials make, to a group with one member (as if one consumer were in the room).

Each is measured from a sync view (``async_to_sync(group_send)`` for Channels, as its docs
say to call it from sync code) on 1 and on ``--threads`` threads (a threaded WSGI server),
and from an async view (``await apublish`` / ``await group_send``) with ``--concurrency``
requests in flight. The view is called with a RequestFactory request, so the figure is the
view and its publication, not a web server. A child process per way (its own Django
settings); every publication is counted where it landed (the hub's channel offset, the
group member's Redis key) and a shortfall is reported. Every way runs ``--repeat`` times, in
rotated order, and the report gives the medians: on a shared machine one run says little.
Besides the rate, each point records the Django process's CPU per publication (every thread),
which moves less than the rate when other programs share the cores.

    python bench/django_publish.py            # 5 s per point, 3 runs of each way
    python bench/django_publish.py --quick    # 2 s per point, 1 run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import loadclient as lc

WAYS = ["clarion-http", "clarion-redis", "channels"]
CHANNEL = "hist:djbench"  # the hub's bench namespace with history: its offset counts them
GROUP = "djbench"
SINK = "djbench.sink"  # the group's one member
CHANNELS_DB = 15  # channels_redis: its own database and prefix, as bench/peers does
# Redis key prefixes of this run alone: other benchmarks (and another run of this one) flush
# theirs when they start, which reset this channel's stream in the middle of a point.
CHANNELS_PREFIX = f"clarionbench-dj-{os.getpid()}:"
HUB_REDIS_PREFIX = f"clarionbench-djp-{os.getpid()}"
PAYLOAD = {"room": "lobby", "user": "alice", "text": "hello from a Django view " + "x" * 40}


# ---- the child: one way, configured as a Django project would be ------------------------------

def _configure(way: str, spec: dict[str, Any]) -> None:
    import django
    from django.conf import settings

    options: dict[str, Any] = {}
    if way.startswith("clarion"):
        hub: dict[str, Any] = {"URL": spec["hub_url"], "API_KEY": "bench", "TIMEOUT": 10.0}
        options["CLARION"] = {"HUB": hub}
        if way == "clarion-redis":
            hub["CONFIG"] = spec["hub_config"]
            options["CLARION"].update(BROKER=spec["redis_url"],
                                      REDIS={"prefix": spec["hub_prefix"]})
    else:
        options["CHANNEL_LAYERS"] = {"default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://{common.HOST}:6379/{CHANNELS_DB}"],
                       "prefix": spec["channels_prefix"], "capacity": 10_000_000,
                       "expiry": 600},
        }}
    settings.configure(
        DEBUG=False, SECRET_KEY="bench", ALLOWED_HOSTS=["*"], USE_TZ=True,
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        LOGGING_CONFIG=None, **options)
    django.setup()


def _views(way: str) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """The sync and the async view of this way, as an application would write them."""
    from django.http import JsonResponse

    if way.startswith("clarion"):
        from clarion.django import realtime

        def sync_view(request: Any) -> Any:
            realtime.publish(CHANNEL, PAYLOAD)
            return JsonResponse({"ok": True})

        async def async_view(request: Any) -> Any:
            await realtime.apublish(CHANNEL, PAYLOAD)
            return JsonResponse({"ok": True})

        return sync_view, async_view

    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer  # type: ignore[import-untyped]

    layer = get_channel_layer()
    message = {"type": "chat.message", **PAYLOAD}

    def sync_channels_view(request: Any) -> Any:
        async_to_sync(layer.group_send)(GROUP, message)
        return JsonResponse({"ok": True})

    async def async_channels_view(request: Any) -> Any:
        await layer.group_send(GROUP, message)
        return JsonResponse({"ok": True})

    return sync_channels_view, async_channels_view


def _sync_point(view: Callable[[Any], Any], threads: int, seconds: float) -> dict[str, Any]:
    from django.test import RequestFactory

    factory = RequestFactory()
    samples: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []
    start = threading.Barrier(threads + 1)
    deadline = [0.0]

    def work(i: int) -> None:
        mine = samples[i]
        start.wait()
        while time.perf_counter() < deadline[0]:
            t0 = time.perf_counter()
            try:
                view(factory.post("/publish"))
            except Exception as exc:  # noqa: BLE001 - counted and shown, the run goes on
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            mine.append(time.perf_counter() - t0)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    deadline[0] = time.perf_counter() + seconds
    t0, cpu0 = time.perf_counter(), time.process_time()
    start.wait()
    for t in pool:
        t.join()
    return _point([s for ss in samples for s in ss], time.perf_counter() - t0,
                  time.process_time() - cpu0, errors)


def _async_point(view: Callable[[Any], Any], concurrency: int,
                 seconds: float) -> dict[str, Any]:
    from django.test import AsyncRequestFactory

    factory = AsyncRequestFactory()
    samples: list[float] = []
    errors: list[str] = []

    async def work(deadline: float) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                await view(factory.post("/publish"))
            except Exception as exc:  # noqa: BLE001 - counted and shown, the run goes on
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            samples.append(time.perf_counter() - t0)

    async def run() -> tuple[float, float]:
        t0, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(work(t0 + seconds) for _ in range(concurrency)))
        return time.perf_counter() - t0, time.process_time() - cpu0

    return _point(samples, *asyncio.run(run()), errors)


def _point(samples: list[float], elapsed: float, cpu: float,
           errors: list[str]) -> dict[str, Any]:
    """``cpu_us``: this process's CPU (every thread) per publication, the cost a web worker
    pays; it moves less than the rate when other programs share the machine."""
    s = sorted(samples)
    pct = (lambda q: round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 3)) if s else None
    return {"published": len(s), "seconds": round(elapsed, 3),
            "per_second": round(len(s) / elapsed) if elapsed else 0,
            "cpu_us": round(cpu / len(s) * 1e6) if s else None,
            "p50_ms": pct(0.5) if pct else None, "p99_ms": pct(0.99) if pct else None,
            "errors": len(errors), "first_errors": sorted(set(errors))[:3]}


class _Landed:
    """Counts publications where they landed: the hub's channel offset (Clarion), the group
    member's sorted set in Redis (channels_redis)."""

    def __init__(self, way: str, spec: dict[str, Any]) -> None:
        self.way = way
        self.spec = spec
        if way == "channels":
            import redis

            self.redis = redis.Redis(host=common.HOST, port=6379, db=CHANNELS_DB)
            self.key = spec["channels_prefix"] + SINK
            self.total = 0
        self.epoch: str | None = None

    def prepare(self) -> None:
        if self.way == "channels":
            from asgiref.sync import async_to_sync
            from channels.layers import get_channel_layer

            self.redis.delete(self.key)
            async_to_sync(get_channel_layer().group_add)(GROUP, SINK)

    def count(self) -> int:
        if self.way == "channels":
            # Emptied as counted: a member with a long backlog would slow the next point.
            self.total += int(self.redis.zcard(self.key))
            self.redis.delete(self.key)
            return self.total
        import httpx

        r = httpx.post(f"{self.spec['hub_url']}/api/history", headers={"X-API-Key": "bench"},
                       json={"channel": CHANNEL, "limit": 0}, timeout=10)
        result = r.json()["result"]
        if self.epoch is not None and result["epoch"] != self.epoch:
            # The stream was lost (Redis flushed or restarted by someone else): what landed
            # before is gone, so the count cannot be checked.
            raise StreamReset(f"{CHANNEL}'s stream was reset (epoch {self.epoch} -> "
                              f"{result['epoch']}): Redis was flushed or restarted meanwhile")
        self.epoch = result["epoch"]
        return int(result["offset"])


class StreamReset(Exception):
    pass


def child(way: str, spec: dict[str, Any]) -> dict[str, Any]:
    _configure(way, spec)
    sync_view, async_view = _views(way)
    landed = _Landed(way, spec)
    landed.prepare()
    _sync_point(sync_view, 1, min(1.0, spec["seconds"]))  # warm: connections, scripts
    _async_point(async_view, 2, min(0.5, spec["seconds"]))
    base = landed.count()
    seconds = spec["seconds"]
    runs: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("sync-1", lambda: _sync_point(sync_view, 1, seconds)),
        (f"sync-{spec['threads']}", lambda: _sync_point(sync_view, spec["threads"], seconds)),
        (f"async-{spec['concurrency']}",
         lambda: _async_point(async_view, spec["concurrency"], seconds)),
    ]
    points: dict[str, Any] = {}
    for name, run in runs:
        point = run()
        try:
            now = landed.count()
        except StreamReset as exc:
            return {"error": str(exc)}
        point["landed"] = now - base
        base = now
        points[name] = point
    return points


# ---- the parent: servers, children, the report -------------------------------------------------

def _run_child(way: str, spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [common.PY, os.path.abspath(__file__), "--child", way, "--spec", json.dumps(spec)],
        capture_output=True, timeout=60 + 10 * spec["seconds"], cwd=common.REPO)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip().splitlines()
        return {"error": "\n".join(tail[-8:]) or f"exit {proc.returncode}"}
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


async def _with_hub(way: str, spec: dict[str, Any], extra_config: str) -> dict[str, Any]:
    server = common.clarion_server(extra_config=extra_config)
    try:
        await server.start()
    except RuntimeError as exc:
        return {"error": f"hub did not start: {exc}"}
    try:
        spec = {**spec, "hub_url": f"http://{common.HOST}:{server.port}",
                "hub_config": os.path.join(server.tmp, "clarion.toml")}
        result = await asyncio.to_thread(_run_child, way, spec)
        result["hub_cpu_note"] = "hub on its own process"
        if not server.alive():
            result["error"] = "the hub died: " + server.log_tail(10)
        return result
    finally:
        server.stop()
        server.cleanup()


def _missing() -> str:
    try:
        import channels  # type: ignore[import-untyped]  # noqa: F401
        import channels_redis  # type: ignore[import-untyped]  # noqa: F401
        import redis
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -r bench/requirements.txt)"
    try:
        redis.Redis(host=common.HOST, port=6379, socket_timeout=2).ping()
    except redis.RedisError as exc:
        return f"no Redis on {common.HOST}:6379 ({exc})"
    return ""


async def main(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {"args": vars(args), "ways": {}}
    t_start = time.time()
    print(f"Django publishing: {args.seconds:g} s per point, sync views on 1 and "
          f"{args.threads} threads, async views {args.concurrency} in flight  "
          f"(machine: {os.cpu_count()} CPUs)")
    await common.note_background(results)
    missing = _missing()
    if missing:
        results["error"] = missing
        print(f"  !! {missing}")
        lc.save_result(args.name, results)
        return 1
    spec = {"seconds": args.seconds, "threads": args.threads, "concurrency": args.concurrency,
            "redis_url": common.REDIS_URL, "hub_prefix": HUB_REDIS_PREFIX,
            "channels_prefix": CHANNELS_PREFIX}
    runs: dict[str, list[dict[str, Any]]] = {way: [] for way in args.ways}
    for rep in range(args.repeat):
        # Rotated, so that no way always runs while the machine is busiest.
        shift = rep % len(args.ways)
        for way in args.ways[shift:] + args.ways[:shift]:
            r = await _one_way(way, spec)
            runs[way].append(r)
            _print_run(way, rep, r)
    results["runs"] = runs
    results["ways"] = {way: _median_run(rs) for way, rs in runs.items()}
    await common.flush_redis_prefix(CHANNELS_PREFIX.encode(), db=CHANNELS_DB)
    await common.flush_redis_prefix(HUB_REDIS_PREFIX.encode(), db=0)
    results["seconds"] = round(time.time() - t_start, 1)
    print_report(results)
    print("saved", lc.save_result(args.name, results))
    return 0


async def _one_way(way: str, spec: dict[str, Any]) -> dict[str, Any]:
    if way == "clarion-http":
        return await _with_hub(way, spec, "")
    if way == "clarion-redis":
        # A short meta lifetime: a run that dies leaves keys that go away on their own.
        return await _with_hub(way, spec, f'broker = "{common.REDIS_URL}"\n'
                                          'history_meta_ttl = "1h"\n'
                                          f'[redis]\nprefix = "{HUB_REDIS_PREFIX}"\n')
    return await asyncio.to_thread(_run_child, way, spec)


def _print_run(way: str, rep: int, r: dict[str, Any]) -> None:
    if "error" in r:
        print(f"  !! {way}: {r['error']}")
        return
    for name, p in r.items():
        if isinstance(p, dict):
            print(f"  #{rep + 1} {way:<13} {name:<9} {p['per_second']:>7,}/s  p50 {p['p50_ms']} "
                  f"/ p99 {p['p99_ms']} ms  {p['cpu_us']} us CPU each  "
                  f"landed {p['landed']:,}/{p['published']:,}"
                  + (f"  errors {p['errors']}" if p["errors"] else ""), flush=True)


def _median_run(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per point: the median rate and CPU of the repeats, the counts summed (every
    publication of every repeat must have landed). With an even number of repeats the
    median is the upper middle one."""
    good = [r for r in rs if "error" not in r]
    if not good:
        return rs[-1] if rs else {"error": "not run"}
    out: dict[str, Any] = {}
    for name in good[0]:
        ps = [r[name] for r in good if isinstance(r.get(name), dict)]
        if not ps:
            continue
        # A repeat in which every call failed has no rate: it is reported as errors.
        ok = [p for p in ps if p["published"]]
        out[name] = {
            "per_second": _median([p["per_second"] for p in ok]),
            "cpu_us": _median([p["cpu_us"] for p in ok]),
            "p50_ms": _median([p["p50_ms"] for p in ok]),
            "p99_ms": _median([p["p99_ms"] for p in ok]),
            "published": sum(p["published"] for p in ps),
            "landed": sum(p["landed"] for p in ps),
            "errors": sum(p["errors"] for p in ps),
            "first_errors": [e for p in ps for e in p["first_errors"]][:3],
            "repeats": len(ps),
        }
    if len(good) < len(rs):
        out["error"] = next(r["error"] for r in rs if "error" in r)
    return out


def _median(xs: list[Any]) -> Any:
    if not xs:
        return None
    s = sorted(xs)
    return s[len(s) // 2]


HEADER = common.HEADER


def report_rows(results: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
    a = argparse.Namespace(**results["args"])
    ways = results.get("ways", {})
    rows: list[list[Any]] = []
    problems: list[str] = []
    peer = ways.get("channels", {})
    for point, label in (("sync-1", "sync view, 1 thread"),
                         (f"sync-{a.threads}", f"sync view, {a.threads} threads"),
                         (f"async-{a.concurrency}", f"async view, {a.concurrency} in flight")):
        theirs = _rate(peer.get(point))
        for way, how in (("clarion-http", "over HTTP"), ("clarion-redis", "into Redis")):
            ours = _rate(ways.get(way, {}).get(point))
            rows.append([f"publishes/s from a Django view, {how} ({label})", _fmt(ours),
                         "channels_redis group_send", _fmt(theirs), common.ratio(ours, theirs),
                         "", ""])
    theirs_cpu = (peer.get("sync-1") or {}).get("cpu_us")
    for way, how in (("clarion-http", "over HTTP"), ("clarion-redis", "into Redis")):
        ours_cpu = (ways.get(way, {}).get("sync-1") or {}).get("cpu_us")
        rows.append([f"Django process CPU us per publish, {how} (sync view, 1 thread)",
                     _fmt(ours_cpu), "channels_redis group_send", _fmt(theirs_cpu),
                     common.ratio(ours_cpu, theirs_cpu, invert=True), "", ""])
    for way, r in ways.items():
        if r.get("error"):
            problems.append(f"django_publish {way}: {r['error'].splitlines()[-1]}")
            continue
        for name, p in r.items():
            if not isinstance(p, dict):
                continue
            if p.get("errors"):
                problems.append(f"django_publish {way} {name}: {p['errors']} errors, e.g. "
                                f"{p['first_errors'][:1]}")
            if p.get("landed") != p.get("published"):
                problems.append(f"django_publish {way} {name}: {p.get('landed')} landed of "
                                f"{p.get('published')} published")
    if results.get("error"):
        problems.append(f"django_publish: {results['error']}")
    return rows, problems


def _rate(p: dict[str, Any] | None) -> float | None:
    return p.get("per_second") if p and p.get("published") else None


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def print_report(results: dict[str, Any]) -> None:
    rows, problems = report_rows(results)
    lc.print_table("Publishing from a Django view (Clarion vs Channels' group_send)", HEADER,
                   rows)
    for p in problems:
        print("  -", p)


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="time per point")
    ap.add_argument("--threads", type=int, default=8, help="threads of the threaded sync point")
    ap.add_argument("--concurrency", type=int, default=8, help="async requests in flight")
    ap.add_argument("--ways", nargs="+", choices=WAYS, default=WAYS)
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of every way, rotated; the report shows the medians")
    ap.add_argument("--quick", action="store_true", help="2 s per point, one run")
    ap.add_argument("--name", default="django_publish", help="bench/results/NAME.json")
    ap.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, json.loads(args.spec))), flush=True)
        return
    if args.quick:
        args.seconds, args.repeat = 2.0, 1
    if args.repeat < 1 or args.seconds <= 0 or args.threads < 1 or args.concurrency < 1:
        ap.error("--repeat, --seconds, --threads and --concurrency must be positive")
    sys.exit(common.run_main(main(args)))


if __name__ == "__main__":
    cli()
