"""Redis killed with SIGKILL and restarted on the same port while publications flow (issue 10,
part 6), once with persistence (AOF, fsync on every write) and once without.

Two hub processes share a redis-server of the test's own. A publisher sends one publication
after another, alternating between the nodes, and counts every answer. Four clients listen,
a WebSocket (centrifuge-python, client-side subscription with recovery) and an NDJSON stream
(which reconnects from its cursor as a browser would) on each node. Every client's log is
checked publication by publication: each one arrives at most once and in order, and every
publication that was acknowledged reached it, unless the client was told its position was
gone (recovered: false, or an ``unrecoverable`` line) between its neighbours. Nothing is
sampled, and nothing waits on a clock: a last publication marks the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectingContext,
    PublicationContext,
    SubscribedContext,
    SubscribingContext,
    SubscriptionEventHandler,
)
from tests.conftest import Hub, HubFactory, free_port, in_ci, token
from tests.sse_reader import LineReader

REDIS_SERVER = shutil.which("redis-server")
# Under CI=true a missing redis-server fails the tests (scripts/install-test-deps installs it).
pytestmark = pytest.mark.skipif(REDIS_SERVER is None and not in_ci(),
                                reason="redis-server is not installed")

CHANNEL = "flow:x"
# History longer than anything published while a node's link is down, however slow the
# machine: a trimmed history would be a correct "insufficient state", not what is tested.
NAMESPACE = """
[namespaces.flow]
history_size = 10000
history_ttl = 300
force_recovery = true
allow_subscribe_for_client = true
"""
END = -1  # the data of the last publication
T = 30.0  # a bound for things that must happen, never a measurement
# Short broker bounds, so the test sees outages and reconnects quickly; the hub must answer
# every publish within command_timeout (plus a connect) whatever Redis does.
REDIS_OPTIONS = """
connect_timeout = 0.5
command_timeout = 1
ping_interval = 0.5
reconnect_delay = 0.05
reconnect_delay_max = 0.5
"""


@dataclass
class RedisServer:
    port: int
    directory: Path
    persistent: bool
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [REDIS_SERVER or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--daemonize", "no",
                "--protected-mode", "no", "--logfile", str(self.directory / "redis.log")]
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + T
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.directory / "redis.log").read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


@pytest.fixture
def redis_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(free_port(), directory, persistent=request.param)
    server.start()
    yield server
    server.stop()


# -- the clients ---------------------------------------------------------------------------------


@dataclass
class Log:
    """What one client saw, in order: ("pub", i) or ("lost", why)."""

    name: str
    events: list[tuple[str, Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    resubscribes: int = 0  # unsubscribe 2500 (WebSocket) or disconnect 3010 (stream)
    disconnects: int = 0  # the connection itself was dropped or refused

    def pub(self, i: int) -> None:
        if i == END:
            self.done.set()
        else:
            self.events.append(("pub", i))

    def lost(self, why: str) -> None:
        self.events.append(("lost", why))

    @property
    def received(self) -> list[int]:
        return [i for kind, i in self.events if kind == "pub"]

    @property
    def losses(self) -> int:
        return sum(1 for kind, _ in self.events if kind == "lost")


class WsEvents(SubscriptionEventHandler):
    def __init__(self, log: Log) -> None:
        self.log = log
        self.subscribed = asyncio.Event()

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.log.pub(ctx.pub.data["i"])

    async def on_subscribing(self, ctx: SubscribingContext) -> None:
        if ctx.code == 2500:
            self.log.resubscribes += 1

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        if ctx.was_recovering and not ctx.recovered:
            self.log.lost("recovered: false")
        self.subscribed.set()


class WsClientEvents(ClientEventHandler):
    def __init__(self, log: Log) -> None:
        self.log = log
        self.connected_once = False

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        if self.connected_once:
            self.log.disconnects += 1

    async def on_connected(self, ctx: Any) -> None:
        self.connected_once = True


async def ws_client(hub: Hub, log: Log) -> Client:
    return await recovering_ws_client(hub.ws_url, log, WsClientEvents(log))


async def recovering_ws_client(url: str, log: Log, client_events: WsClientEvents,
                               ssl_context: ssl.SSLContext | None = None) -> Client:
    """A centrifuge-python client at URL, subscribed to CHANNEL with recovery, logging into LOG."""
    events = WsEvents(log)
    client = Client(url, token=token(log.name), events=client_events,
                    min_reconnect_delay=0.05, max_reconnect_delay=0.3, ssl_context=ssl_context)
    sub = client.new_subscription(CHANNEL, events, min_resubscribe_delay=0.05,
                                  max_resubscribe_delay=0.3)
    await client.connect()
    await sub.subscribe()
    await asyncio.wait_for(events.subscribed.wait(), T)
    return client


@dataclass
class StreamResume:
    """What an NDJSON stream client comes back with (its session and cursor), and what it logs
    of each line it reads."""

    log: Log
    ready: asyncio.Event
    cursor: str = ""
    session: str = ""

    def params(self) -> dict[str, str]:
        params = {"channel": CHANNEL}
        if self.session:
            params["session"] = self.session
        else:
            params["token"] = token(self.log.name)
        if self.cursor:
            params["cursor"] = self.cursor
        return params

    def take(self, line: dict[str, Any]) -> dict[str, Any] | None:
        """Log one line; a ``disconnect`` line's payload is returned for the caller to judge."""
        if "connect" in line:
            self.session = line["connect"]["session"]
            self.ready.set()
        elif "pub" in line:
            self.cursor = line.get("cursor", self.cursor)
            self.log.pub(line["pub"]["data"]["i"])
        elif "unrecoverable" in line:
            self.cursor = line.get("cursor", "")
            self.log.lost("unrecoverable")
        elif "disconnect" in line:
            return line["disconnect"]  # type: ignore[no-any-return]
        return None


