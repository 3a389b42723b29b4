"""The edges of scale-out (issue 10) that the main scale-out tests leave out: presence kept
alive by each node and dropped with a killed one, tickets across nodes on WebSocket and SSE, a
WebSocket publish while Redis is paused, SIGINT to ``--workers 2``, ``rediss://`` against a
TLS Redis, and the shard choice against Centrifugo's ``consistentIndex``.

Real hub processes, real Redis servers (the machine's at 127.0.0.1:6379, or the test's own on
a free port) and real clients (centrifuge-python, websockets, httpx, cent).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cent import PresenceRequest, PublishRequest
from centrifuge import Client, ClientEventHandler, ConnectingContext
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.conftest import (
    API_KEY,
    BASE_CONFIG,
    CHAT_NAMESPACE,
    Hub,
    HubFactory,
    free_port,
    in_ci,
    token,
)
from tests.sse_reader import SSEReader
from tests.test_scaleout_nodes import Recorder, cent, redis_available, start_nodes
from tests.test_workers import REDIS_URL as WORKERS_REDIS
from tests.test_workers import (  # noqa: F401 - tag is a fixture
    SHUTDOWN_TIMEOUT,
    alive,
    connect_on,
    ready_pids,
    tag,
)
from tests.test_workers import wait_until as workers_wait_until
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from clarion.broker import create_broker
from clarion.broker.redis import RedisBroker
from clarion.broker.sharded import ShardedBroker, jump_hash
from clarion.hub.workers import EXIT_GRACE

T = 15.0  # a bound for what must happen, never a measurement
REDIS_SERVER = shutil.which("redis-server")


def need_redis_server() -> str:
    """Under CI=true a missing redis-server is a failure (CI installs it), else a skip."""
    if REDIS_SERVER is None:
        if in_ci():
            pytest.fail("redis-server is not installed; CI must have it")
        pytest.skip("redis-server is not installed")
    return REDIS_SERVER


def need_shared_redis() -> None:
    if not redis_available():
        if in_ci():
            pytest.fail("no Redis at 127.0.0.1:6379; CI must run one")
        pytest.skip("no Redis at 127.0.0.1:6379")


@dataclass
class OwnRedis:
    """A redis-server of this test's own (plain or TLS) on a free port, no persistence."""

    directory: Path
    extra: tuple[str, ...] = ()
    tls: bool = False
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.port = free_port()

    def start(self) -> OwnRedis:
        exe = need_redis_server()
        self.directory.mkdir(parents=True, exist_ok=True)
        listen = (["--port", "0", "--tls-port", str(self.port)] if self.tls
                  else ["--port", str(self.port)])
        log = self.directory / "redis.log"
        self.process = subprocess.Popen(
            [exe, *listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--protected-mode", "no", "--dir", str(self.directory), "--logfile", str(log),
             *self.extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + T
        while time.monotonic() < deadline:
            assert self.process.poll() is None, log.read_text(errors="replace")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5):
                return self
            time.sleep(0.02)
        raise AssertionError("redis-server did not listen in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # SIGKILL ends a SIGSTOPped server too
            self.process.wait(5)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[..., OwnRedis]]:
    started: list[OwnRedis] = []

    def start(*extra: str, tls: bool = False) -> OwnRedis:
        redis = OwnRedis(tmp_path / f"redis-{len(started)}", extra, tls)
        started.append(redis)
        return redis.start()

    yield start
    for redis in started:
        redis.stop()


async def wait_until(condition: Callable[[], Any], what: str, timeout: float = T) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.1)


# -- the JSON protocol over a bare WebSocket ------------------------------------------------------


async def ws_command(ws: ClientConnection, cmd_id: int, method: str,
                     params: dict[str, Any], timeout: float = T) -> dict[str, Any]:
    """Send one command and return its reply (pushes in between are skipped)."""
    await ws.send(json.dumps({"id": cmd_id, method: params}))
    deadline = time.monotonic() + timeout
    while True:
        frame = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
        for line in str(frame).split("\n"):
            if line.strip() and (msg := json.loads(line)).get("id") == cmd_id:
                return msg  # type: ignore[no-any-return]


