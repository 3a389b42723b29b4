"""WebSocket fan-out: Clarion hub vs Django Channels (uvicorn; in-memory and Redis layers),
with the bare uvloop broadcast server as the ceiling, all in the same run and harness.

Every subscriber connects to ``/connection/websocket``, connects+subscribes to ``bench:fan``
and counts ``"pub":`` in what it receives.  Throughput: batches of 20 publications via
``POST /api/batch``, at most ``--window`` messages in flight (not yet seen by the slowest
subscriber), deliveries/s measured in steady state.  Latency: single ``POST /api/publish`` at
a paced rate; publish-to-last-delivery per message, p50/p99 over messages.

    python bench/fanout_ws.py --subscribers 1000 5000 10000
    python bench/fanout_ws.py --only clarion --subscribers 5000
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

ALL = ["clarion", "baseline", "channels-memory", "channels-redis", "daphne-memory", "daphne-redis"]
DEFAULT = ["clarion", "baseline", "channels-memory", "channels-redis"]
# figures seen on this machine before this harness existed (printed for reference only)
KNOWN_CHANNELS = {"channels-memory": 2_800, "channels-redis": 4_400}


def ws_target(s: common.Server) -> lc.Target:
    return lc.Target(common.HOST, s.port, "/connection/websocket")


def channels_target(s: common.Server) -> lc.Target:
    return lc.Target(
        common.HOST,
        s.port,
        "/connection/websocket",
        init_frame=None,
        ready_marker=b'"ready"',
        centrifugo_pings=False,
    )


def api_publisher(s: common.Server) -> lc.CentrifugoApiPublisher:
    return lc.CentrifugoApiPublisher(lc.HttpClient(common.HOST, s.port))


async def main(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {"args": vars(args)}
    which = args.only or DEFAULT
    t_start = time.time()
    print(f"WebSocket fan-out benchmark: {', '.join(which)}  (machine: {os.cpu_count()} CPUs)")

    await common.note_background(results)
    floor = common.loopback_write_floor()
    results["loopback_write_us"] = round(floor, 2)
    print(
        f"  machine floor: one 150-byte loopback TCP write costs {floor:.1f} us, so one process "
        f"needs >= {floor * 5:.0f} ms to reach 5,000 sockets once"
    )
    main_lat = {
        n: [(args.latency_rate, args.latency_count)]
        + ([(args.low_rate, args.low_count)] if args.low_rate else [])
        for n in args.latency_at
    }
    pn = args.peer_subscribers
    peer_lat = [(args.peer_latency_rate, args.peer_latency_count)]

    if "clarion" in which:
        ok, why = common.clarion_available()
        if not ok:
            print(f"  !! Clarion hub not available: {why}")
            results["clarion"] = {"error": f"hub not available: {why}"}
        else:
            lat = {n: list(v) for n, v in main_lat.items()}
            lat.setdefault(pn, []).extend(peer_lat)
            with_peers = bool(set(which) - {"clarion", "baseline"})
            counts = sorted(set(args.subscribers) | ({pn} if with_peers else set()))
            results["clarion"] = await common.run_server_suite(
                common.clarion_server, ws_target, api_publisher, counts,
                duration=args.duration, window=args.window, latency_at=lat,
                profile_at=args.profile, publish_concurrency=args.publish_concurrency,
            )  # fmt: skip
    if "baseline" in which:
        results["baseline"] = await common.run_server_suite(
            common.baseline_server, ws_target, api_publisher, sorted(args.subscribers),
            duration=args.duration, window=args.window, latency_at=main_lat,
            publish_concurrency=args.publish_concurrency,
        )  # fmt: skip
    for name in which:
        if not name.startswith(("channels-", "daphne-")):
            continue
        runner, layer = name.split("-")
        runner = "uvicorn" if runner == "channels" else "daphne"
        results[name] = await common.run_server_suite(
            lambda layer=layer, runner=runner: common.channels_server(layer, runner),
            channels_target,
            api_publisher,
            [pn],
            duration=args.peer_duration,
            window=args.peer_window,
            batch=args.peer_batch,
            latency_at={pn: peer_lat},
            drain_timeout=30,
            warmup_timeout=60,
            before_start=common.flush_redis_prefix if layer == "redis" else None,
        )
        if layer == "redis":
            await common.flush_redis_prefix()

    results["seconds"] = round(time.time() - t_start, 1)
    print_report(results)
    print("saved", lc.save_result("fanout_ws", results))
    return 0


HEADER = common.HEADER


def report_rows(results: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
    """Table rows and problems from a saved/in-memory result (used by bench/summary.py)."""
    g = common.get
    a = argparse.Namespace(**results["args"])
    cl = results.get("clarion", {})
    base = results.get("baseline", {})
    peers = [(n, results[n]) for n in ALL if n.startswith(("channels-", "daphne-"))
             and n in results]  # fmt: skip
    rows: list[list[Any]] = []
    pn = str(a.peer_subscribers)

    def dps(res: dict[str, Any], n: Any) -> Any:
        return g(res, "runs", str(n), "throughput", "deliveries_per_s")

    def lat(res: dict[str, Any], n: Any, rate: float) -> dict[str, Any]:
        return common.latency_of(g(res, "runs", str(n)), rate)

    c = dps(cl, pn)
    for name, pr in peers:
        p = dps(pr, pn)
        r = (c / p) if c and p else None
        known = KNOWN_CHANNELS.get(name)
        rows.append([f"WS deliveries/s @ {int(pn):,} subs", lc.fmt_num(c), name, lc.fmt_num(p)
                     + (f" (seen before ~{known:,})" if known else ""),
                     f"{r:,.0f}x" if r else "-", ">= 100x Channels",
                     _met(r is not None and r >= 100, r)])  # fmt: skip
    for n in sorted(a.subscribers):
        c = dps(cl, n)
        b = dps(base, n)
        target = ">= 300,000/s" if n == 5000 else ""
        met = _met(c is not None and c >= 300_000, c) if n == 5000 else ""
        pct = f"{c / b:.0%} of ceiling" if c and b else "-"
        rows.append([f"WS deliveries/s @ {n:,} subs", lc.fmt_num(c), "bare uvloop (ceiling)",
                     lc.fmt_num(b), pct, target, met])  # fmt: skip
    pr_rate = a.peer_latency_rate
    c = lat(cl, pn, pr_rate)
    for name, pr in peers:
        p = lat(pr, pn, pr_rate)
        r = (p.get("p50_ms") / c.get("p50_ms")) if c.get("p50_ms") and p.get("p50_ms") else None
        rows.append([f"WS p50 / p99 ms @ {int(pn):,} subs, {pr_rate:g} msg/s", _pp(c), name,
                     _pp(p), f"{r:,.0f}x lower p50" if r else "-", "", ""])  # fmt: skip
    rates = [a.latency_rate] + ([a.low_rate] if getattr(a, "low_rate", 0) else [])
    for n in sorted(a.latency_at):
        for rate in rates:
            c = lat(cl, n, rate)
            b = lat(base, n, rate)
            target = "p99 <= 50 ms" if n == 5000 and rate == 100 else ""
            p99 = c.get("p99_ms")
            met = _met(p99 is not None and p99 <= 50, p99) if target else ""
            rows.append([f"WS p50 / p99 ms @ {n:,} subs, {rate:g} msg/s", _pp(c),
                         "bare uvloop (ceiling)", _pp(b), "", target, met])  # fmt: skip
    problems = []
    for name in ["clarion", "baseline"] + [n for n, _ in peers]:
        res = results.get(name) or {}
        if res.get("error"):
            problems.append(f"{name}: {res['error'].splitlines()[0]}")
        for n, run in (res.get("runs") or {}).items():
            e = common.summarize_errors(run)
            if e:
                problems.append(f"{name} @ {int(n):,}: {e}")
    return rows, problems


def print_report(results: dict[str, Any]) -> None:
    rows, problems = report_rows(results)
    lc.print_table(
        "WebSocket fan-out (100-byte messages; deliveries/s = all deliveries / first publish to "
        "last delivery; latency = publish to last delivery)",
        HEADER,
        rows,
    )
    if problems:
        print("Problems seen:")
        for p in problems:
            print("  -", p)
    print(
        "Notes: server CPU %, client CPU % and machine CPU per run are in the JSON; this machine "
        f"has {os.cpu_count()} CPUs shared by the server, the subscriber processes and the "
        "publisher."
    )
    us = results.get("loopback_write_us")
    if us:
        print(
            f"Machine floor: a loopback TCP write costs {us:.1f} us here, so one process needs "
            f">= {us * 5:.0f} ms to write one message to 5,000 sockets (before any client reads)."
        )


def _pp(la: dict[str, Any]) -> str:
    if not la or la.get("p50_ms") is None:
        return "-"
    return f"{la['p50_ms']:.1f} / {la['p99_ms']:.1f}"


def _met(ok: bool, value: Any) -> str:
    if value is None:
        return "n/a"
    return "yes" if ok else "NO"


def cli() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--subscribers", type=int, nargs="+", default=[1000, 5000, 10000])
    ap.add_argument("--only", nargs="+", choices=ALL, help=f"servers to run (default {DEFAULT})")
    ap.add_argument("--duration", type=float, default=8.0, help="throughput seconds per point")
    ap.add_argument("--window", type=int, default=200, help="max publications in flight")
    ap.add_argument(
        "--publish-concurrency",
        type=int,
        default=4,
        help="concurrent /api/batch requests in throughput mode (each on its own connection)",
    )
    ap.add_argument("--latency-at", type=int, nargs="*", default=[1000, 5000])
    ap.add_argument("--latency-rate", type=float, default=100.0)
    ap.add_argument("--latency-count", type=int, default=500)
    ap.add_argument(
        "--low-rate", type=float, default=10.0, help="second latency point at this rate (0: none)"
    )
    ap.add_argument("--low-count", type=int, default=50)
    ap.add_argument(
        "--profile",
        type=int,
        nargs="*",
        default=[],
        metavar="SUBS",
        help="py-spy the hub during the throughput phase at these subscriber counts "
        "(bench/results/profile-clarion-SUBS.svg)",
    )
    ap.add_argument("--peer-subscribers", type=int, default=1000)
    ap.add_argument("--peer-duration", type=float, default=10.0)
    ap.add_argument("--peer-batch", type=int, default=5, help="publications per /api/batch")
    ap.add_argument("--peer-window", type=int, default=10)
    ap.add_argument("--peer-latency-rate", type=float, default=1.0)
    ap.add_argument("--peer-latency-count", type=int, default=8)
    args = ap.parse_args()
    sys.exit(common.run_main(main(args)))


if __name__ == "__main__":
    cli()
