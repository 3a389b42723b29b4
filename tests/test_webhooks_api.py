"""The REST Hooks API (``clarion.django.urls`` under ``/webhooks/``) served for real: the test
project under gunicorn on a free port, called with httpx, delivering through a real worker to a
real receiver that verifies signatures with the ``standardwebhooks`` reference library."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import django_env
from conftest import _stop, _wait_until, free_port

django_env.configure()  # before anything imports Django models

from django.contrib.auth.models import User  # noqa: E402

from clarion.django.models import ApiKey, Delivery, Event  # noqa: E402
from webhook_support import (  # noqa: E402
    TESTS,
    Receiver,
    clean_db,
    receiver,
    run_worker,
    webhook_databases,
    worker_env,
)

__all__ = ["clean_db", "receiver", "webhook_databases"]

PREFIX = "/webhooks/api"


class Api:
    """An httpx client on the served project, with one user's API key."""

    def __init__(self, base: str, key: str | None) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=base + PREFIX, headers=headers, timeout=30)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.http, name)


@pytest.fixture(scope="module")
def server(webhook_databases: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """gunicorn (gthread) serving tests/webhook_apps on the tests' own databases."""
    port = free_port()
    log = tmp_path_factory.mktemp("api") / "gunicorn.log"
    cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
           "--worker-class", "gthread", "--workers", "1", "--threads", "8",
           "--timeout", "120", "--graceful-timeout", "5", "--no-control-socket",
           "--chdir", str(TESTS), "django.core.wsgi:get_wsgi_application()"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=worker_env(),
                                cwd=TESTS, start_new_session=True)

    def answers() -> bool:
        try:
            httpx.get(f"http://127.0.0.1:{port}{PREFIX}/openapi.json", timeout=2)
        except httpx.HTTPError:
            return False
        return True

    _wait_until(answers, proc, "gunicorn", lambda: Path(log).read_text(errors="replace"), 60)
    yield f"http://127.0.0.1:{port}"
    _stop(proc, group=True)


def user(name: str, *, staff: bool = False) -> tuple[Any, str]:
    """A user and an API key of theirs."""
    u = User.objects.create_user(name, password="pw-" + name, is_staff=staff,
                                 is_superuser=staff)
    _, raw = ApiKey.issue(u, f"{name}'s key")
    return u, raw


@pytest.fixture
def alice(server: str, clean_db: None) -> Iterator[Api]:
    api = Api(server, user("alice")[1])
    yield api
    api.close()


@pytest.fixture
def bob(server: str, clean_db: None) -> Iterator[Api]:
    api = Api(server, user("bob")[1])
    yield api
    api.close()


def subscribe(api: Api, rec: Receiver, path: str, hook: str = "myhook",
              **extra: Any) -> dict[str, Any]:
    r = api.post("/subscriptions", json={"hook": hook, "url": rec.url(path), **extra})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    rec.secrets[path] = [body["secret"]]
    return body


def send(api: Api, data: dict[str, Any], hook: str = "myhook", **kw: Any) -> httpx.Response:
    return api.post("/events", json={"type": hook, "data": data}, **kw)  # type: ignore[no-any-return]


# -- the whole flow ---------------------------------------------------------------------------

