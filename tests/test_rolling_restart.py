"""``clarion serve --workers 2`` reloaded with SIGHUP: a rolling restart (issue 12, part 2).

A real supervisor and two real workers on one port, Redis db 0 under a key prefix of the test's
own. Clients connected before the reload (centrifuge-python WebSockets with recovery, NDJSON
streams that resume from their cursor, from tests/test_scaleout_redis_failure.py) are counted
publication by publication while a publisher keeps publishing through the server API during
the whole reload (a 503 or a dropped connection is retried with the same idempotency key, so
every publication is published exactly once). Every client must receive every publication
exactly once and in order, though every one of them was told to reconnect.

Nothing waits on a clock: the reload is over when the supervisor says so and both workers'
pids have changed; a last publication marks the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import httpx
import pytest
import redis
from centrifuge import Client, ConnectingContext
from tests.conftest import Hub
from tests.sse_reader import LineReader
from tests.test_scaleout_redis_failure import (
    CHANNEL,
    END,
    NAMESPACE,
    Log,
    Published,
    StreamResume,
    T,
    WsClientEvents,
    check,
    recovering_ws_client,
    ws_client,
)
from tests.test_workers import (  # noqa: F401 - server and tag are fixtures
    alive,
    metrics,
    ready_pids,
    sample,
    server,
    tag,
    wait_until,
)

from clarion.errors import Disconnect
from clarion.hub.workers import (
    parse_ready,
    ready_line,
    reconnect_window,
    spread_disconnects,
)

BROKER = "redis://127.0.0.1:6379/0"


@pytest.fixture
def prefix(tag: str) -> Iterator[str]:  # noqa: F811 - the fixture imported above
    """This test's [redis] prefix in db 0; its keys are deleted afterwards."""
    name = f"clarion-{tag}"
    yield name
    client = redis.Redis.from_url(BROKER)
    try:
        keys = list(client.scan_iter(match=f"{name}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# -- clients that say how they were moved ----------------------------------------------------


SHUTDOWN = 3001  # the close (WebSocket) or disconnect (stream) code of a retiring worker


@dataclass
class MovedLog(Log):
    """A client's log with the code of every move: a WebSocket's close code as centrifuge-python
    reports it, a stream's ``disconnect`` code, or None for a stream that ended unannounced."""

    codes: list[int | None] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)  # statuses of stream reconnects not let in


class MovedWsEvents(WsClientEvents):
    def __init__(self, log: MovedLog) -> None:
        super().__init__(log)
        self.moved = log

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        if self.connected_once:
            self.moved.codes.append(ctx.code)
        await super().on_connecting(ctx)


async def ws_client_at(url: str, log: MovedLog, ssl_context: ssl.SSLContext | None = None
                       ) -> Client:
    """tests/test_scaleout_redis_failure.py's ws_client (recovering subscription to CHANNEL) on
    any address, wss:// included, recording the code of each move."""
    return await recovering_ws_client(url, log, MovedWsEvents(log), ssl_context)


async def stream_client_at(base_url: str, log: MovedLog, ready: asyncio.Event,
                           verify: ssl.SSLContext | bool = True) -> None:
    """An NDJSON stream on CHANNEL that comes back with its session and cursor whenever it
    ends, until the last publication; every end is a move, with the code it was told."""
    resume = StreamResume(log, ready)
    async with httpx.AsyncClient(base_url=base_url, verify=verify,
                                 timeout=httpx.Timeout(T, read=None)) as http:
        while not log.done.is_set():
            code: int | None = None
            try:
                async with http.stream("GET", "/connection/stream",
                                       params=resume.params()) as r:
                    if r.status_code != 200:
                        log.refused.append(r.status_code)
                        await asyncio.sleep(0.05)
                        continue
                    lines = LineReader(r)
                    while not log.done.is_set():
                        disconnect = resume.take(await lines.next(T))
                        if disconnect is not None:
                            code = disconnect["code"]
            except (EOFError, httpx.TransportError):
                log.disconnects += 1
                log.codes.append(code)
                await asyncio.sleep(0.05)


class Api(Protocol):
    @property
    def url(self) -> str: ...

    @property
    def api_key(self) -> str: ...


def start(server: Callable[..., Hub], prefix: str) -> Hub:  # noqa: F811
    return server("serve", f'{NAMESPACE}\n[redis]\nprefix = "{prefix}"\n', "--broker", BROKER)


def config_file(hub: Hub) -> Path:
    # Where the server fixture of tests/test_workers.py writes it.
    return hub.log.with_name(f"clarion-{hub.port}.toml")


async def publish_surely(http: httpx.AsyncClient, hub: Api, i: int, key: str,
                         out: Published) -> None:
    """Publish ``{"i": i}`` until the hub acknowledges it: a 503 (no broker yet) or a
    connection cut by a retiring worker is retried with the same idempotency key, so a
    publication whose answer was lost is not published twice. A proxy's 502 or 504 is retried
    too, and kept in ``out.other`` for the test to judge."""
    out.attempted.append(i)
    deadline = time.monotonic() + T
    while True:
        assert time.monotonic() < deadline, f"publication {i} never acknowledged: {out.other}"
        try:
            resp = await http.post(f"{hub.url}/api/publish", headers={"X-API-Key": hub.api_key},
                                   json={"channel": CHANNEL, "data": {"i": i},
                                         "idempotency_key": f"{key}-{i}"})
        except httpx.TransportError:
            out.unavailable += 1
            await asyncio.sleep(0.02)
            continue
        if resp.status_code == 503:
            out.unavailable += 1
            await asyncio.sleep(0.02)
            continue
        if resp.status_code in (502, 504):
            out.other.append(f"publication {i}: {resp.status_code} {resp.text[:200]}")
            await asyncio.sleep(0.02)
            continue
        assert resp.status_code == 200 and "result" in resp.json(), resp.text
        out.ok.append(i)
        return


def reloads_done(hub: Hub) -> int:
    return hub.output().count("reload done")


# -- the rolling restart ---------------------------------------------------------------------


@dataclass
class Flow:
    """What a reload under steady publishing left: each client's log, and what was published."""

    logs: list[MovedLog]
    published: Published
    sent: list[int]  # acknowledged publications, END excepted


async def publish_through_a_reload(
        *, reload: Callable[[], None], reloaded: Callable[[], bool], ws_url: str,
        stream_url: str, api: Api, key: str, ssl_context: ssl.SSLContext | None = None,
        between: Callable[[], None] = lambda: None) -> Flow:  # fmt: skip
    """Four recovering WebSocket clients and two resuming NDJSON streams connect; publishing
    runs without a pause before ``reload()``, until ``reloaded()``, and for 50 more; a last
    publication marks the end. ``between`` runs once the reload is over (its checks)."""
    logs = [MovedLog(f"ws{k}") for k in range(4)] + [MovedLog(f"stream{k}") for k in range(2)]
    clients = [await ws_client_at(ws_url, log, ssl_context) for log in logs[:4]]
    ready = [asyncio.Event() for _ in range(2)]
    verify: ssl.SSLContext | bool = ssl_context or True
    streams = [asyncio.ensure_future(stream_client_at(stream_url, log, event, verify))
               for log, event in zip(logs[4:], ready, strict=True)]
    published = Published()
    i = 0
    try:
        for event in ready:
            await asyncio.wait_for(event.wait(), T)
        async with httpx.AsyncClient(timeout=10.0, verify=verify) as http:

            async def publish_until(done: Callable[[], bool]) -> None:
                nonlocal i
                deadline = time.monotonic() + 4 * T
                while not done():
                    assert time.monotonic() < deadline, "the reload did not end"
                    await publish_surely(http, api, i, key, published)
                    i += 1
                    await asyncio.sleep(0.01)

            await publish_until(lambda: len(published.ok) >= 50)
            reload()
            # Publishing goes on through the whole reload: every slot replaced, every old
            # worker gone.
            await publish_until(reloaded)
            between()
            ok = len(published.ok)
            await publish_until(lambda: len(published.ok) >= ok + 50)
            await publish_surely(http, api, END, key, published)
            for log in logs:
                await asyncio.wait_for(log.done.wait(), T)
    finally:
        for task in streams:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for client in clients:
            await client.disconnect()
    sent = [n for n in published.ok if n != END]
    assert sent == list(range(i)), "every publication acknowledged once, in order"
    return Flow(logs, published, sent)


def check_every_client_moved_losing_nothing(flow: Flow) -> None:
    for log in flow.logs:
        check(log, flow.published)
        assert log.losses == 0, f"{log.name} was told its position is gone: {log.events[-5:]}"
        assert log.received == flow.sent, (
            f"{log.name}: not every publication exactly once in order")
        # Every client was on an old worker, so every one of them was told to go, and every
        # move was the shutdown code (3001: reconnect), never an unannounced drop.
        assert log.codes, f"{log.name} was never moved"
        assert set(log.codes) == {SHUTDOWN}, f"{log.name} was moved with codes {log.codes}"


async def test_steady_publishing_through_a_rolling_restart_reaches_every_client_once(
        server: Callable[..., Hub], prefix: str) -> None:  # noqa: F811
    hub = start(server, prefix)
    before = ready_pids(hub)

    def replaced() -> None:
        after = ready_pids(hub)
        assert set(after) == {0, 1} and not set(after.values()) & set(before.values())
        assert not any(alive(pid) for pid in before.values())

    flow = await publish_through_a_reload(
        reload=lambda: hub.process.send_signal(signal.SIGHUP),
        reloaded=lambda: reloads_done(hub) == 1, between=replaced,
        ws_url=hub.ws_url, stream_url=hub.url, api=hub, key=prefix)
    assert hub.process.poll() is None, hub.output()
    check_every_client_moved_losing_nothing(flow)
    for log in flow.logs:
        assert not log.refused, f"{log.name}: reconnects refused {log.refused}"
    assert not flow.published.other, flow.published.other
    text = metrics(hub)
    assert sample(text, "clarion_worker_reloads_total", result="ok") == 1.0
    assert sample(text, "clarion_worker_reloads_total", result="failed") == 0.0
    assert sample(text, "clarion_workers_running") == 2.0
    assert sample(text, "clarion_workers_draining") == 0.0
    assert sample(text, "clarion_worker_restarts_total", slot="0") == 0.0
    output = hub.output()
    assert output.count("worker retiring: its replacement is ready") == 2
    assert "worker died" not in output
    seen = [(log.name, len(log.received), log.codes) for log in flow.logs]
    print(f"\npublished {len(flow.sent)} (retried {flow.published.unavailable}), clients "
          f"(name, received, move codes): {seen}")


async def test_a_reload_with_a_broken_configuration_keeps_the_old_workers(
        server: Callable[..., Hub], prefix: str) -> None:  # noqa: F811
    hub = start(server, prefix)
    before = ready_pids(hub)
    log = Log("ws")
    client = await ws_client(hub, log)
    cfg = config_file(hub)
    good = cfg.read_text()
    try:
        cfg.write_text(good + "\nnot_a_setting = 1\n")
        hub.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload aborted" in hub.output(), hub, "the reload aborted")
        output = hub.output()
        assert "the new worker exited before it was ready" in output
        assert "not_a_setting" in output  # the new worker's own error says what is wrong
        assert ready_pids(hub) == before and all(alive(pid) for pid in before.values())
        text = metrics(hub)
        assert sample(text, "clarion_worker_reloads_total", result="failed") == 1.0
        assert sample(text, "clarion_worker_reloads_total", result="ok") == 0.0
        assert sample(text, "clarion_workers_running") == 2.0
        assert sample(text, "clarion_worker_restarts_total", slot="0") == 0.0

        # The old workers serve on, and nobody was disconnected.
        published = Published()
        async with httpx.AsyncClient(timeout=10.0) as http:
            for n in range(20):
                await publish_surely(http, hub, n, prefix, published)
            deadline = time.monotonic() + T
            while len(log.received) < 20:
                assert time.monotonic() < deadline, log.events
                await asyncio.sleep(0.02)
        assert log.received == list(range(20)) and log.disconnects == 0

        # Fixed, the next reload goes through.
        cfg.write_text(good)
        hub.process.send_signal(signal.SIGHUP)
        wait_until(lambda: reloads_done(hub) == 1, hub, "the reload done", timeout=4 * T)
        after = ready_pids(hub)
        assert not set(after.values()) & set(before.values())
        assert sample(metrics(hub), "clarion_worker_reloads_total", result="ok") == 1.0
    finally:
        await client.disconnect()


async def test_a_sighup_during_a_reload_queues_one_more(
        server: Callable[..., Hub], prefix: str) -> None:  # noqa: F811
    hub = start(server, prefix)
    first = ready_pids(hub)
    hub.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload starting" in hub.output(), hub, "the reload started")
    hub.process.send_signal(signal.SIGHUP)
    wait_until(lambda: reloads_done(hub) == 2, hub, "two reloads done", timeout=4 * T)
    output = hub.output()
    assert "SIGHUP during a reload: queued, to run after this one" in output
    assert output.count("reload starting") == 2
    last = ready_pids(hub)
    assert not set(last.values()) & set(first.values())
    # Each reload started one worker per slot; all but the last two are gone.
    started = [int(p) for p in _started_pids(output)]
    assert len(started) == 6
    assert {pid for pid in started if alive(pid)} == set(last.values())
    text = metrics(hub)
    assert sample(text, "clarion_worker_reloads_total", result="ok") == 2.0
    assert sample(text, "clarion_workers_running") == 2.0


async def test_sigterm_during_a_reload_stops_old_and_new_workers(
        server: Callable[..., Hub], prefix: str) -> None:  # noqa: F811
    hub = start(server, prefix)
    hub.process.send_signal(signal.SIGHUP)
    wait_until(lambda: len(_started_pids(hub.output())) == 3, hub, "a new worker started")
    hub.process.send_signal(signal.SIGTERM)
    assert hub.process.wait(4 * T) == 0, hub.output()
    assert "supervisor stopped clean=True" in hub.output()
    assert not any(alive(int(pid)) for pid in _started_pids(hub.output()))


def _started_pids(output: str) -> list[str]:
    return [line.rpartition("pid=")[2].split()[0] for line in output.splitlines()
            if line.startswith("info") and "worker started" in line]


# -- the supervisor alone, over stand-in workers ------------------------------------------------

# A stand-in for a worker: ready with the address in the file next to it (or exits with status
# 2 before it is ready when that says "broken"), and gone on SIGUSR1 (retired) or SIGTERM.
FAKE_WORKER = """
import os, signal, sys, time
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from clarion.hub.workers import ready_line
args = sys.argv[1:]
fd = int(args[args.index("--worker-ready-fd") + 1])
address = (Path(__file__).parent / "address").read_text().strip()
if address == "broken":
    print("configuration error: broken", file=sys.stderr, flush=True)
    sys.exit(2)
for sig in (signal.SIGUSR1, signal.SIGTERM):
    signal.signal(sig, lambda *_: sys.exit(0))
signal.signal(signal.SIGHUP, signal.SIG_IGN)
os.write(fd, ready_line(address, 1, 1.0))
os.close(fd)
while True:
    time.sleep(1)
"""
SUPERVISE = """
import sys
from clarion.hub.logs import Logger
from clarion.hub.workers import Supervisor
sys.exit(Supervisor([sys.executable, sys.argv[1]], 1, 1.0, Logger()).run())
"""


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[tuple[Hub, Path]]:
    """A supervisor of one stand-in worker, and the file its workers read their address from."""
    (tmp_path / "worker.py").write_text(FAKE_WORKER)
    address = tmp_path / "address"
    address.write_text("127.0.0.1:1")
    log = tmp_path / "supervisor.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", SUPERVISE, str(tmp_path / "worker.py")],
                                stdout=out, stderr=subprocess.STDOUT)
    hub = Hub(proc, 0, "", log)
    try:
        wait_until(lambda: "workers ready" in hub.output(), hub, "the stand-in ready")
        yield hub, address
    finally:
        proc.terminate()
        proc.wait(T)


