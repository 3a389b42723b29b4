"""The durian text's example, end to end through the outbox and a real worker, on PostgreSQL
and on SQLite; rolled-back changes deliver nothing; the address policy and payload limits as
listeners are saved and events sent."""

# ruff: noqa: E402  (Django is configured before the imports that need it)
from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
import standardwebhooks

import django_env

django_env.configure()

from django.db import transaction
from django.test import override_settings

from clarion.django.match import Startswith
from clarion.django.models import Delivery, Event, Listener
from clarion.errors import AddressRejected, PayloadTooLarge
from webhook_apps.people.hooks import MyHook, PersonHook
from webhook_apps.people.models import Person
from webhook_support import (
    Receiver,
    clean_db,
    receiver,
    run_worker,
    webhook_databases,
    webhooks,
)

__all__ = ["clean_db", "receiver", "webhook_databases"]

DATABASES = ["default", "sqlite"]
SECRET = "the-secret-that-must-stay-home"


def save_listener(rec: Receiver, hook: Any, path: str, db: str, **match: Any) -> Listener:
    with webhooks(db):
        builder = hook.listener(url=rec.url(path))
        if match:
            builder = builder.match(**match)
        listener = builder.save()
    assert listener._state.db == db
    rec.secrets[path] = [listener.secret]
    return listener


@pytest.mark.parametrize("db", DATABASES)
def test_durian_example_end_to_end(clean_db: None, receiver: Receiver, db: str) -> None:
    joe = save_listener(receiver, PersonHook(), "/joe", db, name="Joe")
    js = save_listener(receiver, PersonHook(), "/j", db, name=Startswith("J"))
    everyone = save_listener(receiver, PersonHook(), "/all", db)
    save_listener(receiver, MyHook(), "/my", db)
    assert Listener.objects.using(db).count() == 4
    assert joe.match == {"name": {"op": "is", "value": "Joe"}}
    assert js.match == {"name": {"op": "startswith", "value": "J"}}
    assert everyone.match == {}

    with webhooks(db):
        with transaction.atomic(using=db):
            for name in ("Joe", "Jane", "Bob"):
                Person.objects.using(db).create(name=name, address=f"{name} Street",
                                                secret=SECRET)
        with transaction.atomic(using=db):
            george = MyHook().send(sender=None, name="George Constanza",
                                   address="New York City")
    assert george._state.db == db
    events = {e.msg_id: e for e in Event.objects.using(db).all()}
    assert len(events) == 4
    assert not Event.objects.using("sqlite" if db == "default" else "default").exists()

    attempts = run_worker(database=db)
    assert attempts == 1 + 2 + 3 + 1

    got: dict[str, list[str]] = {}
    for r in receiver.requests:
        body = r.json
        assert r.headers["content-type"] == "application/json"
        assert SECRET.encode() not in r.body
        assert "secret" not in body["data"]
        event = events[r.headers["webhook-id"]]  # the Event's msg_id, every time
        assert r.body == event.payload.encode()  # the exact stored body
        assert body["type"] == event.hook
        assert body["timestamp"].endswith("Z")
        got.setdefault(r.path, []).append(body["data"]["name"])
    assert {path: sorted(names) for path, names in got.items()} == {
        "/joe": ["Joe"],
        "/j": ["Jane", "Joe"],
        "/all": ["Bob", "Jane", "Joe"],
        "/my": ["George Constanza"],
    }
    person = next(r for r in receiver.at("/joe"))
    assert person.json["data"] == {"name": "Joe", "address": "Joe Street"}
    assert set(person.json) == {"type", "timestamp", "data"}
    my = receiver.at("/my")[0]
    assert my.json["type"] == "myhook"
    assert my.json["data"] == {"name": "George Constanza", "address": "New York City"}
    assert all(r.verified for r in receiver.requests)
    receiver.assert_all_verified()
    # Each verified with the reference library against its listener's secret, once more here.
    for r in receiver.requests:
        standardwebhooks.Webhook(receiver.secrets[r.path][0]).verify(r.body, r.headers)

    deliveries = Delivery.objects.using(db)
    assert deliveries.count() == 7
    assert set(deliveries.values_list("status", flat=True)) == {"succeeded"}
    assert all(e.dispatched_at is not None for e in Event.objects.using(db).all())
    assert run_worker(database=db) == 0  # nothing left to do


