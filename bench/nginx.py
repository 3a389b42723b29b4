"""What nginx in front of the hub costs: the shipped site (deploy/nginx/clarion.conf) against
the hub's own port, in the same run, on the same hub process.

Fan-out (bench/fanout_ws.py's scenario, ``--subscribers`` WebSocket subscribers on
``bench:fan``; publications go straight to the hub's API, as an app on the private network
sends them, so only the subscribers' path differs):

* ``direct``: ``ws://`` to the hub's port;
* ``nginx-tls``: ``wss://`` to nginx, which proxies to the same hub (the production path);
* ``nginx-plain``: ``ws://`` to the same nginx server block on a plain port of the benchmark's
  own (not in the shipped site), to tell what TLS costs from what proxying costs;
* ``nginx-tls-4k``: ``wss://`` to a second nginx with the site's ``proxy_buffer_size 16k``
  taken out (nginx's default, one 4 KiB memory page): what that setting saves;
* ``direct-tls``: ``wss://`` to a second hub serving TLS itself (``--certfile``), its API
  over https: the deployment without nginx. Against ``nginx-tls`` it tells what nginx in
  front costs a TLS deployment, with the clients' decryption the same on both sides.

Each way runs ``--repeat`` times in rotated order; the medians are reported. Deliveries/s as
fanout_ws measures them (batches of 20 via /api/batch, at most ``--window`` in flight); p50 and
p99 of publish-to-last-delivery at ``--latency-rate`` msg/s.

Connection set-up: ``--connections`` WebSocket connections (TCP, TLS where it applies, the
upgrade, Centrifugo connect and subscribe), ``--concurrency`` at a time, from this process:
``direct`` (plain), ``direct-tls`` (a second hub serving TLS itself, ``--certfile``) and
``nginx-tls``. Every TLS handshake is a full one (no session reuse), the worst case: a
browser that reconnects resumes its session.

    python bench/nginx.py                      # 1,000 subscribers, 2 rounds
    python bench/nginx.py --quick              # shorter points, 1 round

Needs Debian's nginx (scripts/install-test-deps). Target: nginx in front costs at most 20 %
of deliveries/s. Results: bench/results/nginx.json and the table printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # also puts tests/ on sys.path (for deploy_app.nginx)
import loadclient as lc

from deploy_app.nginx import Nginx, SitePorts, make_certificate, nginx_available

TARGET_COST = 0.20  # the bound on what nginx may cost in deliveries/s
WAYS = ("direct", "nginx-tls", "nginx-plain", "nginx-tls-4k", "direct-tls")
# What nginx-tls-4k takes out of the shipped site: its larger read buffer for the hub.
BUFFER_LINES = ("        proxy_buffer_size 16k;\n", "        proxy_busy_buffers_size 16k;\n")


def default_buffer_site(site: str) -> str:
    """The shipped site with nginx's default proxy_buffer_size (one memory page)."""
    for line in BUFFER_LINES:
        if line not in site:
            raise ValueError(f"the site has no {line.strip()!r} to take out")
        site = site.replace(line, "")
    return site


# -- TLS subscribers --------------------------------------------------------------------------
# loadclient's subscriber processes connect in plain TCP. These wrap them: the same Sub
# protocol and child loop, with the event loop's create_connection adding TLS.


@dataclass
class TlsTarget(lc.Target):
    tls: bool = True


def _client_context() -> ssl.SSLContext:
    # The benchmark's own self-signed certificate: encryption as in production, no chain.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _tls_loop() -> asyncio.AbstractEventLoop:
    import uvloop

    context = _client_context()

    class TlsLoop(uvloop.Loop):
        async def create_connection(self, protocol_factory: Any, host: Any = None,
                                    port: Any = None, **kw: Any) -> Any:  # fmt: skip
            kw.setdefault("ssl", context)
            return await super().create_connection(protocol_factory, host, port, **kw)

    return TlsLoop()


