"""Fixtures that start a real hub process on a real socket."""

from __future__ import annotations

import os
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