def test_a_reload_that_would_move_the_port_is_refused(supervised: tuple[Hub, Path]) -> None:
    hub, address = supervised
    old = ready_pids(hub)[0]
    address.write_text("127.0.0.1:2")
    hub.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload aborted" in hub.output(), hub, "the reload aborted")
    assert ("the new configuration changes the listening address (127.0.0.1:1 to 127.0.0.1:2), "
            "which takes a full restart") in hub.output()
    assert ready_pids(hub)[0] == old and alive(old)
    new = int(_started_pids(hub.output())[-1])
    wait_until(lambda: not alive(new), hub, "the refused worker stopped")

    address.write_text("broken")
    hub.process.send_signal(signal.SIGHUP)
    wait_until(lambda: hub.output().count("reload aborted") == 2, hub, "the second abort")
    assert "configuration error: broken" in hub.output()
    assert "exited before it was ready (exit status 2)" in hub.output()
    assert alive(old)

    address.write_text("127.0.0.1:1")
    hub.process.send_signal(signal.SIGHUP)
    wait_until(lambda: reloads_done(hub) == 1, hub, "the reload done")
    assert ready_pids(hub)[0] != old and not alive(old)
    assert f"worker retired worker=0 pid={old} status=exit status 0" in hub.output()


# -- the pure parts ---------------------------------------------------------------------------


