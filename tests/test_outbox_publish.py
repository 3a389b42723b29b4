"""Durable realtime publications through the outbox, and ``POST /api/event`` (issue 11).

``publish_durably`` writes in the caller's transaction (real PostgreSQL and SQLite); a worker
relays to a real hub process (over HTTP with ``clarion.client``, as the standalone worker
does), through a hub that is killed and comes back; ``clarion serve --webhooks-db`` takes
events on its server API and its embedded worker publishes straight into the hub, seen by a
real centrifuge-python subscriber and a real webhook receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from centrifuge import Client
from prometheus_client import REGISTRY

import django_env

django_env.configure()

from django.db import transaction  # noqa: E402
from django.test import override_settings  # noqa: E402
from tests.conftest import API_KEY, BASE_CONFIG, Hub, HubFactory, token  # noqa: E402

from centrifuge_support import Recorder, wait_changed  # noqa: E402
from clarion.client import AsyncClient  # noqa: E402
from clarion.django.models import Event  # noqa: E402
from clarion.django.outbox import publish_durably  # noqa: E402
from clarion.django.worker import build  # noqa: E402
from clarion.errors import PayloadTooLarge, WebhookError  # noqa: E402
from netproxy import NetProxy  # noqa: E402
from webhook_support import (  # noqa: E402
    CLARION_CLI,
    LOOPBACK,
    Receiver,
    clean_db,
    embedded_server,
    receiver,
    spawn_worker,
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


def http_relay(url: str) -> Any:
    async def relay(channel: str, data: bytes, key: str) -> Any:
        async with AsyncClient(url, api_key=API_KEY, timeout=2.0) as client:
            return await client.publish(channel, json.loads(data), idempotency_key=key)

    return relay


def run_worker(db: str, relay: Any) -> Any:
    with webhooks(db):
        worker = build(exit_when_idle=True, using=db, relay=relay)
    asyncio.run(asyncio.wait_for(worker.run(), 60))
    return worker


def relay_all(db: str, relay: Any, timeout: float = 60.0) -> None:
    """Run workers until every publication is relayed, sleeping out each backoff."""
    deadline = time.monotonic() + timeout
    while Event.objects.using(db).exclude(channel="").filter(relayed_at__isnull=True).exists():
        assert time.monotonic() < deadline, "publications still unrelayed"
        run_worker(db, relay)
        time.sleep(0.1)


async def history(url: str, channel: str) -> list[Any]:
    async with AsyncClient(url, api_key=API_KEY) as client:
        return [p.data for p in (await client.history(channel, limit=100)).publications]


def relayed(outcome: str) -> float:
    return REGISTRY.get_sample_value("clarion_webhook_relayed_publications_total",
                                     {"outcome": outcome}) or 0.0


# -- publish_durably --------------------------------------------------------------------------

@pytest.mark.parametrize("db", ["default", "sqlite"])
async def test_a_durable_publication_goes_out_after_commit_with_its_key(
        db: str, clean_db: None, hub_factory: HubFactory) -> None:
    hub = hub_factory(ORDERS)

    def write() -> tuple[str, str]:
        with webhooks(db), transaction.atomic(using=db):
            first = publish_durably("orders:1", {"n": 1}, using=db)
            second = publish_durably("orders:1", {"n": 2}, idempotency_key="mine-2",
                                     using=db)
            # Not yet: the rows are the transaction's until it commits.
            assert not Event.objects.using(db).filter(relayed_at__isnull=False).exists()
        return first, second

    first, second = await asyncio.to_thread(write)
    assert first.startswith("msg_") and second.startswith("msg_") and first != second
    keys: list[str] = []
    relay = http_relay(hub.url)

    async def spy(channel: str, data: bytes, key: str) -> Any:
        keys.append(key)
        return await relay(channel, data, key)

    await asyncio.to_thread(relay_all, db, spy)
    assert keys == [first, "mine-2"]  # the id, unless a key was given
    assert await history(hub.url, "orders:1") == [{"n": 1}, {"n": 2}]


@pytest.mark.parametrize("db", ["default", "sqlite"])
async def test_a_rolled_back_publication_never_existed(db: str, clean_db: None,
                                                       hub_factory: HubFactory) -> None:
    hub = hub_factory(ORDERS)

    def write() -> None:
        with contextlib.suppress(RuntimeError), webhooks(db), transaction.atomic(using=db):
            publish_durably("orders:2", {"n": 1}, using=db)
            raise RuntimeError("roll back")

    await asyncio.to_thread(write)
    await asyncio.to_thread(relay_all, db, http_relay(hub.url))
    assert await history(hub.url, "orders:2") == []
    assert not await asyncio.to_thread(lambda: Event.objects.using(db).exists())


async def test_the_standalone_worker_relays_through_clarion_django_realtime(
        clean_db: None, hub_factory: HubFactory) -> None:
    """The default relay: ``realtime.apublish`` to the hub named by ``CLARION['HUB']``;
    written by ``realtime.publish(durable=True)``."""
    hub = hub_factory(ORDERS)
    settings = {"WEBHOOKS": {"ALLOWED_NETWORKS": LOOPBACK},
                "HUB": {"URL": hub.url, "API_KEY": API_KEY}}

    def write_and_relay() -> None:
        from clarion.django import realtime

        with override_settings(CLARION=settings):
            with transaction.atomic():
                assert realtime.publish("orders:11", {"n": 1}, durable=True) is None
                realtime.publish("orders:11", {"n": 2}, durable=True, idempotency_key="k2")
            worker = build(exit_when_idle=True)
            assert worker.relay is not None
            asyncio.run(asyncio.wait_for(worker.run(), 60))
            assert worker.published == 2

    await asyncio.to_thread(write_and_relay)
    assert await history(hub.url, "orders:11") == [{"n": 1}, {"n": 2}]


async def test_two_workers_on_postgresql_keep_each_channels_order(
        clean_db: None, hub_factory: HubFactory) -> None:
    hub = hub_factory(ORDERS)
    channels = [f"orders:{20 + i}" for i in range(3)]

    def write() -> None:
        with webhooks("default"), transaction.atomic():
            for n in range(20):
                for channel in channels:
                    publish_durably(channel, {"n": n})

    def work() -> int:
        # Small batches, so the two workers' claims interleave.
        with webhooks("default", BATCH=4):
            worker = build(exit_when_idle=True, relay=http_relay(hub.url))
        asyncio.run(asyncio.wait_for(worker.run(), 120))
        return int(worker.published)

    await asyncio.to_thread(write)
    made = await asyncio.gather(asyncio.to_thread(work), asyncio.to_thread(work))
    await asyncio.to_thread(relay_all, "default", http_relay(hub.url))  # whatever is left
    for channel in channels:
        assert await history(hub.url, channel) == [{"n": n} for n in range(20)]
    assert sum(made) <= 60  # nothing relayed twice by the two workers


def test_without_a_hub_to_publish_to_the_worker_leaves_publications_waiting(
        clean_db: None) -> None:
    with webhooks("default"):
        publish_durably("orders:12", {"n": 1})
        worker = build(exit_when_idle=True)  # no CLARION['HUB'] nor ['BROKER']
    assert worker.relay is None
    asyncio.run(asyncio.wait_for(worker.run(), 60))  # idle at once: not busy on the row
    assert Event.objects.get().relayed_at is None


def test_manage_clarion_worker_reports_what_it_relayed(clean_db: None) -> None:
    with webhooks("default"):
        publish_durably("orders:13", {"n": 1})
    proc = spawn_worker("--exit-when-idle")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    # The test settings name no hub: the row waits.
    assert b"0 attempts made, 0 publications relayed" in out
    assert Event.objects.get().relayed_at is None


@pytest.mark.parametrize(("channel", "data", "key", "error", "problem"), [
    ("", {}, None, WebhookError, "non-empty"),
    ("o" * 256, {}, None, WebhookError, "at most 255"),
    ("orders:\x00", {}, None, WebhookError, "unprintable"),
    ("orders:1", {"x": object()}, None, WebhookError, "not JSON-serializable"),
    ("orders:1", float("nan"), None, WebhookError, "not JSON-serializable"),
    ("orders:1", {}, "k" * 256, WebhookError, "idempotency_key"),
    ("orders:1", {}, "", WebhookError, "idempotency_key"),
    ("orders:1", "x" * 300, None, PayloadTooLarge, "MAX_PAYLOAD"),
])
def test_bad_input_is_refused_before_anything_is_written(
        channel: str, data: Any, key: str | None, error: type[Exception], problem: str,
        clean_db: None) -> None:
    with webhooks("default", MAX_PAYLOAD=256), pytest.raises(error, match=problem):
        publish_durably(channel, data, idempotency_key=key)
    assert not Event.objects.exists()


async def test_a_hub_that_is_down_gets_every_publication_in_order_when_it_returns(
        clean_db: None, hub_factory: HubFactory) -> None:
    first_hub = hub_factory(ORDERS)
    proxy = await NetProxy(first_hub.port).start()
    url = f"http://127.0.0.1:{proxy.port}"
    try:
        first_hub.process.terminate()  # the hub goes down for real
        first_hub.process.wait(10)

        def write() -> None:
            with webhooks("default"), transaction.atomic():
                for n in range(1, 4):
                    publish_durably("orders:9", {"n": n})
                publish_durably("orders:10", {"n": 1})

        await asyncio.to_thread(write)
        retried = relayed("retried")
        await asyncio.to_thread(run_worker, "default", http_relay(url))
        rows = await asyncio.to_thread(lambda: list(
            Event.objects.order_by("id").values_list("channel", "relay_attempts", "relay_error",
                                                     "relayed_at")))
        # The head of each channel was tried and failed; the rest of orders:9 waits behind it.
        assert [(c, a, bool(e), r) for c, a, e, r in rows] == [
            ("orders:9", 1, True, None), ("orders:9", 0, False, None),
            ("orders:9", 0, False, None), ("orders:10", 1, True, None)]
        assert relayed("retried") == retried + 2

        second_hub = hub_factory(ORDERS)  # back (a new process) behind the same address
        proxy.target_port = second_hub.port
        await asyncio.to_thread(relay_all, "default", http_relay(url))
        assert await history(second_hub.url, "orders:9") == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert await history(second_hub.url, "orders:10") == [{"n": 1}]
    finally:
        await proxy.close()


async def test_a_channel_the_hub_refuses_is_given_up_and_holds_nothing_back(
        clean_db: None, hub_factory: HubFactory) -> None:
    hub = hub_factory(ORDERS)

    def write() -> None:
        with webhooks("default"), transaction.atomic():
            publish_durably("nowhere:1", {"n": 1})  # a namespace the hub does not know
            publish_durably("orders:3", {"n": 1})

    await asyncio.to_thread(write)
    refused = relayed("refused")
    await asyncio.to_thread(relay_all, "default", http_relay(hub.url))
    assert relayed("refused") == refused + 1
    row = await asyncio.to_thread(lambda: Event.objects.get(channel="nowhere:1"))
    assert row.relayed_at is not None and "refused" in row.relay_error
    assert await history(hub.url, "orders:3") == [{"n": 1}]


# -- POST /api/event --------------------------------------------------------------------------

def test_event_without_the_webhook_store_is_not_available(hub: Hub) -> None:
    answer = hub.api("event", {"type": "order.paid", "data": {"total": 1}}).json()
    assert answer["error"]["code"] == 108
    assert "--webhooks-db" in answer["error"]["message"]


def test_event_is_in_the_openapi_document(hub: Hub) -> None:
    doc = httpx.get(f"{hub.url}/openapi.json").json()
    operation = doc["paths"]["/api/event"]["post"]
    assert operation["operationId"] == "event"
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    ref = schema["$ref"].rsplit("/", 1)[1]
    props = doc["components"]["schemas"][ref]["properties"]
    assert {"type", "data", "channel", "idempotency_key"} <= set(props)
    assert doc["components"]["schemas"][ref]["required"] == ["type"]


def _manage(db: Path, code: str) -> str:
    done = subprocess.run([*CLARION_CLI, "manage", "--db", str(db), "shell", "-c", code],
                          cwd=db.parent, capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "CLARION_WEBHOOKS": json.dumps(
                              {"ALLOWED_NETWORKS": LOOPBACK})})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def events_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    config = tmp_path / "hub.toml"
    config.write_text(BASE_CONFIG + ORDERS)
    with embedded_server(tmp_path, "--webhook-types", "order.paid", "--config",
                         str(config)) as (url, db, _):
        yield url, db


async def test_one_event_reaches_listeners_and_the_channel_once(
        events_server: tuple[str, Path], receiver: Receiver) -> None:
    url, db = events_server
    secret = await asyncio.to_thread(
        _manage, db, "from clarion.django.hooks import Hook; "
        f"print(Hook(name='order.paid').listener(url='{receiver.url('/paid')}')"
        ".save().secret)")
    receiver.secrets["/paid"] = [secret]
    client = Client(url.replace("http", "ws") + "/connection/websocket", token=token("ann"))
    rec = Recorder()
    sub = client.new_subscription("orders:5", events=rec)
    await client.connect()
    await sub.subscribe()
    await wait_changed(rec.changed, lambda: bool(rec.subscribed), 10)
    body = {"type": "order.paid", "data": {"total": 150}, "channel": "orders:5",
            "idempotency_key": "order-5-paid"}
    try:
        async with httpx.AsyncClient(headers={"X-API-Key": API_KEY}) as http:
            first = (await http.post(f"{url}/api/event", json=body)).json()["result"]
        async with AsyncClient(url, api_key=API_KEY) as hub_client:  # the same, repeated
            again = await hub_client.event("order.paid", {"total": 150}, channel="orders:5",
                                           idempotency_key="order-5-paid")
        await wait_changed(rec.changed, lambda: bool(rec.pubs), 15)
        got = await asyncio.to_thread(receiver.wait_for, 1, "/paid")
    finally:
        await client.disconnect()
    assert first["id"].startswith("msg_") and first["deliveries"] == 1
    assert first["publication"]["offset"] == 1
    assert (again.id, again.deliveries) == (first["id"], 1)  # the same event, not another
    assert again.publication is not None and again.publication.offset == 1
    receiver.assert_all_verified()
    assert got[0].headers["webhook-id"] == first["id"]
    assert rec.pubs == [got[0].json]
    assert got[0].json["data"] == {"total": 150}
    assert await history(url, "orders:5") == [got[0].json]
    count = await asyncio.to_thread(
        _manage, db, "from clarion.django.models import Event; "
        "print(Event.objects.filter(hook='order.paid').count(), "
        "Event.objects.filter(relayed_at__isnull=True).exclude(channel='').count())")
    assert count == "1 0"


async def test_event_bad_input_writes_nothing(events_server: tuple[str, Path]) -> None:
    url, db = events_server
    cases = [
        ({"type": "order.unknown", "data": {}}, 107, "unknown event type"),
        ({"type": "order.paid", "data": [1]}, 107, "JSON object"),
        ({"type": "order.paid"}, 107, "data is required"),
        ({"type": "order.paid", "data": {}, "channel": "nowhere:1"}, 102, "unknown channel"),
        ({"type": "order.paid", "data": {}, "channel": "o" * 300}, 107, "bad request"),
    ]
    async with httpx.AsyncClient(headers={"X-API-Key": API_KEY}) as http:
        for body, code, words in cases:
            answer = (await http.post(f"{url}/api/event", json=body)).json()
            assert answer["error"]["code"] == code, (body, answer)
            assert words in answer["error"]["message"], (body, answer)
        invalid = await http.post(f"{url}/api/event", json={"data": {}})
        assert invalid.status_code == 422 and invalid.json()["error"]["fields"][0]["field"] \
            == "type"
    count = await asyncio.to_thread(
        _manage, db, "from clarion.django.models import Event; print(Event.objects.count())")
    assert count == "0"


async def test_the_embedded_worker_publishes_durable_rows_straight_into_the_hub(
        events_server: tuple[str, Path]) -> None:
    url, db = events_server
    msg_id = await asyncio.to_thread(
        _manage, db, "from clarion.django.outbox import publish_durably; "
        "print(publish_durably('orders:6', {'n': 1}))")
    # Written by another process: no in-process wake-up reached the hub's worker. An event
    # through the hub wakes it (as one from any sibling process does), instead of its
    # 30 s idle poll.
    async with httpx.AsyncClient(headers={"X-API-Key": API_KEY}) as http:
        await http.post(f"{url}/api/event", json={"type": "order.paid", "data": {}})
    deadline = time.monotonic() + 30
    while not await history(url, "orders:6"):
        assert time.monotonic() < deadline, "the durable publication was not relayed"
        await asyncio.sleep(0.1)
    assert await history(url, "orders:6") == [{"n": 1}]
    state = await asyncio.to_thread(
        _manage, db, "from clarion.django.models import Event; "
        f"e = Event.objects.get(msg_id='{msg_id}'); print(e.relayed_at is not None, "
        "e.relay_attempts)")
    assert state == "True 1"