async def stream_client(hub: Hub, log: Log, ready: asyncio.Event) -> None:
    """An NDJSON stream that comes back from its cursor whenever it ends, until the end."""
    resume = StreamResume(log, ready)
    told = False  # the last stream ended with 3010: its end is not a dropped connection
    async with httpx.AsyncClient(timeout=httpx.Timeout(T, read=None)) as http:
        while not log.done.is_set():
            try:
                async with http.stream("GET", f"{hub.url}/connection/stream",
                                       params=resume.params()) as r:
                    if r.status_code != 200:
                        log.disconnects += 1
                        await asyncio.sleep(0.05)
                        continue
                    lines = LineReader(r)
                    while not log.done.is_set():
                        disconnect = resume.take(await lines.next(T))
                        if disconnect is not None:
                            told = disconnect["code"] == 3010
                            if told:
                                log.resubscribes += 1
                            else:
                                log.disconnects += 1
            except (EOFError, httpx.TransportError):
                if not told:
                    log.disconnects += 1
                told = False
                await asyncio.sleep(0.05)


# -- the publisher -------------------------------------------------------------------------------


@dataclass
class Published:
    ok: list[int] = field(default_factory=list)  # acknowledged, in order
    unavailable: int = 0  # 503 with code 100
    other: list[str] = field(default_factory=list)
    attempted: list[int] = field(default_factory=list)


async def publish(http: httpx.AsyncClient, hub: Hub, i: int, out: Published) -> bool:
    out.attempted.append(i)
    try:
        resp = await http.post(f"{hub.url}/api/publish", json={"channel": CHANNEL,
                                                               "data": {"i": i}},
                               headers={"X-API-Key": hub.api_key})
    except httpx.TimeoutException as exc:
        out.other.append(f"hung: {exc!r}")  # a publish must never wait past the bound
        return False
    if resp.status_code == 200 and "result" in resp.json():
        out.ok.append(i)
        return True
    if resp.status_code == 503 and resp.json()["error"]["code"] == 100:
        out.unavailable += 1
        return False
    out.other.append(f"{resp.status_code} {resp.text}")
    return False