def tls_child_main(conn: Any, spec: dict[str, Any]) -> None:
    """lc.child_main with TLS when the target says so (run_child's steps, another loop)."""
    tls = spec["target"].pop("tls", False)
    if not tls:
        lc.child_main(conn, spec)
        return
    lc.raise_nofile()
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=_tls_loop) as r:
        r.run(lc._child_async(conn, spec))


class TlsSubscriberPool(lc.SubscriberPool):
    """lc.SubscriberPool whose children are tls_child_main (its start, that one name changed)."""

    async def start(self, target: lc.Target, n: int, per_process: int = 2500,
                    concurrency: int = 200, lifetime: float = 600,
                    ready_timeout: float = 60) -> dict[str, Any]:  # fmt: skip
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        loop = asyncio.get_running_loop()
        nproc = max(1, -(-n // per_process))
        base, extra = divmod(n, nproc)
        spec_target = {k: getattr(target, k) for k in target.__dataclass_fields__}
        t0 = time.time()
        for i in range(nproc):
            parent_conn, child_conn = ctx.Pipe()
            count = base + (1 if i < extra else 0)
            spec = {"target": dict(spec_target), "n": count,
                    "concurrency": concurrency, "lifetime": lifetime,
                    "ready_timeout": ready_timeout}  # fmt: skip
            p = ctx.Process(target=tls_child_main, args=(child_conn, spec), daemon=True)
            p.start()
            child_conn.close()
            ch = lc._Child(p, parent_conn, count)
            self.children.append(ch)
            loop.add_reader(parent_conn.fileno(), self._on_readable, ch)
            os.set_blocking(parent_conn.fileno(), True)
        infos = await asyncio.gather(
            *(self._expect(ch, "ready", ready_timeout + 60) for ch in self.children))
        agg: dict[str, Any] = {
            "requested": n, "ok": sum(i["ok"] for i in infos),
            "failed": sum(i["failed"] for i in infos), "processes": nproc,
            "seconds": time.time() - t0,
            "connect_errors": lc._merge_counts(i["connect_errors"] for i in infos),
            "handshake_errors": lc._merge_counts(i["handshake_errors"] for i in infos),
        }  # fmt: skip
        self.ready_info = agg
        return agg


# -- one fan-out point ------------------------------------------------------------------------


async def fanout_point(hub: common.Server, nginx: Nginx, target: lc.Target,
                       args: argparse.Namespace, *, api_tls: bool = False,
                       ) -> dict[str, Any]:  # fmt: skip
    """common.fanout_scenario's steps with the TLS-capable pool, and nginx's CPU beside the
    hub's (``api_tls``: the hub's API is served over TLS)."""
    pool = TlsSubscriberPool()
    publisher = lc.CentrifugoApiPublisher(lc.HttpClient(
        common.HOST, hub.port, ssl=_client_context() if api_tls else None))
    out: dict[str, Any] = {"subscribers": args.subscribers}
    assert nginx.process is not None
    try:
        rss0 = {"hub": lc.tree_rss_kb(hub.pid), "nginx": lc.tree_rss_kb(nginx.process.pid)}
        info = await pool.start(target, args.subscribers, per_process=args.per_process,
                                concurrency=100)
        out["connect"] = info
        for name, pid in (("hub", hub.pid), ("nginx", nginx.process.pid)):
            grown = lc.tree_rss_kb(pid) - rss0[name]
            out[f"{name}_kb_per_conn"] = round(grown / max(info["ok"], 1), 1)
        if info["ok"] == 0:
            out["error"] = f"no subscriber connected: {info}"
            return out
        out["warmup"] = await lc.sync_warmup(pool, publisher.one, 30)
        nginx_cpu0, t0 = lc.proc_tree_cpu(nginx.process.pid), time.time()
        out["throughput"] = await lc.run_throughput(
            pool, publisher.batch, hub.pid, args.subscribers, duration=args.duration,
            batch=20, window=args.window, drain_timeout=20, concurrency=4)  # fmt: skip
        out["nginx_cpu_pct"] = round(
            100 * (lc.proc_tree_cpu(nginx.process.pid) - nginx_cpu0) / (time.time() - t0), 1)
        out["latency"] = [await lc.run_latency(
            pool, publisher, hub.pid, args.subscribers, rate=args.latency_rate,
            count=args.latency_count, drain_timeout=20)]  # fmt: skip
        out["publish_errors"] = dict(publisher.errors)
        out["server_alive"] = hub.alive()
    finally:
        publisher.close()
        await pool.close()
    return out


# -- connection set-up ------------------------------------------------------------------------


async def setup_rate(port: int, tls: bool, n: int, concurrency: int,
                     servers: dict[str, int]) -> dict[str, Any]:  # fmt: skip
    """``n`` WebSocket connections through to subscribed, ``concurrency`` at a time; with the
    CPU each of ``servers`` (name: pid) and this client spent per connection."""
    loop = asyncio.get_running_loop()
    target = lc.Target(common.HOST, port, "/connection/websocket")
    group = lc.Group()
    sem = asyncio.Semaphore(concurrency)
    context = _client_context() if tls else None
    errors: dict[str, int] = {}

    async def one() -> None:
        async with sem:
            fut: asyncio.Future[bool] = loop.create_future()
            sub = lc.Sub(group, target, fut)
            try:
                await loop.create_connection(lambda: sub, common.HOST, port, ssl=context)
                group.conns.append(sub)
                await asyncio.wait_for(fut, 30)
            except (OSError, TimeoutError) as exc:
                key = type(exc).__name__
                errors[key] = errors.get(key, 0) + 1

    cpu0 = {name: lc.proc_tree_cpu(pid) for name, pid in servers.items()}
    client0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    seconds = time.perf_counter() - t0
    client = time.process_time() - client0
    cpu = {name: lc.proc_tree_cpu(pid) - cpu0[name] for name, pid in servers.items()}
    ok = sum(1 for c in group.conns if c.ready and not c.lost)
    for c in group.conns:
        if c.t is not None and not c.lost:
            c.t.close()
    await asyncio.sleep(1.0)  # let both ends finish closing before the next measurement
    per_conn = {f"{name}_cpu_us": round(v / max(ok, 1) * 1e6) for name, v in cpu.items()}
    return {"ok": ok, "failed": n - ok, "seconds": round(seconds, 3),
            "per_s": round(ok / seconds, 1) if seconds else None,
            "client_cpu_us": round(client / max(ok, 1) * 1e6), **per_conn,
            "errors": errors, "handshake_errors": dict(group.handshake_errors)}  # fmt: skip


class TlsHub(common.Server):
    """A hub serving TLS on its own port (--certfile/--keyfile); healthy once it answers
    /health over https."""

    async def start(self, timeout: float = 30) -> None:
        self.log = open(self.log_path, "wb")  # noqa: SIM115, ASYNC230
        import subprocess

        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT,  # noqa: ASYNC220
                                     env=self.env, cwd=self.cwd, preexec_fn=common._preexec)
        common._live.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, ssl.SSLError):
                reader, writer = await asyncio.open_connection(
                    common.HOST, self.port, ssl=_client_context())
                writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                line = await reader.readline()
                writer.close()
                if b" 200" in line:
                    return
            await asyncio.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"TLS hub did not come up on port {self.port}:\n{tail}")