def test_subscribe_send_deliver_inspect_resend_unsubscribe(alice: Api, receiver: Receiver) -> None:
    hooks = alice.get("/hooks")
    assert hooks.status_code == 200
    by_name = {h["name"]: h for h in hooks.json()["data"]}
    assert by_name["myhook"]["provides_args"] == ["address", "name"]
    assert by_name["person"]["provides_args"] == ["address", "name"]
    assert "clarion.listener.disabled" in by_name
    assert {"is", "startswith", "like", "in", "gt", "exists"} <= set(hooks.json()["match_ops"])

    sub = subscribe(alice, receiver, "/alice", match={"name": {"op": "startswith", "value": "J"},
                                                      "address": "Oslo"},
                    description="Js in Oslo", headers={"X-Tenant": "42"})
    assert sub["secret"].startswith("whsec_")
    assert sub["match"] == {"name": {"op": "startswith", "value": "J"},
                            "address": {"op": "is", "value": "Oslo"}}
    got = alice.get(f"/subscriptions/{sub['id']}").json()
    assert "secret" not in got and got["description"] == "Js in Oslo"
    assert "secret" not in alice.get("/subscriptions").json()["data"][0]

    joe = send(alice, {"name": "Joe", "address": "Oslo", "secret": "stays home"})
    assert joe.status_code == 202, joe.text
    assert joe.json()["data"] == {"name": "Joe", "address": "Oslo"}  # provides_args only
    assert send(alice, {"name": "Bob", "address": "Oslo"}).status_code == 202
    assert send(alice, {"name": "Jim", "address": "Bergen"}).status_code == 202
    run_worker()
    [request] = receiver.wait_for(1, "/alice")
    receiver.assert_all_verified()
    assert request.verified is True
    assert request.headers["x-tenant"] == "42"
    assert request.headers["webhook-id"] == joe.json()["msg_id"]
    assert request.json["type"] == "myhook"
    assert request.json["data"] == {"name": "Joe", "address": "Oslo"}

    page = alice.get(f"/subscriptions/{sub['id']}/deliveries").json()
    [delivery] = page["data"]
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 1
    assert page["has_more"] is False and page["next_after"] is None
    assert alice.get(f"/subscriptions/{sub['id']}/deliveries",
                     params={"status": "failed"}).json()["data"] == []
    detail = alice.get(f"/deliveries/{delivery['id']}").json()
    assert detail["event"]["payload"]["data"] == {"name": "Joe", "address": "Oslo"}
    [attempt] = detail["attempt_log"]
    assert attempt["status_code"] == 200 and attempt["outcome"] == "success"
    assert attempt["response_body"] == "ok" and attempt["duration_ms"] >= 0
    assert any(name.lower() == "content-length" for name, _ in attempt["response_headers"])

    resent = alice.post(f"/deliveries/{delivery['id']}/resend")
    assert resent.status_code == 202 and resent.json()["status"] == "pending"
    run_worker()
    receiver.wait_for(2, "/alice")
    detail = alice.get(f"/deliveries/{delivery['id']}").json()
    assert [a["manual"] for a in detail["attempt_log"]] == [False, True]
    assert detail["status"] == "succeeded"

    assert alice.delete(f"/subscriptions/{sub['id']}").status_code == 204
    assert alice.get(f"/subscriptions/{sub['id']}").status_code == 404
    assert send(alice, {"name": "Joe", "address": "Oslo"}).status_code == 202
    run_worker()
    assert len(receiver.at("/alice")) == 2


