"""How receivers' answers are handled, through a real worker and a real HTTP server: retries,
timeouts, Retry-After, redirects, 410, exhausted retries and the operational events, disabling,
captured responses, manual resends and recovery, key rotation, ed25519, rate limits, strict
order, and the address policy at connect time (DNS rebinding)."""

# ruff: noqa: E402  (Django is configured before the imports that need it)
from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

import pytest
import standardwebhooks

import django_env

django_env.configure()

from django.db import transaction
from django.utils import timezone

from clarion.django.hooks import ATTEMPTS_EXHAUSTED, LISTENER_DISABLED
from clarion.django.models import Attempt, Delivery, Event, Listener
from clarion.webhooks import addresses
from clarion.webhooks.signing import SigningKey, generate_secret, verify
from webhook_apps.people.hooks import MyHook
from webhook_support import (
    Receiver,
    clean_db,
    receiver,
    run_worker,
    settle,
    webhook_databases,
    webhooks,
)

__all__ = ["clean_db", "receiver", "webhook_databases"]

FAST: dict[str, Any] = {"RETRY_SCHEDULE": [0.2, 0.2], "RETRY_JITTER": 0}


def listen(rec: Receiver, path: str, hook: Any = None, db: str = "default",
           verify_with: bool = True, **options: Any) -> Listener:
    with webhooks(db):
        listener = (hook or MyHook()).listener(url=rec.url(path), **options).save()
    if verify_with:
        rec.secrets[path] = [listener.secret]
    return listener


def send(n: int = 1, db: str = "default", **fields: Any) -> list[Event]:
    with webhooks(db), transaction.atomic(using=db):
        return [MyHook().send(name=fields.get("name", f"p{i}"), address="a") for i in range(n)]


def attempts(db: str = "default") -> list[Attempt]:
    return list(Attempt.objects.using(db).order_by("id"))


@pytest.mark.parametrize("db", ["default", "sqlite"])
def test_500_then_200_is_retried(clean_db: None, receiver: Receiver, db: str) -> None:
    listen(receiver, "/r", db=db)
    receiver.on("/r", 500, 200)
    [event] = send(db=db)
    settle(database=db, **FAST)
    got = receiver.at("/r")
    assert len(got) == 2
    assert {r.headers["webhook-id"] for r in got} == {event.msg_id}
    assert got[0].headers["webhook-timestamp"] <= got[1].headers["webhook-timestamp"]
    rows = attempts(db)
    assert [(a.number, a.status_code, a.outcome) for a in rows] == [
        (1, 500, "failure"), (2, 200, "success")]
    delivery = Delivery.objects.using(db).get()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == (
        "succeeded", 2, 200)
    assert delivery.ended_at is not None and delivery.next_attempt_at is None
    assert Listener.objects.using(db).get().first_failure_at is None  # healthy again
    receiver.assert_all_verified()


def test_timeout_is_overload(clean_db: None, receiver: Receiver) -> None:
    listen(receiver, "/slow")
    receiver.on("/slow", 200, delay=3)
    send()
    before = timezone.now()
    run_worker(TIMEOUT=1, **FAST)
    [attempt] = attempts()
    assert attempt.outcome == "overload"
    assert "timed out" in attempt.error
    assert attempt.status_code is None
    delivery = Delivery.objects.get()
    assert delivery.status == "pending"
    assert delivery.next_attempt_at >= before + timedelta(seconds=55)  # overload: ≥ 60 s
    assert "timed out" in delivery.last_error


def test_429_retry_after_pushes_the_next_attempt(clean_db: None, receiver: Receiver) -> None:
    listen(receiver, "/busy")
    receiver.on("/busy", (429, {"Retry-After": "120"}))
    send()
    before = timezone.now()
    run_worker(**FAST)
    [attempt] = attempts()
    assert (attempt.status_code, attempt.outcome) == (429, "overload")
    assert ["Retry-After", "120"] in attempt.response_headers
    delivery = Delivery.objects.get()
    assert delivery.status == "pending"
    assert delivery.next_attempt_at >= before + timedelta(seconds=100)
    assert delivery.next_attempt_at <= timezone.now() + timedelta(seconds=130)
    assert len(receiver.at("/busy")) == 1


