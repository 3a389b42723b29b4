"""GRIP proxy: Clarion's Pushpin-compatible proxy vs Pushpin, same origin, same load client,
same machine, in one run.

Both proxies route every request to the same tiny origin program (bench/peers/grip_origin.py,
one process per proxy): a GET is answered ``Grip-Hold: stream`` + ``Grip-Channel: fan``, and a
WebSocket-over-HTTP ``OPEN`` is accepted with the ``grip`` extension and a ``c:`` subscribe to
``fan``.  Publications go to each proxy's ``POST /publish/`` (Pushpin's control API format).
Pushpin is Debian's ``/usr/bin/pushpin`` with its handler's ``message_rate``/``message_hwm``
limits lifted (the stock 2 500 deliveries/s cap would be measured otherwise).

1. ``stream``: N subscribers GET the proxy and are held; publications are ``http-stream``
   items, 20 per POST; deliveries/s and publish-to-last-delivery latency (p50/p99).
2. ``ws``: N WebSocket clients through WebSocket-over-HTTP; ``ws-message`` items.
3. ``setup``: new held streams per second: K GETs, ``--setup-concurrency`` at once, each
   established when its first body chunk (the origin's ``ready``) arrives.

    python bench/grip_fanout.py                       # everything, 1,000 and 5,000 subscribers
    python bench/grip_fanout.py --quick               # smoke run
    python bench/grip_fanout.py --scenarios setup --only clarion --profile
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import loadclient as lc

SCENARIOS = ["stream", "ws", "setup"]
PROXIES = ["clarion", "pushpin"]
ORIGIN = os.path.join(common.BENCH_DIR, "peers", "grip_origin.py")
# Figures seen on this machine before (bench/fanout_stream.py, Pushpin http-stream), printed
# for reference only.
KNOWN_PUSHPIN = {1000: 440_000, 5000: 170_000}
KNOWN_PUSHPIN_P50_MS = {1000: 40}
LATENCY = ["1000:10:60", "5000:2:12"]  # SUBS:RATE:COUNT
QUICK_LATENCY = ["1000:10:30", "5000:2:6"]
# ws-message at half those rates: Pushpin's WebSocket-over-HTTP fan-out tops out near
# 10-20,000 deliveries/s here, and latency at its capacity would only measure its queue
WS_LATENCY = ["1000:5:40", "5000:1:10"]
QUICK_WS_LATENCY = ["1000:5:20", "5000:1:5"]
SETTLE = 1.0
PUSHPIN_NOTE = (
    "Pushpin: Debian /usr/bin/pushpin, its handler's message_rate/message_hwm limits lifted "
    "(unset in its config, as bench/common.py does), route `* 127.0.0.1:ORIGIN,over_http`"
)


# --------------------------------------------------------------------------------------------
# The proxies and the origin
# --------------------------------------------------------------------------------------------


class Origin:
    """bench/peers/grip_origin.py on a port of its own (Clarion's; Pushpin starts its own)."""

    def __init__(self) -> None:
        self.port = lc.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - once per suite
            [common.PY, ORIGIN, str(self.port)], preexec_fn=common._preexec
        )
        for _ in range(100):
            try:
                _, w = await asyncio.open_connection(common.HOST, self.port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"the GRIP origin did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def clarion_grip(origin_port: int, name: str = "clarion-grip") -> common.Server:
    """The hub with its GRIP proxy on: clients on ``http_port``, ``/publish/`` on
    ``publish_port`` (the attribute names of common.PushpinServer)."""
    grip_port, control_port = lc.free_port(), lc.free_port()
    srv = common.clarion_server()
    srv.name = name
    routes = os.path.join(srv.tmp, "routes")
    with open(routes, "w") as f:
        f.write(f"* {common.HOST}:{origin_port},over_http\n")
    srv.argv += [
        "--grip-routes",
        routes,
        "--grip-port",
        str(grip_port),
        "--control-port",
        str(control_port),
    ]
    srv.http_port = grip_port  # type: ignore[attr-defined]
    srv.publish_port = control_port  # type: ignore[attr-defined]
    return srv


class GripPushpin(common.PushpinServer):
    """common.PushpinServer with its route marked ``over_http`` (WebSocket-over-HTTP; plain
    HTTP requests are proxied as before)."""

    def __init__(self) -> None:
        super().__init__()
        with open(self.pushpin.routes, "w") as f:
            f.write(common._pushpin.route_line(self.origin_port, over_http=True) + "\n")


def origin_pid(server: common.Server, clarion_origin: Origin | None) -> int | None:
    proc = clarion_origin.proc if clarion_origin else getattr(server, "origin", None)
    return proc.pid if proc is not None and proc.poll() is None else None


def http_port(s: common.Server) -> int:
    """Where the proxy's clients connect (``clarion_grip`` and PushpinServer both set it)."""
    return int(s.http_port)  # type: ignore[attr-defined]


def publish_port(s: common.Server) -> int:
    return int(s.publish_port)  # type: ignore[attr-defined]


def stream_target(s: common.Server) -> lc.Target:
    return lc.Target(common.HOST, http_port(s), "/stream", mode="stream", init_frame=None,
                     ready_marker=b"ready", centrifugo_pings=False)  # fmt: skip


def ws_target(s: common.Server) -> lc.Target:
    return lc.Target(common.HOST, http_port(s), "/ws", mode="ws", init_frame=None,
                     ready_marker=b"ready", centrifugo_pings=False)  # fmt: skip


class GripPublisher(lc.PushpinPublisher):
    """POST /publish/ with http-stream items.  Its first publish (the warm-up) waits
    ``SETTLE`` s: a proxy may subscribe a hold or a WebSocket to its channel just after the
    client got the origin's first bytes, and a subscriber that misses the warm-up message is
    left out of the measurement."""

    settled = False

    async def one(self, seq: int, ts: float) -> None:
        if not self.settled:
            self.settled = True
            await asyncio.sleep(SETTLE)
            ts = time.time()
        await super().one(seq, ts)


class WsMessagePublisher(GripPublisher):
    """POST /publish/ with ws-message items (the text frame carries the JSON line)."""

    def _item(self, seq: int, ts: float) -> dict[str, Any]:
        content = '{"pub":{"data":' + lc.data_json(seq, ts) + "}}"
        return {"channel": self.channel, "formats": {"ws-message": {"content": content}}}


def stream_publisher(s: common.Server) -> GripPublisher:
    return GripPublisher(lc.HttpClient(common.HOST, publish_port(s)))


def ws_publisher(s: common.Server) -> GripPublisher:
    return WsMessagePublisher(lc.HttpClient(common.HOST, publish_port(s)))


# --------------------------------------------------------------------------------------------
# Hold set-up rate
# --------------------------------------------------------------------------------------------


def _setup_child_main(conn: Any, spec: dict[str, Any]) -> None:
    lc.raise_nofile()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_setup_child(conn, spec))


