"""Shared pieces of the webhook tests: the databases, a real receiver, worker runners.

The receiver is a real HTTP server on a real socket (stdlib ``ThreadingHTTPServer``); every
request whose path has a secret registered is verified with the ``standardwebhooks`` reference
library, and a request that fails verification is recorded as such (tests assert none did).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
import standardwebhooks

import django_env
from conftest import in_ci

django_env.configure()

from django.core.management import call_command  # noqa: E402
from django.db import connections  # noqa: E402

TESTS = Path(__file__).parent
ROOT = TESTS.parent
TABLES = ("clarion_attempt", "clarion_delivery", "clarion_event", "clarion_listener",
          "clarion_api_key", "people_person", "auth_user")


def _admin() -> psycopg.Connection[Any]:
    return psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True)


@pytest.fixture(scope="session")
def webhook_databases() -> Iterator[None]:
    """Create and migrate both databases once per test process.

    Several test modules import this fixture, and pytest keeps one session fixture per module
    that defines it: without the guard each module would drop the database under the open
    connections of the others."""
    # The flag lives in the environment, not in this module: the suite imports this file both
    # as webhook_support and as tests.webhook_support, two module objects, and a second
    # creation would drop the database under the first one's open connections.
    if os.environ.get(_READY) != os.environ["CLARION_TEST_PG_DB"]:
        _create_databases()
        os.environ[_READY] = os.environ["CLARION_TEST_PG_DB"]
        atexit.register(_drop_databases)
    yield


_READY = "CLARION_TEST_WEBHOOK_DATABASES_READY"


def _create_databases() -> None:
    name = os.environ["CLARION_TEST_PG_DB"]
    try:
        admin = _admin()
    except psycopg.OperationalError as exc:
        if in_ci():
            raise
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")
    connections.close_all()  # ours would be terminated by the FORCE below
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    sqlite = Path(os.environ["CLARION_TEST_SQLITE"])
    sqlite.unlink(missing_ok=True)
    call_command("migrate", verbosity=0)
    call_command("migrate", database="sqlite", verbosity=0)


def _drop_databases() -> None:
    connections.close_all()
    with _admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{os.environ["CLARION_TEST_PG_DB"]}" WITH (FORCE)')
    Path(os.environ["CLARION_TEST_SQLITE"]).unlink(missing_ok=True)


@pytest.fixture
def clean_db(webhook_databases: None) -> Iterator[None]:
    """Empty tables before each test (both databases)."""
    with connections["default"].cursor() as cur:
        cur.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    with connections["sqlite"].cursor() as cur:
        for table in TABLES:
            cur.execute(f"DELETE FROM {table}")
    yield
    connections.close_all()


# -- the receiver -----------------------------------------------------------------------------

@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    verified: bool | None  # None: no secret registered for the path

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    port: int = 0
    requests: list[Received] = field(default_factory=list)
    secrets: dict[str, list[str]] = field(default_factory=dict)
    # path -> callable(Received) -> (status, headers, body, delay seconds)
    behaviour: dict[str, Callable[[Received], tuple[int, dict[str, str], bytes, float]]] = field(
        default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def on(self, path: str, *answers: int | tuple[int, dict[str, str]],
           delay: float = 0.0, body: bytes = b"") -> None:
        """Answer requests to ``path`` with these statuses in turn (the last one repeats),
        each with ``body`` (empty by default)."""
        queue = list(answers)
        lock = threading.Lock()

        def answer(_: Received) -> tuple[int, dict[str, str], bytes, float]:
            with lock:
                item = queue.pop(0) if len(queue) > 1 else queue[0]
            status, headers = item if isinstance(item, tuple) else (item, {})
            return status, headers, body, delay

        self.behaviour[path] = answer

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def wait_for(
        self, count: int, path: str | None = None, timeout: float = 30.0
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.at(path) if path else list(self.requests)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        got = self.at(path) if path else list(self.requests)
        raise AssertionError(f"receiver got {len(got)} of {count} requests to {path or 'any'}")

    def assert_all_verified(self) -> None:
        bad = [r for r in self.requests if r.verified is False]
        assert not bad, f"{len(bad)} requests failed standardwebhooks verification"


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            verified = None
            path = self.path.split("?")[0]
            for secret in receiver.secrets.get(path, []):
                try:
                    standardwebhooks.Webhook(secret).verify(body, headers)
                except standardwebhooks.WebhookVerificationError:
                    verified = False if verified is None else verified
                else:
                    verified = True
                    break
            received = Received(path, headers, body, time.time(), verified)
            with receiver.lock:
                receiver.requests.append(received)
            answer = receiver.behaviour.get(path)
            status, extra, out, delay = answer(received) if answer else (200, {}, b"ok", 0.0)
            if delay:
                time.sleep(delay)
            try:
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)
            except OSError:
                pass  # the sender gave up (timeout) and closed

    return Handler


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: tests that open dozens of connections at once (60
    # long-polls through the proxy) overflow it, and dropped SYNs come back only after the
    # kernel's 1, 3, 7, 15 s retransmits, which on a loaded machine outlasts the test's wait.
    request_queue_size = 1024
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A worker killed (or timing out) mid-request resets its connections: not news.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    server = _Server(("127.0.0.1", 0), _handler(rec))
    server.daemon_threads = True
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


# -- running workers --------------------------------------------------------------------------

LOOPBACK = ["127.0.0.0/8", "::1/128"]  # the receivers these tests start listen here


@contextlib.contextmanager
def webhooks(db: str = "default", **conf: Any) -> Iterator[None]:
    """``CLARION["WEBHOOKS"]`` for a test: database ``db``, loopback receivers allowed."""
    from django.test import override_settings

    with override_settings(CLARION={"WEBHOOKS": {"ALLOWED_NETWORKS": LOOPBACK,
                                                 "DATABASE": db, **conf}}):
        yield


def run_worker(*, database: str = "default", timeout: float = 60.0, **conf: Any) -> int:
    """Run a worker in this process until nothing is due; returns attempts made."""

    from clarion.django import worker as django_worker

    with webhooks(database, **conf):
        w = django_worker.build(exit_when_idle=True)

    async def go() -> None:
        await asyncio.wait_for(w.run(), timeout)

    asyncio.run(go())  # the worker closes its own connections (its database thread's)
    return w.delivered


def settle(*, database: str = "default", horizon: float = 10.0, timeout: float = 120.0,
           **conf: Any) -> int:
    """Run in-process workers until no pending delivery falls due within ``horizon`` seconds
    (sleeping until each retry is due); returns the attempts made in all."""
    from django.db.models import Min
    from django.utils import timezone

    from clarion.django.models import Delivery, Event

    deadline = time.monotonic() + timeout
    made = 0
    while True:
        made += run_worker(database=database, timeout=timeout, **conf)
        if Event.objects.using(database).filter(dispatched_at__isnull=True).exists():
            continue
        first = (Delivery.objects.using(database)
                 .filter(status=Delivery.Status.PENDING, listener__active=True)
                 .aggregate(at=Min("next_attempt_at"))["at"])
        if first is None:
            return made
        wait = (first - timezone.now()).total_seconds()
        if wait > horizon:
            return made
        if time.monotonic() + wait > deadline:
            raise AssertionError(f"deliveries still pending after {timeout} s")
        time.sleep(max(wait, 0) + 0.02)


def worker_env(**conf: Any) -> dict[str, str]:
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "webhook_apps.settings"
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["CLARION_TEST_WEBHOOKS"] = json.dumps(conf)
    return env


def spawn_worker(*args: str, **conf: Any) -> subprocess.Popen[bytes]:
    """``python -m django clarion_worker`` in a subprocess, against the test databases."""
    return subprocess.Popen(
        [sys.executable, "-m", "django", "clarion_worker", *args],
        env=worker_env(**conf), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )


CLARION_CLI = [sys.executable, "-c", "import sys; from clarion.cli import main; sys.exit(main())"]


@contextlib.contextmanager
def embedded_server(directory: Path, *args: str) -> Iterator[tuple[str, Path,
                                                                     subprocess.Popen[str]]]:
    """``clarion serve --webhooks-db`` as a subprocess on a free port, receivers on loopback
    allowed; yields (base URL, database file, process) and asserts a clean exit."""
    from conftest import free_port

    db = directory / "hooks.sqlite3"
    port = free_port()
    env = {**os.environ, "CLARION_WEBHOOKS": '{"ALLOWED_NETWORKS": ["127.0.0.0/8"]}'}
    proc = subprocess.Popen(
        [*CLARION_CLI, "serve", "--port", str(port), "--webhooks-db", str(db), *args],
        cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.1)
    try:
        yield url, db, proc
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=40)
    assert proc.returncode == 0, out
