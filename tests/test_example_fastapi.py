"""examples/fastapi under a real uvicorn on a real socket, talking to a real hub: a ticket from
the app's dependency connects a WebSocket client once, a note written through the app reaches
it, the hub being down is a 503 (or a saved but unpublished note), and webhooks sent by
Clarion's own sender (signed with Clarion's signer) are accepted once while forged ones are
refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import API_KEY, Hub, HubFactory, free_port
from websockets.sync.client import connect

from clarion.webhooks.addresses import AddressPolicy
from clarion.webhooks.retry import Outcome
from clarion.webhooks.sender import Sender
from clarion.webhooks.signing import generate_secret, signature_headers
from clarion.webhooks.store import Job
from clarion.webhooks.transport import PinnedTransport

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi"
NOTES_NAMESPACE = """
[namespaces.notes]
history_size = 50
history_ttl = 300
presence = true
"""
SECRET = generate_secret()


class App:
    def __init__(self, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.process = process
        self.log = log

    def post(self, path: str, user: str | None = "ada", **kwargs: Any) -> httpx.Response:
        headers = {"X-User": user} if user else {}
        headers.update(kwargs.pop("headers", {}))
        return httpx.post(self.url + path, headers=headers, timeout=10, trust_env=False,
                          **kwargs)

    def get(self, path: str) -> Any:
        response = httpx.get(self.url + path, timeout=10, trust_env=False)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def app_factory(tmp_path: Path) -> Iterator[Callable[[Hub], App]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(hub: Hub) -> App:
        port = free_port()
        log = tmp_path / f"uvicorn-{port}.log"
        env = {**os.environ, "CLARION_URL": hub.url, "CLARION_API_KEY": API_KEY,
               "CLARION_WEBHOOK_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(EXAMPLE), "--host",
                 "127.0.0.1", "--port", str(port), "app:app"],
                stdout=out, stderr=subprocess.STDOUT, env=env)
        started.append(proc)
        app = App(port, proc, log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited:\n{log.read_text()}")
            try:
                httpx.get(app.url + "/notes", timeout=1, trust_env=False)
                return app
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"uvicorn did not answer:\n{log.read_text()}")

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def frames(ws: Any, timeout: float = 5.0) -> Iterator[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        for line in str(ws.recv(timeout=max(0.01, deadline - time.monotonic()))).split("\n"):
            if line.strip():
                yield json.loads(line)


def test_ticket_then_a_note_reaches_the_browser(hub_factory: HubFactory,
                                                app_factory: Callable[[Hub], App]) -> None:
    hub = hub_factory(NOTES_NAMESPACE)
    app = app_factory(hub)
    answer = app.post("/realtime/ticket")
    assert answer.status_code == 200, answer.text
    ticket = answer.json()["ticket"]
    assert ticket.startswith("tkt_") and answer.json()["expires_in"] == 10
    assert app.post("/realtime/ticket", user=None).status_code == 422  # no user: refused

    with connect(hub.ws_url, proxy=None, open_timeout=5, close_timeout=1) as ws:
        ws.send(json.dumps({"id": 1, "connect": {"token": ticket}}))
        connected = next(m for m in frames(ws) if m.get("id") == 1)
        # The ticket subscribed the connection to the notes channel server-side.
        assert "notes:board" in connected["connect"]["subs"]
        written = app.post("/notes", json={"text": "hello"})
        assert written.status_code == 201, written.text
        note = {"id": 1, "text": "hello", "user": "ada"}
        assert written.json()["note"] == note
        assert written.json()["published"]["offset"] == 1
        pub = next(m["push"]["pub"] for m in frames(ws) if "pub" in m.get("push", {}))
        assert pub["data"] == note and pub["offset"] == 1
    assert app.post("/notes", json={"text": ""}).status_code == 422
    assert app.get("/notes") == [note]


def test_hub_down(hub_factory: HubFactory, app_factory: Callable[[Hub], App]) -> None:
    hub = hub_factory(NOTES_NAMESPACE)
    app = app_factory(hub)
    hub.process.terminate()
    hub.process.wait(10)
    refused = app.post("/realtime/ticket")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    # The write stands; the publication that failed is logged, not raised.
    written = app.post("/notes", json={"text": "kept"})
    assert written.status_code == 201 and written.json()["published"] is None
    assert app.get("/notes")[0]["text"] == "kept"
    assert "note 1 saved but not published" in app.log.read_text()


def webhook_job(app: App, body: bytes, message_id: str, secret: str = SECRET) -> Job:
    return Job(delivery_id=1, listener_id=1, attempt=1, message_id=message_id,
               hook="note.added", url=app.url + "/webhooks/clarion", body=body,
               secrets=(secret,))


async def test_webhooks_from_clarions_sender_are_verified(
        hub_factory: HubFactory, app_factory: Callable[[Hub], App]) -> None:
    app = app_factory(hub_factory(NOTES_NAMESPACE))
    policy = AddressPolicy(["127.0.0.0/8"])  # the app listens on loopback
    transport = PinnedTransport(policy)
    sender = Sender(transport, policy)
    event = {"type": "note.added", "timestamp": "2026-12-02T12:00:00Z",
             "data": {"id": 1, "text": "hello"}}
    body = json.dumps(event).encode()
    msg_id = f"msg_{uuid.uuid4().hex}"
    try:
        first = await sender.attempt(webhook_job(app, body, msg_id))
        assert (first.outcome, first.status_code) == (Outcome.SUCCESS, 204), first.error
        # A retry of the same message (same webhook-id, signed anew) is accepted, handled once.
        again = await sender.attempt(webhook_job(app, body, msg_id))
        assert again.status_code == 204
        # Signed with another secret: refused, and a refusal is retried by the sender.
        forged = await sender.attempt(webhook_job(app, body, "msg_forged",
                                                  secret=generate_secret()))
        assert forged.status_code == 400 and forged.outcome is not Outcome.SUCCESS
    finally:
        await transport.aclose()
    assert app.get("/webhooks/received") == {msg_id: event}

    # Tampered with after signing, stale, or unsigned: refused too.
    now = int(time.time())
    headers = signature_headers("msg_t", now, body, [SECRET])
    assert app.post("/webhooks/clarion", content=body + b" ", headers=headers).status_code == 400
    stale = signature_headers("msg_s", now - 3600, body, [SECRET])
    assert app.post("/webhooks/clarion", content=body, headers=stale).status_code == 400
    assert app.post("/webhooks/clarion", content=body).status_code == 400
    assert list(app.get("/webhooks/received")) == [msg_id]
    assert "webhook refused" in app.log.read_text()
