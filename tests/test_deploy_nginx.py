"""The shipped nginx site (deploy/nginx/clarion.conf) in front of a production-shaped stack.

One stack per module (it is expensive): Debian's nginx with the site (ports and a certificate
made here filled in, tests/deploy_app/nginx.py); ``clarion serve --workers 2`` on Redis with
its GRIP proxy; the chat example (examples/chat: rooms, logins, messages in a PostgreSQL
database of its own, migrated first) under gunicorn, configured by its CHAT_* environment as in
production, with the hub as a separate service; the GRIP views of tests/deploy_app under a
second gunicorn that only the GRIP proxy reaches; and ``clarion worker`` on the chat's own
database (as ``manage.py clarion_worker`` runs in production), which delivers a webhook to a
receiver of the test's. Everything the tests do goes through nginx over https/wss unless a test
says otherwise; the last test sends SIGHUP to the hub for a rolling restart under steady
publishing, with its clients and its publisher on the public name.

The chat's CLARION["HUB"]["URL"] is the site's public https address: the page loads clarion.js
from it, and Django calls the hub's API there too (nginx sends /api/ to the hub), trusting the
test's certificate (CLARION["HUB"]["CA_FILE"], the example's CHAT_HUB_CA_FILE).

Skipped when nginx, Redis, PostgreSQL or (for the browser test) Chromium is missing; under
CI=true each of those is a failure: CI runs scripts/install-test-deps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis
import websockets
from tests.test_rolling_restart import (
    check_every_client_moved_losing_nothing,
    publish_through_a_reload,
)
from tests.test_scaleout_redis_failure import NAMESPACE as RECOVERING_NAMESPACE
from websockets.typing import Origin

from clarion.webhooks import verify
from conftest import (
    API_KEY,
    CHAT_NAMESPACE,
    HMAC_SECRET,
    TESTS_DIR,
    _stop,
    _wait_until,
    free_port,
    in_ci,
    redis_up,
    token,
)
from deploy_app.nginx import (
    Certificate,
    Nginx,
    SitePorts,
    make_certificate,
    nginx_available,
    render_site,
)
from sse_reader import LineReader, SSEReader
from test_example_chat import (
    PG_DSN,
    _drop_database,
    _postgres_database,
    send,
    shown,
    sign_up_and_enter,
    wait_presence,
    wait_shown,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
CHAT_DIR = TESTS_DIR.parent / "examples" / "chat"
CHAT_SECRET_KEY = "deploy-chat-test-secret-key-" + "x" * 30
PER_ADDRESS = 2  # the hub's max_connections_per_address, per worker process
WORKERS = 2
# The chat's settings with webhooks allowed to this machine: gunicorn, migrate and the worker.
CHAT_SETTINGS = "deploy_app.chat_webhook_settings"


def _unavailable(why: str) -> None:
    if in_ci():
        pytest.fail(f"{why}; CI must run scripts/install-test-deps")
    pytest.skip(why)




def _log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class Stack:
    hub: subprocess.Popen[bytes]  # the supervisor of the hub's workers
    chat_env: dict[str, str]
    nginx: Nginx
    cert: Certificate
    ports: SitePorts
    grip_origin_port: int
    control_port: int
    worker_metrics_port: int
    prefix: str
    logs: Path

    @property
    def url(self) -> str:
        return self.nginx.url

    @property
    def hub_url(self) -> str:
        """The hub's own port (what Prometheus scrapes), not through nginx."""
        return f"http://127.0.0.1:{self.ports.hub}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert.cert))

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.ssl_context(), timeout=15, **kwargs)

    def async_client(self, local_address: str | None = None) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(verify=self.ssl_context(),
                                             local_address=local_address)
        return httpx.AsyncClient(base_url=self.url, transport=transport, timeout=15)

    def publish(self, channel: str, data: object) -> dict[str, Any]:
        with self.client() as c:
            r = c.post("/api/publish", json={"channel": channel, "data": data},
                       headers={"X-API-Key": API_KEY})
        assert r.status_code == 200, r.text
        body = r.json()
        assert "error" not in body, body
        return body["result"]  # type: ignore[no-any-return]

    def output(self) -> str:
        parts = [f"--- {p.name}\n{_log(p)[-6000:]}" for p in sorted(self.logs.glob("*.log"))]
        return "\n".join(parts) + f"\n--- nginx error.log\n{self.nginx.error_log()[-6000:]}"