class _Conn:
    def __init__(self, hub: Any, told: list[tuple[int, int]], step: list[int]) -> None:
        self.hub, self.told, self.step = hub, told, step

    def disconnect(self, bye: Disconnect) -> None:
        assert bye.code == 3001
        self.told.append((id(self), self.step[0]))
        self.hub.websockets.discard(self)
        self.hub.streams.discard(self)


async def test_reconnects_are_spread_over_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    step = [0]
    real_sleep = asyncio.sleep

    async def next_step(delay: float) -> None:
        step[0] += 1
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", next_step)
    hub: Any = SimpleNamespace(websockets=set(), streams=set())
    told: list[tuple[int, int]] = []
    conns = [_Conn(hub, told, step) for _ in range(10)]
    hub.websockets.update(conns[:7])
    hub.streams.update(conns[7:])
    await spread_disconnects(hub, Disconnect(3001, "shutdown"), 0.2)
    assert sorted(i for i, _ in told) == sorted(id(c) for c in conns)  # each one once
    assert sorted({s for _, s in told}) == [0, 1, 2, 3]  # 0.2 s in steps of 0.05 s
    assert step[0] == 3  # no sleep after the last step

    # Window 0: everyone at once, no sleep; fewer clients than steps: one step each.
    for window, clients, steps in ((0.0, 5, 1), (2.0, 3, 3)):
        step[0] = 0
        told.clear()
        conns = [_Conn(hub, told, step) for _ in range(clients)]
        hub.websockets.update(conns)
        await spread_disconnects(hub, Disconnect(3001, "shutdown"), window)
        assert len(told) == clients and len({s for _, s in told}) == steps
        assert not hub.websockets


