"""Fixtures that start a real hub process on a real socket."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest

import pushpin

API_KEY = "test-api-key"
HMAC_SECRET = "test-hmac-secret-that-is-long-enough-for-hs256"

BASE_CONFIG = f"""
api_key = "{API_KEY}"
token_hmac_secret = "{HMAC_SECRET}"
allowed_origins = ["http://127.0.0.1:*", "http://localhost:*"]
"""


def token(user: str, **claims: object) -> str:
    """A connection JWT for ``user``, valid for an hour unless ``exp`` says otherwise."""
    payload = {"sub": user, "exp": int(time.time()) + 3600, **claims}
    return jwt.encode(payload, HMAC_SECRET, algorithm="HS256")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Hub:
    process: subprocess.Popen[bytes]
    port: int
    api_key: str
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    def api(self, method: str, body: object) -> httpx.Response:
        return httpx.post(
            f"{self.url}/api/{method}", json=body, headers={"X-API-Key": self.api_key}, timeout=10
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")


HubFactory = Callable[..., Hub]


@pytest.fixture
def hub_factory(tmp_path: Path) -> Iterator[HubFactory]:
    started: list[Hub] = []

    def start(config: str = "", *args: str, env: dict[str, str] | None = None) -> Hub:
        port = free_port()
        cfg = tmp_path / f"hub-{port}.toml"
        cfg.write_text(BASE_CONFIG + config)
        log = tmp_path / f"hub-{port}.log"
        cmd = [sys.executable, "-m", "clarion", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--config", str(cfg), *args]
        proc_env = {**os.environ, **(env or {})}
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=proc_env)
        hub = Hub(proc, port, API_KEY, log)
        started.append(hub)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"hub exited with {proc.returncode}:\n{hub.output()}")
            try:
                if httpx.get(f"{hub.url}/health", timeout=1).status_code == 200:
                    return hub
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"hub did not become healthy:\n{hub.output()}")

    yield start
    for hub in started:
        if hub.process.poll() is None:
            hub.process.terminate()
            try:
                hub.process.wait(10)
            except subprocess.TimeoutExpired:
                hub.process.kill()
                hub.process.wait()


CHAT_NAMESPACE = """
[namespaces.chat]
history_size = 100
history_ttl = 300
presence = true
join_leave = true
force_recovery = true
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
allow_history_for_subscriber = true
allow_presence_for_subscriber = true
"""


@pytest.fixture
def hub(hub_factory: HubFactory) -> Hub:
    """A hub with the issue's `chat` namespace and token auth."""
    return hub_factory(CHAT_NAMESPACE)


# --------------------------------------------------------------------------------------------
# GRIP: a proxy (Pushpin or Clarion's GRIP proxy) in front of a Django origin (tests/grip_apps)
# --------------------------------------------------------------------------------------------

GRIP_KEY = "changeme"  # Pushpin's default sig_key; Clarion's GRIP proxy defaults to it too
GRIP_ISS = "pushpin"  # Pushpin's default sig_iss
TESTS_DIR = Path(__file__).resolve().parent


def grip_sig(key: str = GRIP_KEY, iss: str = GRIP_ISS, exp_in: int = 3600) -> str:
    """A Grip-Sig as Pushpin makes it: an HS256 JWT with exactly iss and exp."""
    return jwt.encode({"iss": iss, "exp": int(time.time()) + exp_in}, key, algorithm="HS256")