HUB_CONFIG = f"""
api_key = "{API_KEY}"
token_hmac_secret = "{HMAC_SECRET}"
# No allowed_origins: pages are same-origin, which the hub sees from the Host nginx passes on.
trusted_proxies = ["127.0.0.1"]
max_connections_per_address = {PER_ADDRESS}
"""


def _hub_config(prefix: str) -> str:
    """The test's settings, then the chat example's channel options (its hub.toml, which the
    example's Django reads too when it publishes into Redis) beside the tests' chat namespace."""
    return (HUB_CONFIG + f'\n[redis]\nprefix = "{prefix}"\n' + CHAT_NAMESPACE + "\n"
            + RECOVERING_NAMESPACE + "\n" + (CHAT_DIR / "hub.toml").read_text())


def _pythonpath(*dirs: Path) -> str:
    return os.pathsep.join([*map(str, dirs), *filter(None, [os.environ.get("PYTHONPATH")])])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ok, why = nginx_available()
    if not ok:
        _unavailable(why)
    if not redis_up():
        _unavailable("no Redis at 127.0.0.1:6379")
    base = tmp_path_factory.mktemp("deploy")
    logs = base / "logs"
    logs.mkdir()
    prefix = f"clarion-deploy-{uuid.uuid4().hex[:10]}"
    ports = SitePorts(https=free_port(), http=free_port(), hub=free_port(), grip=free_port(),
                      app=free_port())
    grip_origin_port, control_port, worker_metrics_port = free_port(), free_port(), free_port()
    cert = make_certificate(base / "tls")
    procs: list[tuple[subprocess.Popen[bytes], bool]] = []
    database = _postgres_database()  # skips, or fails under CI, without PostgreSQL

    def spawn(name: str, cmd: list[str], env: dict[str, str] | None = None,
              group: bool = False) -> subprocess.Popen[bytes]:  # fmt: skip
        with (logs / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=base,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                    start_new_session=group)  # fmt: skip
        procs.append((proc, group))
        return proc

    config = base / "hub.toml"
    config.write_text(_hub_config(prefix))
    routes = base / "routes"
    routes.write_text(f"* 127.0.0.1:{grip_origin_port},over_http\n")
    chat_env = {
        "DJANGO_SETTINGS_MODULE": CHAT_SETTINGS,
        "PYTHONPATH": _pythonpath(CHAT_DIR, TESTS_DIR),
        "CHAT_DATABASE_URL": f"{PG_DSN}/{database}",
        "CHAT_REDIS_URL": REDIS_URL, "CHAT_REDIS_PREFIX": prefix,
        "CHAT_DATA_DIR": str(base / "chat-var"), "CHAT_SECRET_KEY": CHAT_SECRET_KEY,
        "CHAT_HUB_URL": f"https://127.0.0.1:{ports.https}",
        "CHAT_HUB_API_KEY": API_KEY, "CHAT_HUB_TOKEN_SECRET": HMAC_SECRET,
        "CHAT_BEHIND_HTTPS_PROXY": "1",
        # Django calls the hub's API at the public https address, whose certificate is the
        # test's own: CLARION["HUB"]["CA_FILE"] through the example's setting.
        "CHAT_HUB_CA_FILE": str(cert.cert),
    }  # fmt: skip
    # The example's tables before its first request, as a deploy runs migrations first.
    migrate = subprocess.run(
        [sys.executable, str(CHAT_DIR / "manage.py"), "migrate", "--noinput"],
        cwd=base, env={**os.environ, **chat_env}, capture_output=True, timeout=300)
    if migrate.returncode != 0:
        _drop_database(database)
        pytest.fail("examples/chat: manage.py migrate failed:\n"
                    + (migrate.stdout + migrate.stderr).decode(errors="replace"))
    hub = spawn("hub", [
        sys.executable, "-m", "clarion", "serve", "--host", "127.0.0.1",
        "--port", str(ports.hub), "--config", str(config), "--workers", str(WORKERS),
        "--broker", REDIS_URL, "--log-level", "debug",
        "--grip-routes", str(routes), "--grip-port", str(ports.grip),
        "--control-port", str(control_port)])  # fmt: skip
    gunicorn = [sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--workers", "1",
                "--threads", "8", "--timeout", "120", "--graceful-timeout", "5",
                "--access-logfile", "-", "--no-control-socket"]  # fmt: skip
    app = spawn("gunicorn-chat", [
        *gunicorn, "--bind", f"127.0.0.1:{ports.app}", "--chdir", str(CHAT_DIR),
        "chatsite.wsgi:application"], env=chat_env, group=True)  # fmt: skip
    grip_app = spawn("gunicorn-grip", [
        *gunicorn, "--bind", f"127.0.0.1:{grip_origin_port}", "--chdir", str(TESTS_DIR),
        "deploy_app.wsgi:application"], env={
        "DJANGO_SETTINGS_MODULE": "deploy_app.settings", "PYTHONPATH": _pythonpath(TESTS_DIR),
        "GRIP_IMPL": "clarion", "GRIP_CONTROL_URI": f"http://127.0.0.1:{control_port}",
    }, group=True)  # fmt: skip
    # The webhook worker on the chat's own database, as deploy/systemd/clarion-worker@.service
    # runs `manage.py clarion_worker` with the site's settings.
    worker = spawn("worker", [
        sys.executable, "-m", "clarion", "worker", "--settings", CHAT_SETTINGS,
        "--metrics-port", str(worker_metrics_port)], env=chat_env)  # fmt: skip
    nginx = Nginx(base / "nginx", ports, cert)
    stack = Stack(hub, chat_env, nginx, cert, ports, grip_origin_port, control_port,
                  worker_metrics_port, prefix, logs)
    try:
        _wait_until(lambda: _answers(f"{stack.hub_url}/health")
                    and _accepts(ports.grip) and _accepts(control_port),
                    hub, "clarion serve --workers 2", stack.output, 30)  # fmt: skip
        _wait_until(lambda: _answers(f"http://127.0.0.1:{ports.app}/whoami"), app,
                    "gunicorn (examples/chat)", stack.output, 60)  # fmt: skip
        _wait_until(lambda: _accepts(grip_origin_port), grip_app,
                    "gunicorn (deploy_app's GRIP views)", stack.output, 60)  # fmt: skip
        _wait_until(lambda: _answers(f"http://127.0.0.1:{worker_metrics_port}/metrics"),
                    worker, "clarion worker", stack.output, 60)  # fmt: skip
        nginx.start()
        yield stack
    finally:
        nginx.stop()
        for proc, group in reversed(procs):
            _stop(proc, group=group)
        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
            _drop_database(database)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.TransportError:
        return False


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# -- the site itself ----------------------------------------------------------------------------