async def test_a_client_gone_before_its_turn_is_not_told(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    hub: Any = SimpleNamespace(websockets=set(), streams=set())
    told: list[tuple[int, int]] = []
    step = [0]
    conns = [_Conn(hub, told, step) for _ in range(4)]
    hub.websockets.update(conns)
    real_sleep = asyncio.sleep

    async def leave_meanwhile(delay: float) -> None:
        hub.websockets.clear()  # everyone not yet told left by themselves
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", leave_meanwhile)
    await spread_disconnects(hub, Disconnect(3001, "shutdown"), 1.0)
    assert len(told) == 1




def test_ready_line_round_trip() -> None:
    line = ready_line("127.0.0.1:8000", 4, 12.5)
    assert parse_ready(line) == {"address": "127.0.0.1:8000", "workers": "4", "drain": "12.5"}
    assert parse_ready(b"") is None  # the worker exited before it was ready: EOF
    assert parse_ready(b"ready\n") == {}
    assert parse_ready(b"nonsense\n") is None


def test_reconnect_window_is_at_most_half_the_shutdown_timeout() -> None:
    from clarion.hub.config import Config

    assert reconnect_window(Config(shutdown_timeout=10.0)) == 2.0  # the default
    assert reconnect_window(Config(shutdown_timeout=1.0)) == 0.5
    assert reconnect_window(Config(shutdown_timeout=0.0)) == 0.0
    assert reconnect_window(Config(reconnect_window="5s", shutdown_timeout=20.0)) == 5.0
