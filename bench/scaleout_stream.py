"""Scale-out over HTTP streaming: Clarion ``--workers 2`` on Redis vs two Pushpins behind one
publisher, in the same run, same load client, same machine.

* ``clarion-stream``: ``clarion serve --workers 2`` on the Redis broker (bench/scaleout.py's
  ``hub("redis-2")``); subscribers ``GET /connection/stream?channel=bench:fan`` (NDJSON over
  chunked HTTP) on one port, spread over the two workers by SO_REUSEPORT; publications as
  ``POST /api/batch`` of ``--batch`` (throughput) and single ``POST /api/publish`` pipelined on
  one keep-alive connection (latency).
* ``pushpin-x2``: two Debian Pushpins (bench/grip_fanout.py's ``GripPushpin``: handler rate
  limits lifted), each with its own ``bench/peers/grip_origin.py``, run under one shell so CPU
  and memory are counted over both; subscribers split half/half; every ``/publish/`` goes to
  both instances' publish ports at once, as a pubcontrol client configured with two publish
  servers does: ``--batch`` http-stream items per request (throughput), and for latency one
  worker per publish server sending up to 10 queued items per request (pypubcontrol's
  asynchronous ``publish``).  Deliveries and publish-to-last-delivery are over both halves.
* ``clarion-grip``: Clarion's GRIP proxy, ``--workers 2`` on Redis, in front of the same
  origin program, published to exactly like one Pushpin.

At each subscriber count: deliveries/s (``--duration`` s of batches, at most ``--window``
publications not yet seen by the slowest subscriber) and p50/p99 publish-to-last-delivery at
fixed rates (``--latency``): first one every system sustained on the shared 2-core machine,
then the rate the issue names, which may measure a queue (p50 near half the max).  The CPU
of each server's processes over the throughput phase is printed (Clarion per worker, Pushpin
per service); ``--profile`` adds a py-spy of the Clarion workers.

Limits: at least 2 subscribers (the pair gets half each); subscriber counts over ~2,500 use
one client process per 2,500 (``--per-process``); the Redis at ``CLARION_BENCH_REDIS`` (key
prefix ``clarionbench-hub``) must be up, Pushpin is skipped with a note when not installed.

    python bench/scaleout_stream.py                  # 5,000 and 10,000 subscribers, ~8 min
    python bench/scaleout_stream.py --quick          # smoke run: 1,000 and 2,000
    python bench/scaleout_stream.py --only clarion-stream --subscribers 10000 --profile
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import fanout_stream
import grip_fanout
import loadclient as lc
import scaleout

__all__ = ["PairPublisher", "PushpinPair", "SplitPool", "SplitTarget", "main"]

SYSTEMS = ["clarion-stream", "pushpin-x2", "clarion-grip"]
# SUBS:RATE:COUNT.  Per count, first a rate every system here sustained on the shared 2-core
# machine (2 x Pushpin's publish-to-delivery grew without bound at 20/s x 5,000 and
# 10/s x 10,000 there), then the rate the issue asks about, which may measure a queue.
LATENCY = ["5000:5:50", "5000:20:200", "10000:2:24", "10000:10:100"]
QUICK_LATENCY = ["1000:20:60", "2000:5:20"]
PUSHPIN_NOTE = (
    "2 x Pushpin: Debian /usr/bin/pushpin twice (own config, ports, run dir, origin each), "
    "handler message_rate/message_hwm unset; subscribers half/half; every /publish/ POSTed to "
    "both publish ports"
)


# --------------------------------------------------------------------------------------------
# Two Pushpins as one server under test
# --------------------------------------------------------------------------------------------


class PushpinPair(common.Server):
    """Two ``GripPushpin`` configurations run under one ``sh``, so the harness's CPU and RSS
    figures (taken over one process tree) cover both Pushpins and all their helpers.  The
    origins run outside that tree, as in bench/grip_fanout.py: they only answer the initial
    GETs."""

    def __init__(self) -> None:
        self.parts = [grip_fanout.GripPushpin(), grip_fanout.GripPushpin()]
        a, b = self.parts
        # Each runner puts its services (condure, handler, proxy, zurl) in process groups of
        # their own and stops them on SIGTERM; the shell must wait for that, or the session's
        # SIGKILL that follows (Server.stop) orphans the services with their ports.
        script = (
            f"{shlex.join(a.argv)} & a=$!; {shlex.join(b.argv)} & b=$!; "
            'trap \'kill -TERM "$a" "$b" 2>/dev/null; wait\' TERM; wait'
        )
        argv = ["sh", "-c", script]
        super().__init__("pushpin-x2", argv, a.publish_port, "/")
        self.origins: list[grip_fanout.Origin] = []

    @property
    def http_ports(self) -> list[int]:
        return [int(p.http_port) for p in self.parts]

    @property
    def publish_ports(self) -> list[int]:
        return [int(p.publish_port) for p in self.parts]

    async def start(self, timeout: float = 30) -> None:
        for p in self.parts:
            o = grip_fanout.Origin()
            o.port = p.origin_port  # the port its routes file names
            self.origins.append(o)
            await o.start()
        await super().start(timeout)  # waits for the first instance's publish API
        end = time.time() + timeout
        for port in [self.publish_ports[1], *self.http_ports]:
            while True:
                try:
                    _, w = await asyncio.open_connection(common.HOST, port)
                    w.close()
                    break
                except OSError:
                    if time.time() > end:
                        self.stop()
                        raise RuntimeError(
                            f"pushpin did not listen on {port}:\n{self.log_tail()}"
                        ) from None
                    await asyncio.sleep(0.2)

    def stop(self) -> None:
        super().stop()  # the whole session: sh, both runners and their helpers
        for o in self.origins:
            o.stop()
        self.origins = []

    def cleanup(self, keep_logs: bool = False) -> None:
        super().cleanup(keep_logs)
        for p in self.parts:
            p.cleanup(keep_logs)


class PubcontrolPublisher(grip_fanout.GripPublisher):
    """Paced publishes the way pubcontrol's asynchronous ``publish`` sends them: one worker
    per publish server, one request at a time, each carrying up to ``MAX_ITEMS`` publications
    queued meanwhile (pypubcontrol's ``_pubworker``).  A publish endpoint that answers slowly
    under load then costs a batch's wait, not a queue growing without bound."""

    MAX_ITEMS = 10

    async def _drain_queue(self) -> None:
        while True:
            items = [await self._queue.get()]
            while len(items) < self.MAX_ITEMS and not self._queue.empty():
                items.append(self._queue.get_nowait())
            stop = None in items
            todo = [x for x in items if x is not None]
            if todo:
                body = json.dumps(
                    {"items": [self._item(seq, ts) for seq, ts in todo]}, separators=(",", ":")
                ).encode()
                status, resp = await self._request("/publish/", body, self.headers)
                self._check(status, resp)
            if stop:
                return


def pubcontrol_publisher(s: common.Server) -> PubcontrolPublisher:
    return PubcontrolPublisher(lc.HttpClient(common.HOST, grip_fanout.publish_port(s)))


class PairPublisher:
    """One publisher, two publish servers: every publication goes to both (concurrently, as
    pubcontrol does); a publication counts as done when both answered."""

    def __init__(self, pubs: list[PubcontrolPublisher]) -> None:
        self.pubs = pubs

    @property
    def errors(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, p in enumerate(self.pubs):
            for k, v in p.errors.items():
                out[f"pushpin {i + 1}: {k}"] = v
        return out

    async def one(self, seq: int, ts: float) -> None:
        await asyncio.gather(*(p.one(seq, ts) for p in self.pubs))

    async def batch(self, first: int, count: int) -> None:
        await asyncio.gather(*(p.batch(first, count) for p in self.pubs))

    async def start_paced(self) -> None:
        for p in self.pubs:
            await p.start_paced()

    async def one_nowait(self, seq: int, ts: float) -> None:
        for p in self.pubs:
            await p.one_nowait(seq, ts)

    async def stop_paced(self) -> None:
        await asyncio.gather(*(p.stop_paced() for p in self.pubs))

    def close(self) -> None:
        for p in self.pubs:
            p.close()


def pair_publisher(s: common.Server) -> PairPublisher:
    assert isinstance(s, PushpinPair)
    return PairPublisher(
        [PubcontrolPublisher(lc.HttpClient(common.HOST, p)) for p in s.publish_ports]
    )


# --------------------------------------------------------------------------------------------
# Subscribers split over several targets
# --------------------------------------------------------------------------------------------


@dataclass
class SplitTarget:
    """Subscribers spread evenly over ``targets`` (the first ones get the remainder)."""

    targets: list[lc.Target]

    def shares(self, n: int) -> list[int]:
        base, extra = divmod(n, len(self.targets))
        return [base + (i < extra) for i in range(len(self.targets))]


class SplitPool(lc.SubscriberPool):
    """A SubscriberPool that also takes a :class:`SplitTarget`: one pool per target is
    started, then their client processes are adopted, so flow control, latency marks and
    reports run over all subscribers of all targets at once."""

    async def start(  # type: ignore[override]
        self, target: lc.Target | SplitTarget, n: int, **kw: Any
    ) -> dict[str, Any]:
        if isinstance(target, lc.Target):
            return await super().start(target, n, **kw)
        loop = asyncio.get_running_loop()
        parts = [lc.SubscriberPool() for _ in target.targets]
        shares = target.shares(n)
        t0 = time.time()
        infos = await asyncio.gather(
            *(p.start(t, k, **kw) for p, t, k in zip(parts, target.targets, shares, strict=True))
        )
        for p in parts:
            for ch in p.children:
                # progress of every child must wake *this* pool's waiters
                loop.remove_reader(ch.conn.fileno())
                loop.add_reader(ch.conn.fileno(), self._on_readable, ch)
                self.children.append(ch)
        agg: dict[str, Any] = {
            "requested": n,
            "ok": sum(i["ok"] for i in infos),
            "failed": sum(i["failed"] for i in infos),
            "processes": sum(i["processes"] for i in infos),
            "seconds": time.time() - t0,
            "connect_errors": lc._merge_counts(i["connect_errors"] for i in infos),
            "handshake_errors": lc._merge_counts(i["handshake_errors"] for i in infos),
            "per_target": [{"port": t.port, "ok": i["ok"], "failed": i["failed"]}
                           for t, i in zip(target.targets, infos, strict=True)],
        }  # fmt: skip
        self.ready_info = agg
        return agg


@contextlib.contextmanager
def split_pools() -> Iterator[None]:
    """common.fanout_scenario builds its pool as ``lc.SubscriberPool()``; for the length of
    one suite it builds a SplitPool instead (the same for a plain Target), so both sides of
    the comparison run through the same harness code."""
    orig = lc.SubscriberPool
    lc.SubscriberPool = SplitPool  # type: ignore[misc]
    try:
        yield
    finally:
        lc.SubscriberPool = orig  # type: ignore[misc]


def pair_target(s: common.Server) -> SplitTarget:
    assert isinstance(s, PushpinPair)
    return SplitTarget([grip_fanout.stream_target(p) for p in s.parts])


# --------------------------------------------------------------------------------------------
# Clarion: /connection/stream and the GRIP proxy, --workers 2 on Redis
# --------------------------------------------------------------------------------------------


def clarion_stream() -> common.Server:
    srv = scaleout.hub("redis-2")
    srv.name = "clarion-stream-w2"
    return srv


def clarion_grip(origin_port: int) -> common.Server:
    """bench/grip_fanout.clarion_grip with the Redis broker and ``--workers 2``."""
    srv = grip_fanout.clarion_grip(origin_port, "clarion-grip-w2")
    extra = os.environ.get("CLARION_BENCH_CONFIG", "") + "\n" + common.redis_broker_config()
    with open(os.path.join(srv.tmp, "clarion.toml"), "w") as f:
        f.write(common.CLARION_CONFIG.format(extra=extra.strip()))
    srv.argv += ["--workers", "2"]
    return srv


def children_of(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    s = f.read()
            except OSError:
                continue
            if int(s[s.rfind(")") + 2 :].split()[1]) == pid:
                out.append(int(d))
    return sorted(out)


def cpu_by_process(pid: int) -> dict[str, float]:
    """CPU seconds of ``pid``'s process tree per kind of process: a Clarion worker by its
    ``--worker-slot``, anything else by its command name (both Pushpins' condure together)."""
    tick = os.sysconf("SC_CLK_TCK")
    kids: dict[int, list[int]] = {}
    stat: dict[int, tuple[str, float]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rfind(")") + 2 :].split()
        comm = s[s.find("(") + 1 : s.rfind(")")]
        kids.setdefault(int(fields[1]), []).append(int(d))
        stat[int(d)] = (comm, (int(fields[11]) + int(fields[12])) / tick)
    out: dict[str, float] = collections.defaultdict(float)
    todo = [pid]
    while todo:
        p = todo.pop()
        todo.extend(kids.get(p, []))
        if p not in stat:
            continue
        label, cpu = stat[p]
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            argv = []
        if b"--worker-slot" in argv:
            label = "clarion worker " + argv[argv.index(b"--worker-slot") + 1].decode()
        elif b"clarion" in argv:
            label = "clarion supervisor"
        out[label] += cpu
    return dict(out)


class PhaseWatch:
    """Wraps a publisher to watch the server over the throughput phase (first batch to the
    start of the latency phase): CPU seconds per process of its tree, and with ``spy_path``
    a py-spy record (raw stacks, ``--subprocesses``: common.fanout_scenario's own profile
    samples the supervisor of ``--workers``, which does no work).  Hand-off to ``report``."""

    def __init__(
        self, inner: Any, pid: int, report: dict[str, Any], spy_path: str | None = None
    ) -> None:
        self.inner = inner
        self.pid = pid
        self.report = report
        self.spy_path = spy_path
        self.spy: subprocess.Popen[bytes] | None = None
        self.cpu0: dict[str, float] | None = None
        self.t0 = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def batch(self, first: int, count: int) -> None:
        if self.cpu0 is None:
            if self.spy_path and shutil.which("py-spy"):
                self.spy = subprocess.Popen(  # noqa: ASYNC220 - once per run
                    ["py-spy", "record", "--nonblocking", "--subprocesses", "--pid",
                     str(self.pid), "--rate", "100", "--format", "raw", "--duration", "120",
                     "-o", self.spy_path],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                await asyncio.sleep(0.5)  # attaching is not part of the phase
            self.cpu0, self.t0 = cpu_by_process(self.pid), time.time()
        await self.inner.batch(first, count)

    async def start_paced(self) -> None:
        if self.cpu0 is not None and "cpu_pct" not in self.report:
            took = time.time() - self.t0
            now = cpu_by_process(self.pid)
            self.report["cpu_pct"] = {
                k: round((v - self.cpu0.get(k, 0.0)) / took * 100, 1)
                for k, v in sorted(now.items())
            }
            await self._stop_spy()
        await self.inner.start_paced()

    async def _stop_spy(self) -> None:
        if self.spy is None:
            return
        self.spy.send_signal(2)  # SIGINT: py-spy writes what it has
        for _ in range(100):
            if self.spy.poll() is not None:
                break
            await asyncio.sleep(0.1)
        if self.spy.poll() is None:
            self.spy.kill()
        self.spy = None
        if self.spy_path:
            # summarized at the end of the run: py-spy may still be writing it out here
            self.report["profile"] = self.spy_path


def summarize_profile(path: str, top: int = 20) -> dict[str, Any]:
    """Self and inclusive share of the hub's samples per function, from py-spy's raw output
    (``frame;frame;... count`` per line, a leading ``process ...`` frame per worker)."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not stack or not n.isdigit():
                continue
            frames = [fr.split(" (")[0] + " (" + fr.split(" (")[-1].split("/")[-1]
                      if " (" in fr else fr for fr in stack.split(";")
                      if not fr.startswith("process ")]  # fmt: skip
            if not frames:
                continue
            k = int(n)
            total += k
            own[frames[-1]] += k
            for fr in set(frames):
                incl[fr] += k

    def share(c: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(fr, round(v / total * 100, 1)) for fr, v in c.most_common(top)]

    return {"samples": total, "self_pct": share(own), "inclusive_pct": share(incl)}


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {"args": vars(args), "pushpin_note": PUSHPIN_NOTE}
    t0 = time.time()
    print(
        f"Scale-out over HTTP streaming: {', '.join(args.only)} at "
        f"{', '.join(f'{n:,}' for n in args.subscribers)} subscribers "
        f"(machine: {os.cpu_count()} CPUs)"
    )
    print(f"  {PUSHPIN_NOTE}")
    await common.note_background(results)
    lat: dict[int, list[tuple[float, int]]] = {}
    for n, rate, count in grip_fanout.parse_points(args.latency):
        lat.setdefault(n, []).append((rate, count))
    counts = sorted(args.subscribers)
    suite: dict[str, Any] = dict(
        duration=args.duration,
        window=args.window,
        batch=args.batch,
        latency_at=lat,
        drain_timeout=args.drain_timeout,
        per_process=args.per_process,
        publish_concurrency=args.publish_concurrency,
    )
    ok, why = common.clarion_available()
    if not ok:
        print(f"  !! Clarion hub not available: {why}")
    pp_ok, pp_why = common.pushpin_available()
    if not pp_ok:
        print(f"  !! Pushpin not available: {pp_why}")

    def watched(
        make: Callable[[common.Server], Any], system: str
    ) -> Callable[[common.Server], Any]:
        """The publisher of each run (one per subscriber count, in ``counts`` order) in a
        PhaseWatch that reports into results["phases"][system][count]."""
        left = list(counts)

        def wrapped(s: common.Server) -> Any:
            n = left.pop(0)
            rep = results.setdefault("phases", {}).setdefault(system, {}).setdefault(str(n), {})
            spy = None
            if args.profile and system != "pushpin-x2":
                spy = os.path.join(common.BENCH_DIR, "results", f"profile-{system}-{n}.txt")
            return PhaseWatch(make(s), s.pid, rep, spy)

        return wrapped

    for system in args.only:
        print(f"\n  -- {system}")
        if system != "pushpin-x2" and not ok:
            results[system] = {"error": f"hub not available: {why}"}
            continue
        if system == "pushpin-x2" and not pp_ok:
            results[system] = {"error": pp_why}
            continue
        await common.flush_redis_prefix(common.REDIS_PREFIX.encode(), db=0)
        if system == "clarion-stream":
            results[system] = await common.run_server_suite(
                clarion_stream,
                fanout_stream.clarion_target,
                watched(
                    lambda s: lc.CentrifugoApiPublisher(lc.HttpClient(common.HOST, s.port)),
                    system,
                ),
                counts,
                connect_concurrency=args.clarion_connect_concurrency,
                **suite,
            )
        elif system == "pushpin-x2":
            with split_pools():
                results[system] = await common.run_server_suite(
                    PushpinPair,
                    pair_target,  # type: ignore[arg-type]
                    watched(pair_publisher, system),
                    counts,
                    # bursts of hundreds of concurrent new streams make pushpin-proxy answer 502
                    connect_concurrency=args.pushpin_connect_concurrency,
                    **suite,
                )
        else:
            origin = grip_fanout.Origin()
            await origin.start()
            make_grip = functools.partial(clarion_grip, origin.port)
            try:
                results[system] = await common.run_server_suite(
                    make_grip,
                    grip_fanout.stream_target,
                    watched(pubcontrol_publisher, system),
                    counts,
                    connect_concurrency=args.pushpin_connect_concurrency,
                    **suite,
                )
            finally:
                origin.stop()
        phases = (results.get("phases") or {}).get(system, {})
        for n in sorted(phases, key=int):
            path = phases[n].get("profile")
            if path and os.path.exists(path):  # noqa: ASYNC240 - once per run, at its end
                await asyncio.sleep(2)  # py-spy's --subprocesses output is written last
                phases[n]["profile_summary"] = summarize_profile(path)
            print_phase(system, int(n), phases[n])
    await common.flush_redis_prefix(common.REDIS_PREFIX.encode(), db=0)
    results["seconds"] = round(time.time() - t0, 1)
    print_report(results)
    print("saved", lc.save_result("scaleout_stream", results))
    return 0


HEADER = common.HEADER


def report_rows(results: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
    g = common.get
    a = argparse.Namespace(**results["args"])
    pp = results.get("pushpin-x2") or {}
    rows: list[list[Any]] = []
    label: dict[str, str] = {"clarion-stream": "stream", "clarion-grip": "GRIP stream"}
    ours: list[str] = [s for s in ("clarion-stream", "clarion-grip") if s in results]
    for system in ours:
        cl: dict[str, Any] = results[system]
        for n in sorted(a.subscribers):
            c = g(cl, "runs", str(n), "throughput", "deliveries_per_s")
            p = g(pp, "runs", str(n), "throughput", "deliveries_per_s")
            rows.append([f"{label[system]} deliveries/s @ {n:,} subs (--workers 2, Redis)",
                         lc.fmt_num(c), "2 x Pushpin", lc.fmt_num(p),
                         f"{c / p:.2f}x" if c and p else "-", ">= 2 x Pushpin",
                         ("yes" if c >= p else "NO") if c and p else "n/a"])  # fmt: skip
        for n, rate, _ in grip_fanout.parse_points(a.latency):
            if n not in a.subscribers:
                continue
            c = common.latency_of(g(cl, "runs", str(n)), rate)
            p = common.latency_of(g(pp, "runs", str(n)), rate)
            cp, pq = grip_fanout._valid_p50(c), grip_fanout._valid_p50(p)
            if cp and pq:
                ratio = f"{pq / cp:.1f}x lower p50" if cp <= pq else f"{cp / pq:.1f}x higher p50"
            else:
                ratio = "-"
            rows.append([f"{label[system]} p50 / p99 ms @ {n:,} subs, {rate:g} msg/s",
                         _pp(c), "2 x Pushpin", _pp(p), ratio, "p50 <= Pushpin",
                         ("yes" if cp <= pq else "NO") if cp and pq else "n/a"])  # fmt: skip
    problems = []
    for system in SYSTEMS:
        res = results.get(system) or {}
        if res.get("error"):
            problems.append(f"{system}: {res['error'].splitlines()[0]}")
        for n, run in (res.get("runs") or {}).items():
            e = common.summarize_errors(run)
            if e:
                problems.append(f"{system} @ {int(n):,}: {e}")
    return rows, problems


def backlog(la: dict[str, Any]) -> bool:
    """Whether a latency point measured a queue rather than a delivery time: its worst
    publication waited over a quarter of the whole phase (count / rate)."""
    if not la or la.get("max_ms") is None or not la.get("rate"):
        return False
    return bool(la["max_ms"] > 0.25 * la["messages"] / la["rate"] * 1000)


def _pp(la: dict[str, Any]) -> str:
    return grip_fanout._pp(la) + (" (backlog)" if backlog(la) else "")


def print_report(results: dict[str, Any]) -> None:
    rows, problems = report_rows(results)
    lc.print_table(
        "Scale-out over HTTP streaming: Clarion --workers 2 on Redis vs 2 x Pushpin "
        f"(100-byte messages, {results['args']['batch']} per request; latency = publish to "
        "last delivery)",
        HEADER,
        rows,
    )
    print(results.get("pushpin_note", PUSHPIN_NOTE))
    print("(backlog): the slowest publication waited over a quarter of the latency phase's "
          "length: a queue, not a delivery time")  # fmt: skip
    bg = results.get("background_cpu") or {}
    if bg:
        of = (os.cpu_count() or 1) * 100
        print(f"machine busy before the run: {bg.get('busy_pct')}% of {of}%")
    if problems:
        print("Problems seen:")
        for p in problems:
            print("  -", p)


def print_phase(system: str, n: int, ph: dict[str, Any]) -> None:
    cpu = ph.get("cpu_pct") or {}
    print(f"  {system} @ {n:,}: CPU % over the throughput phase: "
          + ", ".join(f"{k} {v}" for k, v in cpu.items() if v >= 0.5))  # fmt: skip
    prof = ph.get("profile_summary")
    if prof:
        print(f"    py-spy {ph['profile']}: {prof['samples']:,} samples")
        print("    self:      " + "; ".join(f"{f} {p}%" for f, p in prof["self_pct"][:8]))
        # the frames every sample has (runpy, main, the loop) say nothing
        inner = [(f, p) for f, p in prof["inclusive_pct"] if p < 97][:8]
        print("    inclusive: " + "; ".join(f"{f} {p}%" for f, p in inner))


def cli() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1,000 and 2,000 subscribers, 3 s throughput")  # fmt: skip
    ap.add_argument("--subscribers", type=int, nargs="+")
    ap.add_argument("--only", nargs="+", choices=SYSTEMS, default=SYSTEMS)
    ap.add_argument("--duration", type=float, default=6.0, help="throughput seconds per point")
    ap.add_argument("--window", type=int, default=200, help="max publications in flight")
    ap.add_argument("--batch", type=int, default=20, help="publications per request")
    ap.add_argument("--publish-concurrency", type=int, default=4,
                    help="concurrent publish requests in throughput mode")  # fmt: skip
    ap.add_argument("--per-process", type=int, default=2500,
                    help="subscriber connections per client process")  # fmt: skip
    ap.add_argument("--pushpin-connect-concurrency", type=int, default=20,
                    help="connects in flight per client process for the GRIP proxies "
                    "(bursts of hundreds make pushpin-proxy answer 502)")  # fmt: skip
    ap.add_argument("--clarion-connect-concurrency", type=int, default=100)
    ap.add_argument("--latency", nargs="*", metavar="SUBS:RATE:COUNT",
                    help=f"latency points (default {' '.join(LATENCY)}; --quick "
                    f"{' '.join(QUICK_LATENCY)})")  # fmt: skip
    ap.add_argument("--drain-timeout", type=float, default=60,
                    help="seconds to wait for the backlog after a throughput phase (left over, "
                    "it would be counted by the latency phase)")  # fmt: skip
    ap.add_argument("--profile", action="store_true",
                    help="py-spy the Clarion hub's workers over each throughput phase "
                    "(raw stacks: bench/results/profile-*.txt; perturbs the figures)")  # fmt: skip
    args = ap.parse_args()
    if args.subscribers is None:
        args.subscribers = [1000, 2000] if args.quick else [5000, 10000]
    if args.latency is None:
        args.latency = QUICK_LATENCY if args.quick else LATENCY
    if args.quick:
        args.duration = min(args.duration, 3.0)
    for n, rate, count in grip_fanout.parse_points(args.latency):
        if n < 1 or rate <= 0 or count < 1:
            ap.error(f"--latency {n}:{rate}:{count}: subscribers, rate and count must be > 0")
    if min(args.subscribers) < 2:
        ap.error("--subscribers: at least 2 (the Pushpin pair gets half each)")
    # py-spy lives next to the venv's python, which need not be on PATH
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    sys.exit(common.run_main(main(args)))


if __name__ == "__main__":
    cli()