def test_patch_subscription(alice: Api, receiver: Receiver) -> None:
    sub = subscribe(alice, receiver, "/one")
    r = alice.patch(f"/subscriptions/{sub['id']}", json={
        "url": receiver.url("/two"), "match": {"name": "Ann"}, "rate_limit": 5, "fifo": True,
        "retry_schedule": [1, 2], "timeout": 3.5, "hook": "myhook"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["url"].endswith("/two") and body["match"] == {"name": {"op": "is", "value": "Ann"}}
    assert (body["rate_limit"], body["fifo"], body["retry_schedule"], body["timeout"]) == (
        5, True, [1, 2], 3.5)
    r = alice.patch(f"/subscriptions/{sub['id']}", json={"hook": "person"})
    assert r.status_code == 422 and "hook" in r.json()["errors"]
    r = alice.patch(f"/subscriptions/{sub['id']}", json={"url": "http://10.1.2.3/x"})
    assert r.status_code == 422 and "url" in r.json()["errors"]


def test_rotate_disable_enable_recover(alice: Api, receiver: Receiver) -> None:
    sub = subscribe(alice, receiver, "/flaky")
    base = f"/subscriptions/{sub['id']}"
    rotated = alice.post(f"{base}/rotate-secret", json={"grace_seconds": 0})
    assert rotated.status_code == 200
    assert rotated.json()["secret"] != sub["secret"]
    receiver.secrets["/flaky"] = [rotated.json()["secret"]]  # with no grace only the new signs
    assert alice.post(f"{base}/rotate-secret", json={"grace_seconds": -1}).status_code == 422

    off = alice.post(f"{base}/disable", json={"reason": "maintenance"})
    assert off.status_code == 200
    assert off.json()["active"] is False and off.json()["disabled_reason"] == "maintenance"
    on = alice.post(f"{base}/enable")
    assert on.status_code == 200 and on.json()["active"] is True

    receiver.on("/flaky", 500)
    send(alice, {"name": "Joe"})
    run_worker(RETRY_SCHEDULE=[])  # no retries: the delivery fails at once
    receiver.wait_for(1, "/flaky")
    [failed] = alice.get(f"{base}/deliveries", params={"status": "failed"}).json()["data"]
    assert failed["last_status_code"] == 500
    detail = alice.get(f"/deliveries/{failed['id']}").json()
    assert detail["attempt_log"][0]["status_code"] == 500

    receiver.on("/flaky", 200)
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    r = alice.post(f"{base}/recover", json={"since": since})
    assert r.status_code == 202 and r.json() == {"recovered": 1}
    run_worker()
    receiver.wait_for(2, "/flaky")
    receiver.assert_all_verified()
    assert alice.get(f"/deliveries/{failed['id']}").json()["status"] == "succeeded"

    too_old = (datetime.now(UTC) - timedelta(days=15)).isoformat()
    r = alice.post(f"{base}/recover", json={"since": too_old})
    assert (r.status_code == 422 and "14" not in r.text) or "since" in r.json()["errors"]
    assert alice.post(f"{base}/recover", json={"since": "yesterday"}).status_code == 422
    assert alice.post(f"{base}/recover", json={}).status_code == 422


# -- owners -----------------------------------------------------------------------------------

def test_owner_scoping(server: str, alice: Api, bob: Api, receiver: Receiver) -> None:
    a = subscribe(alice, receiver, "/a")
    b = subscribe(bob, receiver, "/b")
    assert [s["id"] for s in alice.get("/subscriptions").json()["data"]] == [a["id"]]
    assert [s["id"] for s in bob.get("/subscriptions").json()["data"]] == [b["id"]]
    for method, path in [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/enable"),
                         ("POST", "/disable"), ("POST", "/rotate-secret"),
                         ("GET", "/deliveries")]:
        r = bob.request(method, f"/subscriptions/{a['id']}{path}",
                        json={} if method != "GET" else None)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"] == f"no subscription {a['id']}"

    # Bob's events reach only Bob's listeners; a staff key's reach everyone's.
    assert send(bob, {"name": "from bob"}).json()["owner"] is not None
    run_worker()
    receiver.wait_for(1, "/b")
    assert receiver.at("/a") == []
    staff = Api(server, user("root", staff=True)[1])
    assert {s["id"] for s in staff.get("/subscriptions").json()["data"]} == {a["id"], b["id"]}
    assert send(staff, {"name": "from staff"}).json()["owner"] is None
    run_worker()
    receiver.wait_for(1, "/a")
    receiver.wait_for(2, "/b")
    receiver.assert_all_verified()

    [delivery] = alice.get(f"/subscriptions/{a['id']}/deliveries").json()["data"]
    assert bob.get(f"/deliveries/{delivery['id']}").status_code == 404
    assert bob.post(f"/deliveries/{delivery['id']}/resend").status_code == 404
    assert staff.get(f"/deliveries/{delivery['id']}").status_code == 200
    assert staff.get(f"/subscriptions/{a['id']}").json()["owner"] == User.objects.get(
        username="alice").pk
    # Only staff name an owner for an event.
    r = bob.post("/events", json={"type": "myhook", "data": {}, "owner": 1})
    assert r.status_code == 422 and "owner" in r.json()["errors"]
    staff.close()


# -- errors -----------------------------------------------------------------------------------

def test_authentication_errors(server: str, alice: Api) -> None:
    anonymous = Api(server, None)
    r = anonymous.get("/subscriptions")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert "error" in r.json()
    for header in ["Bearer ck_nope_nope", "Bearer nonsense", "Basic YTpi", "Bearer"]:
        r = anonymous.get("/subscriptions", headers={"Authorization": header})
        assert r.status_code == 401, header
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    key, raw = ApiKey.issue(User.objects.get(username="alice"))
    assert Api(server, raw).get("/subscriptions").status_code == 200
    ApiKey.objects.filter(pk=key.pk).update(revoked=True)
    assert Api(server, raw).get("/subscriptions").status_code == 401
    # The OpenAPI document needs no key.
    assert anonymous.get("/openapi.json").status_code == 200
    anonymous.close()


def test_request_errors(alice: Api, receiver: Receiver) -> None:
    url = receiver.url("/x")

    def errors(r: httpx.Response, status: int) -> dict[str, list[str]]:
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/json"
        return r.json().get("errors", {})  # type: ignore[no-any-return]

    r = alice.put("/subscriptions", json={})
    errors(r, 405)
    assert r.headers["Allow"] == "GET, HEAD, POST"
    errors(alice.delete("/hooks"), 405)
    errors(alice.post("/subscriptions", content=b"{not json",
                      headers={"Content-Type": "application/json"}), 400)
    errors(alice.post("/subscriptions", json=[1, 2]), 400)
    errors(alice.post("/subscriptions", content=b""), 400)
    errors(alice.post("/subscriptions", content=b" " * (1024 * 1024 + 1)), 413)
    # Chunked bodies (no Content-Length) are read, and capped, too.
    chunks = [b" "] * 3 + [b" " * (256 * 1024)] * 4
    errors(alice.post("/subscriptions", content=iter(chunks)), 413)
    r = alice.post("/subscriptions", content=iter([b'{"hook": "myhook", ', b'"url": "%s"}' % (
        url.encode())]))
    assert r.status_code == 201, r.text
    errors(alice.get("/subscriptions", params={"limit": "x"}), 400)
    errors(alice.get("/subscriptions", params={"active": "maybe"}), 400)
    errors(alice.get("/subscriptions/999999"), 404)
    errors(alice.get("/deliveries/999999"), 404)

    assert "hook" in errors(alice.post("/subscriptions", json={"hook": "nope", "url": url}), 422)
    assert "hook" in errors(alice.post("/subscriptions", json={"url": url}), 422)
    for bad in ["http://10.0.0.1/hook", "ftp://127.0.0.1/x", "not a url", "http://169.254.169.254/"]:
        e = errors(alice.post("/subscriptions", json={"hook": "myhook", "url": bad}), 422)
        assert list(e) == ["url"] and e["url"][0], bad
    e = errors(alice.post("/subscriptions", json={
        "hook": "myhook", "url": url, "match": {"name": {"op": "nope"}}}), 422)
    assert "unknown matcher op 'nope'" in e["match"][0]
    e = errors(alice.post("/subscriptions", json={
        "hook": "myhook", "url": url, "match": {"age": 3}}), 422)
    assert "provides no such field" in e["match"][0]
    e = errors(alice.post("/subscriptions", json={
        "hook": "myhook", "url": url, "match": {"name": {"op": "like", "value": "("}}}), 422)
    assert "regular expression" in e["match"][0]
    e = errors(alice.post("/subscriptions", json={
        "hook": "myhook", "url": url, "rate_limit": 0, "fifo": "yes", "timeout": -1,
        "retry_schedule": "soon", "headers": {"webhook-id": "x"}, "colour": "red"}), 422)
    assert set(e) == {"colour"}  # unknown fields first: a typo is named before anything else
    e = errors(alice.post("/subscriptions", json={
        "hook": "myhook", "url": url, "rate_limit": 0, "fifo": "yes", "timeout": -1,
        "retry_schedule": "soon", "headers": {"webhook-id": "x"}}), 422)
    assert set(e) == {"rate_limit", "fifo", "timeout", "retry_schedule", "headers"}

    assert "type" in errors(alice.post("/events", json={"type": "nope", "data": {}}), 422)
    assert "data" in errors(alice.post("/events", json={"type": "myhook", "data": [1]}), 422)
    assert "data" in errors(alice.post("/events", json={"type": "myhook",
                                                        "data": {"using": "sqlite"}}), 422)
    big = {"name": "x" * (300 * 1024)}  # under the 1 MiB request limit, over MAX_PAYLOAD
    assert "MAX_PAYLOAD" in alice.post("/events", json={"type": "myhook", "data": big}).text
    errors(alice.post("/events", json={"type": "myhook", "data": big}), 413)
    assert Event.objects.count() == 0  # nothing half-sent


def test_session_requests_need_csrf(server: str, clean_db: None) -> None:
    user("carol")
    with httpx.Client(base_url=server, timeout=30) as browser:
        browser.get("/webhooks/login/")
        token = browser.cookies["csrftoken"]
        r = browser.post("/webhooks/login/", data={
            "username": "carol", "password": "pw-carol", "csrfmiddlewaretoken": token},
            headers={"Referer": f"{server}/webhooks/login/"})
        assert r.status_code == 302, r.text
        token = browser.cookies["csrftoken"]  # rotated at login
        assert browser.get(f"{PREFIX}/subscriptions").status_code == 200
        body = {"hook": "myhook", "url": "http://127.0.0.1:9/hook"}
        r = browser.post(f"{PREFIX}/subscriptions", json=body)
        assert r.status_code == 403 and "CSRF" in r.json()["error"]
        r = browser.post(f"{PREFIX}/subscriptions", json=body,
                         headers={"X-CSRFToken": token, "Referer": f"{server}/webhooks/"})
        assert r.status_code == 201, r.text


def test_pagination(alice: Api, receiver: Receiver) -> None:
    ids = [subscribe(alice, receiver, f"/p{i}")["id"] for i in range(5)]
    seen: list[int] = []
    after = None
    for _ in range(3):
        page = alice.get("/subscriptions", params={"limit": 2, **(
            {"after": after} if after else {})}).json()
        seen += [s["id"] for s in page["data"]]
        after = page["next_after"]
        assert page["has_more"] is (after is not None)
    assert seen == sorted(ids, reverse=True) and after is None
    assert alice.get("/subscriptions", params={"limit": 0}).status_code == 400
    assert alice.get("/subscriptions", params={"limit": 201}).status_code == 400
    assert alice.get("/subscriptions", params={"hook": "person"}).json()["data"] == []


def test_idempotency_key(alice: Api, receiver: Receiver) -> None:
    subscribe(alice, receiver, "/once")
    first = send(alice, {"name": "Joe"}, headers={"Idempotency-Key": "order-17"})
    again = send(alice, {"name": "Joe"}, headers={"Idempotency-Key": "order-17"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert first.json()["msg_id"] == again.json()["msg_id"]
    assert send(alice, {"name": "Joe"}, headers={"Idempotency-Key": "order-18"}).status_code == 202
    assert Event.objects.count() == 2
    run_worker()
    got = receiver.wait_for(2, "/once")
    receiver.assert_all_verified()
    assert len({r.headers["webhook-id"] for r in got}) == 2
    assert Delivery.objects.count() == 2


# -- the contract -----------------------------------------------------------------------------

def test_openapi_document_is_valid_and_complete(server: str, alice: Api) -> None:
    from openapi_spec_validator import validate

    from clarion.django.urls import api_patterns

    doc = httpx.get(f"{server}{PREFIX}/openapi.json").json()
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    assert doc["servers"] == [{"url": f"{server}/webhooks"}]
    routes = {"/" + str(p.pattern).replace("<int:pk>", "{id}") for p in api_patterns}
    assert set(doc["paths"]) == routes
    # Every documented method is served (no 405), every other one is refused.
    for path, item in doc["paths"].items():
        documented = {m.upper() for m in item if m != "parameters"}
        real = path.replace("{id}", "999999")
        allow = alice.request("TRACE", real[len("/api"):])
        assert allow.status_code == 405
        served = set(allow.headers["Allow"].split(", ")) - {"HEAD"}
        assert served == documented, path
    json.dumps(doc)  # plain JSON
