"""HTTP-stream fan-out: Clarion's /connection/stream vs Pushpin (http-stream GRIP hold), in
the same run and harness.

Clarion: subscribers ``GET /connection/stream?channel=bench:fan`` (chunked NDJSON, one line
per publication); publish via ``POST /api/batch`` (20 per batch) / ``POST /api/publish``.
Pushpin: ``pushpin --config`` with its own temp config (ports, run dir, routes to a tiny GRIP
origin that answers ``Grip-Hold: stream`` / ``Grip-Channel: fan``); publish via
``POST http://127.0.0.1:PUBLISHPORT/publish/`` with http-stream items (20 per request).
Both count ``"pub":`` in each delivered line.

    python bench/fanout_stream.py --subscribers 1000 5000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import loadclient as lc

KNOWN_PUSHPIN = {1000: 440_000, 5000: 170_000}
KNOWN_PUSHPIN_P50_MS = {1000: 40}


def clarion_target(s: common.Server) -> lc.Target:
    return lc.Target(
        common.HOST,
        s.port,
        "/connection/stream?channel=bench:fan",
        mode="stream",
        init_frame=None,
        ready_marker=b'"connect"',
        centrifugo_pings=False,
    )


def pushpin_target(s: common.Server) -> lc.Target:
    assert isinstance(s, common.PushpinServer)
    return lc.Target(
        common.HOST,
        s.http_port,
        "/stream",
        mode="stream",
        init_frame=None,
        ready_marker=b"ready",
        centrifugo_pings=False,
    )


async def main(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {"args": vars(args)}
    which = args.only or ["clarion", "pushpin"]
    t0 = time.time()
    print(f"HTTP-stream fan-out benchmark: {', '.join(which)}")
    await common.note_background(results)
    lat: dict[int, list[tuple[float, int]]] = {}
    for n, rate, count in parse_points(args.latency):
        lat.setdefault(n, []).append((rate, count))
    if "clarion" in which:
        ok, why = common.clarion_available()
        if not ok:
            print(f"  !! Clarion hub not available: {why}")
            results["clarion"] = {"error": f"hub not available: {why}"}
        else:
            results["clarion"] = await common.run_server_suite(
                common.clarion_server,
                clarion_target,
                lambda s: lc.CentrifugoApiPublisher(lc.HttpClient(common.HOST, s.port)),
                sorted(args.subscribers),
                duration=args.duration,
                window=args.window,
                latency_at=lat,
                publish_concurrency=args.publish_concurrency,
            )
    if "pushpin" in which:
        ok, why = common.pushpin_available()
        if not ok:
            print(f"  !! Pushpin not available: {why}")
            results["pushpin"] = {"error": why}
        else:
            results["pushpin"] = await common.run_server_suite(
                common.PushpinServer,
                pushpin_target,
                lambda s: lc.PushpinPublisher(lc.HttpClient(common.HOST, s.port)),
                sorted(args.subscribers),
                duration=args.duration,
                window=args.window,
                latency_at=lat,
                # bursts of hundreds of concurrent new streams make pushpin-proxy answer 502
                connect_concurrency=20,
                publish_concurrency=args.publish_concurrency,
            )
    results["seconds"] = round(time.time() - t0, 1)
    print_report(results)
    print("saved", lc.save_result("fanout_stream", results))
    return 0


HEADER = common.HEADER


def report_rows(results: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
    g = common.get
    a = argparse.Namespace(**results["args"])
    cl, pp = results.get("clarion", {}), results.get("pushpin", {})
    rows = []
    for n in sorted(a.subscribers):
        c = g(cl, "runs", str(n), "throughput", "deliveries_per_s")
        p = g(pp, "runs", str(n), "throughput", "deliveries_per_s")
        known = KNOWN_PUSHPIN.get(n)
        rows.append([f"stream deliveries/s @ {n:,} subs", lc.fmt_num(c), "Pushpin",
                     lc.fmt_num(p) + (f" (seen before ~{known:,})" if known else ""),
                     f"{c / p:.2f}x" if c and p else "-", ">= Pushpin",
                     ("yes" if c >= p else "NO") if c and p else "n/a"])  # fmt: skip
    for n, rate, _ in parse_points(a.latency):
        c = common.latency_of(g(cl, "runs", str(n)), rate)
        p = common.latency_of(g(pp, "runs", str(n)), rate)
        cp, pq = c.get("p50_ms"), p.get("p50_ms")
        known = KNOWN_PUSHPIN_P50_MS.get(n)
        rows.append([f"stream p50 / p99 ms @ {n:,} subs, {rate:g} msg/s", _pp(c),
                     "Pushpin", _pp(p) + (f" (p50 seen before ~{known})" if known else ""),
                     f"{pq / cp:.1f}x lower p50" if cp and pq else "-", "p50 <= Pushpin",
                     ("yes" if cp <= pq else "NO") if cp and pq else "n/a"])  # fmt: skip
    problems = []
    for name, res in (("clarion", cl), ("pushpin", pp)):
        if res.get("error"):
            problems.append(f"{name}: {res['error'].splitlines()[0]}")
        for n, run in (res.get("runs") or {}).items():
            e = common.summarize_errors(run)
            if e:
                problems.append(f"{name} (stream) @ {int(n):,}: {e}")
    return rows, problems


def print_report(results: dict[str, Any]) -> None:
    rows, problems = report_rows(results)
    lc.print_table(
        "HTTP-stream fan-out (100-byte messages; latency = publish to last delivery)",
        HEADER,
        rows,
    )
    if problems:
        print("Problems seen:")
        for p in problems:
            print("  -", p)


def parse_points(points: list[str]) -> list[tuple[int, float, int]]:
    out = []
    for p in points:
        n, rate, count = p.split(":")
        out.append((int(n), float(rate), int(count)))
    return out


def _pp(la: dict[str, Any]) -> str:
    if not la or la.get("p50_ms") is None:
        return "-"
    return f"{la['p50_ms']:.1f} / {la['p99_ms']:.1f}"


def cli() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--subscribers", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--only", nargs="+", choices=["clarion", "pushpin"])
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--window", type=int, default=100, help="max publications in flight")
    ap.add_argument(
        "--publish-concurrency",
        type=int,
        default=4,
        help="concurrent publish requests in throughput mode",
    )
    ap.add_argument(
        "--latency",
        nargs="*",
        default=["1000:10:60", "5000:2:12"],
        metavar="SUBS:RATE:COUNT",
        help="paced latency points (default: 1000:10:60 5000:2:12; Pushpin's publish endpoint "
        "takes one connection per request and falls far behind at 5,000 x 10/s here)",
    )
    args = ap.parse_args()
    sys.exit(common.run_main(main(args)))


if __name__ == "__main__":
    cli()