@pytest.mark.parametrize("db", DATABASES)
def test_rolled_back_transactions_deliver_nothing(clean_db: None, receiver: Receiver,
                                                  db: str) -> None:
    save_listener(receiver, PersonHook(), "/all", db)
    save_listener(receiver, MyHook(), "/my", db)

    class Boom(Exception):
        pass

    with webhooks(db):
        with pytest.raises(Boom), transaction.atomic(using=db):
            Person.objects.using(db).create(name="Joe", address="a", secret=SECRET)
            MyHook().send(name="Kramer", address="b")
            assert Event.objects.using(db).count() == 2  # written, inside the transaction
            raise Boom
        # A savepoint rolled back inside a transaction that commits: gone too.
        with transaction.atomic(using=db):
            Person.objects.using(db).create(name="Elaine", address="c", secret=SECRET)
            with contextlib.suppress(Boom), transaction.atomic(using=db):
                Person.objects.using(db).create(name="Newman", address="d", secret=SECRET)
                raise Boom
    assert list(Event.objects.using(db).values_list("data__name", flat=True)) == ["Elaine"]
    assert Person.objects.using(db).count() == 1
    run_worker(database=db)
    assert [r.json["data"]["name"] for r in receiver.requests] == ["Elaine"]
    receiver.assert_all_verified()


def test_send_outside_a_transaction_autocommits(clean_db: None, receiver: Receiver) -> None:
    save_listener(receiver, MyHook(), "/my", "default")
    with webhooks("default"):
        MyHook().send(name="Puddy", address="e")
    run_worker()
    assert [r.json["data"]["name"] for r in receiver.requests] == ["Puddy"]


# -- the address policy as listeners are saved ------------------------------------------------


def test_loopback_name_refused_at_save_when_loopback_is_not_allowed(clean_db: None) -> None:
    with override_settings(CLARION={"WEBHOOKS": {"ALLOWED_NETWORKS": []}}), \
            pytest.raises(AddressRejected, match=r"'localhost' is a loopback name.*127\.0\.0\.0/8"):
        PersonHook().listener(url="http://localhost:8000/hook").save()
    with override_settings(CLARION={"WEBHOOKS": {"ALLOWED_NETWORKS": []}}), \
            pytest.raises(AddressRejected, match=r"127\.0\.0\.1 is .*loopback"):
        PersonHook().listener(url="http://127.0.0.1:8000/hook").save()
    assert not Listener.objects.exists()


def test_url_with_credentials_refused_without_showing_the_password(clean_db: None) -> None:
    with webhooks("default"), pytest.raises(AddressRejected) as caught:
        PersonHook().listener(url="http://joe:hunter2pass@127.0.0.1:8000/hook").save()
    message = str(caught.value)
    assert "credentials" in message
    assert "hunter2pass" not in message
    assert not Listener.objects.exists()


def test_https_only_refuses_plain_http(clean_db: None) -> None:
    with override_settings(CLARION={"WEBHOOKS": {"HTTPS_ONLY": True}}), \
            pytest.raises(AddressRejected, match="HTTPS_ONLY"):
        PersonHook().listener(url="http://hooks.example.com/x").save()
    with override_settings(CLARION={"WEBHOOKS": {"HTTPS_ONLY": True}}):
        PersonHook().listener(url="https://hooks.example.com/x").save()
    assert list(Listener.objects.values_list("url", flat=True)) == ["https://hooks.example.com/x"]


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/x", "hooks.example.com/x",
                                 "http://10.1.2.3/x", "http://[::1]:80/x", "http://0x7f.1/x"])
def test_other_refused_urls(clean_db: None, url: str) -> None:
    with override_settings(CLARION={"WEBHOOKS": {}}), pytest.raises(AddressRejected):
        PersonHook().listener(url=url).save()
    assert not Listener.objects.exists()


def test_listener_needs_a_url() -> None:
    with pytest.raises(ValueError, match="needs a url"):
        PersonHook().listener().save()


# -- payload limits --------------------------------------------------------------------------


@pytest.mark.parametrize("db", DATABASES)
def test_oversized_payload_raises_and_writes_nothing(clean_db: None, db: str) -> None:
    with webhooks(db, MAX_PAYLOAD=200):
        with pytest.raises(PayloadTooLarge, match="MAX_PAYLOAD"):
            MyHook().send(name="x" * 2000, address="a")
        with pytest.raises(PayloadTooLarge), transaction.atomic(using=db):
            Person.objects.using(db).create(name="y" * 190, address="a", secret=SECRET)
        MyHook().send(name="small", address="a")
    assert Person.objects.using(db).count() == 0  # the save rolled back with the event
    assert list(Event.objects.using(db).values_list("data", flat=True)) == [
        {"name": "small", "address": "a"}]


def test_payload_limit_counts_utf8_bytes(clean_db: None) -> None:
    with webhooks("default", MAX_PAYLOAD=1000):
        MyHook().send(name="é" * 400, address="")  # 800 bytes of name: fits
        with pytest.raises(PayloadTooLarge):
            MyHook().send(name="é" * 600, address="")  # 600 characters, 1200 bytes
    body = Event.objects.get().payload
    assert "é" in body  # sent as UTF-8, not as \\u escapes
    assert json.loads(body)["data"]["name"] == "é" * 400
