"""Publish-to-deliver latency for the two ways applications publish, side by side.

* **separate**: as applications really publish (``cent``, httpx or the Django helpers from
  many web workers): each publication is its own ``POST /api/publish`` on one of
  ``--connections`` keep-alive connections, the publisher waits for each answer before it
  reuses that connection, no pipelining.  A publication whose turn comes while every
  connection is busy waits for one (as a web worker would), and that wait counts.
* **pipelined**: every publication on one keep-alive connection, HTTP/1.1 pipelining (what
  ``bench/fanout_ws.py`` measures).

Both at a paced rate, against one hub with ``--subscribers`` WebSocket subscribers; latency of
a publication = its send time to its delivery to the slowest subscriber; p50/p99 over all of
them, plus the p50 of the first and last quarter and how long after the last send the last
delivery came (a backlog that grows shows as a last quarter much slower than the first).

    python bench/publish_styles.py --subscribers 5000 --rates 10 20 40 100
    python bench/publish_styles.py --broker redis --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import loadclient as lc

STYLES = ["separate", "pipelined"]


class SeparatePublisher(lc.CentrifugoApiPublisher):
    """One publication per request on a pool of keep-alive connections, no pipelining."""

    def __init__(self, http: lc.HttpClient, connections: int) -> None:
        super().__init__(http)
        self.connections = connections
        self._tasks: set[asyncio.Task[None]] = set()
        self._free: asyncio.Queue[lc.HttpClient] = asyncio.Queue()
        self.waited = 0  # publications that found every connection busy

    async def start_paced(self) -> None:
        # Opened (and used once) beforehand: connection set-up is no part of the latency.
        clients = [lc.HttpClient(self.http.host, self.http.port) for _ in range(self.connections)]
        await asyncio.gather(*(c.request("GET", "/health") for c in clients))
        for c in clients:
            self._free.put_nowait(c)

    async def _send(self, seq: int, ts: float) -> None:
        if self._free.empty():
            self.waited += 1
        http = await self._free.get()
        path, body, headers = self._one_request(seq, ts)
        try:
            status, resp = await http.request("POST", path, body, headers)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
            http.close()
            self._err(f"publish request failed: {type(e).__name__}: {e}"[:160])
            status, resp = 599, b""
        finally:
            self._free.put_nowait(http)
        self._check(status, resp)

    async def one_nowait(self, seq: int, ts: float) -> None:
        task = asyncio.create_task(self._send(seq, ts))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop_paced(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=60)
        while not self._free.empty():
            self._free.get_nowait().close()

    def close(self) -> None:
        super().close()
        while not self._free.empty():
            self._free.get_nowait().close()


def hub_server(broker: str, workers: int) -> common.Server:
    return common.clarion_server(
        extra_config=common.redis_broker_config() if broker == "redis" else "",
        extra_args=["--workers", str(workers)] if workers > 1 else [])


async def run_point(pool: lc.SubscriberPool, server: common.Server, style: str, rate: float,
                    count: int, connections: int, subscribers: int) -> dict[str, Any]:
    http = lc.HttpClient(common.HOST, server.port)
    pub: lc.CentrifugoApiPublisher = (SeparatePublisher(http, connections) if style == "separate"
                                      else lc.CentrifugoApiPublisher(http))
    try:
        res = await lc.run_latency(pool, pub, server.pid, subscribers, rate=rate, count=count,
                                   drain_timeout=60, keep_samples=True)
    finally:
        pub.close()
    samples = res.pop("samples", [])
    q = max(1, len(samples) // 4)
    res["style"] = style
    res["p50_first_quarter_ms"] = _median(samples[:q])
    res["p50_last_quarter_ms"] = _median(samples[-q:])
    res["publish_errors"] = dict(pub.errors)
    if isinstance(pub, SeparatePublisher):
        res["connections"] = connections
        res["waited_for_connection"] = pub.waited
    return res


def _median(xs: list[float]) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[len(s) // 2], 2)


async def main(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {"args": vars(args), "runs": {}}
    t_start = time.time()
    print(f"Publishing styles: {args.subscribers:,} subscribers, rates {args.rates}, "
          f"broker {args.broker}, {args.workers} worker(s)  (machine: {os.cpu_count()} CPUs)")
    await common.note_background(results)
    if args.broker == "redis":
        await common.flush_redis_prefix(common.REDIS_PREFIX.encode(), db=0)
    server = hub_server(args.broker, args.workers)
    try:
        await server.start()
    except RuntimeError as e:
        results["error"] = str(e)
        print(f"  !! {e}")
        lc.save_result(args.name, results)
        return 1
    pool = lc.SubscriberPool()
    try:
        info = await pool.start(lc.Target(common.HOST, server.port, "/connection/websocket"),
                                args.subscribers)
        results["connect"] = info
        warm = lc.CentrifugoApiPublisher(lc.HttpClient(common.HOST, server.port))
        results["warmup"] = await lc.sync_warmup(pool, warm.one, 30)
        warm.close()
        for rate in args.rates:
            count = max(args.min_count, int(rate * args.seconds))
            for style in args.styles:
                r = await run_point(pool, server, style, rate, count, args.connections,
                                    args.subscribers)
                results["runs"][f"{style}@{rate:g}"] = r
                print(f"  {style:<9} {rate:>5g}/s: p50 {r['p50_ms']} / p99 {r['p99_ms']} ms, "
                      f"first/last quarter p50 {r['p50_first_quarter_ms']} / "
                      f"{r['p50_last_quarter_ms']} ms, server CPU {r['server_cpu_pct']}%"
                      + ("" if r["complete"] else "  !! not all delivered"))
    finally:
        await pool.close()
        results["server_alive"] = server.alive()
        results["log_tail"] = server.log_tail(30)
        server.stop()
        server.cleanup()
    results["seconds"] = round(time.time() - t_start, 1)
    print_report(results)
    print("saved", lc.save_result(args.name, results))
    return 0


HEADER = common.HEADER


def report_rows(results: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
    a = argparse.Namespace(**results["args"])
    runs = results.get("runs", {})
    rows: list[list[Any]] = []
    problems: list[str] = []
    setup = f"{a.broker}{', ' + str(a.workers) + ' workers' if a.workers > 1 else ''}"
    for rate in a.rates:
        s = runs.get(f"separate@{rate:g}", {})
        p = runs.get(f"pipelined@{rate:g}", {})
        target = "p99 <= 50 ms" if rate == 100 and a.subscribers == 5000 else ""
        p99 = s.get("p99_ms")
        met = ("n/a" if p99 is None else "yes" if p99 <= 50 else "NO") if target else ""
        rows.append([f"separate requests p50/p99 ms @ {a.subscribers:,} subs, {rate:g}/s "
                     f"({setup})", _pp(s), "same hub, one pipelined connection", _pp(p),
                     _growth(s), target, met])
        for style, r in (("separate", s), ("pipelined", p)):
            if r and not r.get("complete"):
                problems.append(f"publish_styles {style}@{rate:g}/s: not all delivered")
            if r.get("publish_errors"):
                problems.append(f"publish_styles {style}@{rate:g}/s: {r['publish_errors']}")
    if results.get("error"):
        problems.append(f"publish_styles: {results['error'].splitlines()[0]}")
    return rows, problems


def _pp(r: dict[str, Any]) -> str:
    if not r or r.get("p50_ms") is None:
        return "-"
    return f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}"


def _growth(r: dict[str, Any]) -> str:
    a, b = r.get("p50_first_quarter_ms"), r.get("p50_last_quarter_ms")
    if a is None or b is None:
        return "-"
    return f"quarters {a:.0f}->{b:.0f} ms"


def print_report(results: dict[str, Any]) -> None:
    rows, problems = report_rows(results)
    lc.print_table("Publishing styles (separate requests vs one pipelined connection)", HEADER,
                   rows)
    for p in problems:
        print("  -", p)


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscribers", type=int, default=5000)
    ap.add_argument("--rates", type=float, nargs="+", default=[10, 20, 40, 100])
    ap.add_argument("--styles", nargs="+", choices=STYLES, default=STYLES)
    ap.add_argument("--seconds", type=float, default=5.0, help="publishing time per point")
    ap.add_argument("--min-count", type=int, default=50)
    ap.add_argument("--connections", type=int, default=32,
                    help="publisher connections for the separate style")
    ap.add_argument("--broker", choices=["memory", "redis"], default="memory")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--name", default="publish_styles", help="bench/results/NAME.json")
    args = ap.parse_args()
    sys.exit(common.run_main(main(args)))


if __name__ == "__main__":
    cli()