def test_render_refuses_a_site_without_the_shipped_values(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # The test must run the shipped file: if a value it fills in is gone, it says which.
    import deploy_app.nginx as site

    changed = tmp_path / "nginx"
    (changed / "snippets").mkdir(parents=True)
    text = (site.SITE_DIR / "clarion.conf").read_text()
    (changed / "clarion.conf").write_text(text.replace("server 127.0.0.1:7999;",
                                                       "server 10.0.0.5:7999;"))
    monkeypatch.setattr(site, "SITE_DIR", changed)
    cert = Certificate(tmp_path / "c.pem", tmp_path / "k.pem")
    with pytest.raises(ValueError, match=r"expected 'server 127.0.0.1:7999;' once, found 0"):
        render_site(SitePorts(1, 2, 3, 4, 5), cert)


def test_routes_health_static_and_metrics(stack: Stack) -> None:
    with stack.client() as c:
        health = c.get("/health")
        assert health.status_code == 200, health.text
        assert health.http_version in ("HTTP/1.1", "HTTP/2")
        assert "max-age=63072000" in health.headers["strict-transport-security"]
        js = c.get("/static/clarion.js")
        assert js.status_code == 200
        assert "javascript" in js.headers["content-type"]
        assert "class Clarion" in js.text or "Clarion" in js.text
        # The metrics are the hub's port's business, not the public name's.
        assert c.get("/metrics").status_code == 403
        assert "clarion_" in httpx.get(f"{stack.hub_url}/metrics", timeout=10).text
        # Anything else is the Django app: the chat example, which sends strangers to log in.
        who = c.get("/whoami")
        assert who.status_code == 200, who.text
        assert who.json()["secure"] is True
        home = c.get("/")
        assert home.status_code == 302 and home.headers["location"].startswith("/login/")
        login = c.get("/login/")
        assert login.status_code == 200 and "csrfmiddlewaretoken" in login.text
        # Behind https the example's cookies are Secure (CHAT_BEHIND_HTTPS_PROXY).
        assert "secure" in login.headers["set-cookie"].lower(), login.headers
        # The API through nginx needs its key as it does anywhere.
        assert c.post("/api/info", json={}).status_code == 401
    # Plain http is sent to https.
    r = httpx.get(f"http://127.0.0.1:{stack.ports.http}/room?x=1", timeout=10)
    assert r.status_code == 301
    assert r.headers["location"] == "https://127.0.0.1/room?x=1"
    # ... except certbot's challenges, answered from its webroot (empty here: 404).
    acme = httpx.get(f"http://127.0.0.1:{stack.ports.http}/.well-known/acme-challenge/t",
                     timeout=10)
    assert acme.status_code == 404


def test_the_webhook_worker_runs_beside_the_hub(stack: Stack) -> None:
    metrics = httpx.get(f"http://127.0.0.1:{stack.worker_metrics_port}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert "clarion_" in metrics.text, metrics.text[:500]


# -- webhooks -----------------------------------------------------------------------------------


class _Receiver(ThreadingHTTPServer):
    """A webhook receiver: keeps each request's raw body and headers."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.arrived = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/chat"


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.received.append((body, dict(self.headers.items())))
        self.send_response(204)
        self.end_headers()
        self.server.arrived.set()

    def log_message(self, format: str, *args: Any) -> None:
        pass


# What a site does in its code (or its admin does in the dashboard): a hook, a listener on it,
# and an event sent in a transaction. The event reaches the outbox in the chat's PostgreSQL
# database; the worker, woken by NOTIFY, delivers it.
REGISTER_AND_SEND = """
import json
from django.db import transaction
from clarion.django.hooks import Hook, hooks
hook = hooks.register(Hook(name="chat.deploy_check"))
listener = hook.listener(url={url!r}).save()
with transaction.atomic():
    event = hook.send(None, room="lobby", text="hello from the stack")
print(json.dumps({{"secret": listener.secret, "msg_id": event.msg_id}}))
"""


def test_a_webhook_is_delivered_signed_by_the_stacks_worker(stack: Stack) -> None:
    receiver = _Receiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        shell = subprocess.run(
            [sys.executable, str(CHAT_DIR / "manage.py"), "shell", "-c",
             REGISTER_AND_SEND.format(url=receiver.url)],
            env={**os.environ, **stack.chat_env}, capture_output=True, timeout=120)  # fmt: skip
        out = shell.stdout.decode(errors="replace")
        assert shell.returncode == 0, out + shell.stderr.decode(errors="replace")
        sent = json.loads(out.strip().splitlines()[-1])
        assert receiver.arrived.wait(30), stack.output()
    finally:
        receiver.shutdown()
        receiver.server_close()
    [(body, headers)] = receiver.received
    # Signed with the listener's secret (Standard Webhooks), as a receiver checks it.
    assert verify(body, headers, sent["secret"]) == sent["msg_id"]
    document = json.loads(body)
    assert document["type"] == "chat.deploy_check"
    assert document["data"] == {"room": "lobby", "text": "hello from the stack"}
    # A wrong secret does not pass: the check above is not vacuous.
    from clarion.errors import SignatureError

    with pytest.raises(SignatureError):
        verify(body, headers, "whsec_" + "A" * 43 + "=")


# -- streams are not buffered -------------------------------------------------------------------


async def test_sse_events_arrive_one_by_one_through_nginx(stack: Stack) -> None:
    channel = f"chat:sse-{uuid.uuid4().hex[:8]}"
    async with stack.async_client() as c, c.stream(
            "GET", "/connection/sse", params={"channel": channel, "token": token("ann")}) as resp:
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("text/event-stream")
        reader = SSEReader(resp)
        assert "connect" in (await reader.next(10)).json
        # Each event is read while the stream stays open, before the next one is published:
        # a buffering proxy would hold the first until its buffer filled or the stream ended.
        for text in ("first", "second", "third"):
            await asyncio.to_thread(stack.publish, channel, {"text": text})
            event = await reader.next_pub(10)
            assert event.json["pub"]["data"] == {"text": text}


async def test_http_stream_lines_arrive_one_by_one_through_nginx(stack: Stack) -> None:
    channel = f"chat:stream-{uuid.uuid4().hex[:8]}"
    async with stack.async_client() as c, c.stream(
            "GET", "/connection/stream",
            params={"channel": channel, "token": token("bob")}) as resp:
        assert resp.status_code == 200, await resp.aread()
        reader = LineReader(resp)
        assert "connect" in await reader.next(10)
        for text in ("one", "two"):
            await asyncio.to_thread(stack.publish, channel, {"text": text})
            line = await reader.next_pub(10)
            assert line["pub"]["data"] == {"text": text}


async def test_websocket_over_wss_through_nginx(stack: Stack) -> None:
    channel = f"chat:ws-{uuid.uuid4().hex[:8]}"
    async with websockets.connect(stack.nginx.ws_url, ssl=stack.ssl_context(),
                                  origin=Origin(stack.url)) as ws:
        await ws.send(json.dumps({"id": 1, "connect": {"token": token("cyd")}}))
        assert "connect" in json.loads(await asyncio.wait_for(ws.recv(), 10))
        await ws.send(json.dumps({"id": 2, "subscribe": {"channel": channel}}))
        assert "subscribe" in json.loads(await asyncio.wait_for(ws.recv(), 10))
        for text in ("a", "b"):
            await asyncio.to_thread(stack.publish, channel, {"text": text})
            push = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert push["push"]["pub"]["data"] == {"text": text}
    # A page of another origin is refused: the hub compared Origin with the Host nginx sent.
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(stack.nginx.ws_url, ssl=stack.ssl_context(),
                                      origin=Origin("https://evil.example")):
            pass
    assert refused.value.response.status_code == 403


# -- GRIP ---------------------------------------------------------------------------------------


async def test_grip_stream_through_nginx(stack: Stack) -> None:
    # nginx -> the hub's GRIP proxy -> Django (myendpoint holds a stream on channel "test");
    # a POST publishes through Django to the proxy's publish API (another worker, maybe).
    async with stack.async_client() as c, c.stream("GET", "/grip/myendpoint") as resp:
        assert resp.status_code == 200, await resp.aread()
        lines = resp.aiter_lines()
        assert await asyncio.wait_for(anext(lines), 10) == "[stream open]"
        for data in ("hello", "again"):
            async with stack.async_client() as poster:
                posted = await poster.post("/grip/myendpoint", data={"data": data})
            assert posted.status_code == 200, posted.text
            assert await asyncio.wait_for(anext(lines), 10) == data


# -- client addresses ---------------------------------------------------------------------------


async def test_x_forwarded_for_reaches_the_hub_and_the_app(stack: Stack) -> None:
    # Linux answers on all of 127.0.0.0/8: a client on 127.0.0.2 is not nginx (127.0.0.1).
    async with stack.async_client(local_address="127.0.0.2") as c:
        # A forged X-Forwarded-For from the client stays to the left of the address nginx saw.
        who = (await c.get("/whoami", headers={"X-Forwarded-For": "6.6.6.6"})).json()
        assert who["remote_addr"] == "127.0.0.1"
        assert who["x_forwarded_for"] == "6.6.6.6, 127.0.0.2"
        assert who["x_forwarded_proto"] == "https"
        assert who["host"] == f"127.0.0.1:{stack.ports.https}"

        # The hub counts 127.0.0.2's connections (up to PER_ADDRESS in each worker), whatever
        # it claims: with one more held stream than all workers allow, one is refused 429.
        held: list[Any] = []
        statuses: list[int] = []
        async with contextlib.AsyncExitStack() as streams:
            for i in range(PER_ADDRESS * WORKERS + 1):
                resp = await streams.enter_async_context(c.stream(
                    "GET", "/connection/sse", headers={"X-Forwarded-For": f"6.6.6.{i}"},
                    params={"channel": f"chat:xff-{i}", "token": token(f"u{i}")}))
                statuses.append(resp.status_code)
                if resp.status_code == 200:
                    held.append(SSEReader(resp))
                    assert "connect" in (await held[-1].next(10)).json
            assert 429 in statuses, statuses
            # Another client address through the same nginx is not limited.
            async with stack.async_client(local_address="127.0.0.3") as other, other.stream(
                    "GET", "/connection/sse",
                    params={"channel": "chat:xff-other", "token": token("other")}) as resp:
                assert resp.status_code == 200
    deadline = time.monotonic() + 10
    while "client=127.0.0.2 proxy=127.0.0.1" not in (out := _log(stack.logs / "hub.log")):
        assert time.monotonic() < deadline, out[-4000:]
        await asyncio.sleep(0.1)
    assert "client=6.6.6." not in out


# -- a rolling restart behind nginx -------------------------------------------------------------
# After the other hub tests (it replaces the hub's workers) and before the Chromium one: while
# playwright's module-scoped browser lives, its sync API keeps an event loop running in this
# thread, and an async test after it could not run.


@dataclass(frozen=True)
class _PublicApi:
    url: str
    api_key: str


async def test_rolling_restart_through_nginx_loses_nothing(stack: Stack) -> None:
    # tests/test_rolling_restart.py's flow with every client and the publisher on the public
    # name: wss:// WebSockets and NDJSON streams through nginx, publishes to nginx's /api/.
    hub_log = stack.logs / "hub.log"
    reloads = _log(hub_log).count("reload done")
    access_before = len(stack.nginx.access_log().splitlines())
    flow = await publish_through_a_reload(
        reload=lambda: stack.hub.send_signal(signal.SIGHUP),
        reloaded=lambda: _log(hub_log).count("reload done") > reloads,
        ws_url=stack.nginx.ws_url, stream_url=stack.url, api=_PublicApi(stack.url, API_KEY),
        key=f"{stack.prefix}-reload", ssl_context=stack.ssl_context())  # fmt: skip
    assert stack.hub.poll() is None, stack.output()
    access = stack.nginx.access_log().splitlines()[access_before:]
    failed = [line for line in access if '" 5' in line]
    seen = [(log.name, len(log.received), log.codes, log.refused) for log in flow.logs]
    print(f"\npublished {len(flow.sent)} through nginx (retried {flow.published.unavailable}, "
          f"{flow.published.other}); clients (name, received, move codes, refused): {seen}; "
          f"nginx 5xx: {failed}")
    check_every_client_moved_losing_nothing(flow)
    # nginx answered every publish from a live worker: no 502 from an upstream connection that
    # a retiring worker closed, and no retry was needed.
    assert not flow.published.other, flow.published.other
    assert flow.published.unavailable == 0
    assert not failed, failed
    output = _log(hub_log)
    assert output.count("worker retiring: its replacement is ready") == 2 * (reloads + 1)
    assert "worker died" not in output


# -- the chat example in Chromium -------------------------------------------------------------


CHROMIUM = os.environ.get("CLARION_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("python playwright is not installed")
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} is missing")
    # The certificate is the test's own: this browser accepts it, as it would a real one
    # (test_example_chat's helpers open their own contexts, so ignore_https_errors, a context
    # option, is not theirs to pass; Chromium ignores --ignore-certificate-errors-spki-list
    # outside managed setups).
    args = [*CHROMIUM_ARGS, "--ignore-certificate-errors"]
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield b
        finally:
            b.close()


@pytest.mark.browser
def test_example_chat_in_chromium_over_https_and_wss(browser: Any, stack: Stack) -> None:
    # The flow of tests/test_example_chat.py, with its helpers: they need only the site's url.
    site = cast(Any, stack)
    room = f"deploy-{uuid.uuid4().hex[:8]}"
    ada_ctx, ada = sign_up_and_enter(browser, site, "ada", room)
    bea_ctx, bea = sign_up_and_enter(browser, site, "bea", room)
    try:
        for page in (ada, bea):
            assert page.evaluate("window.location.protocol") == "https:"
            # clarion.js came from CLARION["HUB"]["URL"], the public https address.
            assert page.evaluate(
                "[...document.scripts].map(s => s.src)"
                ".includes(location.origin + '/static/clarion.js')")
        wait_presence(ada, ["ada", "bea"])
        wait_presence(bea, ["ada", "bea"])
        send(ada, "hello over wss")
        wait_shown(bea, ["hello over wss"])
        send(bea, "and back")
        wait_shown(ada, ["hello over wss", "and back"])
        want = [("ada", "hello over wss"), ("bea", "and back")]
        assert shown(ada) == want
        assert shown(bea) == want
        # The page came over HTTP/2; an EventSource on it shares that connection, and its
        # events still arrive one by one.
        assert ada.evaluate(
            "performance.getEntriesByType('navigation')[0].nextHopProtocol") == "h2"
        channel = f"chat:h2-{uuid.uuid4().hex[:8]}"
        ada.evaluate("""([url]) => {
            window.h2events = [];
            const es = new EventSource(url);
            es.onmessage = (e) => window.h2events.push(JSON.parse(e.data));
        }""", [f"/connection/sse?channel={channel}&token={token('ada-sse')}"])
        ada.wait_for_function("window.h2events.some(e => e.connect)", timeout=15_000)
        for n in (1, 2):
            stack.publish(channel, {"n": n})
            ada.wait_for_function(f"window.h2events.filter(e => e.pub).length === {n}",
                                  timeout=15_000)
    except Exception:
        print(stack.output())
        raise
    finally:
        ada_ctx.close()
        bea_ctx.close()
    access = stack.nginx.access_log()
    # The pages' WebSockets went through nginx (101 in its access log), not around it; so did
    # Django's call to the hub's API for the room's presence.
    assert '"GET /connection/websocket HTTP/1.1" 101' in access
    assert '"POST /api/presence HTTP/1.1" 200' in access, access[-4000:]
    chat_log = _log(stack.logs / "gunicorn-chat.log")
    assert "Traceback" not in chat_log, chat_log[-6000:]
