"""``clarion serve --workers N`` and ``clarion demo --workers N``: real processes on one port,
Redis between them (issue 10, part 5).

Which worker a connection lands on is the kernel's choice (SO_REUSEPORT hashes the client's
address and port), so the tests find out where each one landed (``/api/info`` names the worker,
``/metrics`` counts connections per worker) and retry a new connection until it is where they
need it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from centrifuge import Client
from tests.conftest import (
    API_KEY,
    BASE_CONFIG,
    CHAT_NAMESPACE,
    Hub,
    free_port,
    in_ci,
    redis_up,
    token,
)
from tests.test_websocket_clients import Recorder

from clarion.hub.config import Config
from clarion.hub.metrics import merge_expositions
from clarion.hub.workers import EXIT_GRACE

# Not the broker tests' db 0: a stray key of a killed run never meets theirs.
REDIS_URL = "redis://127.0.0.1:6379/11"
SHUTDOWN_TIMEOUT = 3
READY = re.compile(r"worker ready worker=(\d+) pid=(\d+)")




@pytest.fixture
def tag() -> Iterator[str]:
    """A name of this test's own, in its channels (and key prefix when the config has one);
    every Redis key that holds it is deleted afterwards."""
    if not redis_up():
        why = "no Redis at 127.0.0.1:6379"
        if in_ci():
            pytest.fail(f"{why}; CI must run one")
        pytest.skip(why)
    name = f"wt{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"*{name}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _redis_table(tag: str) -> str:
    # The [redis] table (key prefix, pool, timeouts) arrives with the hub's Redis settings.
    if "redis" in Config.__struct_fields__:
        return f'\n[redis]\nprefix = "clarion-{tag}"\n'
    return ""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[..., Hub]]:
    """``start(command, config, *args) -> Hub``: ``clarion COMMAND --workers 2`` on a free
    port, once both workers are ready; stopped (SIGTERM, then SIGKILL) at teardown."""
    started: list[Hub] = []

    def start(command: str, config: str, *args: str) -> Hub:
        hub = start_workers(tmp_path, command, config, REDIS_URL, *args)
        started.append(hub)
        return hub

    yield start
    stop_workers(started)


def start_workers(tmp_path: Path, command: str, config: str, broker: str, *args: str) -> Hub:
    """``clarion COMMAND --broker BROKER --workers 2`` on a free port, with CONFIG after the
    base config, once both workers are ready; the caller stops it with stop_workers."""
    port = free_port()
    cfg = tmp_path / f"clarion-{port}.toml"
    cfg.write_text(f"{BASE_CONFIG}shutdown_timeout = {SHUTDOWN_TIMEOUT}\n{config}")
    log = tmp_path / f"clarion-{port}.log"
    cmd = [sys.executable, "-m", "clarion", command, "--host", "127.0.0.1", "--port",
           str(port), "--config", str(cfg), "--broker", broker, "--workers", "2", *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    hub = Hub(proc, port, API_KEY, log)
    try:
        wait_until(lambda: len(ready_pids(hub)) == 2, hub, "both workers ready")
    except BaseException:
        stop_workers([hub])
        raise
    return hub


def stop_workers(hubs: list[Hub]) -> None:
    """SIGTERM each supervisor, SIGKILL it past its grace, then SIGKILL any worker it left."""
    for hub in hubs:
        if hub.process.poll() is None:
            hub.process.terminate()
            try:
                hub.process.wait(SHUTDOWN_TIMEOUT + EXIT_GRACE + 5)
            except subprocess.TimeoutExpired:
                hub.process.kill()
                hub.process.wait()
        for pid in ready_pids(hub).values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def wait_until(ready: Callable[[], bool], hub: Hub, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if hub.process.poll() is not None:
            raise AssertionError(f"server exited ({hub.process.returncode}) before {what}:\n"
                                 f"{hub.output()}")
        if ready():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}\n{hub.output()}")


def ready_pids(hub: Hub) -> dict[int, int]:
    """The latest pid of each worker, from the supervisor's log."""
    return {int(w): int(p) for w, p in READY.findall(hub.output())}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: its parent has not collected it yet.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return False


