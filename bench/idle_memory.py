"""Idle connection memory: N idle WebSocket connections (connect + subscribe), hub RSS delta
(VmRSS from /proc/PID/status, summed over the hub's worker processes if any) divided by N.

    python bench/idle_memory.py --connections 15000
    python bench/idle_memory.py --only clarion baseline channels-memory
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
from fanout_ws import channels_target, ws_target

CENTRIFUGO_KB = 27  # Centrifugo's own published figure per idle connection
TARGET_KB = 10


async def measure(
    server: common.Server, target: lc.Target, n: int, per_process: int, settle: float
) -> dict[str, Any]:
    out: dict[str, Any] = {"server": server.name, "connections": n}
    try:
        await server.start()
    except RuntimeError as e:
        return {**out, "error": str(e)}
    pool = lc.SubscriberPool()
    try:
        # warm-up: a few connections and a publish, so lazily built state is not counted
        warm = lc.SubscriberPool()
        await warm.start(target, 10, per_process=10)
        await warm.close()
        await asyncio.sleep(1.0)
        rss0 = lc.tree_rss_kb(server.pid)
        t0 = time.time()
        info = await pool.start(target, n, per_process=per_process, concurrency=100)
        out["connect"] = info
        out["connect_seconds"] = round(time.time() - t0, 1)
        await asyncio.sleep(settle)
        rss1 = lc.tree_rss_kb(server.pid)
        ok = info["ok"]
        rep = await pool.report()
        out.update(
            rss_kb_before=rss0,
            rss_kb_after=rss1,
            live_after_settle=rep["live"],
            closed_during_settle=rep["closed"],
            close_codes=rep["close_codes"],
            kb_per_connection=round((rss1 - rss0) / ok, 2) if ok else None,
            server_alive=server.alive(),
        )
    finally:
        await pool.close()
        out["log_tail"] = server.log_tail(30)
        server.stop()
        server.cleanup(keep_logs=not out.get("server_alive", False))
    return out


async def main(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {"args": vars(args)}
    which = args.only or ["clarion", "baseline"]
    n = args.connections
    print(f"Idle memory: {n:,} idle WebSocket connections (connect + subscribe)")
    await common.note_background(results)
    for name in which:
        if name == "clarion":
            ok, why = common.clarion_available()
            if not ok:
                results[name] = {"error": f"hub not available: {why}"}
                print(f"  !! Clarion hub not available: {why}")
                continue
            server = common.clarion_server()
        elif name == "baseline":
            server = common.baseline_server()
        else:
            server = common.channels_server(name.split("-", 1)[1])
        if name.startswith("channels-"):
            target = channels_target(server)
            if name == "channels-redis":
                await common.flush_redis_prefix()
        else:
            target = ws_target(server)
        r = await measure(server, target, n, args.per_process, args.settle)
        results[name] = r
        if name == "channels-redis":
            await common.flush_redis_prefix()
        msg = f"  {name:<16} {lc.fmt_num(r.get('kb_per_connection'), 2)} KB/connection"
        if "connect" in r:
            c = r["connect"]
            msg += f"  ({c['ok']:,} connected in {r['connect_seconds']} s; RSS "
            msg += f"{r['rss_kb_before'] / 1024:.1f} -> {r['rss_kb_after'] / 1024:.1f} MiB)"
            if c["failed"]:
                msg += f"\n    !! {c['failed']:,} failed: {c['connect_errors']}"
                msg += f" {c['handshake_errors']}"
            if r.get("closed_during_settle"):
                msg += f"\n    !! {r['closed_during_settle']} closed while idle: {r['close_codes']}"
        if r.get("error"):
            msg += f"\n    !! {r['error']}"
        print(msg, flush=True)

    print_report(results)
    print("saved", lc.save_result("idle_memory", results))
    return 0


HEADER = common.HEADER


def report_rows(results: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
    a = argparse.Namespace(**results["args"])
    n = a.connections
    which = a.only or ["clarion", "baseline"]
    cl = results.get("clarion", {})
    rows = []
    kb = cl.get("kb_per_connection")
    for name in which:
        if name == "clarion":
            continue
        p = results.get(name, {}).get("kb_per_connection")
        rows.append([f"KB per idle WS connection @ {n:,}", lc.fmt_num(kb, 2), name,
                     lc.fmt_num(p, 2), f"{kb / p:.1f}x" if kb and p else "-", "", ""])  # fmt: skip
    met = ("yes" if kb <= TARGET_KB else "NO") if kb else "n/a"
    rows.append([f"KB per idle WS connection @ {n:,}", lc.fmt_num(kb, 2), "Centrifugo (reported)",
                 f"~{CENTRIFUGO_KB}", f"{kb / CENTRIFUGO_KB:.2f}x" if kb else "-",
                 f"<= {TARGET_KB} KB", met])  # fmt: skip
    problems = []
    for name in which:
        r = results.get(name, {})
        if r.get("error"):
            problems.append(f"{name} (idle): {r['error'].splitlines()[0]}")
        c = r.get("connect") or {}
        if c.get("failed"):
            problems.append(
                f"{name} (idle): {c['failed']:,} of {n:,} failed to connect "
                f"{c.get('connect_errors')} {c.get('handshake_errors')}"
            )
        if r.get("closed_during_settle"):
            problems.append(
                f"{name} (idle): {r['closed_during_settle']} closed while idle "
                f"{r.get('close_codes')}"
            )
    return rows, problems


def print_report(results: dict[str, Any]) -> None:
    rows, problems = report_rows(results)
    lc.print_table("Idle connection memory (server RSS delta / connections)", HEADER, rows)
    if problems:
        print("Problems seen:")
        for p in problems:
            print("  -", p)


def cli() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--connections", type=int, default=15000)
    ap.add_argument("--per-process", type=int, default=2500)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds idle before reading RSS")
    ap.add_argument(
        "--only",
        nargs="+",
        choices=["clarion", "baseline", "channels-memory", "channels-redis"],
        help="servers (default: clarion baseline)",
    )
    args = ap.parse_args()
    sys.exit(common.run_main(main(args)))


if __name__ == "__main__":
    cli()
