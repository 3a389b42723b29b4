"""Hooks with a channel: one ``send()``, one outbox row, delivered to the hook's webhook
listeners and published to its channel with the same id and payload (issue 11, part 3).

Real components: a hub process on a real socket, real PostgreSQL and SQLite, a real webhook
receiver verified with ``standardwebhooks``, a real subscriber (centrifuge-python), and the
worker relaying through ``clarion.client`` over HTTP as the standalone worker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from centrifuge import Client

import django_env

django_env.configure()

from django.db import transaction  # noqa: E402
from django.db.models.signals import post_save  # noqa: E402
from django.dispatch import Signal  # noqa: E402
from django.test import override_settings  # noqa: E402
from tests.conftest import API_KEY, Hub, HubFactory, token  # noqa: E402

from centrifuge_support import Recorder, wait_changed  # noqa: E402
from clarion.client import AsyncClient  # noqa: E402
from clarion.django import hooks as hooks_module  # noqa: E402
from clarion.django.hooks import Hook, HookRegistry, ModelHook, SignalHook  # noqa: E402
from clarion.django.models import Event  # noqa: E402
from clarion.django.worker import build  # noqa: E402
from clarion.errors import ConfigError, WebhookError  # noqa: E402
from webhook_apps.people.models import Person  # noqa: E402
from webhook_support import (  # noqa: E402
    LOOPBACK,
    Receiver,
    clean_db,
    receiver,
    webhook_databases,
    webhooks,
)

__all__ = ["clean_db", "receiver", "webhook_databases"]

ORDERS = """
[namespaces.orders]
history_size = 100
history_ttl = 300
allow_subscribe_for_client = true
"""


class OrderHook(Hook):
    name = "order.paid"
    provides_args = ["customer_id", "total"]
    channel = "orders:{customer_id}"


def listen(hook: Hook, rec: Receiver, db: str) -> Any:
    with webhooks(db):
        return hook.listener(url=rec.url("/paid")).save(using=db)


def http_relay(url: str) -> Any:
    """What the standalone worker does: the server API over HTTP (clarion.client)."""
    calls: list[tuple[str, str]] = []

    async def relay(channel: str, data: bytes, key: str) -> Any:
        calls.append((channel, key))
        async with AsyncClient(url, api_key=API_KEY) as client:
            return await client.publish(channel, json.loads(data), idempotency_key=key)

    relay.calls = calls  # type: ignore[attr-defined]
    return relay


def run_worker(db: str, relay: Any) -> Any:
    with webhooks(db):
        worker = build(exit_when_idle=True, using=db, relay=relay)
    asyncio.run(asyncio.wait_for(worker.run(), 60))
    return worker


async def subscribe(hub: Hub, channel: str, user: str = "ann") -> tuple[Client, Recorder]:
    """A centrifuge-python client of USER subscribed to CHANNEL, once the hub said so."""
    client = Client(hub.ws_url, token=token(user))
    rec = Recorder()
    sub = client.new_subscription(channel, events=rec)
    await client.connect()
    await sub.subscribe()
    await wait_changed(rec.changed, lambda: bool(rec.subscribed), 10)
    return client, rec


async def history(hub: Hub, channel: str) -> list[Any]:
    async with AsyncClient(hub.url, api_key=API_KEY) as client:
        return [p.data for p in (await client.history(channel, limit=100)).publications]


# -- registration -----------------------------------------------------------------------------

def test_a_template_naming_a_field_the_hook_does_not_provide_fails_at_class_definition() -> None:
    with pytest.raises(ConfigError, match=r"names 'customer'.*provides \['total'\]"):
        class Bad(Hook):
            name = "bad"
            provides_args = ["total"]
            channel = "orders:{customer}"


def test_the_same_error_at_registration_of_an_instance_and_of_a_model_hook() -> None:
    registry = HookRegistry()
    with pytest.raises(ConfigError, match="names 'nope'"):
        registry.register(Hook(name="x", provides_args=["a"], channel="c:{nope}"))
    with pytest.raises(ConfigError, match="names 'nope'"):
        # ModelHook's fields come from the model, so the check runs when it is made.
        registry.register(ModelHook(name="p", model=Person, signal=post_save,
                                    channel="people:{nope}"))
    assert len(registry) == 0
    ok = registry.register(ModelHook(name="p", model=Person, signal=post_save,
                                     channel="people:{name}"))
    registry.unregister(ok)


@pytest.mark.parametrize(("template", "problem"), [
    ("orders:\n{customer_id}", "unprintable"),
    ("o" * 256 + "{customer_id}", "at most 255"),
    ("orders:{}", "name its fields"),
    ("orders:{0}", "name its fields"),
    ("orders:{customer_id", "not a format string"),
    ("", "non-empty"),
])
def test_templates_the_hub_would_refuse_fail_at_registration(template: str,
                                                             problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        Hook(name="x", provides_args=["customer_id"], channel=template)


def test_a_channel_made_at_send_time_is_checked_before_anything_is_written() -> None:
    hook = Hook(name="x", provides_args=["customer_id"], channel="orders:{customer_id}")
    with pytest.raises(WebhookError, match="at most 255"):
        hook.send(customer_id="c" * 300)
    with pytest.raises(WebhookError, match="unprintable"):
        hook.send(customer_id="a\tb")
    with pytest.raises(WebhookError, match="cannot be formatted"):
        hook.send(total=3)  # the field the channel needs is missing


def test_get_channel_overrides_the_template() -> None:
    class Routed(Hook):
        name = "routed"
        provides_args = ["region"]

        def get_channel(self, fields: Any) -> str | None:
            return None if fields["region"] == "none" else f"orders:{fields['region'].lower()}"

    assert Routed().get_channel({"region": "EU"}) == "orders:eu"
    assert Routed().get_channel({"region": "none"}) is None


# -- one send, every audience -----------------------------------------------------------------

@pytest.mark.parametrize("db", ["default", "sqlite"])
async def test_one_send_reaches_the_webhook_and_the_subscriber_with_one_id(
        db: str, clean_db: None, receiver: Receiver,
        hub_factory: HubFactory) -> None:
    hub = hub_factory(ORDERS)
    hook = OrderHook()
    listener = await asyncio.to_thread(listen, hook, receiver, db)
    receiver.secrets["/paid"] = [listener.secret]
    client, rec = await subscribe(hub, "orders:42")
    try:
        def write() -> Event:
            with webhooks(db), transaction.atomic(using=db):
                return hook.send(customer_id=42, total=150)

        event = await asyncio.to_thread(write)
        relay = http_relay(hub.url)
        worker = await asyncio.to_thread(run_worker, db, relay)
        got = receiver.wait_for(1, "/paid")
        await wait_changed(rec.changed, lambda: len(rec.pubs) >= 1, 15)
    finally:
        await client.disconnect()
    receiver.assert_all_verified()
    webhook = got[0]
    assert webhook.headers["webhook-id"] == event.msg_id
    assert relay.calls == [("orders:42", event.msg_id)]  # the webhook-id is the key
    assert rec.pubs == [webhook.json]  # the very body the receiver got
    assert webhook.json["type"] == "order.paid"
    assert webhook.json["data"] == {"customer_id": 42, "total": 150}
    assert worker.published == 1
    row = await asyncio.to_thread(lambda: Event.objects.using(db).get(pk=event.pk))
    assert row.relayed_at is not None and row.relay_attempts == 1 and not row.relay_error


@pytest.mark.parametrize("db", ["default", "sqlite"])
async def test_a_repeated_relay_is_published_once(db: str, clean_db: None,
                                                  hub_factory: HubFactory) -> None:
    hub = hub_factory(ORDERS)

    def write() -> Event:
        with webhooks(db), transaction.atomic(using=db):
            return OrderHook().send(customer_id=7, total=1)

    event = await asyncio.to_thread(write)
    await asyncio.to_thread(run_worker, db, http_relay(hub.url))
    # As after a worker that died between publishing and recording: the row is due again.
    await asyncio.to_thread(lambda: Event.objects.using(db).filter(pk=event.pk).update(
        relayed_at=None))
    relay = http_relay(hub.url)
    await asyncio.to_thread(run_worker, db, relay)
    assert relay.calls == [("orders:7", event.msg_id)]  # relayed again…
    assert len(await history(hub, "orders:7")) == 1  # …and the hub dropped the repeat


@pytest.mark.parametrize("db", ["default", "sqlite"])
async def test_a_rolled_back_send_neither_delivers_nor_publishes(
        db: str, clean_db: None, receiver: Receiver,
        hub_factory: HubFactory) -> None:
    hub = hub_factory(ORDERS)
    hook = OrderHook()
    await asyncio.to_thread(listen, hook, receiver, db)

    def write() -> None:
        with contextlib.suppress(RuntimeError), webhooks(db), transaction.atomic(using=db):
            hook.send(customer_id=9, total=5)
            raise RuntimeError("roll back")

    await asyncio.to_thread(write)
    relay = http_relay(hub.url)
    await asyncio.to_thread(run_worker, db, relay)
    assert relay.calls == []
    assert receiver.requests == []
    assert await history(hub, "orders:9") == []
    assert not await asyncio.to_thread(lambda: Event.objects.using(db).exists())


def test_a_model_hook_with_a_channel_writes_it_in_the_saving_transaction(
        clean_db: None) -> None:
    hook = ModelHook(name="person.saved", model=Person, signal=post_save,
                     provides_args=["name", "address"], channel="people:{name}")
    hooks_module.hooks.register(hook)
    try:
        with webhooks("default"), transaction.atomic():
            Person.objects.create(name="joe", address="here", secret="s")
    finally:
        hooks_module.hooks.unregister(hook)
    event = Event.objects.get(hook="person.saved")
    assert event.channel == "people:joe"
    assert json.loads(event.payload)["data"] == {"name": "joe", "address": "here"}


order_shipped = Signal()  # an application's own signal, not a model's


@pytest.mark.parametrize("db", ["default", "sqlite"])
async def test_a_signal_hook_with_a_channel_reaches_both_through_the_default_relay(
        db: str, clean_db: None, receiver: Receiver, hub_factory: HubFactory) -> None:
    """A plain SignalHook: the signal's send() writes the event; the worker's own relay
    (``clarion.django.realtime`` to ``CLARION['HUB']``, as ``manage.py clarion_worker``
    builds it) publishes it and the webhook carries the same id and body."""
    hub = hub_factory(ORDERS)
    hook = SignalHook(name="order.shipped", signal=order_shipped,
                      provides_args=["customer_id", "carrier"], channel="orders:{customer_id}")
    listener = await asyncio.to_thread(listen, hook, receiver, db)
    receiver.secrets["/paid"] = [listener.secret]
    client, rec = await subscribe(hub, "orders:77")
    conf = {"WEBHOOKS": {"ALLOWED_NETWORKS": LOOPBACK, "DATABASE": db},
            "HUB": {"URL": hub.url, "API_KEY": API_KEY}}

    def fire_and_relay() -> Any:
        with override_settings(CLARION=conf):
            hook.connect()
            try:
                with transaction.atomic(using=db):
                    order_shipped.send(sender=None, customer_id=77, carrier="post")
            finally:
                hook.disconnect()
            worker = build(exit_when_idle=True, using=db)  # the default relay
            assert worker.relay is not None
            asyncio.run(asyncio.wait_for(worker.run(), 60))
        return worker

    try:
        worker = await asyncio.to_thread(fire_and_relay)
        got = receiver.wait_for(1, "/paid")
        await wait_changed(rec.changed, lambda: len(rec.pubs) >= 1, 15)
    finally:
        await client.disconnect()
    receiver.assert_all_verified()
    event = await asyncio.to_thread(lambda: Event.objects.using(db).get(hook="order.shipped"))
    assert event.channel == "orders:77"
    webhook = got[0]
    assert webhook.headers["webhook-id"] == event.msg_id
    assert rec.pubs == [webhook.json]
    assert webhook.json["data"] == {"customer_id": 77, "carrier": "post"}
    assert worker.published == 1
    # The publication's idempotency key is the webhook-id: publishing it again is dropped.
    async with AsyncClient(hub.url, api_key=API_KEY) as api:
        again = await api.publish("orders:77", webhook.json, idempotency_key=event.msg_id)
    assert again.offset == 1 and len(await history(hub, "orders:77")) == 1