async def ws_push(ws: ClientConnection, timeout: float = T) -> dict[str, Any]:
    """The next push (a frame may carry several newline-separated messages)."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
        for line in str(frame).split("\n"):
            if line.strip() and "push" in (msg := json.loads(line)):
                return msg["push"]  # type: ignore[no-any-return]


# -- 1. presence, refreshed by each node for its own clients ------------------------------------


async def test_each_node_keeps_its_clients_present_and_a_killed_nodes_clients_expire(
        hub_factory: HubFactory) -> None:
    need_shared_redis()
    ttl = 3.0
    a, b = start_nodes(hub_factory, 2, extra=f"presence_ttl = {ttl}")
    channel = "chat:presence-ttl"
    clients: list[Client] = []
    for user, node in (("alice", a), ("bob", b)):
        client = Client(node.ws_url, token=token(user), max_reconnect_delay=0.5)
        rec = Recorder()
        sub = client.new_subscription(channel, rec)
        await client.connect()
        await sub.subscribe()
        await rec.wait_for(lambda rec=rec: bool(rec.subscribed))  # type: ignore[misc]
        clients.append(client)

    def users(node: Hub) -> list[str]:
        answer = cent(node).presence(PresenceRequest(channel=channel))
        return sorted(info.user for info in answer.presence.values())

    # Several lifetimes of an entry: still there, seen from either node, each time asked.
    end = time.monotonic() + 3 * ttl
    checks = 0
    while time.monotonic() < end or checks < 6:
        node = (a, b)[checks % 2]
        assert await asyncio.to_thread(users, node) == ["alice", "bob"], f"check {checks}"
        checks += 1
        await asyncio.sleep(ttl / 4)

    b.process.send_signal(signal.SIGKILL)
    b.process.wait(5)
    # Nobody removes bob's entry now: it must expire by itself, about ttl after B's last
    # refresh. The deadline is generous; it is a bound, not a measurement.
    await wait_until(lambda: users(a) == ["alice"], "bob expires from presence", 5 * ttl + 10)
    for client in clients:
        await client.disconnect()


# -- 2. a ticket from node B, accepted once on node A, on WebSocket and on SSE -------------------


async def test_ticket_from_b_is_accepted_once_on_a_over_websocket_and_sse(
        hub_factory: HubFactory) -> None:
    need_shared_redis()
    a, b = start_nodes(hub_factory, 2)

    def ticket(user: str, **extra: Any) -> str:
        answer = b.api("ticket", {"user": user, **extra}).json()
        return str(answer["result"]["ticket"])

    # WebSocket: the ticket's user, info and server-side channels, written on B, hold on A.
    ws_ticket = ticket("wendy", info={"role": "tester"}, channels=["chat:tkt"])
    async with ws_connect(a.ws_url, proxy=None, open_timeout=T) as ws:
        reply = await ws_command(ws, 1, "connect", {"token": ws_ticket})
        assert "chat:tkt" in reply["connect"].get("subs", {}), reply
        await asyncio.to_thread(cent(b).publish, PublishRequest(channel="chat:tkt",
                                                                data={"via": "b"}))
        push = await ws_push(ws)
        assert push["channel"] == "chat:tkt" and push["pub"]["data"] == {"via": "b"}, push
        present = await ws_command(ws, 2, "presence", {"channel": "chat:tkt"})
        (entry,) = present["presence"]["presence"].values()
        assert (entry["user"], entry.get("conn_info")) == ("wendy", {"role": "tester"}), entry
    for node in (a, b):  # spent: refused on either node
        async with ws_connect(node.ws_url, proxy=None, open_timeout=T) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                reply = await ws_command(ws, 1, "connect", {"token": ws_ticket})
                pytest.fail(f"a spent ticket connected on {node.port}: {reply}")
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 3500, (
                closed.value)

    # SSE.
    sse_ticket = ticket("sam")
    params = {"channel": "chat:sse-ticket", "token": sse_ticket}
    async with httpx.AsyncClient(timeout=T) as http:
        async with http.stream("GET", f"{a.url}/connection/sse", params=params) as r:
            assert r.status_code == 200
            first = (await SSEReader(r).next(T)).json
            assert "connect" in first, first
        for node in (b, a):
            refused = await http.get(f"{node.url}/connection/sse", params=params)
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"]["code"] == 3500


# -- 3. a WebSocket publish while Redis is paused -----------------------------------------------


PAUSE_NAMESPACE = """
[namespaces.pub]
history_size = 100
history_ttl = 300
allow_publish_for_client = true
allow_history_for_client = true
allow_presence_for_client = true
presence = true
"""
FAST_REDIS = """
connect_timeout = 0.5
command_timeout = 1
ping_interval = 0.5
reconnect_delay = 0.05
reconnect_delay_max = 0.5
"""


async def test_websocket_publish_while_redis_is_paused_gets_code_100_and_stays_connected(
        hub_factory: HubFactory, own_redis: Callable[..., OwnRedis]) -> None:
    redis = own_redis()
    assert redis.process is not None
    hub = hub_factory(f'broker = "redis://127.0.0.1:{redis.port}/0"\n[redis]\n'
                      + FAST_REDIS + PAUSE_NAMESPACE)
    async with ws_connect(hub.ws_url, proxy=None, open_timeout=T) as ws:
        assert "connect" in await ws_command(ws, 1, "connect", {"token": token("paula")})
        ok = await ws_command(ws, 2, "publish", {"channel": "pub:x", "data": {"n": 1}})
        assert "publish" in ok, ok

        redis.process.send_signal(signal.SIGSTOP)
        try:
            failed = await ws_command(ws, 3, "publish", {"channel": "pub:x", "data": {"n": 2}})
            assert failed.get("error", {}).get("code") == 100, failed
            assert failed["error"].get("temporary") is True, failed
            # Every other command that needs Redis answers the same way, one after another
            # on the same connection (none of them hangs past the broker's command_timeout).
            for cmd_id, method in enumerate(("history", "presence", "presence_stats"), 10):
                params: dict[str, Any] = {"channel": "pub:x"}
                if method == "history":
                    params["limit"] = 1
                failed = await ws_command(ws, cmd_id, method, params)
                assert failed.get("error", {}).get("code") == 100, (method, failed)
        finally:
            redis.process.send_signal(signal.SIGCONT)
        # The same connection publishes again once Redis answers (the first tries after the
        # pause may still meet a connection the hub is replacing: the error says retry).
        deadline = time.monotonic() + T
        cmd_id = 4
        while "publish" not in (again := await ws_command(
                ws, cmd_id, "publish", {"channel": "pub:x", "data": {"n": 3}})):
            assert again.get("error", {}).get("code") == 100, again
            assert time.monotonic() < deadline, again
            cmd_id += 1
            await asyncio.sleep(0.1)
        # Still the same connection, and n=3 is in the channel's history. (n=2 may be there
        # too: a paused Redis runs the script it had already received once it resumes, which
        # is why docs/reference/broker.md tells retrying callers to pass an idempotency key.)
        assert ws.state.name == "OPEN"
        history = (await asyncio.to_thread(hub.api, "history",
                                           {"channel": "pub:x", "limit": -1})).json()
        data = [p["data"] for p in history["result"]["publications"]]
        assert data[0] == {"n": 1} and data[-1] == {"n": 3}, history
    assert hub.process.poll() is None


# -- 4. SIGINT to serve --workers 2 drains both, as SIGTERM does ---------------------------------


class Connecting(ClientEventHandler):
    """The codes with which the hub sent this client back to connecting."""

    def __init__(self) -> None:
        self.codes: list[int] = []

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        self.codes.append(ctx.code)


@pytest.fixture
def workers(tmp_path: Path, tag: str) -> Iterator[Callable[[], Hub]]:  # noqa: F811
    """``clarion serve --workers 2`` in a process group of its own (as a shell's job is), so
    a test can signal the whole group the way Ctrl-C in a terminal does."""
    started: list[Hub] = []

    def start() -> Hub:
        port = free_port()
        cfg = tmp_path / f"workers-{port}.toml"
        cfg.write_text(f"{BASE_CONFIG}shutdown_timeout = {SHUTDOWN_TIMEOUT}\n"
                       f'broker = "{WORKERS_REDIS}"\n[redis]\nprefix = "clarion-{tag}"\n'
                       + CHAT_NAMESPACE)
        log = tmp_path / f"workers-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "clarion", "serve", "--host", "127.0.0.1", "--port",
                 str(port), "--config", str(cfg), "--workers", "2"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        hub = Hub(proc, port, API_KEY, log)
        started.append(hub)
        workers_wait_until(lambda: len(ready_pids(hub)) == 2, hub, "both workers ready")
        return hub

    yield start
    for hub in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(hub.process.pid, signal.SIGKILL)
        hub.process.wait(10)


@pytest.mark.parametrize("to", ["supervisor", "group"])
async def test_sigint_drains_both_workers_and_tells_clients_to_reconnect(
        workers: Callable[[], Hub], to: str) -> None:
    """``to="group"`` is Ctrl-C in a terminal: every worker gets SIGINT itself, and then the
    supervisor's SIGTERM as well."""
    hub = workers()
    handlers: list[Connecting] = []

    def make() -> Client:
        handlers.append(Connecting())
        return Client(hub.ws_url, token=token("ines"), events=handlers[-1],
                      min_reconnect_delay=5, max_reconnect_delay=10)

    # connect_on disconnects the clients that landed on the other worker: of all the
    # handlers made, only the two kept clients' can be told anything at shutdown.
    clients = [await connect_on(hub, w, make) for w in ("0", "1")]
    try:
        pids = ready_pids(hub)
        before = [len(h.codes) for h in handlers]
        if to == "group":
            os.killpg(hub.process.pid, signal.SIGINT)
        else:
            hub.process.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(hub.process.wait, SHUTDOWN_TIMEOUT + EXIT_GRACE + 5)
        output = hub.output()
        assert code == 0, output
        assert not any(alive(pid) for pid in pids.values())
        assert output.count("hub stopped") == 2, output
        assert "supervisor stopping signal=SIGINT" in output, output
        assert "supervisor stopped clean=True" in output, output
        assert "worker died" not in output and "Traceback" not in output, output
        # Both connected clients were told 3001 shutdown (reconnect), one on each worker.
        deadline = time.monotonic() + T
        told = 0
        while told < 2:
            told = sum(1 for h, n in zip(handlers, before, strict=True) if 3001 in h.codes[n:])
            assert time.monotonic() < deadline, [h.codes for h in handlers]
            await asyncio.sleep(0.05)
        assert told == 2
    finally:
        for client in clients:
            await client.disconnect()


# -- 5. rediss:// against a TLS Redis -----------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(obj: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_server_cert(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
                     ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


async def test_rediss_broker_publishes_over_tls_and_a_wrong_ca_is_a_clear_startup_error(
        hub_factory: HubFactory, own_redis: Callable[..., OwnRedis], tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca, ca_key = make_ca("clarion test CA")
    cert, key = make_server_cert(ca, ca_key)
    other_ca, _ = make_ca("some other CA")
    for name, obj in (("ca.pem", ca), ("server.pem", cert), ("server.key", key),
                      ("other-ca.pem", other_ca)):
        (pki / name).write_bytes(_pem(obj))
    redis = own_redis("--tls-cert-file", str(pki / "server.pem"),
                      "--tls-key-file", str(pki / "server.key"),
                      "--tls-ca-cert-file", str(pki / "ca.pem"),
                      "--tls-auth-clients", "no", tls=True)
    # docs/reference/broker.md: redis-py's URL query parameters apply, ssl_ca_certs among them.
    url = f"rediss://127.0.0.1:{redis.port}/0?ssl_ca_certs={pki / 'ca.pem'}"
    hub = hub_factory(f'broker = "{url}"\n[redis]\nprefix = "tls"\n' + CHAT_NAMESPACE)
    async with httpx.AsyncClient(timeout=T) as http:
        health = (await http.get(f"{hub.url}/health")).json()
    assert health["broker"]["connected"] is True, health

    client = Client(hub.ws_url, token=token("tlsa"))
    rec = Recorder()
    sub = client.new_subscription("chat:tls", rec)
    await client.connect()
    await sub.subscribe()
    await rec.wait_for(lambda: bool(rec.subscribed))
    # The node's own publications come back through Redis Pub/Sub, so this crossed TLS twice.
    await asyncio.to_thread(cent(hub).publish, PublishRequest(channel="chat:tls",
                                                              data={"over": "tls"}))
    await rec.wait_for(lambda: rec.pubs == [{"over": "tls"}])
    assert rec.offsets == [1]

    # The Pub/Sub link comes back over TLS too: Redis restarted (empty) on the same port.
    redis.stop()
    redis.start()

    def reconnected() -> bool:
        broker = httpx.get(f"{hub.url}/health", timeout=T).json()["broker"]
        return bool(broker["connected"]) and int(broker["reconnects"]) >= 1

    await wait_until(reconnected, "the hub's link to the TLS Redis is back")
    n = 0
    while {"again": True} not in rec.pubs:  # until the client has resubscribed (new epoch)
        assert n < 100, rec.pubs
        await asyncio.to_thread(cent(hub).publish, PublishRequest(channel="chat:tls",
                                                                  data={"again": True}))
        n += 1
        with contextlib.suppress(AssertionError):
            await rec.wait_for(lambda: {"again": True} in rec.pubs, 0.2)
    await client.disconnect()

    # A CA that did not sign the server's certificate: the hub refuses to start, and says why.
    cfg = tmp_path / "wrong-ca.toml"
    wrong = f"rediss://127.0.0.1:{redis.port}/0?ssl_ca_certs={pki / 'other-ca.pem'}"
    cfg.write_text(BASE_CONFIG + f'broker = "{wrong}"\n')
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "clarion", "serve", "--host", "127.0.0.1",
                         "--port", str(free_port()), "--config", str(cfg)],
        capture_output=True, text=True, timeout=60)
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert f"redis: cannot connect (rediss://127.0.0.1:{redis.port}/0" in said, said
    assert "CERTIFICATE_VERIFY_FAILED" in said, said
    assert "Traceback" not in said, said


