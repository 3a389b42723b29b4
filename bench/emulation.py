"""Emulated HTTP-streaming fan-out (Centrifugo's bidirectional emulation, what the SDKs fall
back to when WebSockets are refused) against WebSocket fan-out, same hub build, same run and
harness.

Both kinds of subscriber send ``connect`` and ``subscribe bench:fan`` in their first request
(the WebSocket's first frame; the body of ``POST /connection/http_stream``, which the protocol
allows) and count ``"pub":`` in what they receive: WebSocket frames or ``\\n``-separated JSON
lines in a chunked response. Publications go through ``POST /api/batch`` (20 per batch), at
most ``--window`` in flight; deliveries/s in steady state, as bench/fanout_ws.py measures.
Pings are off in both hubs (``ping_interval = 0``): an emulated pong is a POST to
``/emulation``, which this load client does not send.

    python bench/emulation.py --subscribers 1000
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

EXTRA_CONFIG = "ping_interval = 0"
FIRST_COMMANDS = b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"bench:fan"}}'


STREAM_PATH = "/connection/http_stream"


def ws_target(s: common.Server) -> lc.Target:
    return lc.Target(common.HOST, s.port, "/connection/websocket")


def http_stream_target(s: common.Server) -> lc.Target:
    """``POST /connection/http_stream`` with the first commands as its body."""
    return lc.Target(common.HOST, s.port, STREAM_PATH, mode="stream", init_frame=None,
                     ready_marker=b'"id":2', centrifugo_pings=False, method="POST",
                     body=FIRST_COMMANDS,
                     extra_headers=(("Content-Type", "application/json"),))


def api_publisher(s: common.Server) -> lc.CentrifugoApiPublisher:
    return lc.CentrifugoApiPublisher(lc.HttpClient(common.HOST, s.port))


def hub() -> common.Server:
    return common.clarion_server(extra_config=EXTRA_CONFIG)


async def main(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {"args": vars(args)}
    t0 = time.time()
    print(f"Emulated http_stream vs WebSocket fan-out  (machine: {os.cpu_count()} CPUs)")
    ok, why = common.clarion_available()
    if not ok:
        print(f"  !! Clarion hub not available: {why}")
        return 1
    await common.note_background(results)
    latency = {n: [(args.latency_rate, args.latency_count)] for n in args.subscribers}
    for name, target in (("websocket", ws_target), ("http_stream", http_stream_target)):
        print(f"-- {name}")
        results[name] = await common.run_server_suite(
            hub, target, api_publisher, sorted(args.subscribers), duration=args.duration,
            window=args.window, latency_at=latency,
            publish_concurrency=args.publish_concurrency)
    results["seconds"] = round(time.time() - t0, 1)
    print_report(results)
    print("saved", lc.save_result("emulation", results))
    return 0


def report_rows(results: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
    g = common.get
    a = argparse.Namespace(**results["args"])
    emu, ws = results.get("http_stream", {}), results.get("websocket", {})
    rows: list[list[Any]] = []
    for n in sorted(a.subscribers):
        e = g(emu, "runs", str(n), "throughput", "deliveries_per_s")
        w = g(ws, "runs", str(n), "throughput", "deliveries_per_s")
        rows.append([f"deliveries/s @ {n:,} subs", lc.fmt_num(e), "WebSocket (same hub)",
                     lc.fmt_num(w), f"{e / w:.0%} of WebSocket" if e and w else "-", "", ""])
        el = common.latency_of(g(emu, "runs", str(n)), a.latency_rate)
        wl = common.latency_of(g(ws, "runs", str(n)), a.latency_rate)
        rows.append([f"p50 / p99 ms @ {n:,} subs, {a.latency_rate:g} msg/s", _pp(el),
                     "WebSocket (same hub)", _pp(wl), "", "", ""])
    problems = []
    for name, res in (("http_stream", emu), ("websocket", ws)):
        if res.get("error"):
            problems.append(f"{name}: {res['error'].splitlines()[0]}")
        for n, run in (res.get("runs") or {}).items():
            err = common.summarize_errors(run)
            if err:
                problems.append(f"{name} @ {int(n):,}: {err}")
    return rows, problems


def _pp(lat: dict[str, Any]) -> str:
    p50, p99 = lat.get("p50_ms"), lat.get("p99_ms")
    return f"{p50:.1f} / {p99:.1f}" if p50 is not None and p99 is not None else "-"


def print_report(results: dict[str, Any]) -> None:
    rows, problems = report_rows(results)
    lc.print_table("Emulated http_stream fan-out vs WebSocket (100-byte messages; Clarion is "
                   "the http_stream column, the peer is WebSocket on the same hub)",
                   common.HEADER, rows)
    for p in problems:
        print("  problem:", p)


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subscribers", type=int, nargs="+", default=[1000])
    ap.add_argument("--duration", type=float, default=8.0, help="throughput seconds per point")
    ap.add_argument("--window", type=int, default=200, help="max publications in flight")
    ap.add_argument("--latency-rate", type=float, default=100.0)
    ap.add_argument("--latency-count", type=int, default=300)
    ap.add_argument("--publish-concurrency", type=int, default=4)
    args = ap.parse_args()
    sys.exit(common.run_main(main(args)))


if __name__ == "__main__":
    cli()