def redis_up(port: int = 6379) -> bool:
    """Whether a Redis answers PING on 127.0.0.1 (the machine's, or a test's own)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str,
                output: Callable[[], str], timeout: float) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{output()}")
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer within {timeout}s:\n{output()}")


def _stop(proc: subprocess.Popen[bytes], group: bool = False) -> None:
    if proc.poll() is None:
        if group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if group:  # whatever is left of the group (gunicorn workers)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class GripProxy:
    """A running GRIP proxy.  ``url``/``ws_url``: where clients connect; ``control_uri``:
    where the origin publishes (pubcontrol POSTs ``<control_uri>/publish/``)."""

    kind: str  # "pushpin" | "clarion"
    port: int  # the client port
    control_port: int
    origin_port: int
    routes: Path
    output: Callable[[], str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def control_uri(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"


GripProxyFactory = Callable[..., GripProxy]


PushpinFactory = Callable[..., pushpin.Pushpin]


@pytest.fixture
def pushpin_factory(tmp_path: Path) -> Iterator[PushpinFactory]:
    """``start(origin_port=None, *, over_http=False, routes=None, rate_limit=True) ->
    pushpin.Pushpin``: a started Pushpin (tests/pushpin.py) with its config in tmp_path,
    stopped (whole process group) at teardown.  Skipped when Pushpin is not installed; under
    CI=true that is a failure."""
    started: list[pushpin.Pushpin] = []

    def start(origin_port: int | None = None, *, over_http: bool = False,
              routes: str | None = None, rate_limit: bool = True) -> pushpin.Pushpin:  # fmt: skip
        ok, why = pushpin.pushpin_available()
        if not ok:
            if in_ci():
                pytest.fail(f"{why}; CI must run scripts/install-test-deps")
            pytest.skip(why)
        directory = tmp_path / f"pushpin-{len(started)}"
        pp = pushpin.Pushpin(origin_port, over_http=over_http, routes=routes,
                             rate_limit=rate_limit, directory=directory)  # fmt: skip
        started.append(pp)
        return pp.start()

    yield start
    for pp in started:
        pp.stop()


@pytest.fixture
def grip_proxy_factory(
    tmp_path: Path, pushpin_factory: PushpinFactory
) -> Iterator[GripProxyFactory]:
    """``start(kind, origin_port, *, over_http=True) -> GripProxy``.

    kind "pushpin": Debian's Pushpin with a config of its own (tests/pushpin.py); skipped when
    it is not installed, a failure under CI=true.  kind "clarion": ``python -m clarion serve
    --port P --grip-routes ROUTES --grip-port G --control-port C`` (Grip-Sig key "changeme",
    iss "pushpin" by default).  Both get the same routes file, in Pushpin's syntax:
    ``* 127.0.0.1:ORIGIN_PORT,over_http``."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(kind: str, origin_port: int, *, over_http: bool = True) -> GripProxy:
        routes_text = pushpin.route_line(origin_port, over_http=over_http) + "\n"
        if kind == "pushpin":
            pp = pushpin_factory(routes=routes_text)
            return GripProxy("pushpin", pp.http_port, pp.publish_port, origin_port,
                             pp.config.routes, pp.output)  # fmt: skip
        if kind == "clarion":
            port, grip_port, control_port = free_port(), free_port(), free_port()
            routes = tmp_path / f"clarion-routes-{grip_port}"
            routes.write_text(routes_text)
            cfg = tmp_path / f"clarion-grip-{grip_port}.toml"
            cfg.write_text(BASE_CONFIG)
            log = tmp_path / f"clarion-grip-{grip_port}.log"
            cmd = [sys.executable, "-m", "clarion", "serve", "--host", "127.0.0.1",
                   "--port", str(port), "--config", str(cfg),
                   "--grip-routes", str(routes), "--grip-port", str(grip_port),
                   "--control-port", str(control_port)]  # fmt: skip
            with log.open("wb") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            procs.append(proc)

            def output() -> str:
                return log.read_text(errors="replace")

            _wait_until(
                lambda: pushpin.http_answers(port, "/health")
                and pushpin.port_answers(grip_port) and pushpin.port_answers(control_port),
                proc, "clarion GRIP proxy", output, 20,
            )  # fmt: skip
            return GripProxy("clarion", grip_port, control_port, origin_port, routes, output)
        raise ValueError(f"unknown GRIP proxy kind {kind!r}")

    yield start
    for proc in procs:
        _stop(proc)


@dataclass
class GripOrigin:
    """The tests/grip_apps Django project under gunicorn."""

    port: int
    impl: str
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


GripOriginFactory = Callable[..., GripOrigin]


def _django_env(impl: str, control_uri: str, key: str, db: Path | None) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "grip_apps.settings",
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH", "")) if p
        ),
        "GRIP_IMPL": impl,
        "GRIP_CONTROL_URI": control_uri,
        "GRIP_KEY": key,
        "PYTHONUNBUFFERED": "1",
    }
    if db is not None:
        env["GRIP_APPS_EVENTSTREAM"] = "1"
        env["GRIP_APPS_DB"] = str(db)
    return env


@pytest.fixture
def grip_origin_factory(tmp_path: Path) -> Iterator[GripOriginFactory]:
    """``start(control_uri, *, impl="django_grip", port=None, key="changeme",
    eventstream=False) -> GripOrigin``: tests/grip_apps under gunicorn (gthread: 1 worker,
    8 threads) on ``port`` (a free one by default), publishing to ``control_uri``.  With
    ``eventstream=True`` django-eventstream is installed too, on a fresh sqlite file (migrated
    before gunicorn starts).  Returns once the origin answers HTTP."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(control_uri: str, *, impl: str = "django_grip", port: int | None = None,
              key: str = GRIP_KEY, eventstream: bool = False,
              server: str = "wsgi") -> GripOrigin:  # fmt: skip
        port = port or free_port()
        log = tmp_path / f"origin-{port}.log"
        db = tmp_path / f"origin-{port}.sqlite3" if eventstream else None
        env = _django_env(impl, control_uri, key, db)
        if db is not None:
            migrate = subprocess.run(
                [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
                env=env, cwd=TESTS_DIR, capture_output=True, timeout=120,
            )  # fmt: skip
            if migrate.returncode != 0:
                raise RuntimeError(
                    "migrate failed:\n" + (migrate.stdout + migrate.stderr).decode(errors="replace")
                )
        if server == "asgi":
            # The same views under ASGI (uvicorn): sync views run in Django's thread pool.
            cmd = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
                   "--app-dir", str(TESTS_DIR), "--log-level", "info",
                   "grip_apps.asgi:application"]  # fmt: skip
        else:
            cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
                   "--worker-class", "gthread", "--workers", "1", "--threads", "8",
                   "--timeout", "120", "--graceful-timeout", "5", "--access-logfile", "-",
                   "--no-control-socket",
                   "--chdir", str(TESTS_DIR), "grip_apps.wsgi:application"]  # fmt: skip
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    cwd=TESTS_DIR, start_new_session=True)  # fmt: skip
        procs.append(proc)
        origin = GripOrigin(port, impl, log, proc)
        # any HTTP answer means a worker has loaded Django (and the GRIP implementation)
        _wait_until(lambda: pushpin.http_answers(port, "/required"), proc,
                    f"gunicorn (GRIP_IMPL={impl})", origin.output, 60)  # fmt: skip
        return origin

    yield start
    for proc in procs:
        _stop(proc, group=True)