# -- 6. the shard of a channel: Centrifugo's consistentIndex ------------------------------------


def lamping_veach(key: int, buckets: int) -> int:
    """Figure 1 of Lamping and Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm"
    (2014), with its 64-bit unsigned overflow and double arithmetic; Centrifuge's
    ``consistentIndex`` (redis_shard.go, after dgryski/go-jump) is this loop."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) % 2**64
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def fnv1a_64_reference(data: bytes) -> int:
    """Go's ``hash/fnv.New64a`` (FNV-1a, 64 bits), from the FNV specification's constants."""
    h = 14695981039346656037
    for byte in data:
        h = ((h ^ byte) * 1099511628211) % 2**64
    return h


def centrifugo_consistent_index(channel: str, buckets: int) -> int:
    """``consistentIndex(s, n)``: FNV-1a 64 over the Go string's bytes (UTF-8), then jump."""
    return lamping_veach(fnv1a_64_reference(channel.encode()), buckets)


def test_the_reference_algorithms_match_published_vectors() -> None:
    # Jump hash of raw keys: ClickHouse's jumpConsistentHash test (the paper's C++ code),
    # tests/queries/0_stateless/00580_consistent_hashing_functions.reference.
    assert [lamping_veach(k, n) for k, n in (
        (1, 1), (42, 57), (256, 1024), (3735883980, 1), (3735883980, 666),
        (16045690984833335023, 255))] == [0, 43, 520, 0, 361, 237]
    # FNV-1a 64: the test vectors of the FNV specification (draft-eastlake-fnv).
    assert fnv1a_64_reference(b"") == 0xCBF29CE484222325
    assert fnv1a_64_reference(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a_64_reference(b"foobar") == 0x85944171F73967E8


def test_jump_hash_and_the_shard_choice_are_centrifugos_consistent_index() -> None:
    keys = ([f"chat:{i}" for i in range(3000)] + [uuid.UUID(int=i).hex for i in range(500)]
            + ["", "news", "personal:#42", "канал:новости", "emoji:\N{ROCKET}", "a" * 300,
               "tkt_" + "x" * 43])
    for n in (*range(1, 17), 31, 64, 100, 1000, 2**16):
        for key in keys[:: 1 if n <= 16 else 7]:
            assert jump_hash(key, n) == centrifugo_consistent_index(key, n), (key, n)
    # The hub hashes the channel name as given (no prefix, no hash-tag braces), as Centrifugo
    # hashes the channel, and takes the shard at that index in the order of the broker list.
    urls = [f"redis://127.0.0.1:{6379 + i}/0" for i in range(5)]
    broker = create_broker(urls, prefix="edges")
    assert isinstance(broker, ShardedBroker)
    assert [s.url for s in broker.shards if isinstance(s, RedisBroker)] == urls
    for key in keys[:500]:
        assert broker.shard(key) is broker.shards[centrifugo_consistent_index(key, 5)]