async def _setup_child(conn: Any, spec: dict[str, Any]) -> None:
    """Open ``n`` holds, ``concurrency`` at a time, once the parent says go; report when each
    was established (its first body chunk), keep them open until told to close."""
    loop = asyncio.get_running_loop()
    target = lc.Target(**spec["target"])
    g = lc.Group()
    conn.send(("ready",))
    await asyncio.to_thread(conn.recv)  # ("go",)
    sem = asyncio.Semaphore(spec["concurrency"])
    took: list[float] = []
    connect_errors: dict[str, int] = {}
    t_go = time.time()
    t_last = 0.0

    async def one() -> None:
        nonlocal t_last
        async with sem:
            t = time.time()
            fut: asyncio.Future[bool] = loop.create_future()
            sub = lc.Sub(g, target, fut)
            try:
                await loop.create_connection(lambda: sub, target.host, target.port)
            except OSError as e:
                k = type(e).__name__ + ": " + str(e)[:60]
                connect_errors[k] = connect_errors.get(k, 0) + 1
                return
            g.conns.append(sub)
            try:
                ok = await asyncio.wait_for(fut, spec["timeout"])
            except TimeoutError:
                g.handshake_errors["timeout"] = g.handshake_errors.get("timeout", 0) + 1
                return
            if ok:
                now = time.time()
                took.append(now - t)
                t_last = max(t_last, now)

    await asyncio.gather(*(one() for _ in range(spec["n"])))
    r = resource.getrusage(resource.RUSAGE_SELF)
    conn.send(
        (
            "done",
            {
                "ok": len(took),
                "t_go": t_go,
                "t_last": t_last,
                "took": took,
                "connect_errors": connect_errors,
                "handshake_errors": g.handshake_errors,
                "closed_early": g.closed,
                "cpu": r.ru_utime + r.ru_stime,
            },
        )
    )
    await asyncio.to_thread(conn.recv)  # ("close",)
    for c in g.conns:
        if c.t is not None and not c.lost:
            c.t.close()
    await asyncio.sleep(0.2)
    with contextlib.suppress(OSError):
        conn.send(("closed",))