def test_redirect_is_not_followed(clean_db: None, receiver: Receiver) -> None:
    listen(receiver, "/moved")
    receiver.on("/moved", (301, {"Location": receiver.url("/elsewhere")}))
    send()
    run_worker(RETRY_SCHEDULE=[], RETRY_JITTER=0)
    assert len(receiver.at("/moved")) == 1
    assert receiver.at("/elsewhere") == []
    [attempt] = attempts()
    assert (attempt.status_code, attempt.outcome) == (301, "failure")
    assert "redirect" in attempt.error and "/elsewhere" in attempt.error
    assert Delivery.objects.get().status == "failed"


def test_410_disables_the_listener(clean_db: None, receiver: Receiver) -> None:
    gone = listen(receiver, "/gone", fifo=True)  # one at a time: the rest are still pending
    ops = listen(receiver, "/ops", hook=LISTENER_DISABLED)
    receiver.on("/gone", 410)
    send(3)
    settle(**FAST)
    assert len(receiver.at("/gone")) == 1
    gone.refresh_from_db()
    assert gone.active is False
    assert "410" in gone.disabled_reason and gone.disabled_at is not None
    statuses = list(Delivery.objects.filter(listener=gone).order_by("id")
                    .values_list("status", "attempts", "last_error"))
    assert statuses[0][:2] == ("failed", 1)
    assert [s[:2] for s in statuses[1:]] == [("failed", 0), ("failed", 0)]
    assert all("listener disabled" in s[2] for s in statuses[1:])
    [note] = receiver.at("/ops")
    assert note.json["type"] == "clarion.listener.disabled"
    assert note.json["data"]["listener_id"] == gone.id
    assert note.json["data"]["url"] == gone.url
    assert "410" in note.json["data"]["reason"]
    # No exhausted event for a 410: the disabled event says it.
    assert not Event.objects.filter(hook="clarion.attempt.exhausted").exists()
    assert ops.active
    receiver.assert_all_verified()


def test_exhausted_retries_fail_and_notify(clean_db: None, receiver: Receiver) -> None:
    failing = listen(receiver, "/fail")
    listen(receiver, "/ops", hook=ATTEMPTS_EXHAUSTED)
    receiver.on("/fail", 500)
    [event] = send()
    settle(RETRY_SCHEDULE=[0.1], RETRY_JITTER=0)
    assert len(receiver.at("/fail")) == 2
    delivery = Delivery.objects.get(listener=failing)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("failed", 2, 500)
    [note] = receiver.at("/ops")
    data = note.json["data"]
    assert note.json["type"] == "clarion.attempt.exhausted"
    assert data["delivery_id"] == delivery.id and data["msg_id"] == event.msg_id
    assert (data["attempts"], data["status_code"], data["hook"]) == (2, 500, "myhook")
    failing.refresh_from_db()
    assert failing.active  # failing for less than DISABLE_AFTER
    receiver.assert_all_verified()


def test_continuous_failures_disable_after_the_window(clean_db: None,
                                                      receiver: Receiver) -> None:
    failing = listen(receiver, "/fail")
    ops = listen(receiver, "/ops", hook=LISTENER_DISABLED)
    receiver.on("/fail", 500)
    send()
    settle(RETRY_SCHEDULE=[0.4] * 6, RETRY_JITTER=0, DISABLE_AFTER=0.5)
    failing.refresh_from_db()
    assert not failing.active
    assert "failing for more than" in failing.disabled_reason
    assert 2 <= len(receiver.at("/fail")) < 7  # disabled before the schedule ran out
    assert Delivery.objects.get(listener=failing).status == "failed"
    [note] = receiver.at("/ops")
    assert note.json["data"]["listener_id"] == failing.id
    assert ops.active


