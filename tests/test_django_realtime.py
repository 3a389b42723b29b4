"""clarion.django.realtime against a real hub on a real socket: publications after commit (real
PostgreSQL and SQLite transactions), straight into the hub's Redis, tokens and tickets the hub
accepts, failures (hub down, no answer) and the system checks of the settings.

Subscribers are the official centrifuge-python SDK. Django's ORM is synchronous, so async tests
run the Django part in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import django_env

django_env.configure()

from centrifuge import Client as Centrifuge  # noqa: E402
from centrifuge import SubscriptionUnsubscribedError  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth.models import AnonymousUser, User  # noqa: E402
from django.core.exceptions import SynchronousOnlyOperation  # noqa: E402
from django.db import connections, transaction  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.test import AsyncClient, override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from tests.centrifuge_support import Recorder  # noqa: E402
from tests.conftest import CHAT_NAMESPACE, HMAC_SECRET, Hub, HubFactory, free_port  # noqa: E402
from tests.netproxy import NetProxy  # noqa: E402
from tests.test_scaleout_nodes import REDIS_URL, redis_available  # noqa: E402
from tests.webhook_support import webhook_databases  # noqa: E402, F401

from clarion.client import PublishResult  # noqa: E402
from clarion.django import realtime  # noqa: E402
from clarion.django.conf import realtime_settings  # noqa: E402
from clarion.django.realtime._commit import Pending  # noqa: E402
from clarion.django.realtime.checks import check_realtime  # noqa: E402
from clarion.errors import HubReplyError, HubUnavailable, WebhookError  # noqa: E402

PRIVATE = """
[namespaces.private]
history_size = 10
history_ttl = 300
presence = true
"""


def hub_settings(hub: Hub, **extra: Any) -> dict[str, Any]:
    return {**settings.CLARION, "HUB": {"URL": hub.url, "API_KEY": hub.api_key,
                                        "TOKEN_HMAC_SECRET": HMAC_SECRET, **extra}}


@pytest.fixture
def memory_hub(hub_factory: HubFactory) -> Iterator[Hub]:
    hub = hub_factory(CHAT_NAMESPACE + PRIVATE)
    with override_settings(CLARION=hub_settings(hub)):
        yield hub


async def subscriber(hub: Hub, channel: str, user: str = "watcher") -> tuple[Centrifuge, Recorder]:
    client = Centrifuge(hub.ws_url, token=realtime.connection_token(user))
    rec = Recorder()
    sub = client.new_subscription(channel, rec)
    await client.connect()
    await sub.subscribe()
    await rec.wait_for(lambda: bool(rec.subscribed))
    return client, rec


async def saved_user(prefix: str) -> User:
    """A user saved in the database, named PREFIX-<random>; created in a thread, as the ORM
    is synchronous."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"

    def make_user() -> User:
        user = User.objects.create_user(username=name)
        connections.close_all()  # this thread's connections end with it
        return user

    return await asyncio.to_thread(make_user)


# -- publishing through the hub's API -----------------------------------------------------------


async def test_publish_outside_a_transaction_reaches_a_subscriber(memory_hub: Hub) -> None:
    client, rec = await subscriber(memory_hub, "chat:now")
    result = await asyncio.to_thread(realtime.publish, "chat:now", {"text": "hi"})
    assert isinstance(result, PublishResult) and result.offset == 1 and result.epoch
    results = await asyncio.to_thread(realtime.broadcast, ["chat:now", "chat:other"], {"n": 2})
    assert results is not None and [r.offset for r in results] == [2, 1]
    await rec.wait_for(lambda: len(rec.pubs) == 2)
    assert rec.pubs == [{"text": "hi"}, {"n": 2}] and rec.offsets == [1, 2]
    await client.disconnect()


def _commit_three(using: str) -> None:
    with transaction.atomic(using=using):
        for n in range(3):
            assert realtime.publish("chat:tx", {"n": n}, using=using) is None
        # One commit hook holds the three: one /api/batch after commit.
        (hook,) = connections[using].run_on_commit
        assert isinstance(hook[1], Pending) and len(hook[1].items) == 3


def _roll_back(using: str) -> None:
    with pytest.raises(RuntimeError), transaction.atomic(using=using):
        realtime.publish("chat:tx", {"n": "rolled back"}, using=using)
        raise RuntimeError("the view failed")