async def setup_round(
    target: lc.Target,
    k: int,
    concurrency: int,
    per_process: int,
    timeout: float = 30,
    pids: dict[str, int | None] | None = None,
) -> dict[str, Any]:
    """One round: ``k`` new holds over ceil(k / per_process) client processes; CPU % of
    ``pids`` (name: pid) and of the machine from go to the last client's report."""
    ctx = mp.get_context("spawn")
    nproc = max(1, -(-k // per_process))
    base, extra = divmod(k, nproc)
    conc, cextra = divmod(concurrency, nproc)
    spec_target = {f: getattr(target, f) for f in target.__dataclass_fields__}
    kids = []
    for i in range(nproc):
        parent, child = ctx.Pipe()
        spec = {
            "target": spec_target,
            "n": base + (i < extra),
            "concurrency": max(1, conc + (i < cextra)),
            "timeout": timeout,
        }
        p = ctx.Process(target=_setup_child_main, args=(child, spec), daemon=True)
        p.start()
        child.close()
        kids.append((p, parent))

    async def recv(c: Any, t: float = 120) -> Any:
        return await asyncio.wait_for(asyncio.to_thread(c.recv), t)

    try:
        for _, c in kids:
            await recv(c, 60)  # ready
        watched = {name: pid for name, pid in (pids or {}).items() if pid}
        cpu0 = {name: lc.proc_tree_cpu(pid) for name, pid in watched.items()}
        m0, t0 = lc.machine_cpu(), time.time()
        for _, c in kids:
            c.send(("go",))
        reps = [(await recv(c, timeout + k / 10))[1] for _, c in kids]
        wall = time.time() - t0
        out = _setup_summary(reps, k, concurrency, nproc)
        for name, pid in watched.items():
            out[f"{name}_cpu_pct"] = round((lc.proc_tree_cpu(pid) - cpu0[name]) / wall * 100, 1)
        out["machine"] = lc.machine_cpu_delta(m0, lc.machine_cpu())
        for _, c in kids:
            c.send(("close",))
        for _, c in kids:
            with contextlib.suppress(Exception):
                await recv(c, 15)
        return out
    finally:
        for p, c in kids:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
            c.close()


def _setup_summary(reps: list[dict[str, Any]], k: int, conc: int, nproc: int) -> dict[str, Any]:
    ok = sum(r["ok"] for r in reps)
    t_go = min(r["t_go"] for r in reps)
    t_last = max(r["t_last"] for r in reps)
    took = sorted(x * 1000 for r in reps for x in r["took"])

    def pct(p: float) -> float | None:
        return round(took[min(len(took) - 1, int(p / 100 * len(took)))], 2) if took else None

    secs = t_last - t_go if ok else None
    return {
        "holds": k,
        "ok": ok,
        "failed": k - ok,
        "concurrency": conc,
        "processes": nproc,
        "seconds": round(secs, 3) if secs else None,
        "holds_per_s": round(ok / secs, 1) if secs else None,
        "setup_p50_ms": pct(50),
        "setup_p99_ms": pct(99),
        "setup_mean_ms": round(statistics.fmean(took), 2) if took else None,
        "connect_errors": lc._merge_counts(r["connect_errors"] for r in reps),
        "handshake_errors": lc._merge_counts(r["handshake_errors"] for r in reps),
        "closed_early": sum(r["closed_early"] for r in reps),
        "client_cpu_s": round(sum(r["cpu"] for r in reps), 2),
    }


class Spy:
    """py-spy record of a process until stopped (SIGINT makes py-spy write its output)."""

    def __init__(self, pid: int, path: str) -> None:
        self.path = path
        self.proc: subprocess.Popen[bytes] | None = None
        if shutil.which("py-spy"):
            self.proc = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--nonblocking",
                    "--pid",
                    str(pid),
                    "--rate",
                    "250",
                    "--duration",
                    "600",
                    "-o",
                    path,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    async def stop(self) -> str | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        for _ in range(100):
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        if self.proc.poll() is None:
            self.proc.kill()
        return self.path if os.path.exists(self.path) else None  # noqa: ASYNC240


async def run_setup_suite(
    make_server: Callable[[], common.Server],
    origin: Callable[[common.Server], int | None],
    args: argparse.Namespace,
    log: Callable[[str], None] = print,
    profile: bool = False,
) -> dict[str, Any]:
    server = make_server()
    res: dict[str, Any] = {"server": server.name, "rounds": []}
    try:
        await server.start()
    except RuntimeError as e:
        res["error"] = str(e)
        log(f"  !! {server.name}: {e}")
        return res
    try:
        target = stream_target(server)
        res["warmup"] = await setup_round(target, 200, 20, args.per_process)
        await asyncio.sleep(1.0)
        for i in range(args.setup_rounds):
            pid = server.pid
            opid = origin(server)
            spy = None
            if profile and i == 0:
                path = os.path.join(
                    common.BENCH_DIR, "results", f"profile-grip-setup-{server.name}.svg"
                )
                spy = Spy(pid, path)
                await asyncio.sleep(0.5)
            r = await setup_round(
                target,
                args.setup_holds,
                args.setup_concurrency,
                args.per_process,
                pids={"server": pid, "origin": opid},
            )
            if spy is not None:
                r["profile"] = await spy.stop()
                if r["profile"]:
                    log(f"  py-spy profile of the set-up round: {r['profile']}")
            res["rounds"].append(r)
            msg = (
                f"  {server.name:<22} set-up: {lc.fmt_num(r['holds_per_s'])} holds/s "
                f"({r['ok']:,}/{r['holds']:,} in {r['seconds']} s, {r['concurrency']} at once; "
                f"p50 {r['setup_p50_ms']} / p99 {r['setup_p99_ms']} ms; server CPU "
                f"{r.get('server_cpu_pct')}%, origin {r.get('origin_cpu_pct')}%, machine "
                f"{r['machine'].get('busy_pct')}% of {(os.cpu_count() or 1) * 100}%)"
            )
            err = setup_errors(r)
            if err:
                msg += f"\n    !! {err}"
            log(msg)
            await asyncio.sleep(1.5)  # let the proxy drop the closed holds
            if not server.alive():
                log(f"  !! {server.name} exited; log tail:\n{server.log_tail()}")
                break
        res["server_alive"] = server.alive()
    finally:
        res["log_tail"] = server.log_tail(60)
        server.stop()
        trouble = bool(res.get("error")) or any(setup_errors(r) for r in res["rounds"])
        server.cleanup(keep_logs=trouble)
        if trouble:
            res["log"] = server.log_path
    return res


def setup_errors(r: dict[str, Any]) -> str:
    bits = []
    if r.get("failed"):
        bits.append(
            f"{r['failed']:,} holds not established {r.get('connect_errors') or ''}"
            f"{r.get('handshake_errors') or ''}"
        )
    if r.get("closed_early"):
        bits.append(f"{r['closed_early']} closed before the round ended")
    return "; ".join(bits)


def best_setup(res: dict[str, Any]) -> dict[str, Any]:
    rounds = [r for r in res.get("rounds") or [] if r.get("holds_per_s")]
    return max(rounds, key=lambda r: r["holds_per_s"]) if rounds else {}


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {"args": vars(args), "pushpin_note": PUSHPIN_NOTE}
    which = args.only or PROXIES
    t0 = time.time()
    print(
        f"GRIP proxy benchmark: {', '.join(which)}; {', '.join(args.scenarios)}  "
        f"(machine: {os.cpu_count()} CPUs)"
    )
    print(f"  {PUSHPIN_NOTE}")
    await common.note_background(results)
    available = {}
    if "clarion" in which:
        ok, why = common.clarion_available()
        available["clarion"] = ok
        if not ok:
            print(f"  !! Clarion hub not available: {why}")
            results["clarion"] = {"error": f"hub not available: {why}"}
    if "pushpin" in which:
        ok, why = common.pushpin_available()
        available["pushpin"] = ok
        if not ok:
            print(f"  !! Pushpin not available: {why}")
            results["pushpin"] = {"error": why}

    async def with_origin(
        name: str,
        part: str,
        run: Callable[[Callable[[], common.Server], Origin | None], Awaitable[Any]],
    ) -> Any:
        if name == "pushpin":
            return await run(GripPushpin, None)  # it starts its own grip_origin.py
        origin = Origin()
        await origin.start()
        try:
            return await run(lambda: clarion_grip(origin.port, f"clarion-grip-{part}"), origin)
        finally:
            origin.stop()

    points = {"stream": parse_points(args.latency), "ws": parse_points(args.ws_latency)}
    for scen in [s for s in ("stream", "ws") if s in args.scenarios]:
        lat: dict[int, list[tuple[float, int]]] = {}
        for n, rate, count in points[scen]:
            lat.setdefault(n, []).append((rate, count))
        target, publisher = (
            (stream_target, stream_publisher) if scen == "stream" else (ws_target, ws_publisher)
        )
        print(f"\n  -- {scen}: fan-out to {', '.join(f'{n:,}' for n in args.subscribers)}")
        for name in which:
            if not available.get(name):
                continue

            async def run(
                make: Callable[[], common.Server],
                _o: Origin | None,
                name: str = name,
                target: Any = target,
                publisher: Any = publisher,
                lat: dict[int, list[tuple[float, int]]] = lat,
            ) -> Any:
                return await common.run_server_suite(
                    make,
                    target,
                    publisher,
                    sorted(args.subscribers),
                    duration=args.duration,
                    window=args.window,
                    batch=args.batch,
                    latency_at=lat,
                    drain_timeout=args.drain_timeout,
                    per_process=args.per_process,
                    connect_concurrency=args.connect_concurrency,
                    publish_concurrency=args.publish_concurrency,
                    profile_at=args.subscribers if args.profile and name == "clarion" else None,
                )

            results.setdefault(name, {})[scen] = await with_origin(name, scen, run)
    if "setup" in args.scenarios:
        print(
            f"\n  -- setup: {args.setup_holds:,} new stream holds, {args.setup_concurrency} at once"
        )
        for name in which:
            if not available.get(name):
                continue

            async def run_setup(
                make: Callable[[], common.Server], o: Origin | None, name: str = name
            ) -> Any:
                return await run_setup_suite(
                    make,
                    lambda s: origin_pid(s, o),
                    args,
                    profile=args.profile and name == "clarion",
                )

            results.setdefault(name, {})["setup"] = await with_origin(name, "setup", run_setup)
    results["seconds"] = round(time.time() - t0, 1)
    print_report(results)
    print("saved", lc.save_result("grip_fanout", results))
    return 0


HEADER = common.HEADER


def report_rows(results: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
    g = common.get
    a = argparse.Namespace(**results["args"])
    cl, pp = results.get("clarion", {}), results.get("pushpin", {})
    rows: list[list[Any]] = []
    label = {"stream": "GRIP stream", "ws": "GRIP ws-message"}
    for scen in [s for s in ("stream", "ws") if s in a.scenarios]:
        for n in sorted(a.subscribers):
            c = g(cl, scen, "runs", str(n), "throughput", "deliveries_per_s")
            p = g(pp, scen, "runs", str(n), "throughput", "deliveries_per_s")
            known = KNOWN_PUSHPIN.get(n) if scen == "stream" else None
            rows.append(
                [
                    f"{label[scen]} deliveries/s @ {n:,} subs",
                    lc.fmt_num(c),
                    "Pushpin",
                    lc.fmt_num(p) + (f" (seen before ~{known:,})" if known else ""),
                    f"{c / p:.2f}x" if c and p else "-",
                    ">= Pushpin",
                    ("yes" if c >= p else "NO") if c and p else "n/a",
                ]
            )
        pts = parse_points(a.latency if scen == "stream" else a.ws_latency)
        for n, rate, _ in [x for x in pts if x[0] in a.subscribers]:
            c = common.latency_of(g(cl, scen, "runs", str(n)), rate)
            p = common.latency_of(g(pp, scen, "runs", str(n)), rate)
            cp, pq = _valid_p50(c), _valid_p50(p)
            known = KNOWN_PUSHPIN_P50_MS.get(n) if scen == "stream" else None
            rows.append(
                [
                    f"{label[scen]} p50 / p99 ms @ {n:,} subs, {rate:g} msg/s",
                    _pp(c),
                    "Pushpin",
                    _pp(p) + (f" (p50 seen before ~{known})" if known else ""),
                    f"{pq / cp:.1f}x lower p50" if cp and pq else "-",
                    "p50 < Pushpin",
                    ("yes" if cp < pq else "NO") if cp and pq else "n/a",
                ]
            )
    if "setup" in a.scenarios:
        c, p = best_setup(g(cl, "setup") or {}), best_setup(g(pp, "setup") or {})
        cv, pv = c.get("holds_per_s"), p.get("holds_per_s")
        rows.append(
            [
                f"GRIP new stream holds/s ({a.setup_holds:,}, {a.setup_concurrency} at once)",
                lc.fmt_num(cv),
                "Pushpin",
                lc.fmt_num(pv),
                f"{cv / pv:.2f}x" if cv and pv else "-",
                ">= Pushpin",
                ("yes" if cv >= pv else "NO") if cv and pv else "n/a",
            ]
        )
        rows.append(
            ["GRIP hold set-up p50 / p99 ms", _setup_pp(c), "Pushpin", _setup_pp(p), "", "", ""]
        )
    problems = []
    for name, res in (("clarion", cl), ("pushpin", pp)):
        if res.get("error"):
            problems.append(f"{name}: {res['error'].splitlines()[0]}")
        for scen in ("stream", "ws"):
            sub = res.get(scen) or {}
            if sub.get("error"):
                problems.append(f"{name} ({scen}): {sub['error'].splitlines()[0]}")
            for n, run in (sub.get("runs") or {}).items():
                e = common.summarize_errors(run)
                for la in run.get("latency") or []:
                    if la.get("p50_ms") is not None and _valid_p50(la) is None:
                        e += ("; " if e else "") + (
                            f"latency@{la['rate']:g}/s: negative latencies, deliveries left over "
                            "from the throughput phase were still arriving: not a valid figure"
                        )
                if e:
                    problems.append(f"{name} (GRIP {scen}) @ {int(n):,}: {e}")
        st = res.get("setup") or {}
        if st.get("error"):
            problems.append(f"{name} (setup): {st['error'].splitlines()[0]}")
        for i, r in enumerate(st.get("rounds") or []):
            e = setup_errors(r)
            if e:
                problems.append(f"{name} (GRIP setup round {i + 1}): {e}")
    return rows, problems


def print_report(results: dict[str, Any]) -> None:
    rows, problems = report_rows(results)
    lc.print_table(
        "GRIP proxy: Clarion vs Pushpin (100-byte messages, 20 items per /publish/; latency = "
        "publish to last delivery)",
        HEADER,
        rows,
    )
    print(results.get("pushpin_note", PUSHPIN_NOTE))
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


def _valid_p50(la: dict[str, Any]) -> float | None:
    """p50, or None when there is none or the run was polluted by an earlier backlog
    (a delivery counted before its publication: negative latency)."""
    p50 = la.get("p50_ms") if la else None
    if p50 is None or p50 <= 0 or (la.get("mean_ms") or 0) <= 0:
        return None
    return float(p50)


def _pp(la: dict[str, Any]) -> str:
    if not la or la.get("p50_ms") is None:
        return "-"
    if _valid_p50(la) is None:
        return "invalid"
    return f"{la['p50_ms']:.1f} / {la['p99_ms']:.1f}"


def _setup_pp(r: dict[str, Any]) -> str:
    if not r or r.get("setup_p50_ms") is None:
        return "-"
    return f"{r['setup_p50_ms']:.1f} / {r['setup_p99_ms']:.1f}"


def cli() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 3 s throughput, fewer latency samples, 2,000 set-ups",
    )
    ap.add_argument("--subscribers", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--only", nargs="+", choices=PROXIES)
    ap.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=SCENARIOS)
    ap.add_argument("--duration", type=float, default=8.0, help="throughput seconds per point")
    ap.add_argument("--window", type=int, default=100, help="max publications in flight")
    ap.add_argument("--batch", type=int, default=20, help="items per /publish/ request")
    ap.add_argument(
        "--publish-concurrency",
        type=int,
        default=4,
        help="concurrent /publish/ requests in throughput mode",
    )
    ap.add_argument(
        "--per-process", type=int, default=2500, help="client connections per client process"
    )
    ap.add_argument(
        "--connect-concurrency",
        type=int,
        default=20,
        help="subscriber connects in flight per client process (fan-out set-up; "
        "bursts of hundreds make pushpin-proxy answer 502)",
    )
    ap.add_argument(
        "--latency",
        nargs="*",
        metavar="SUBS:RATE:COUNT",
        help=f"stream latency points (default {' '.join(LATENCY)}; --quick "
        f"{' '.join(QUICK_LATENCY)}; Pushpin's publish endpoint takes one connection "
        "per request and falls behind at 5,000 x 10/s)",
    )
    ap.add_argument(
        "--ws-latency",
        nargs="*",
        metavar="SUBS:RATE:COUNT",
        help=f"ws-message latency points (default {' '.join(WS_LATENCY)}; --quick "
        f"{' '.join(QUICK_WS_LATENCY)})",
    )
    ap.add_argument(
        "--drain-timeout",
        type=float,
        default=60,
        help="seconds to wait for the backlog after a throughput phase (Pushpin needs ~45 s "
        "for its ws-message backlog at 5,000 subscribers; a backlog left over would be taken "
        "for the latency phase's deliveries)",
    )
    ap.add_argument("--setup-holds", type=int, default=5000, help="holds per set-up round")
    ap.add_argument(
        "--setup-concurrency",
        type=int,
        default=50,
        help="set-ups in flight (over all client processes)",
    )
    ap.add_argument("--setup-rounds", type=int, default=2, help="best round is reported")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the Clarion hub (throughput phases, first set-up round)",
    )
    args = ap.parse_args()
    points = QUICK_LATENCY if args.quick else LATENCY
    args.latency = points if args.latency is None else args.latency
    ws_points = QUICK_WS_LATENCY if args.quick else WS_LATENCY
    args.ws_latency = ws_points if args.ws_latency is None else args.ws_latency
    if args.quick:
        args.duration = min(args.duration, 3.0)
        args.setup_holds = min(args.setup_holds, 2000)
        args.setup_rounds = 1
    sys.exit(common.run_main(main(args)))


if __name__ == "__main__":
    cli()