def test_responses_are_captured(clean_db: None, receiver: Receiver) -> None:
    listen(receiver, "/big")
    listen(receiver, "/binary")
    big = b"x" * 30_000
    receiver.on("/big", (200, {"X-Test": "yes"}), body=big)
    binary = bytes(range(256)) * 4
    receiver.on("/binary", 500, body=binary)
    send()
    run_worker(RETRY_SCHEDULE=[], RETRY_JITTER=0)
    by_path = {a.url.rsplit("/", 1)[1]: a for a in attempts()}
    a = by_path["big"]
    assert len(a.response_body) == 20_000 and a.response_body == "x" * 20_000
    assert not a.body_base64
    assert ["X-Test", "yes"] in a.response_headers
    assert ["Content-Length", "30000"] in a.response_headers
    b = by_path["binary"]
    assert b.body_base64
    assert base64.b64decode(b.response_body) == binary
    assert b.status_code == 500 and b.duration_ms >= 0


def test_manual_resend_is_one_attempt(clean_db: None, receiver: Receiver) -> None:
    listen(receiver, "/r")
    receiver.on("/r", 500)
    send()
    settle(RETRY_SCHEDULE=[], RETRY_JITTER=0)
    delivery = Delivery.objects.get()
    assert delivery.status == "failed" and len(receiver.at("/r")) == 1
    exhausted = Event.objects.filter(hook="clarion.attempt.exhausted").count()
    assert exhausted == 1

    delivery.resend()  # fails again: no retries, though the schedule now has some
    assert delivery.status == "pending" and delivery.manual
    settle(**FAST)
    delivery.refresh_from_db()
    assert len(receiver.at("/r")) == 2
    assert (delivery.status, delivery.attempts, delivery.manual) == ("failed", 2, False)
    assert [a.manual for a in attempts()] == [False, True]
    # A failed manual attempt is not "exhausted retries" again.
    assert Event.objects.filter(hook="clarion.attempt.exhausted").count() == exhausted

    receiver.on("/r", 200)
    delivery.resend()
    settle(**FAST)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("succeeded", 3)
    assert len({r.headers["webhook-id"] for r in receiver.at("/r")}) == 1
    delivery.resend()  # a succeeded delivery can be sent again too, once
    settle(**FAST)
    assert len(receiver.at("/r")) == 4
    receiver.assert_all_verified()


def test_recover_resends_failed_deliveries(clean_db: None, receiver: Receiver) -> None:
    listener = listen(receiver, "/r")
    other = listen(receiver, "/other")
    receiver.on("/r", 500)
    receiver.on("/other", 500)
    send(3)
    settle(RETRY_SCHEDULE=[], RETRY_JITTER=0)
    assert Delivery.objects.filter(status="failed").count() == 6
    receiver.on("/r", 200)
    with webhooks(), pytest.raises(ValueError, match="at most"):
        listener.recover(timezone.now() - timedelta(days=30))
    with webhooks():
        assert listener.recover(timezone.now() - timedelta(hours=1)) == 3
    settle(**FAST)
    assert len(receiver.at("/r")) == 6
    assert set(Delivery.objects.filter(listener=listener).values_list("status", flat=True)) == {
        "succeeded"}
    assert set(Delivery.objects.filter(listener=other).values_list("status", flat=True)) == {
        "failed"}
    assert len(receiver.at("/other")) == 3
    with webhooks():
        assert listener.recover(timezone.now() - timedelta(hours=1)) == 0