# -- the run ----------------------------------------------------------------------------------


def _median(values: list[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.median(present) if present else None


async def main(args: argparse.Namespace) -> int:
    ok, why = nginx_available()
    if not ok:
        print(f"!! {why}")
        return 1
    results: dict[str, Any] = {"args": vars(args)}
    await common.note_background(results)
    work = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    cert = make_certificate(work / "tls")
    hub = common.clarion_server(extra_config='trusted_proxies = ["127.0.0.1"]')
    tls_hub = TlsHub("clarion-tls", [], lc.free_port(), "/health")
    tls_cfg = Path(tls_hub.tmp) / "clarion.toml"
    tls_cfg.write_text(common.CLARION_CONFIG.format(extra=""))
    tls_hub.argv = [common.PY, "-m", "clarion", "serve", "--port", str(tls_hub.port),
                    "--config", str(tls_cfg), "--certfile", str(cert.cert),
                    "--keyfile", str(cert.key)]  # fmt: skip
    ports = SitePorts(https=lc.free_port(), http=lc.free_port(), hub=hub.port,
                      grip=lc.free_port(), app=lc.free_port())  # fmt: skip
    plain_port = lc.free_port()
    # Debian's default worker_processes is auto (one per CPU); the connections cover the
    # subscribers twice (client and upstream side) with room to spare.
    nginx = Nginx(work / "nginx", ports, cert, workers=args.nginx_workers,
                  connections=max(4096, 4 * args.subscribers), plain_port=plain_port)
    page_ports = SitePorts(https=lc.free_port(), http=lc.free_port(), hub=hub.port,
                            grip=ports.grip, app=ports.app)  # fmt: skip
    paged = Nginx(work / "nginx-4k", page_ports, cert, workers=args.nginx_workers,
                  connections=max(4096, 4 * args.subscribers), edit=default_buffer_site)
    print(f"nginx in front of the hub: {args.subscribers:,} WebSocket subscribers, "
          f"{args.repeat} round(s); machine: {os.cpu_count()} CPUs")
    try:
        await hub.start()
        await tls_hub.start()
        nginx.start()
        paged.start()
        fronts = {"direct": nginx, "nginx-tls": nginx, "nginx-plain": nginx,
                  "nginx-tls-4k": paged, "direct-tls": nginx}
        hubs = {way: tls_hub if way == "direct-tls" else hub for way in WAYS}
        targets = {
            "direct": lc.Target(common.HOST, hub.port, "/connection/websocket"),
            "nginx-tls": TlsTarget(common.HOST, ports.https, "/connection/websocket"),
            "nginx-plain": lc.Target(common.HOST, plain_port, "/connection/websocket"),
            "nginx-tls-4k": TlsTarget(common.HOST, page_ports.https, "/connection/websocket"),
            "direct-tls": TlsTarget(common.HOST, tls_hub.port, "/connection/websocket"),
        }
        runs: dict[str, list[dict[str, Any]]] = {w: [] for w in WAYS}
        for rnd in range(args.repeat):
            order = WAYS[rnd % len(WAYS):] + WAYS[:rnd % len(WAYS)]
            for way in order:
                t0 = time.time()
                r = await fanout_point(hubs[way], fronts[way], targets[way], args,
                                       api_tls=way == "direct-tls")
                runs[way].append(r)
                tp, la = r.get("throughput") or {}, (r.get("latency") or [{}])[0]
                print(f"  round {rnd + 1} {way:<12} {lc.fmt_num(tp.get('deliveries_per_s'))} "
                      f"deliveries/s (hub CPU {tp.get('server_cpu_pct')}%, nginx CPU "
                      f"{r.get('nginx_cpu_pct')}%), p50 {la.get('p50_ms')} / p99 "
                      f"{la.get('p99_ms')} ms @ {args.latency_rate:g}/s; KiB per connection: "
                      f"hub {r.get('hub_kb_per_conn')}, nginx {r.get('nginx_kb_per_conn')}  "
                      f"[{time.time() - t0:.0f}s]", flush=True)
                err = common.summarize_errors(r)
                if err:
                    print(f"    !! {err}")
        results["fanout"] = runs
        assert nginx.process is not None
        nginx_pid = nginx.process.pid
        setups: dict[str, list[dict[str, Any]]] = {"direct": [], "direct-tls": [],
                                                    "nginx-tls": []}
        for _ in range(args.repeat):
            for way, port, tls in (("direct", hub.port, False),
                                   ("direct-tls", tls_hub.port, True),
                                   ("nginx-tls", ports.https, True)):
                pids = {"hub": tls_hub.pid if way == "direct-tls" else hub.pid}
                if way == "nginx-tls":
                    pids["nginx"] = nginx_pid
                r = await setup_rate(port, tls, args.connections, args.concurrency, pids)
                setups[way].append(r)
                cpu = ", ".join(f"{k} {v} us" for k, v in r.items() if k.endswith("_cpu_us"))
                print(f"  set-up {way:<11} {r['per_s']} connections/s ({r['ok']} in "
                      f"{r['seconds']} s, failed {r['failed']} {r['errors'] or ''}; CPU per "
                      f"connection: {cpu})", flush=True)
        results["setup"] = setups
    finally:
        nginx.stop()
        paged.stop()
        hub.stop()
        tls_hub.stop()
        hub.cleanup()
        tls_hub.cleanup()
    summary = summarize(results, args)
    results["summary"] = summary
    print_report(summary, args)
    print("saved", lc.save_result("nginx", results))
    return 0


def summarize(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    g = common.get
    out: dict[str, Any] = {}
    for way, runs in results.get("fanout", {}).items():
        out[way] = {
            "deliveries_per_s": _median([g(r, "throughput", "deliveries_per_s") for r in runs]),
            "p50_ms": _median([g(r, "latency", 0, "p50_ms") for r in runs]),
            "p99_ms": _median([g(r, "latency", 0, "p99_ms") for r in runs]),
            "hub_cpu_pct": _median([g(r, "throughput", "server_cpu_pct") for r in runs]),
            "nginx_cpu_pct": _median([r.get("nginx_cpu_pct") for r in runs]),
            "client_cpu_pct": _median([g(r, "throughput", "client_cpu_pct") for r in runs]),
            "server_us_per_delivery": _median([_us_per_delivery(r) for r in runs]),
            "nginx_us_per_delivery": _median([_nginx_us_per_delivery(r) for r in runs]),
            "hub_kb_per_conn": _median([r.get("hub_kb_per_conn") for r in runs]),
            # nginx keeps memory it has used: only a first round's connections show growth,
            # and only for the first way through each nginx (nginx-tls and nginx-tls-4k).
            "nginx_kb_per_conn": (runs[0].get("nginx_kb_per_conn")
                                  if runs and way in ("nginx-tls", "nginx-tls-4k") else None),
            "problems": [e for r in runs if (e := common.summarize_errors(r))],
        }
    for way, runs in results.get("setup", {}).items():
        out[f"setup-{way}"] = {
            "per_s": _median([r.get("per_s") for r in runs]),
            "failed": sum(r.get("failed", 0) for r in runs),
            **{k: _median([r.get(k) for r in runs])
               for k in ("client_cpu_us", "hub_cpu_us", "nginx_cpu_us")},
        }  # fmt: skip
    return out


def _us_per_delivery(r: dict[str, Any]) -> float | None:
    """Server-side CPU (hub and nginx) per delivery: what nginx costs whoever is the
    bottleneck (here the benchmark's own Python TLS clients may be)."""
    tp = r.get("throughput") or {}
    dps, hub = tp.get("deliveries_per_s"), tp.get("server_cpu_pct")
    if not dps or hub is None:
        return None
    cpu = float(hub) + float(r.get("nginx_cpu_pct") or 0.0)
    return round(cpu / 100 / float(dps) * 1e6, 3)


def _f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}"


def _nginx_us_per_delivery(r: dict[str, Any]) -> float | None:
    dps = (r.get("throughput") or {}).get("deliveries_per_s")
    if not dps or r.get("nginx_cpu_pct") is None:
        return None
    return round(float(r["nginx_cpu_pct"]) / 100 / float(dps) * 1e6, 3)


def print_report(s: dict[str, Any], args: argparse.Namespace) -> None:
    direct = s.get("direct", {}).get("deliveries_per_s")
    direct_tls = s.get("direct-tls", {}).get("deliveries_per_s")
    rows: list[list[Any]] = []
    for way in WAYS:
        d = s.get(way, {})
        dps = d.get("deliveries_per_s")
        cost = (1 - dps / direct) if dps and direct else None
        # What nginx costs a TLS deployment: against the hub serving TLS itself, where the
        # clients decrypt just as much.
        tls_cost = (1 - dps / direct_tls) if dps and direct_tls and way.startswith(
            "nginx-tls") else None
        target = (f"cost <= {TARGET_COST:.0%}" if way.startswith("nginx") else "")
        judged = tls_cost if tls_cost is not None else cost
        met = ("yes" if judged is not None and judged <= TARGET_COST else "NO") if target else ""
        rows.append([way, _f(dps, 0), f"{-cost:+.0%}" if cost is not None and way != "direct"
                     else "", f"{-tls_cost:+.0%}" if tls_cost is not None else "",
                     f"{_f(d.get('p50_ms'))} / {_f(d.get('p99_ms'))}",
                     _f(d.get("hub_cpu_pct")), _f(d.get("nginx_cpu_pct")),
                     _f(d.get("client_cpu_pct")), _f(d.get("server_us_per_delivery"), 2),
                     _f(d.get("nginx_us_per_delivery"), 2), _f(d.get("nginx_kb_per_conn")),
                     target, met])  # fmt: skip
    lc.print_table(
        f"WebSocket fan-out to {args.subscribers:,} subscribers through nginx and direct "
        f"(medians of {args.repeat} round(s); p50/p99 at {args.latency_rate:g} msg/s; server "
        "us/delivery = hub + nginx CPU per delivery)",
        ["way", "deliveries/s", "vs direct", "vs direct-tls", "p50 / p99 ms", "hub CPU %",
         "nginx CPU %", "client CPU %", "server us/delivery", "nginx us/delivery",
         "nginx KiB/conn (1st)", "target", "met"], rows)  # fmt: skip
    base = s.get("setup-direct", {}).get("per_s")
    rows = []
    for way in ("direct", "direct-tls", "nginx-tls"):
        d = s.get(f"setup-{way}", {})
        r = d.get("per_s")
        rows.append([way, _f(r, 0), f"{r / base:.2f}x" if r and base and way != "direct" else "",
                     _f(d.get("hub_cpu_us"), 0), _f(d.get("nginx_cpu_us"), 0),
                     _f(d.get("client_cpu_us"), 0), _f(d.get("failed"), 0)])  # fmt: skip
    lc.print_table(
        f"WebSocket connection set-up ({args.connections:,} connections, {args.concurrency} at "
        "a time, through to subscribed; TLS handshakes are full ones)",
        ["way", "connections/s", "vs direct", "hub CPU us/conn", "nginx CPU us/conn",
         "client CPU us/conn", "failed"], rows)  # fmt: skip
    for way in WAYS:
        for p in s.get(way, {}).get("problems", []):
            print(f"  !! {way}: {p}")


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=8.0, help="throughput seconds per point")
    ap.add_argument("--window", type=int, default=200, help="max publications in flight")
    ap.add_argument("--latency-rate", type=float, default=100.0)
    ap.add_argument("--latency-count", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=2, help="rounds, in rotated order")
    ap.add_argument("--connections", type=int, default=1000, help="for the set-up rate")
    ap.add_argument("--concurrency", type=int, default=50, help="set-ups in flight")
    ap.add_argument("--per-process", type=int, default=500,
                    help="subscribers per client process (TLS decryption is the clients' work)")
    ap.add_argument("--nginx-workers", default="auto", help="worker_processes (Debian: auto)")
    ap.add_argument("--quick", action="store_true",
                    help="4 s points, 200 latency samples, 1 round")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.latency_count, args.repeat = 4.0, 200, 1
    sys.exit(common.run_main(main(args)))


if __name__ == "__main__":
    cli()