def check(log: Log, published: Published) -> None:
    """Exactly once, in order, nothing acknowledged missing without a notice."""
    received = log.received
    assert received == sorted(set(received)), f"{log.name}: duplicate or out of order"
    assert set(received) <= set(published.attempted), f"{log.name}: got what nobody sent"
    position: dict[int, int] = {}
    for index, (kind, value) in enumerate(log.events):
        if kind == "pub":
            position[value] = index
    lost_at = [index for index, (kind, _) in enumerate(log.events) if kind == "lost"]
    last_seen = -1  # index in events of the last received publication before the missing one
    for i in published.ok:
        if i == END:
            continue
        if i in position:
            last_seen = position[i]
            continue
        later = [position[j] for j in received if j > i]
        next_seen = later[0] if later else len(log.events)
        assert any(last_seen < at < next_seen for at in lost_at), (
            f"{log.name}: acknowledged publication {i} missing without a notice")


# -- the flow ------------------------------------------------------------------------------------


Disruption = Callable[[httpx.AsyncClient, list[Hub], Published], Awaitable[None]]


async def flow(hub_factory: HubFactory, broker: str, disrupt: Disruption
               ) -> tuple[Published, list[Log], list[dict[str, Any]]]:
    """Two nodes, a WebSocket and an NDJSON stream on each, publications alternating between
    the nodes; ``disrupt`` runs after 100 are acknowledged, then 100 more and the end."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    config = f"broker = {broker}\n[redis]\nprefix = \"{prefix}\"\n" + REDIS_OPTIONS + NAMESPACE
    nodes = [hub_factory(config), hub_factory(config)]
    logs = [Log(f"ws{k}") for k in range(2)] + [Log(f"stream{k}") for k in range(2)]
    ws = [await ws_client(nodes[k], logs[k]) for k in range(2)]
    ready = [asyncio.Event() for _ in range(2)]
    streams = [asyncio.ensure_future(stream_client(nodes[k], logs[2 + k], ready[k]))
               for k in range(2)]
    for event in ready:
        await asyncio.wait_for(event.wait(), T)
    published = Published()
    async with httpx.AsyncClient(timeout=10.0) as http:
        i = 0

        async def until(condition: Callable[[], bool]) -> None:
            nonlocal i
            deadline = time.monotonic() + 2 * T
            while not condition():
                assert time.monotonic() < deadline, f"publishing stalled: {published}"
                await publish(http, nodes[i % 2], i, published)
                i += 1
                await asyncio.sleep(0.01)

        await until(lambda: len(published.ok) >= 100)
        await disrupt(http, nodes, published)
        ok = len(published.ok)
        await until(lambda: len(published.ok) >= ok + 100)
        for _ in range(200):
            if await publish(http, nodes[i % 2], END, published):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the end marker was never acknowledged: {published.other}")
        for log in logs:
            await asyncio.wait_for(log.done.wait(), T)
        health = [(await http.get(f"{n.url}/health")).json() for n in nodes]
    for task in streams:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for client in ws:
        await client.disconnect()
    for node in nodes:
        assert node.process.poll() is None, node.output()
    assert not published.other, published.other
    for log in logs:
        check(log, published)
    for log in logs[:2]:
        assert log.disconnects == 0, f"{log.name}: the hub dropped a WebSocket client"
    return published, logs, health


# -- the test ------------------------------------------------------------------------------------


@pytest.mark.parametrize("redis_server", [True, False], indirect=True,
                         ids=["persistent", "volatile"])
async def test_redis_killed_and_restarted_while_publishing(
        hub_factory: HubFactory, redis_server: RedisServer) -> None:
    async def kill_and_restart(http: httpx.AsyncClient, nodes: list[Hub],
                               published: Published) -> None:
        redis_server.kill()
        before = published.unavailable
        i = 10_000  # refused while Redis is away; no client may ever see these
        while published.unavailable < before + 10:
            assert await publish(http, nodes[i % 2], i, published) is False, published.other
            i += 1
        # While Redis is away every node says so, and answers readiness probes with 503.
        for node in nodes:
            deadline = time.monotonic() + T
            while (h := (await http.get(f"{node.url}/health")).json())["status"] != "degraded":
                assert time.monotonic() < deadline, h
                await asyncio.sleep(0.02)
            assert h["broker"]["connected"] is False
            assert (await http.get(f"{node.url}/health", params={"strict": "1"})
                    ).status_code == 503
        published.attempted[:] = [p for p in published.attempted if p < 10_000]
        redis_server.start()

    published, logs, health = await flow(hub_factory, f'"{redis_server.url}"', kill_and_restart)
    assert published.unavailable >= 10
    for h in health:
        assert h["status"] == "ok" and h["broker"]["connected"] is True, h
        assert h["broker"]["reconnects"] >= 1, h
    report = {log.name: (len(log.received), log.losses, log.resubscribes, log.disconnects)
              for log in logs}
    print(f"\nacknowledged {len(published.ok)}, refused 503 {published.unavailable}, "
          f"clients (received, told position gone, resubscribed, disconnected): {report}, "
          f"nodes: {[h['streams'] for h in health]}")
    if redis_server.persistent:
        # Nothing was lost in Redis, so nobody may be told that its position is gone.
        for log in logs:
            assert log.losses == 0, f"{log.name}: {log.events[-5:]}"
            assert set(published.ok) - {END} <= set(log.received)
    else:
        # Redis came back empty: a new epoch, and every client was told so.
        for log in logs:
            assert log.losses >= 1, f"{log.name} was not told its position is gone"


@pytest.mark.parametrize("redis_server", [False], indirect=True, ids=["volatile"])
async def test_while_redis_is_away_every_edge_answers_and_nobody_is_dropped(
        hub_factory: HubFactory, redis_server: RedisServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    hub = hub_factory(f'broker = "{redis_server.url}"\n[redis]\nprefix = "{prefix}"\n'
                      + REDIS_OPTIONS + NAMESPACE)
    log = Log("early")
    early = await ws_client(hub, log)  # connected before Redis goes
    redis_server.kill()
    headers = {"X-API-Key": hub.api_key}
    async with httpx.AsyncClient(timeout=10.0) as http:
        resp = await http.post(f"{hub.url}/api/publish", headers=headers,
                               json={"channel": CHANNEL, "data": {"i": 0}})
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == 100 and resp.headers["retry-after"]
        batch = await http.post(f"{hub.url}/api/batch", headers=headers, json={"commands": [
            {"publish": {"channel": CHANNEL, "data": {"i": 1}}},
            {"info": {}},
            {"history": {"channel": CHANNEL, "limit": 1}}]})
        assert batch.status_code == 200
        replies = batch.json()["replies"]
        assert [r.get("error", {}).get("code") for r in replies] == [100, None, 100]
        poll = await http.get(f"{hub.url}/connection/poll",
                              params={"channel": CHANNEL, "token": token("pat")})
        assert poll.status_code == 503 and poll.json()["error"]["code"] == 100
        ticket = await http.post(f"{hub.url}/api/ticket", headers=headers,
                                 json={"user": "tia"})
        assert ticket.status_code == 503
        async with http.stream("GET", f"{hub.url}/connection/stream",
                               params={"channel": CHANNEL, "token": token("sam")}) as r:
            lines = LineReader(r)
            assert "connect" not in (first := await lines.next(T)), first
            assert first["disconnect"]["code"] == 3004
            assert first["disconnect"]["reconnect"] is True

        # A WebSocket client that subscribes now gets the temporary error and retries until
        # Redis is back; the one connected before never noticed.
        late_log = Log("late")
        events = WsEvents(late_log)
        late = Client(hub.ws_url, token=token("lee"), min_reconnect_delay=0.05,
                      max_reconnect_delay=0.3)
        sub = late.new_subscription(CHANNEL, events, min_resubscribe_delay=0.05,
                                    max_resubscribe_delay=0.3)
        await late.connect()
        await sub.subscribe()
        redis_server.start()
        await asyncio.wait_for(events.subscribed.wait(), T)
        # Redis came back empty: the early client is told its position is gone and
        # resubscribes; end markers go out until both clients have one.
        for _ in range(200):
            if log.done.is_set() and late_log.done.is_set():
                break
            await http.post(f"{hub.url}/api/publish", headers=headers,
                            json={"channel": CHANNEL, "data": {"i": END}})
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"end markers did not arrive: {log}, {late_log}")
    assert log.disconnects == 0 and late_log.disconnects == 0
    assert hub.process.poll() is None
    await late.disconnect()
    await early.disconnect()