def test_rotated_secret_signs_with_both(clean_db: None, receiver: Receiver) -> None:
    listener = listen(receiver, "/rot")
    old = listener.secret
    with webhooks():
        new = listener.rotate_secret()
    assert new != old and new.startswith("whsec_")
    assert listener.signing_secrets() == [new, old]
    send()
    run_worker()
    [r] = receiver.at("/rot")
    signatures = r.headers["webhook-signature"].split()
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    assert r.verified  # with the old secret, registered before the rotation
    for secret in (old, new):
        standardwebhooks.Webhook(secret).verify(r.body, r.headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(generate_secret()).verify(r.body, r.headers)
    # Without a grace period the old secret stops signing at once.
    with webhooks():
        newest = listener.rotate_secret(grace=0)
    send()
    run_worker()
    last = receiver.at("/rot")[-1]
    assert len(last.headers["webhook-signature"].split()) == 2  # new and the first old one
    standardwebhooks.Webhook(newest).verify(last.body, last.headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new).verify(last.body, last.headers)


def test_ed25519_listener(clean_db: None, receiver: Receiver) -> None:
    secret = generate_secret("ed25519")
    with webhooks():
        listener = MyHook().listener(url=receiver.url("/ed")).save(secret=secret)
    assert listener.secret == secret
    public = SigningKey.parse(secret).public()
    assert public.startswith("whpk_")
    [event] = send()
    run_worker()
    [r] = receiver.at("/ed")
    assert r.headers["webhook-signature"].startswith("v1a,")
    assert verify(r.body, r.headers, public) == event.msg_id
    from clarion.errors import SignatureError

    with pytest.raises(SignatureError):
        verify(r.body + b" ", r.headers, public)


def test_rate_limit(clean_db: None, receiver: Receiver) -> None:
    listen(receiver, "/rl", rate_limit=5)
    send(20)
    settle(**FAST)
    got = receiver.at("/rl")
    assert len(got) == 20
    assert len({r.headers["webhook-id"] for r in got}) == 20
    span = got[-1].at - got[0].at
    print(f"\n20 deliveries at 5/s took {span:.2f} s")
    assert span >= 2.5


def test_fifo_keeps_event_order(clean_db: None, receiver: Receiver) -> None:
    listen(receiver, "/fifo", fifo=True)
    receiver.on("/fifo", 500, 200)  # the first attempt of the first event fails once
    events = send(8)
    settle(**FAST)
    got = [r.headers["webhook-id"] for r in receiver.at("/fifo")]
    assert len(got) == 9
    assert got[0] == got[1] == events[0].msg_id
    assert got[1:] == [e.msg_id for e in events]
    assert set(Delivery.objects.values_list("status", flat=True)) == {"succeeded"}


# -- the address policy at connect time --------------------------------------------------------


@pytest.fixture
def rebinding(monkeypatch: pytest.MonkeyPatch) -> None:
    """``rebind.example`` resolves to 127.0.0.1, like a DNS answer changed after saving."""
    real = addresses._getaddrinfo

    async def resolve(host: str, port: int) -> list[str]:
        if host == "rebind.example":
            return ["127.0.0.1"]
        return await real(host, port)

    monkeypatch.setattr(addresses, "_getaddrinfo", resolve)


def test_dns_rebinding_is_refused_when_connecting(clean_db: None, receiver: Receiver,
                                                  rebinding: None) -> None:
    with webhooks():
        MyHook().listener(url=receiver.url("/rb", host="rebind.example")).save()
        MyHook().listener(url=receiver.url("/lh", host="localhost")).save()
    send()
    run_worker(ALLOWED_NETWORKS=[], RETRY_SCHEDULE=[], RETRY_JITTER=0)
    assert receiver.requests == []
    errors = {a.url.rsplit("/", 1)[1]: a.error for a in attempts()}
    assert "127.0.0.1" in errors["rb"] and "loopback" in errors["rb"]
    assert "rebind.example" in errors["rb"]
    assert "localhost" in errors["lh"] and "loopback" in errors["lh"]
    assert all(a.outcome == "failure" and a.status_code is None for a in attempts())
    # Allowed again, the same listeners deliver (to the address the name resolved to).
    for d in Delivery.objects.all():
        d.resend()
    run_worker()
    assert sorted(r.path for r in receiver.requests) == ["/lh", "/rb"]
    assert receiver.at("/rb")[0].headers["host"] == f"rebind.example:{receiver.port}"


def test_disabled_listener_gets_nothing(clean_db: None, receiver: Receiver) -> None:
    listener = listen(receiver, "/off")
    ops = listen(receiver, "/ops", hook=LISTENER_DISABLED)
    send()
    with webhooks():
        listener.disable("by hand")
    assert Delivery.objects.filter(listener=listener).count() == 0  # not dispatched yet
    run_worker()
    assert receiver.at("/off") == []
    assert [r.json["data"]["reason"] for r in receiver.at("/ops")] == ["by hand"]
    listener.enable()
    send()
    run_worker()
    assert len(receiver.at("/off")) == 1
    assert ops.active
