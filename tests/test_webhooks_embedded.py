"""``clarion serve --webhooks-db``: the webhook API, dashboard and worker with no Django project.

A FastAPI or Flask application's view of Clarion: everything over HTTP. The server runs as a
real subprocess; a user and key are made with ``clarion manage``; an event sent through the API
reaches a real receiver, signed, verified by the ``standardwebhooks`` reference library.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from webhook_support import Receiver, embedded_server, receiver  # noqa: F401  # fixture


def _clarion(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "import sys; from clarion.cli import main; "
                           "sys.exit(main())", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with embedded_server(tmp_path, "--webhook-types", "order.created,order.paid") as (url, db, _):
        yield url, db


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
