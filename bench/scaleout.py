"""Scale-out through Redis, side by side with the memory broker and Django Channels.

* **publish**: publications/s the hub accepts (answered), through the memory broker (one
  process) and the Redis broker (one process, and ``--workers 2``), as single
  ``POST /api/publish`` requests (``--connections`` at once, each waiting for its answer) and
  as ``/api/batch`` of ``--batch`` publications; channels with history (one EVALSHA each), no
  subscribers.  Then publish-to-deliver p50/p99 under light load (``--hop-subscribers``
  subscribers, ``--hop-rate``/s, one pipelined connection) for memory and Redis: the difference
  is what the Redis hop adds.
* **fanout**: WebSocket fan-out at ``--subscribers`` (5,000 and 10,000): ``--workers 2`` with
  Redis against one process with memory, deliveries/s (batches of 20) and p50/p99 at 100
  messages/s; Django Channels with channels_redis ``group_send`` (``bench/peers/channels_app``)
  in the same run at ``--peer-subscribers`` (it cannot finish at 5,000 here).

    python bench/scaleout.py
    python bench/scaleout.py --only publish
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import fanout_ws
import loadclient as lc

SETUPS = {  # name: (broker, workers)
    "memory-1": ("memory", 1),
    "redis-1": ("redis", 1),
    "redis-2": ("redis", 2),
}


def hub(setup: str) -> common.Server:
    broker, workers = SETUPS[setup]
    return common.clarion_server(
        extra_config=common.redis_broker_config() if broker == "redis" else "",
        extra_args=["--workers", str(workers)] if workers > 1 else [])


async def publish_rate(port: int, pid: int, *, batch: int, connections: int, seconds: float,
                       channels: int = 64) -> dict[str, Any]:
    """Publications answered per second, ``connections`` requests in flight at once."""
    headers = {"X-API-Key": "bench", "Content-Type": "application/json"}
    clients = [lc.HttpClient(common.HOST, port) for _ in range(connections)]
    await asyncio.gather(*(c.request("GET", "/health") for c in clients))
    done = 0
    errors: dict[str, int] = {}
    data = lc.data_json(0, time.time())
    stop = time.time() + seconds

    async def worker(http: lc.HttpClient, k: int) -> None:
        nonlocal done
        i = k
        while time.time() < stop:
            if batch == 1:
                body = f'{{"channel":"hist:p{i % channels}","data":{data}}}'.encode()
                path = "/api/publish"
            else:
                cmds = ",".join(f'{{"publish":{{"channel":"hist:p{(i + j) % channels}",'
                                f'"data":{data}}}}}' for j in range(batch))
                body = f'{{"commands":[{cmds}]}}'.encode()
                path = "/api/batch"
            i += batch
            status, resp = await http.request("POST", path, body, headers)
            if status != 200 or b'"error"' in resp:
                key = f"HTTP {status}: {resp[:100]!r}"
                errors[key] = errors.get(key, 0) + 1
            else:
                done += batch

    cpu0, t0 = lc.proc_tree_cpu(pid), time.time()
    own0 = time.process_time()
    await asyncio.gather(*(worker(c, k * 7919) for k, c in enumerate(clients)))
    took = time.time() - t0
    for c in clients:
        c.close()
    return {"publications_per_s": round(done / took), "batch": batch,
            "connections": connections, "errors": errors,
            "server_cpu_pct": round((lc.proc_tree_cpu(pid) - cpu0) / took * 100, 1),
            "publisher_cpu_pct": round((time.process_time() - own0) / took * 100, 1)}


async def run_publish(args: argparse.Namespace, results: dict[str, Any]) -> None:
    out = results.setdefault("publish", {})
    for setup in SETUPS:
        await common.flush_redis_prefix(common.REDIS_PREFIX.encode(), db=0)
        server = hub(setup)
        try:
            await server.start()
        except RuntimeError as e:
            out[setup] = {"error": str(e)}
            print(f"  !! {setup}: {e}")
            continue
        r: dict[str, Any] = {}
        try:
            r["single"] = await publish_rate(server.port, server.pid, batch=1,
                                             connections=args.connections, seconds=args.seconds)
            r["batch"] = await publish_rate(server.port, server.pid, batch=args.batch,
                                            connections=4, seconds=args.seconds)
            # Larger batches on more connections: what the per-request cost leaves room for.
            r["batch_large"] = await publish_rate(server.port, server.pid,
                                                  batch=args.large_batch, connections=8,
                                                  seconds=args.seconds)
            if setup != "redis-2":
                pool = lc.SubscriberPool()
                try:
                    await pool.start(lc.Target(common.HOST, server.port,
                                               "/connection/websocket"), args.hop_subscribers)
                    pub = lc.CentrifugoApiPublisher(lc.HttpClient(common.HOST, server.port))
                    await lc.sync_warmup(pool, pub.one, 30)
                    r["light_latency"] = await lc.run_latency(
                        pool, pub, server.pid, args.hop_subscribers, rate=args.hop_rate,
                        count=args.hop_count)
                    pub.close()
                finally:
                    await pool.close()
        finally:
            r["server_alive"] = server.alive()
            server.stop()
            server.cleanup()
        out[setup] = r
        la = r.get("light_latency", {})
        print(f"  {setup:<9} single {r['single']['publications_per_s']:>7,}/s "
              f"(server CPU {r['single']['server_cpu_pct']}%, publisher "
              f"{r['single']['publisher_cpu_pct']}%), batch of {args.batch} "
              f"{r['batch']['publications_per_s']:>7,}/s (server CPU "
              f"{r['batch']['server_cpu_pct']}%), batch of {args.large_batch} "
              f"{r['batch_large']['publications_per_s']:>7,}/s (server CPU "
              f"{r['batch_large']['server_cpu_pct']}%)"
              + (f", light load p50 {la.get('p50_ms')} / p99 {la.get('p99_ms')} ms" if la
                 else ""))
    await common.flush_redis_prefix(common.REDIS_PREFIX.encode(), db=0)


async def run_fanout(args: argparse.Namespace, results: dict[str, Any]) -> None:
    out = results.setdefault("fanout", {})
    lat = {n: [(args.rate, args.latency_count)] for n in args.subscribers}
    for setup in ("memory-1", "redis-2"):
        await common.flush_redis_prefix(common.REDIS_PREFIX.encode(), db=0)
        out[setup] = await common.run_server_suite(
            lambda setup=setup: hub(setup), fanout_ws.ws_target, fanout_ws.api_publisher,
            sorted(args.subscribers), duration=args.duration, window=200, latency_at=lat,
            profile_at=args.profile)
    # The harness's ceiling at the same points: a bare uvloop broadcast server (no protocol,
    # no broker) with the same clients and publisher. Its latency at 100 msg/s is what the
    # subscriber processes and the machine leave for any server.
    out["baseline"] = await common.run_server_suite(
        common.baseline_server, fanout_ws.ws_target, fanout_ws.api_publisher,
        sorted(args.subscribers), duration=args.duration, window=200, latency_at=lat)
    if not args.no_peer:
        pn = args.peer_subscribers
        out["channels-redis"] = await common.run_server_suite(
            lambda: common.channels_server("redis"), fanout_ws.channels_target,
            fanout_ws.api_publisher, [pn], duration=10, window=10, batch=5,
            latency_at={pn: [(1.0, 8)]}, drain_timeout=30, warmup_timeout=60,
            before_start=common.flush_redis_prefix)
        await common.flush_redis_prefix()


async def main(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {"args": vars(args)}
    t0 = time.time()
    print(f"Scale-out benchmark: {', '.join(args.only)}  (machine: {os.cpu_count()} CPUs)")
    await common.note_background(results)
    if "publish" in args.only:
        await run_publish(args, results)
    if "fanout" in args.only:
        await run_fanout(args, results)
    results["seconds"] = round(time.time() - t0, 1)
    saved = os.path.join(common.BENCH_DIR, "results", "scaleout.json")
    if len(args.only) == 1 and os.path.exists(saved):  # noqa: ASYNC240 - once, at the end
        # A run of one part keeps the other part's last figures in the summary.
        with open(saved) as f:  # noqa: ASYNC230
            old = json.load(f)
        other = "fanout" if args.only == ["publish"] else "publish"
        if other in old:
            results[other] = old[other]
            results["args"] = {**old.get("args", {}), **results["args"], "only": ["publish",
                                                                                "fanout"]}
    print_report(results)
    print("saved", lc.save_result("scaleout", results))
    return 0


HEADER = common.HEADER


def _met(ok: bool, value: Any) -> str:
    return "n/a" if value is None else "yes" if ok else "NO"


def report_rows(results: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
    g = common.get
    a = argparse.Namespace(**results["args"])
    rows: list[list[Any]] = []
    problems: list[str] = []
    pub = results.get("publish") or {}
    mem = pub.get("memory-1", {})
    for setup in ("redis-1", "redis-2"):
        r = pub.get(setup, {})
        label = "1 process" if setup == "redis-1" else "--workers 2"
        for kind in ("single", "batch", "batch_large"):
            c = g(r, kind, "publications_per_s")
            m = g(mem, kind, "publications_per_s")
            what = {"single": "single publishes", "batch": f"/api/batch of {a.batch}",
                    "batch_large": f"/api/batch of {getattr(a, 'large_batch', 100)}, "
                                   "8 connections"}[kind]
            target = ">= 50,000/s" if kind != "single" and setup == "redis-1" else ""
            rows.append([f"Redis publications/s, {what} ({label})", lc.fmt_num(c),
                         "memory broker, 1 process", lc.fmt_num(m),
                         f"{c / m:.2f}x" if c and m else "-", target,
                         _met(c is not None and c >= 50_000, c) if target else ""])
    rl = g(pub, "redis-1", "light_latency") or {}
    ml = g(mem, "light_latency") or {}
    hop = (rl["p50_ms"] - ml["p50_ms"]) if rl.get("p50_ms") and ml.get("p50_ms") else None
    rows.append([f"publish-to-deliver p50/p99 ms, {a.hop_subscribers} subs, {a.hop_rate:g}/s "
                 "(Redis)", fanout_ws._pp(rl), "memory broker", fanout_ws._pp(ml),
                 f"hop +{hop:.1f} ms p50" if hop is not None else "-", "hop <= 2 ms p50",
                 _met(hop is not None and hop <= 2, hop)])
    fan = results.get("fanout") or {}
    r2, m1 = fan.get("redis-2", {}), fan.get("memory-1", {})
    for n in sorted(a.subscribers):
        c = g(r2, "runs", str(n), "throughput", "deliveries_per_s")
        m = g(m1, "runs", str(n), "throughput", "deliveries_per_s")
        ratio = c / m if c and m else None
        target = ">= 1.3x one process" if n == 10000 else ""
        rows.append([f"WS deliveries/s @ {n:,} subs (--workers 2, Redis)", lc.fmt_num(c),
                     "1 process, memory", lc.fmt_num(m), f"{ratio:.2f}x" if ratio else "-",
                     target, _met(ratio is not None and ratio >= 1.3, ratio) if target else ""])
        cl = common.latency_of(g(r2, "runs", str(n)), a.rate)
        ml2 = common.latency_of(g(m1, "runs", str(n)), a.rate)
        target = "p99 <= 50 ms" if n == 5000 else ""
        p99 = cl.get("p99_ms")
        rows.append([f"WS p50 / p99 ms @ {n:,} subs, {a.rate:g} msg/s (--workers 2, Redis)",
                     fanout_ws._pp(cl), "1 process, memory", fanout_ws._pp(ml2), "", target,
                     _met(p99 is not None and p99 <= 50, p99) if target else ""])
        base = fan.get("baseline")
        if base:
            bl = common.latency_of(g(base, "runs", str(n)), a.rate)
            bd = g(base, "runs", str(n), "throughput", "deliveries_per_s")
            rows.append([f"  harness ceiling @ {n:,} subs: deliveries/s; p50 / p99 ms",
                         "", "bare uvloop broadcast", f"{lc.fmt_num(bd)}; {fanout_ws._pp(bl)}",
                         "", "", ""])
    peer = fan.get("channels-redis")
    if peer:
        pn = str(a.peer_subscribers)
        p = g(peer, "runs", pn, "throughput", "deliveries_per_s")
        best = max((g(r2, "runs", str(n), "throughput", "deliveries_per_s") or 0)
                   for n in a.subscribers) or None
        ratio = best / p if best and p else None
        rows.append([f"WS deliveries/s, --workers 2 Redis (best) vs channels_redis @ "
                     f"{int(pn):,} subs", lc.fmt_num(best), "channels-redis", lc.fmt_num(p),
                     f"{ratio:,.0f}x" if ratio else "-", ">= 100x Channels",
                     _met(ratio is not None and ratio >= 100, ratio)])
        pl = common.latency_of(g(peer, "runs", pn), 1.0)
        rows.append([f"channels_redis p50 / p99 ms @ {int(pn):,} subs, 1 msg/s", "",
                     "channels-redis", fanout_ws._pp(pl), "", "", ""])
    for name, res in [*((f"publish {k}", v) for k, v in pub.items()),
                      *((f"fanout {k}", v) for k, v in fan.items())]:
        if res.get("error"):
            problems.append(f"scaleout {name}: {res['error'].splitlines()[0]}")
        for kind in ("single", "batch", "batch_large"):
            if g(res, kind, "errors"):
                problems.append(f"scaleout {name} {kind}: {res[kind]['errors']}")
        for n, run in (res.get("runs") or {}).items():
            e = common.summarize_errors(run)
            if e:
                problems.append(f"scaleout {name} @ {int(n):,}: {e}")
    return rows, problems


def print_report(results: dict[str, Any]) -> None:
    rows, problems = report_rows(results)
    lc.print_table("Scale-out: Redis broker, --workers 2, Django Channels", HEADER, rows)
    for p in problems:
        print("  -", p)


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=["publish", "fanout"],
                    default=["publish", "fanout"])
    ap.add_argument("--seconds", type=float, default=5.0, help="per publication-rate point")
    ap.add_argument("--connections", type=int, default=32, help="single-publish connections")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--large-batch", type=int, default=100,
                    help="the second batch size, on 8 connections")
    ap.add_argument("--hop-subscribers", type=int, default=100)
    ap.add_argument("--hop-rate", type=float, default=20.0)
    ap.add_argument("--hop-count", type=int, default=200)
    ap.add_argument("--subscribers", type=int, nargs="+", default=[5000, 10000])
    ap.add_argument("--duration", type=float, default=5.0, help="fan-out throughput seconds")
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--latency-count", type=int, default=300)
    ap.add_argument("--peer-subscribers", type=int, default=1000)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--profile", type=int, nargs="*", default=[], metavar="SUBS")
    args = ap.parse_args()
    sys.exit(common.run_main(main(args)))


if __name__ == "__main__":
    cli()