def metrics(hub: Hub) -> str:
    return httpx.get(f"{hub.url}/metrics", timeout=10).text


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` whose labels include ``labels``."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith((name + "{", name + " ")):
            continue
        head, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', head[len(name):]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


def websockets_per_worker(hub: Hub) -> dict[str, float]:
    text = metrics(hub)
    return {w: sample(text, "clarion_connections", worker=w, transport="websocket") or 0.0
            for w in ("0", "1")}


def worker_of(info: dict[str, Any]) -> str:
    name = info["result"]["nodes"][0]["name"]
    return str(name.rpartition("/worker-")[2])


def client_on(hub: Hub, worker: str) -> httpx.Client:
    """An HTTP client whose kept-alive connection is served by ``worker``."""
    for _ in range(64):
        client = httpx.Client(base_url=hub.url, headers={"X-API-Key": hub.api_key}, timeout=10)
        if worker_of(client.post("/api/info", json={}).json()) == worker:
            return client
        client.close()
    raise AssertionError(f"no connection reached worker {worker} in 64 tries")


async def connect_on(hub: Hub, worker: str, make: Callable[[], Client]) -> Client:
    """A connected centrifuge client served by ``worker`` (others are disconnected again)."""
    for _ in range(32):
        before = websockets_per_worker(hub)
        client = make()
        await client.connect()
        after = await asyncio.to_thread(settled, hub, sum(before.values()) + 1)
        if after[worker] > before[worker]:
            return client
        await client.disconnect()
        await asyncio.to_thread(settled, hub, sum(before.values()))
    raise AssertionError(f"no WebSocket reached worker {worker} in 32 tries")


def settled(hub: Hub, total: float, timeout: float = 10) -> dict[str, float]:
    """WebSockets per worker, once the workers count ``total`` in all."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = websockets_per_worker(hub)
        if sum(counts.values()) == total:
            return counts
        time.sleep(0.05)
    raise AssertionError(f"the workers never counted {total} WebSockets:\n{metrics(hub)}")


# -- serve --workers 2 -------------------------------------------------------------------------


async def test_two_workers_share_the_port_and_each_others_publications(
        server: Callable[..., Hub], tag: str) -> None:
    hub = server("serve", _redis_table(tag) + CHAT_NAMESPACE)

    # Fresh connections land on both workers.
    seen = {worker_of(hub.api("info", {}).json()) for _ in range(40)}
    assert seen == {"0", "1"}

    channel = f"chat:{tag}"
    rec = Recorder()
    client = await connect_on(hub, "1", lambda: Client(hub.ws_url, token=token("alice")))
    try:
        sub = client.new_subscription(channel, rec)
        await sub.subscribe()
        await rec.wait_for(lambda: rec.subscribed)
        with contextlib.closing(client_on(hub, "0")) as api:
            for n in range(3):
                answer = api.post("/api/publish", json={"channel": channel, "data": {"n": n}})
                assert "error" not in answer.json(), answer.text
        await rec.wait_for(lambda: len(rec.pubs) == 3)
        assert rec.pubs == [{"n": 0}, {"n": 1}, {"n": 2}]

        # One scrape, any worker: both workers' samples, labelled, and the supervisor's.
        text = metrics(hub)
        assert websockets_per_worker(hub) == {"0": 0.0, "1": 1.0}
        assert sample(text, "clarion_messages_sent_total", worker="1") == 3.0
        assert sample(text, "clarion_messages_sent_total", worker="0") == 0.0
        assert sample(text, "clarion_workers") == 2.0
        assert sample(text, "clarion_workers_running") == 2.0
        assert sample(text, "clarion_worker_restarts_total", slot="0") == 0.0
        assert text.count("# TYPE clarion_connections gauge") == 1
    finally:
        await client.disconnect()


async def test_a_killed_worker_is_replaced_and_sigterm_drains_both(
        server: Callable[..., Hub], tag: str) -> None:
    hub = server("serve", _redis_table(tag) + CHAT_NAMESPACE)
    first = ready_pids(hub)
    os.kill(first[1], signal.SIGKILL)

    # The port keeps serving while worker 1 is down and after it is back.
    async with httpx.AsyncClient() as http:
        for _ in range(20):
            # A new connection each time, so that each is the kernel's choice again.
            answer = await http.get(f"{hub.url}/health", timeout=10,
                                    headers={"Connection": "close"})
            assert answer.status_code == 200
    wait_until(lambda: ready_pids(hub).get(1, first[1]) != first[1], hub, "worker 1 restarted")
    assert "worker died; restarting worker=1" in hub.output()
    assert "status=SIGKILL" in hub.output()
    assert alive(first[0]) and not alive(first[1])
    wait_until(lambda: sample(metrics(hub), "clarion_metrics_workers_missing") == 0.0, hub,
               "a scrape with both workers")
    text = metrics(hub)
    assert sample(text, "clarion_worker_restarts_total", slot="1") == 1.0
    assert sample(text, "clarion_worker_restarts_total", slot="0") == 0.0
    assert {worker_of(hub.api("info", {}).json()) for _ in range(40)} == {"0", "1"}

    # SIGHUP (a closed terminal sends it to the whole group) stops nothing: to a worker it is
    # ignored, to the supervisor it is a rolling restart (tests/test_rolling_restart.py).
    os.kill(ready_pids(hub)[0], signal.SIGHUP)
    hub.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload done" in hub.output(), hub, "the reload done", timeout=60)

    # A client on each worker: SIGTERM to the supervisor tells both to reconnect and stops
    # everything within shutdown_timeout (and the exit's own grace).
    clients = [await connect_on(hub, w, lambda: Client(hub.ws_url, token=token("bob")))
               for w in ("0", "1")]
    try:
        pids = ready_pids(hub)
        hub.process.send_signal(signal.SIGTERM)
        assert hub.process.wait(SHUTDOWN_TIMEOUT + EXIT_GRACE + 5) == 0, hub.output()
        assert not any(alive(pid) for pid in pids.values())
        assert hub.output().count("hub stopped") >= 2
        assert "supervisor stopped clean=True" in hub.output()
        assert hub.output().count("worker died") == 1
        assert "SIGHUP: reload requested" in hub.output()
    finally:
        for client in clients:
            await client.disconnect()


async def test_grip_ports_are_shared_by_both_workers(server: Callable[..., Hub], tag: str,
                                                     tmp_path: Path) -> None:
    routes = tmp_path / "routes"
    routes.write_text(f"* 127.0.0.1:{free_port()}\n")  # no origin: the proxy answers 502
    grip_port, control_port = free_port(), free_port()
    hub = server("serve", _redis_table(tag), "--grip-routes", str(routes),
                 "--grip-port", str(grip_port), "--control-port", str(control_port))
    item = {"items": [{"channel": f"{tag}-feed", "formats": {"http-stream": {"content": "x\n"}}}]}
    async with httpx.AsyncClient(headers={"Connection": "close"}, timeout=10) as http:
        for _ in range(40):
            answer = await http.post(f"http://127.0.0.1:{control_port}/publish/", json=item)
            assert answer.status_code == 200, answer.text
            answer = await http.get(f"http://127.0.0.1:{grip_port}/")
            assert answer.status_code == 502
    text = await asyncio.to_thread(metrics, hub)
    for worker in ("0", "1"):
        assert (sample(text, "clarion_grip_items_published_total", worker=worker) or 0) > 0
        assert (sample(text, "clarion_grip_requests_total", worker=worker) or 0) > 0
    assert (sum(sample(text, "clarion_grip_items_published_total", worker=w) or 0
                for w in ("0", "1")) == 40)


async def test_webhooks_db_is_served_by_every_worker_and_delivered_by_worker_0(
        server: Callable[..., Hub], tag: str, tmp_path: Path) -> None:
    hub = server("serve", _redis_table(tag), "--webhooks-db", str(tmp_path / "hooks.sqlite3"))
    async with httpx.AsyncClient(headers={"Connection": "close"}, timeout=30) as http:
        for _ in range(20):
            assert (await http.get(f"{hub.url}/webhooks/login/")).status_code == 200
    text = await asyncio.to_thread(metrics, hub)
    workers = set(re.findall(r'^clarion_webhook_\w+\{worker="(\d+)"', text, re.M))
    assert workers == {"0"}
    assert hub.output().count("Webhooks API and dashboard on") == 1


def test_workers_with_the_memory_broker_are_refused(tmp_path: Path) -> None:
    port = free_port()
    done = subprocess.run([sys.executable, "-m", "clarion", "serve", "--port", str(port),
                           "--workers", "2"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--workers 2 needs a broker shared between processes" in done.stderr
    assert "Redis" in done.stderr
    env = {**os.environ, "CLARION_WORKERS": "3"}
    done = subprocess.run([sys.executable, "-m", "clarion", "demo", "--port", str(port)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2
    assert "--workers 3 needs a broker" in done.stderr


def test_a_port_in_use_is_refused_before_any_worker_starts(tag: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "clarion", "serve", "--port", str(port),
                               "--workers", "2", "--broker", REDIS_URL],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "worker started" not in done.stderr


# -- demo --workers 2 --------------------------------------------------------------------------


async def test_demo_on_two_workers_chat_and_presence(server: Callable[..., Hub],
                                                     tag: str) -> None:
    # The demo's own chat namespace; the channel is this test's so that runs do not meet.
    hub = server("demo", _redis_table(tag))
    channel = f"chat:{tag}"

    def with_ticket(name: str) -> Callable[[], Client]:
        def make() -> Client:
            answer = httpx.post(f"{hub.url}/demo/ticket", json={"name": name}, timeout=10)
            return Client(hub.ws_url, token=answer.json()["ticket"])
        return make

    ada_rec, bob_rec = Recorder(), Recorder()
    ada = await connect_on(hub, "0", with_ticket("ada"))
    bob = await connect_on(hub, "1", with_ticket("bob"))
    try:
        ada_sub = ada.new_subscription(channel, ada_rec, join_leave=True)
        bob_sub = bob.new_subscription(channel, bob_rec, join_leave=True)
        await ada_sub.subscribe()
        await ada_rec.wait_for(lambda: ada_rec.subscribed)
        await bob_sub.subscribe()
        await bob_rec.wait_for(lambda: bob_rec.subscribed)
        await ada_rec.wait_for(lambda: "bob" in ada_rec.joins)

        await ada_sub.publish({"text": "hello from worker 0", "user": "ada"})
        await bob_rec.wait_for(lambda: len(bob_rec.pubs) == 1)
        await bob_sub.publish({"text": "hello from worker 1", "user": "bob"})
        await ada_rec.wait_for(lambda: len(ada_rec.pubs) == 2)
        await bob_rec.wait_for(lambda: len(bob_rec.pubs) == 2)
        assert ada_rec.pubs == bob_rec.pubs == [{"text": "hello from worker 0", "user": "ada"},
                                                {"text": "hello from worker 1", "user": "bob"}]

        for sub in (ada_sub, bob_sub):
            presence = await sub.presence()
            assert sorted(i.user for i in presence.clients.values()) == ["ada", "bob"]
        assert websockets_per_worker(hub) == {"0": 1.0, "1": 1.0}

        await bob.disconnect()
        await ada_rec.wait_for(lambda: "bob" in ada_rec.leaves)
    finally:
        await ada.disconnect()
        await bob.disconnect()


# -- merging expositions -----------------------------------------------------------------------


def test_merged_exposition_labels_every_sample_and_groups_families() -> None:
    a = (b"# HELP x_total X.\n# TYPE x_total counter\nx_total{code=\"1\"} 2.0\n"
         b"# HELP g G.\n# TYPE g gauge\ng 1.0\n")
    b = (b"# HELP g G.\n# TYPE g gauge\ng 4.0\n"
         b"# HELP x_total X.\n# TYPE x_total counter\nx_total{code=\"1\"} 3.0\n")
    sup = b"# HELP s S.\n# TYPE s gauge\ns 2.0\n"
    merged = merge_expositions([("0", a), ("1", b), (None, sup)]).decode()
    assert merged == (
        '# HELP x_total X.\n# TYPE x_total counter\n'
        'x_total{worker="0",code="1"} 2.0\nx_total{worker="1",code="1"} 3.0\n'
        '# HELP g G.\n# TYPE g gauge\ng{worker="0"} 1.0\ng{worker="1"} 4.0\n'
        '# HELP s S.\n# TYPE s gauge\ns 2.0\n')
