"""``clarion serve --webhooks-db``: the webhook API, dashboard and worker with no Django project.

A FastAPI or Flask application's view of Clarion: everything over HTTP. The server runs as a
real subprocess; a user and key are made with ``clarion manage``; an event sent through the API
reaches a real receiver, signed, verified by the ``standardwebhooks`` reference library.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import free_port
from webhook_support import Receiver, receiver  # noqa: F401  # fixture


def _clarion(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "import sys; from clarion.cli import main; "
                           "sys.exit(main())", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    db = tmp_path / "hooks.sqlite3"
    port = free_port()
    env = {**os.environ, "CLARION_WEBHOOKS": '{"ALLOWED_NETWORKS": ["127.0.0.0/8"]}'}
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from clarion.cli import main; sys.exit(main())",
         "serve", "--port", str(port), "--webhooks-db", str(db),
         "--webhook-types", "order.created,order.paid"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/health", timeout=1)
            break
        except httpx.TransportError:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.1)
    yield url, db
    proc.terminate()
    out, _ = proc.communicate(timeout=40)
    assert proc.returncode == 0, out


def test_an_app_without_django_subscribes_and_sends(server: tuple[str, Path],
                                                    receiver: Receiver) -> None:  # noqa: F811
    url, db = server
    made = _clarion("manage", "--db", str(db), "shell", "-c",
                    "from django.contrib.auth.models import User;"
                    "from clarion.django.models import ApiKey;"
                    "u = User.objects.create_superuser('ops', 'ops@example.com', 'pw');"
                    "print(ApiKey.issue(u, 'app')[1])", cwd=db.parent)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    api = httpx.Client(base_url=f"{url}/webhooks/api", headers={"Authorization": f"Bearer {key}"})
    listed = api.get("/hooks").json()
    kinds = {h["name"] for h in listed["data"]}
    assert {"order.created", "order.paid"} <= kinds
    sub = api.post("/subscriptions", json={"hook": "order.paid", "url": receiver.url("/paid"),
                                            "match": {"total": {"op": "gte", "value": 100}}})
    assert sub.status_code == 201, sub.text
    receiver.secrets["/paid"] = [sub.json()["secret"]]
    for total in (50, 150):
        sent = api.post("/events", json={"type": "order.paid", "data": {"total": total}})
        assert sent.status_code == 202, sent.text
    got = receiver.wait_for(1, "/paid", timeout=30)
    time.sleep(1.0)  # the 50 must not follow
    assert [r.json["data"]["total"] for r in receiver.at("/paid")] == [150]
    receiver.assert_all_verified()
    assert got[0].headers["webhook-id"].startswith("msg_")
    sub_id = sub.json()["id"]
    assert api.get(f"/subscriptions/{sub_id}/deliveries").json()["data"]