def _one_refused(using: str) -> None:
    # The hub refuses a channel in no namespace; the publications around it still go out.
    with transaction.atomic(using=using):
        realtime.publish("chat:tx", {"n": "before"}, using=using)
        realtime.publish("nowhere:x", {"n": "refused"}, using=using)
        realtime.publish("chat:tx", {"n": "after"}, using=using)


def _lost(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]


def _savepoints(using: str) -> None:
    with transaction.atomic(using=using):
        realtime.publish("chat:tx", {"n": "outer 1"}, using=using)
        with pytest.raises(RuntimeError), transaction.atomic(using=using):
            realtime.publish("chat:tx", {"n": "inner, rolled back"}, using=using)
            raise RuntimeError
        with transaction.atomic(using=using):
            realtime.publish("chat:tx", {"n": "inner, kept"}, using=using)
        realtime.publish("chat:tx", {"n": "outer 2"}, using=using)


@pytest.mark.parametrize("using", ["default", "sqlite"])
async def test_transactions_publish_on_commit_in_one_batch_and_never_on_rollback(
        memory_hub: Hub, webhook_databases: None, using: str,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    client, rec = await subscriber(memory_hub, "chat:tx")

    def run(work: Any) -> None:
        work(using)
        connections.close_all()  # this thread's connections end with it

    await asyncio.to_thread(run, _commit_three)
    await rec.wait_for(lambda: len(rec.pubs) == 3)
    assert rec.pubs == [{"n": 0}, {"n": 1}, {"n": 2}]

    await asyncio.to_thread(run, _roll_back)
    await asyncio.to_thread(run, _savepoints)
    await asyncio.to_thread(run, _one_refused)
    # The sentinel: published after the rest, so once it arrived nothing else is on its way.
    await asyncio.to_thread(realtime.publish, "chat:tx", {"n": "sentinel"})
    await rec.wait_for(lambda: rec.pubs[-1:] == [{"n": "sentinel"}])
    assert [p["n"] for p in rec.pubs[3:]] == ["outer 1", "inner, kept", "outer 2", "before",
                                              "after", "sentinel"]
    assert rec.offsets == list(range(1, 10))
    (lost,) = _lost(caplog)
    assert "nowhere:x" in lost and "102 unknown channel" in lost
    await client.disconnect()


def test_a_failure_after_commit_is_logged_not_raised(
        webhook_databases: None, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    dead = f"http://127.0.0.1:{free_port()}"
    with override_settings(CLARION={**settings.CLARION, "HUB": {"URL": dead, "TIMEOUT": 2}}), \
            transaction.atomic():
        realtime.publish("chat:lost", {"n": 1})
    assert any("were lost" in r.getMessage() and "chat:lost" in r.getMessage()
               and r.exc_info for r in caplog.records)


def test_data_that_is_not_json_fails_in_the_view(memory_hub: Hub) -> None:
    with pytest.raises(TypeError, match="publish: data cannot be sent as JSON"):
        realtime.publish("chat:x", {"when": object()})
    with pytest.raises(TypeError, match="not one str"):
        realtime.broadcast("chat:x", {})
    with pytest.raises(ValueError, match="must not be empty"):
        realtime.broadcast([], {})


def _refusals() -> None:
    with pytest.raises(HubReplyError) as info:
        realtime.publish("nowhere:x", {})
    assert info.value.code == 102
    with pytest.raises(HubReplyError,
                       match="broadcast to 'nowhere:x' failed: unknown channel") as info:
        realtime.broadcast(["chat:b1", "nowhere:x", "chat:b2"], {"n": 1})
    assert info.value.code == 102
    # The channels around the refused one were published, as the hub's broadcast does.
    assert [realtime.history(c, limit=0).offset for c in ("chat:b1", "chat:b2")] == [1, 1]


    # Over the hub's api_max_body_size (1 MiB by default): 413 on both paths.
    with pytest.raises(HubReplyError) as info:
        realtime.publish("chat:big", "x" * (1024 * 1024 + 1))
    assert info.value.status == 413


def test_the_hub_refusing_a_channel_is_a_reply_error(memory_hub: Hub) -> None:
    _refusals()


def test_the_direct_path_refuses_channels_as_the_hub_does(redis_hub: Hub) -> None:
    _refusals()


def test_idempotency_key_publishes_once(memory_hub: Hub) -> None:
    first = realtime.publish("chat:idem", {"n": 1}, idempotency_key="order-7")
    again = realtime.publish("chat:idem", {"n": 1}, idempotency_key="order-7")
    assert first == again
    assert realtime.history("chat:idem", limit=0).offset == 1


def test_presence_history_and_disconnect(memory_hub: Hub) -> None:
    async def watch() -> None:
        client, _ = await subscriber(memory_hub, "chat:room", user="42")
        stats = await asyncio.to_thread(realtime.presence_stats, "chat:room")
        assert (stats.num_clients, stats.num_users) == (1, 1)
        clients = await asyncio.to_thread(realtime.presence, "chat:room")
        assert [c.user for c in clients.values()] == ["42"]
        await asyncio.to_thread(realtime.disconnect, "42", code=4501, reason="banned")
        for _ in range(200):  # a bound on the wait, not a measurement
            if not await asyncio.to_thread(realtime.presence, "chat:room"):
                break
            await asyncio.sleep(0.05)
        assert await asyncio.to_thread(realtime.presence, "chat:room") == {}
        await client.disconnect()

    asyncio.run(watch())
    for n in range(3):
        realtime.publish("chat:hist", {"n": n})
    page = realtime.history("chat:hist", limit=2, reverse=True)
    assert [p.data for p in page.publications] == [{"n": 2}, {"n": 1}]
    assert page.offset == 3


# -- tokens and tickets -------------------------------------------------------------------------


async def test_connection_and_subscription_tokens_are_accepted(memory_hub: Hub) -> None:
    user = User(pk=7, username="ada")  # unsaved: a token needs only its pk and username
    conn = realtime.connection_token(user, ttl=60, info={"team": "x"})
    private = realtime.subscription_token(user, "private:ada", info={"role": "owner"})
    wrong = realtime.subscription_token("8", "private:ada")
    client = Centrifuge(memory_hub.ws_url, token=conn)
    rec = Recorder()
    sub = client.new_subscription("private:ada", rec, token=private)
    await client.connect()
    await sub.subscribe()
    await rec.wait_for(lambda: bool(rec.subscribed))
    (who,) = (await realtime.apresence("private:ada")).values()
    assert (who.user, who.conn_info, who.chan_info) == ("7", {"username": "ada", "team": "x"},
                                                        {"role": "owner"})
    # Without the token, or with another user's, the private namespace refuses.
    refused = client.new_subscription("private:other", Recorder(), token=wrong)
    await refused.subscribe()
    with pytest.raises(SubscriptionUnsubscribedError):
        await refused.ready(timeout=10)
    await client.disconnect()


def test_tokens_check_their_arguments(memory_hub: Hub) -> None:
    for bad in (0, -1, float("inf"), 8 * 86400):
        with pytest.raises(ValueError, match="ttl must be within"):
            realtime.connection_token("1", ttl=bad)
    with pytest.raises(ValueError, match="channel must be a non-empty str"):
        realtime.subscription_token("1", "")
    with pytest.raises(TypeError, match="info for a Django user must be a dict"):
        realtime.connection_token(User(pk=1, username="u"), info=[1])
    assert realtime.connection_token(AnonymousUser())  # sub "": the hub's anonymous user
    with override_settings(CLARION={**settings.CLARION, "HUB": {}}):
        from django.core.exceptions import ImproperlyConfigured

        with pytest.raises(ImproperlyConfigured, match="TOKEN_HMAC_SECRET"):
            realtime.connection_token("1")


async def test_a_ticket_issued_through_the_api_connects_once(memory_hub: Hub) -> None:
    ticket = await realtime.aissue_ticket(User(pk=5, username="grace"), info={"role": "tester"},
                                          channels=["chat:tickets"])
    assert ticket.startswith("tkt_")
    await _connects_as(memory_hub, ticket, "5", {"username": "grace", "role": "tester"})


async def _connects_as(hub: Hub, ticket: str, user: str, info: Any) -> None:
    client = Centrifuge(hub.ws_url, token=ticket)
    rec = Recorder()
    sub = client.new_subscription("chat:seen", rec)
    await client.connect()
    await sub.subscribe()
    await rec.wait_for(lambda: bool(rec.subscribed))
    (who,) = (await sub.presence()).clients.values()
    assert (who.user, who.conn_info) == (user, info)
    await client.disconnect()


# -- failures -----------------------------------------------------------------------------------


def test_a_hub_that_is_down_is_hub_unavailable() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with override_settings(CLARION={**settings.CLARION, "HUB": {"URL": dead}}):
        with pytest.raises(HubUnavailable):
            realtime.publish("chat:x", {})
        with pytest.raises(HubUnavailable):
            realtime.presence("chat:x")
        with pytest.raises(HubUnavailable):
            realtime.issue_ticket("1")


def test_a_hub_that_never_answers_is_bounded_by_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with override_settings(CLARION={**settings.CLARION,
                                        "HUB": {"URL": url, "TIMEOUT": 0.5}}):
            with pytest.raises(HubUnavailable, match=r"within 0\.5s"):
                realtime.publish("chat:x", {})
            with pytest.raises(HubUnavailable, match=r"within 0\.5s"):
                asyncio.run(realtime.ahistory("chat:x"))


# -- async views --------------------------------------------------------------------------------


async def async_view(request: HttpRequest) -> JsonResponse:
    result = await realtime.apublish("chat:async", {"from": "view"})
    results = await realtime.abroadcast(["chat:async"], {"from": "broadcast"})
    stats = await realtime.apresence_stats("chat:async")
    page = await realtime.ahistory("chat:async", limit=10)
    assert result is not None and results is not None
    return JsonResponse({"offset": result.offset, "broadcast": results[0].offset,
                         "clients": stats.num_clients, "history": len(page.publications)})


async def async_credentials_view(request: HttpRequest) -> JsonResponse:
    # request.user is lazy: its first read loads the session and the user from PostgreSQL,
    # which Django refuses on the event loop. The a… twins read it in the sync thread.
    with pytest.raises(SynchronousOnlyOperation):
        realtime.connection_token(request.user)
    conn = await realtime.aconnection_token(request.user, ttl=60, info={"via": "async"})
    private = await realtime.asubscription_token(request.user, "private:mine",
                                                 info={"role": "owner"})
    ticket = await realtime.aissue_ticket(request.user)
    return JsonResponse({"token": conn, "private": private, "ticket": ticket})


urlpatterns = [path("realtime/async", async_view),
               path("realtime/credentials", async_credentials_view)]


async def test_async_twins_from_an_async_view(memory_hub: Hub) -> None:
    client, rec = await subscriber(memory_hub, "chat:async")
    with override_settings(ROOT_URLCONF=__name__):
        response = await AsyncClient().get("/realtime/async")
        await realtime.apresence("chat:async")
        await realtime.adisconnect("nobody")
    assert response.status_code == 200, response.content
    assert response.json() == {"offset": 1, "broadcast": 2, "clients": 1, "history": 2}
    await rec.wait_for(lambda: len(rec.pubs) == 2)
    await client.disconnect()


async def test_async_token_twins_from_an_async_view_are_accepted_by_the_hub(
        memory_hub: Hub, webhook_databases: None) -> None:  # noqa: F811
    user = await saved_user("ada")
    name = user.username
    browser = AsyncClient()
    await browser.aforce_login(user)
    with override_settings(ROOT_URLCONF=__name__):
        response = await browser.get("/realtime/credentials")
    assert response.status_code == 200, response.content
    got = response.json()

    client = Centrifuge(memory_hub.ws_url, token=got["token"])
    rec = Recorder()
    sub = client.new_subscription("private:mine", rec, token=got["private"])
    await client.connect()
    await sub.subscribe()
    await rec.wait_for(lambda: bool(rec.subscribed))
    (who,) = (await realtime.apresence("private:mine")).values()
    assert (who.user, who.conn_info, who.chan_info) == (
        str(user.pk), {"username": name, "via": "async"}, {"role": "owner"})
    await client.disconnect()
    await _connects_as(memory_hub, got["ticket"], str(user.pk), {"username": name})
    # An id needs no database: the twins answer as the sync functions do.
    assert realtime.connection_token("7", ttl=60) == await realtime.aconnection_token("7", ttl=60)
    with pytest.raises(ValueError, match="channel must be a non-empty str"):
        await realtime.asubscription_token("7", "")


class CountingProxy(NetProxy):
    """A real TCP proxy in front of the hub that counts the connections made through it."""

    accepted = 0

    async def _handle(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        await super()._handle(reader, writer)


async def test_publishing_reuses_one_keep_alive_connection(memory_hub: Hub) -> None:
    proxy = await CountingProxy(memory_hub.port).start()
    try:
        through = hub_settings(memory_hub)
        through["HUB"]["URL"] = f"http://127.0.0.1:{proxy.port}"
        with override_settings(CLARION=through):
            for n in range(5):  # each from its own thread: the sync client is shared
                await asyncio.to_thread(realtime.publish, "chat:pool", {"n": n})
            await asyncio.to_thread(realtime.history, "chat:pool", limit=0)
            # The sync client: one connection, kept alive across the calls.
            assert proxy.accepted == 1
            for n in range(5, 10):
                await realtime.apublish("chat:pool", {"n": n})
            page = await realtime.ahistory("chat:pool", limit=0)
            # The async client (one per event loop, its own pool): one more connection.
            assert proxy.accepted == 2
        assert page.offset == 10
    finally:
        await proxy.close()


async def test_concurrent_async_publications_share_batches_in_call_order(
        memory_hub: Hub) -> None:
    # 40 async views publishing at once: one request for the first, the rest wait for it and
    # go together; each gets its own answer (a refused channel fails alone), in call order.
    client, rec = await subscriber(memory_hub, "chat:many")
    calls = [realtime.apublish("chat:many", {"n": n}) if n != 7 else
             realtime.apublish("nowhere:x", {"n": n}) for n in range(40)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = results.pop(7)
    assert isinstance(refused, HubReplyError) and refused.code == 102
    assert [r.offset for r in results if isinstance(r, PublishResult)] == list(range(1, 40))
    await rec.wait_for(lambda: len(rec.pubs) == 39)
    assert [p["n"] for p in rec.pubs] == [n for n in range(40) if n != 7]
    metrics = (await asyncio.to_thread(httpx.get, f"{memory_hub.url}/metrics")).text
    batches = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith('clarion_api_calls_total{method="batch"}'))
    assert 1 <= batches <= 3, metrics
    await client.disconnect()


# -- straight into the hub's Redis --------------------------------------------------------------

@pytest.fixture
def redis_hub(hub_factory: HubFactory, tmp_path: Path) -> Iterator[Hub]:
    from tests.conftest import in_ci

    if not redis_available():
        if in_ci():
            pytest.fail("no Redis at 127.0.0.1:6379; CI runs one")
        pytest.skip("no Redis at 127.0.0.1:6379")
    prefix = f"t{uuid.uuid4().hex[:12]}"
    hub = hub_factory(f'broker = "{REDIS_URL}"\n[redis]\nprefix = "{prefix}"\n'
                      + CHAT_NAMESPACE + PRIVATE)
    config = str(tmp_path / f"hub-{hub.port}.toml")
    direct = {**hub_settings(hub, CONFIG=config), "BROKER": REDIS_URL,
              "REDIS": {"prefix": prefix}}
    with override_settings(CLARION=direct):
        yield hub


async def test_direct_publications_are_what_the_hub_publishes(redis_hub: Hub) -> None:
    client, rec = await subscriber(redis_hub, "chat:direct")
    direct = await asyncio.to_thread(realtime.publish, "chat:direct", {"via": "redis"})
    via_api = redis_hub.api("publish", {"channel": "chat:direct", "data": {"via": "api"}})
    repeat = await realtime.apublish("chat:direct", {"via": "redis"}, idempotency_key="k1")
    again = await realtime.apublish("chat:direct", {"via": "redis"}, idempotency_key="k1")
    assert direct is not None and repeat is not None
    assert via_api.json()["result"] == {"offset": 2, "epoch": direct.epoch}
    assert (direct.offset, repeat.offset) == (1, 3) and again == repeat
    await rec.wait_for(lambda: len(rec.pubs) == 3)
    assert rec.pubs == [{"via": "redis"}, {"via": "api"}, {"via": "redis"}]
    history = await realtime.ahistory("chat:direct")  # through the hub's API
    assert [p.offset for p in history.publications] == [1, 2, 3]
    with pytest.raises(HubReplyError) as refused:
        await realtime.apublish("nowhere:x", {})
    assert refused.value.code == 102
    await client.disconnect()


async def test_direct_transaction_batch_and_ticket(
        redis_hub: Hub, webhook_databases: None,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    client, rec = await subscriber(redis_hub, "chat:tx")
    direct = {**settings.CLARION}

    def commit() -> None:
        with override_settings(CLARION=direct):
            _savepoints("default")
            _one_refused("default")
            ticket = realtime.issue_ticket(User(pk=9, username="lin"), ttl=30)
        connections.close_all()
        tickets.append(ticket)

    tickets: list[str] = []
    await asyncio.to_thread(commit)
    await rec.wait_for(lambda: len(rec.pubs) == 5)
    assert [p["n"] for p in rec.pubs] == ["outer 1", "inner, kept", "outer 2", "before", "after"]
    assert rec.offsets == [1, 2, 3, 4, 5]
    (lost,) = _lost(caplog)
    assert "nowhere:x" in lost and "102 unknown channel" in lost
    await _connects_as(redis_hub, tickets[0], "9", {"username": "lin"})
    with pytest.raises(HubReplyError, match="ttl must be within"):
        await realtime.aissue_ticket("9", ttl=10_000)
    await client.disconnect()


def test_direct_with_redis_down_is_hub_unavailable() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with override_settings(CLARION={**settings.CLARION, "BROKER": dead,
                                    "HUB": {"TIMEOUT": 3}}):
        with pytest.raises(HubUnavailable, match="broker"):
            realtime.publish("x", {})
        with pytest.raises(HubUnavailable, match="broker"):
            realtime.issue_ticket("1")


# -- settings and system checks -----------------------------------------------------------------


@pytest.mark.parametrize(("clarion", "check_id", "words"), [
    ({"HUB": []}, "clarion.E101", "CLARION['HUB'] must be a dict"),
    ({"HUB": {"URLL": "x"}}, "clarion.E101", "unknown keys ['URLL']"),
    ({"HUB": {"URL": "127.0.0.1:8000"}}, "clarion.E102", "http:// or https://"),
    ({"HUB": {"API_KEY": ""}}, "clarion.E103", "API_KEY'] must be a non-empty string"),
    ({"HUB": {"TIMEOUT": 0}}, "clarion.E104", "TIMEOUT'] must be a number of seconds"),
    ({"HUB": {"TIMEOUT": True}}, "clarion.E104", "TIMEOUT"),
    ({"HUB": {"CONFIG": "/nonexistent/hub.toml"}}, "clarion.E105", "config file"),
    ({"BROKER": "memory"}, "clarion.E106", "the hub's Redis URL"),
    ({"BROKER": [REDIS_URL, REDIS_URL]}, "clarion.E106", "twice"),
    ({"REDIS": {"prefix": "x"}}, "clarion.E107", "which is not set"),
    ({"BROKER": REDIS_URL, "REDIS": {"pool_size": 0}}, "clarion.E107", "pool_size"),
    ({"BROKER": REDIS_URL, "REDIS": {"prefixx": "a"}}, "clarion.E107", "prefixx"),
])
def test_bad_settings_are_check_errors(clarion: dict[str, Any], check_id: str,
                                       words: str) -> None:
    with override_settings(CLARION={**settings.CLARION, **clarion}):
        found = check_realtime()
        assert [(e.id, words in e.msg) for e in found if e.level >= 40] == [(check_id, True)], \
            [(e.id, e.msg) for e in found]
        if check_id != "clarion.E105":  # the file is read where it is used
            from django.core.exceptions import ImproperlyConfigured

            with pytest.raises(ImproperlyConfigured, match=check_id):
                realtime_settings()


def test_warnings_and_a_clean_configuration() -> None:
    with override_settings(CLARION={**settings.CLARION, "BROKER": REDIS_URL,
                                    "HUB": {"TOKEN_HMAC_SECRET": "short"}}):
        assert sorted(w.id for w in check_realtime()) == ["clarion.W101", "clarion.W102"]
    with override_settings(CLARION={**settings.CLARION, "HUB": {
            "URL": "https://hub.example/", "API_KEY": "k", "TOKEN_HMAC_SECRET": HMAC_SECRET}}):
        assert check_realtime() == []
        assert realtime_settings().HUB.URL == "https://hub.example"  # the cache was reset


# -- durable: rows of the outbox, written in the transaction -----------------------------------


async def test_durable_publications_are_outbox_rows_of_the_transaction(
        webhook_databases: None) -> None:  # noqa: F811
    from clarion.django.models import Event

    tag = uuid.uuid4().hex[:8]

    def write() -> list[tuple[str, str, str]]:
        with transaction.atomic():
            assert realtime.publish(f"chat:{tag}", {"n": 1}, durable=True) is None
            assert realtime.broadcast([f"chat:{tag}a", f"chat:{tag}b"], {"n": 2},
                                      durable=True, idempotency_key="b-1") is None
        with pytest.raises(RuntimeError), transaction.atomic():
            realtime.publish(f"chat:{tag}", {"n": "rolled back"}, durable=True)
            raise RuntimeError
        with pytest.raises(WebhookError, match="channel"):  # the outbox's error
            realtime.broadcast([f"chat:{tag}c", ""], {"n": 3}, durable=True)
        rows = Event.objects.filter(channel__startswith=f"chat:{tag}").order_by("id")
        found = [(r.channel, r.payload, r.publish_key) for r in rows]
        connections.close_all()
        return found

    await realtime.apublish(f"chat:{tag}z", {"n": 0}, durable=True)
    assert await asyncio.to_thread(write) == [
        (f"chat:{tag}z", '{"n":0}', ""), (f"chat:{tag}", '{"n":1}', ""),
        (f"chat:{tag}a", '{"n":2}', "b-1"), (f"chat:{tag}b", '{"n":2}', "b-1")]


# -- the direct path after fork, and bounded ----------------------------------------------------


def _publish_in_child() -> None:
    realtime.publish("chat:fork", {"from": "child"})


def test_the_direct_path_works_in_a_forked_child(redis_hub: Hub) -> None:
    import multiprocessing

    realtime.publish("chat:fork", {"from": "parent"})  # the parent's loop thread is running
    child = multiprocessing.get_context("fork").Process(target=_publish_in_child)
    child.start()
    child.join(30)
    assert child.exitcode == 0
    realtime.publish("chat:fork", {"from": "parent again"})
    page = realtime.history("chat:fork")
    assert [p.data["from"] for p in page.publications] == ["parent", "child", "parent again"]


def test_a_broker_that_never_answers_is_bounded_by_the_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        with override_settings(CLARION={**settings.CLARION, "BROKER": url,
                                        "REDIS": {"connect_timeout": 30, "command_timeout": 30},
                                        "HUB": {"TIMEOUT": 0.5}}):
            with pytest.raises(HubUnavailable, match=r"within 0\.5s"):
                realtime.publish("news", {})  # no namespace: the defaults allow it
            with pytest.raises(HubUnavailable, match=r"within 0\.5s"):
                asyncio.run(realtime.aissue_ticket("1"))


async def test_aissue_ticket_reads_a_queryset_of_channels_in_the_sync_thread(
        memory_hub: Hub, webhook_databases: None) -> None:  # noqa: F811
    """As aconnection_token: channel names from a QuerySet are read where Django allows a
    query; on the event loop it raised SynchronousOnlyOperation."""
    from django.db.models import Value
    from django.db.models.functions import Concat

    user = await saved_user("tk")
    name = user.username
    channels = (User.objects.filter(pk=user.pk)
                .annotate(channel=Concat(Value("chat:"), "username"))
                .values_list("channel", flat=True))
    ticket = await realtime.aissue_ticket(str(user.pk), channels=channels)
    client = Centrifuge(memory_hub.ws_url, token=ticket)
    await client.connect()
    try:
        present = await realtime.apresence(f"chat:{name}")  # subscribed server-side
        assert [c.user for c in present.values()] == [str(user.pk)]
    finally:
        await client.disconnect()
