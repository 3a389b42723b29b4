"""Print one summary table from bench/results/*.json (written by the benchmark scripts).

python bench/summary.py
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import django_publish
import fanout_stream
import fanout_ws
import grip_fanout
import idle_memory
import loadclient as lc
import publish_styles
import scaleout
import scaleout_stream

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


class _NginxRows:
    """bench/nginx.py keeps its comparison in results["summary"]: direct vs through nginx."""

    @staticmethod
    def report_rows(results: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
        summary = results.get("summary", {})
        rows: list[list[Any]] = []
        problems: list[str] = []
        # nginx-tls against both: the plain hub (TLS and proxying together) and the hub
        # serving TLS itself (what nginx in front costs a TLS deployment).
        for way, label, base_way in (
                ("nginx-plain", "through nginx, plain", "direct"),
                ("nginx-tls", "through nginx, TLS (shipped site)", "direct"),
                ("nginx-tls", "through nginx, TLS (shipped site)", "direct-tls")):
            r, base = summary.get(way), summary.get(base_way) or {}
            if not r or not base:
                if base_way == "direct" or "direct-tls" in summary:
                    problems.append(f"nginx: no {way} or {base_way} figure")
                continue
            ours, peer = r.get("deliveries_per_s"), base.get("deliveries_per_s")
            cost = 1 - ours / peer if ours and peer else None
            rows.append([f"WS deliveries/s @ 1,000 subs, {label}", lc.fmt_num(ours),
                         base_way, lc.fmt_num(peer),
                         f"{ours / peer:.2f}x" if ours and peer else "-", "cost <= 20%",
                         "-" if cost is None else ("yes" if cost <= 0.20 else "NO")])
        return rows, problems


def main() -> int:
    rows: list[list[object]] = []
    problems: list[str] = []
    stamps = []
    for name, mod in (
        ("fanout_ws", fanout_ws),
        ("fanout_stream", fanout_stream),
        ("idle_memory", idle_memory),
        ("grip_fanout", grip_fanout),
        ("publish_styles", publish_styles),
        ("publish_styles_redis2", publish_styles),
        ("scaleout", scaleout),
        ("scaleout_stream", scaleout_stream),
        ("django_publish", django_publish),
        ("nginx", _NginxRows),
    ):
        path = os.path.join(RESULTS, f"{name}.json")
        if not os.path.exists(path):
            problems.append(f"{name}: no results (bench/results/{name}.json missing)")
            continue
        with open(path) as f:
            res = json.load(f)
        stamps.append(f"{name} {res.get('time')}")
        bg = res.get("background_cpu", {}).get("busy_pct")
        if bg is not None and bg > 15:
            problems.append(f"{name}: machine was {bg:.0f}% busy before it started (noisy)")
        try:
            r, p = mod.report_rows(res)
        except (AttributeError, KeyError, TypeError) as e:
            problems.append(f"{name}: cannot read {path} ({e!r}); rerun that benchmark")
            continue
        rows += r
        problems += p
    lc.print_table("Clarion benchmark summary  (" + "; ".join(stamps) + ")", fanout_ws.HEADER, rows)
    if problems:
        print("Problems seen:")
        for p in problems:
            print("  -", p)
    try:
        with open(os.path.join(RESULTS, "fanout_ws.json")) as f:
            us = json.load(f).get("loopback_write_us")
    except (OSError, ValueError):
        us = None
    if us:
        print(
            f"Machine floor: a loopback TCP write costs {us:.1f} us here, so one process needs "
            f">= {us * 5:.0f} ms to write one message to 5,000 sockets."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
