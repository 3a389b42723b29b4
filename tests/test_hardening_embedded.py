"""What a user or a hostile tenant sends cannot stop, freeze or confuse ``clarion serve
--webhooks-db``: the reproductions of the hardening issue, against the real server process.

Each test runs the server as a subprocess with the defaults, a real receiver verifying
signatures, and checks that the hub (realtime included) still answers afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import websockets

from webhook_support import CLARION_CLI, Receiver, embedded_server, receiver  # noqa: F401


@dataclass
class Server:
    url: str
    db: Path
    proc: subprocess.Popen[str]
    key: str = ""

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=f"{self.url}/webhooks/api", timeout=30,
                            headers={"Authorization": f"Bearer {self.key}"})

    def manage_shell(self, code: str) -> str:
        done = subprocess.run(
            [*CLARION_CLI, "manage", "--db", str(self.db), "shell", "-c", code],
            cwd=self.db.parent, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def alive(self) -> None:
        """The whole hub answers: HTTP and a WebSocket connect."""
        assert self.proc.poll() is None, "the hub process ended"
        assert httpx.get(f"{self.url}/health", timeout=10).status_code == 200

        async def ws() -> None:
            uri = self.url.replace("http", "ws") + "/connection/websocket"
            async with websockets.connect(uri) as conn:
                await conn.send(json.dumps({"id": 1, "connect": {}}))
                # No token: the hub answers by closing with "invalid token", which is an answer.
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(conn.recv(), 10)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 3500

        asyncio.run(ws())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    types = ("--webhook-types", "order.created,order.paid")
    with embedded_server(tmp_path, *types) as (url, db, proc):
        srv = Server(url, db, proc)
        out = srv.manage_shell(
            "from django.contrib.auth.models import User;"
            "from clarion.django.models import ApiKey;"
            "u = User.objects.create_superuser('ops', 'ops@example.com', 'pw');"
            "print(ApiKey.issue(u, 'app')[1])")
        srv.key = out.strip().splitlines()[-1]
        yield srv


def test_alternating_api_writes_do_not_stop_the_hub(server: Server,
                                                   receiver: Receiver) -> None:  # noqa: F811
    # The reproduction: one client alternating events and subscriptions stopped the
    # whole hub within seven pairs ("database is locked" killed the embedded worker). Here
    # four such clients run at once, while the worker delivers.
    api = server.api()
    sub = api.post("/subscriptions", json={"hook": "order.paid", "url": receiver.url("/p")})
    assert sub.status_code == 201, sub.text
    receiver.secrets["/p"] = [sub.json()["secret"]]
    pairs, clients = 40, 4
    failures: list[str] = []

    def client(n: int) -> None:
        with server.api() as c:
            for i in range(pairs):
                sent = c.post("/events", json={"type": "order.paid",
                                               "data": {"client": n, "i": i}})
                made = c.post("/subscriptions", json={
                    "hook": "order.created", "url": receiver.url(f"/c{n}")})
                if sent.status_code != 202 or made.status_code != 201:
                    failures.append(f"{sent.status_code} {made.status_code} {made.text[:200]}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not failures, failures[:5]
    receiver.wait_for(pairs * clients, "/p", timeout=120)
    got = sorted((r.json["data"]["client"], r.json["data"]["i"]) for r in receiver.at("/p"))
    assert sorted(set(got)) == [(n, i) for n in range(clients) for i in range(pairs)]
    receiver.assert_all_verified()
    server.alive()


def test_tenant_values_out_of_range_are_refused_with_422(server: Server,
                                                         receiver: Receiver) -> None:  # noqa: F811
    api = server.api()
    url = receiver.url("/x")
    deep: object = {"op": "is", "value": 1}
    for _ in range(20):
        deep = {"op": "not", "arg": deep}
    cases = {
        "retry_schedule": [1e300],
        "timeout": 10_000,
        "rate_limit": 10**9,
        "headers": {"X-Ok": "a\x01b"},
        "match": {"total": deep},
    }
    for field, value in cases.items():
        got = api.post("/subscriptions", json={"hook": "order.paid", "url": url, field: value})
        assert got.status_code == 422, (field, got.text)
        assert field in got.json()["errors"], got.text
    long_url = url + "?" + "a" * 3000
    got = api.post("/subscriptions", json={"hook": "order.paid", "url": long_url})
    assert got.status_code == 422 and "url" in got.json()["errors"]
    backtracking = {"name": {"op": "like", "value": r"(a)\1"}}
    got = api.post("/subscriptions", json={"hook": "order.paid", "url": url,
                                            "match": backtracking})
    assert got.status_code == 422 and "linear time" in got.text
    server.alive()


def test_stored_values_that_cannot_be_sent_are_failed_attempts(
        server: Server, receiver: Receiver) -> None:  # noqa: F811
    # Rows written past validation (by hand, or before the bounds existed): a retry delay far
    # out of range stopped the hub at the first failed attempt (OverflowError), a header HTTP
    # cannot carry made the delivery fail on every claim without an attempt recorded.
    api = server.api()
    receiver.on("/down", 500, 500, 500)
    bad_delay = api.post("/subscriptions", json={"hook": "order.paid",
                                                  "url": receiver.url("/down")})
    bad_header = api.post("/subscriptions", json={"hook": "order.paid",
                                                   "url": receiver.url("/hdr")})
    good = api.post("/subscriptions", json={"hook": "order.paid", "url": receiver.url("/ok")})
    for made in (bad_delay, bad_header, good):
        assert made.status_code == 201, made.text
    receiver.secrets["/ok"] = [good.json()["secret"]]
    receiver.secrets["/down"] = [bad_delay.json()["secret"]]
    server.manage_shell(
        "from clarion.django.models import Listener;"
        f"Listener.objects.filter(id={bad_delay.json()['id']}).update(retry_schedule=[1e300]);"
        f"Listener.objects.filter(id={bad_header.json()['id']})"
        ".update(headers={'X-Bad': 'a\\r\\nInjected: 1', 'X-Uni': '\\u2603'})")
    assert api.post("/events", json={"type": "order.paid", "data": {"n": 1}}).status_code == 202
    receiver.wait_for(1, "/ok", timeout=60)
    receiver.wait_for(1, "/down", timeout=60)

    def deliveries(sub: httpx.Response) -> list[dict[str, object]]:
        page = api.get(f"/subscriptions/{sub.json()['id']}/deliveries").json()
        return list(page["data"])

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        hdr, down = deliveries(bad_header), deliveries(bad_delay)
        if hdr and hdr[0]["attempts"] and down and down[0]["attempts"]:
            break
        time.sleep(0.2)
    assert hdr[0]["status"] == "pending" and hdr[0]["attempts"] == 1, hdr
    assert "visible ASCII" in str(hdr[0]["last_error"]) or "header" in str(hdr[0]["last_error"])
    assert receiver.at("/hdr") == []  # nothing was sent with the injected header
    assert down[0]["status"] == "pending" and down[0]["attempts"] == 1, down
    server.alive()


def test_the_dashboard_and_api_cannot_be_framed_or_sniffed(server: Server) -> None:
    for path in ("/webhooks/login/", "/webhooks/api/hooks", "/webhooks/"):
        got = httpx.get(server.url + path, timeout=10,
                        headers={"Authorization": f"Bearer {server.key}"})
        assert got.headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in got.headers["content-security-policy"], path
        assert got.headers["x-content-type-options"] == "nosniff", path
        assert got.headers["referrer-policy"] == "same-origin", path
    login = httpx.get(server.url + "/webhooks/login/", timeout=10)
    assert "no-store" in login.headers["cache-control"]
    cookie = login.headers.get("set-cookie", "")
    assert "SameSite=Lax" in cookie, cookie


def test_key_rotation_without_a_django_project(tmp_path: Path) -> None:
    # The built-in configuration takes SECRET_KEY_FALLBACKS and ENCRYPTION_KEYS from the
    # environment, so a key can be rotated in place there too.
    db = tmp_path / "hooks.sqlite3"

    def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLARION_CLI, "manage", "--db", str(db), *args], cwd=tmp_path,
            capture_output=True, text=True, timeout=120, check=False, env={**os.environ, **env})

    old, new = "old-" + "k" * 50, "new-" + "k" * 50
    made = manage("shell", "-c", "from clarion.django.hooks import Hook;"
                  "l = Hook(name='a.b').listener(url='https://example.com/h').save();"
                  "print(l.secret)", CLARION_SECRET_KEY=old)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip().splitlines()[-1]
    read = "from clarion.django.models import Listener; print(Listener.objects.get().secret)"
    assert manage("shell", "-c", read, CLARION_SECRET_KEY=new).returncode != 0  # no key opens it
    both = {"CLARION_SECRET_KEY": new, "CLARION_SECRET_KEY_FALLBACKS": old}
    assert manage("shell", "-c", read, **both).stdout.strip().splitlines()[-1] == secret
    moved = manage("clarion_reencrypt", **both)
    assert moved.returncode == 0 and "re-encrypted 1" in moved.stdout, moved.stdout
    assert manage("clarion_reencrypt", "--check", CLARION_SECRET_KEY=new).returncode == 0
    after = manage("shell", "-c", read, CLARION_SECRET_KEY=new)
    assert after.stdout.strip().splitlines()[-1] == secret
