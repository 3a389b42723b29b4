"""``clarion.django.tickets`` (issue 11, part 2): django-realtime-ticket's API on the hub.

Django runs in this process (tests/webhook_apps settings, PostgreSQL for users and sessions,
driven by Django's test ``Client``); the hub is a real ``clarion serve --broker redis://…``
process with a key prefix of its own, so its tickets live in the Redis the Django side writes
to. Connections are made by centrifuge-python (WebSocket) and httpx (SSE).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectedContext,
    DisconnectedContext,
)
from redis import Redis

import django_env
from conftest import API_KEY, CHAT_NAMESPACE, HMAC_SECRET, Hub, HubFactory, free_port, in_ci
from sse_reader import SSEReader

django_env.configure()

from django.contrib.auth.models import User  # noqa: E402
from django.core import checks  # noqa: E402
from django.template import engines  # noqa: E402
from django.test import Client as DjangoClient  # noqa: E402
from django.test import override_settings  # noqa: E402
from django.urls import include, path  # noqa: E402
from django.utils.decorators import decorator_from_middleware, method_decorator  # noqa: E402
from django.views.generic import TemplateView  # noqa: E402

from centrifuge_support import Recorder  # noqa: E402
from clarion.django.tickets import RealtimeTicketMiddleware  # noqa: E402
from clarion.django.tickets.checks import check_ticket_settings  # noqa: E402
from clarion.protocol.tickets import decode_payload, ticket_key  # noqa: E402
from webhook_support import clean_db, webhook_databases  # noqa: E402, F401  (fixtures)

REDIS_DB = 2  # the hub and the Django side both use it; every test has its own key prefix
T = 15.0


# -- the seed's usage, verbatim apart from imports (its `get` body was a placeholder) -------

class ChatView(TemplateView):
    template_name = "chat.html"

    @method_decorator(decorator_from_middleware(RealtimeTicketMiddleware))
    def dispatch(self, *args, **kwargs):
        return super(ChatView, self).dispatch(*args, **kwargs)  # noqa: UP008  (the seed's)

    def get(self, request, *args, **kwargs):
        # YOUR APPLICATION CODE HERE
        return super().get(request, *args, **kwargs)


urlpatterns = [
    path("", include("clarion.django.tickets.urls")),
    path("chat/", ChatView.as_view()),
]

TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "OPTIONS": {
        "context_processors": ["django.template.context_processors.request",
                               "django.contrib.auth.context_processors.auth"],
        "loaders": [("django.template.loaders.locmem.Loader", {
            "chat.html": "{% csrf_token %}\nticket={{ realtime_ticket }}\n",
        })],
    },
}]


def redis_available() -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", 6379)) == 0


@dataclass
class Setup:
    hub: Hub
    prefix: str
    redis: Redis

    def settings(self, **extra: Any) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": 6379, "db": REDIS_DB, "socket_timeout": 1,
                "prefix": self.prefix, **extra}

    def keys(self) -> list[bytes]:
        return list(self.redis.scan_iter(f"{self.prefix}:ticket:*"))


@pytest.fixture
def setup(hub_factory: HubFactory, clean_db: None) -> Iterator[Setup]:  # noqa: F811
    """A Redis-broker hub, Django pointed at the same Redis and prefix, this module's URLs."""
    if not redis_available():
        if in_ci():
            pytest.fail("no Redis at 127.0.0.1:6379; CI must run one")
        pytest.skip("no Redis at 127.0.0.1:6379")
    prefix = f"t{uuid.uuid4().hex[:12]}"
    hub = hub_factory(f'broker = "redis://127.0.0.1:6379/{REDIS_DB}"\n'
                      f'[redis]\nprefix = "{prefix}"\n' + CHAT_NAMESPACE)
    redis = Redis(db=REDIS_DB)
    ready = Setup(hub, prefix, redis)
    with override_settings(ROOT_URLCONF=__name__, TEMPLATES=TEMPLATES,
                           REALTIME_TICKET_REDIS=ready.settings()):
        yield ready
    redis.close()


def logged_in(name: str = "alice", **client_options: Any) -> tuple[DjangoClient, User]:
    user = User.objects.create_user(name, password="not-used")
    client = DjangoClient(**client_options)
    client.force_login(user)
    return client, user


def rendered_ticket(client: DjangoClient) -> str | None:
    response = client.get("/chat/")
    assert response.status_code == 200
    value = re.search(r"ticket=(\S+)", response.content.decode())
    assert value is not None
    ticket = response.context_data["realtime_ticket"]  # a TemplateResponse keeps its context
    assert value.group(1) == str(ticket)  # None renders as "None"
    if ticket is not None:
        assert "no-store" in response["Cache-Control"]
        assert "private" in response["Cache-Control"]
    return ticket


class Events(ClientEventHandler):
    def __init__(self) -> None:
        self.connected = 0
        self.codes: list[int] = []
        self.changed = asyncio.Event()

    async def on_connected(self, ctx: ConnectedContext) -> None:
        self.connected += 1
        self.changed.set()

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self.codes.append(ctx.code)
        self.changed.set()

    async def wait_for(self, predicate: Any) -> None:
        from centrifuge_support import wait_changed
        await wait_changed(self.changed, predicate, T)


async def sse_connect(hub: Hub, ticket: str) -> int:
    """Connect over SSE with ``ticket``; the status, after the connect event when 200."""
    async with httpx.AsyncClient(timeout=T) as http:
        params = {"channel": "chat:room", "token": ticket}
        async with http.stream("GET", f"{hub.url}/connection/sse", params=params) as r:
            if r.status_code == 200:
                connect = (await SSEReader(r).next()).json["connect"]
                assert connect["subs"] is not None and "chat:room" in connect["subs"]
            else:
                await r.aread()
                assert r.json()["error"]["code"] == 3500  # invalid token
            return r.status_code


# -- the seed's ChatView: the rendered ticket connects over WebSocket once ------------------

def test_chat_view_ticket_connects_over_websocket_once_and_presence_shows_username(
        setup: Setup) -> None:
    client, user = logged_in("alice")
    ticket = rendered_ticket(client)
    assert ticket is not None and ticket.startswith("tkt_")

    async def run() -> None:
        events, rec = Events(), Recorder()
        first = Client(setup.hub.ws_url, token=ticket, events=events)
        sub = first.new_subscription("chat:room", rec)
        await first.connect()
        await sub.subscribe()
        await rec.wait_for(lambda: bool(rec.subscribed))
        presence = await sub.presence()
        assert [(c.user, c.conn_info) for c in presence.clients.values()] == [
            (str(user.pk), {"username": "alice"})]

        again = Events()
        second = Client(setup.hub.ws_url, token=ticket, events=again)
        await second.connect()
        await again.wait_for(lambda: bool(again.codes))
        assert again.codes == [3500] and again.connected == 0  # invalid token: refused
        await second.disconnect()
        await first.disconnect()

    asyncio.run(run())
    assert setup.keys() == []  # consumed


# -- POST /ticket/ with the CSRF token as a page's JavaScript sends it; then SSE once --------

def test_post_ticket_with_csrf_header_connects_over_sse_once(setup: Setup) -> None:
    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    with override_settings(REALTIME_TICKET_REDIS={"url": url, "prefix": setup.prefix},
                           REALTIME_TICKET_EXPIRE=30):
        client, user = logged_in("bob", enforce_csrf_checks=True)
        client.get("/chat/")  # a page with {% csrf_token %} sets the csrftoken cookie
        csrf = client.cookies["csrftoken"].value
        response = client.post("/ticket/", headers={"X-CSRFToken": csrf})
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert body["status"] == "ok" and body["expires_in"] == 30
    ticket = body["message"]

    # What the hub reads: the shared key and payload, written with its expiry in one command.
    key = ticket_key(ticket, setup.prefix)
    payload = decode_payload(setup.redis.get(key) or b"")
    assert payload.user == str(user.pk) and payload.info_json == b'{"username":"bob"}'
    assert 0 < setup.redis.pttl(key) <= 30_000

    assert asyncio.run(sse_connect(setup.hub, ticket)) == 200
    assert asyncio.run(sse_connect(setup.hub, ticket)) == 401  # reused


@pytest.mark.parametrize("transport", ["stream", "poll"])
def test_ticket_connects_once_over_stream_and_poll(setup: Setup, transport: str) -> None:
    client, _ = logged_in("kim")
    ticket = client.post("/ticket/").json()["message"]
    url = f"{setup.hub.url}/connection/{transport}"
    params = {"channel": "chat:room", "token": ticket}

    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=T) as http:
            async with http.stream("GET", url, params=params) as first:
                # stream: the first NDJSON line is the connect; poll: one JSON answer
                async for line in first.aiter_lines():
                    assert "connect" in line or "session" in line
                    break
                again = await http.get(url, params=params)
            return [first.status_code, again.status_code]

    assert asyncio.run(run()) == [200, 401]


def test_concurrent_use_of_one_ticket_lets_exactly_one_in(setup: Setup) -> None:
    client, _ = logged_in("lena")
    ticket = client.post("/ticket/").json()["message"]

    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=T) as http:
            attempts = [http.get(f"{setup.hub.url}/connection/poll",
                                 params={"channel": "chat:room", "token": ticket})
                        for _ in range(20)]
            return [r.status_code for r in await asyncio.gather(*attempts)]

    assert sorted(asyncio.run(run())) == [200] + [401] * 19


# -- refusals -------------------------------------------------------------------------------

def test_anonymous_gets_403_and_no_ticket(setup: Setup) -> None:
    client = DjangoClient()
    response = client.post("/ticket/")
    assert response.status_code == 403
    assert response.json() == {"status": "error", "message": "log in to get a ticket"}
    assert rendered_ticket(client) is None
    assert setup.keys() == []


def test_missing_csrf_token_is_403_json_and_writes_nothing(setup: Setup) -> None:
    client, _ = logged_in("carol", enforce_csrf_checks=True)
    response = client.post("/ticket/")
    assert response.status_code == 403
    body = response.json()
    assert body["status"] == "error" and "CSRF" in body["message"]
    wrong = client.post("/ticket/", headers={"X-CSRFToken": "x" * 32})
    assert wrong.status_code == 403 and "CSRF" in wrong.json()["message"]
    assert setup.keys() == []


@pytest.mark.parametrize("method", ["get", "put", "delete", "options", "head"])
def test_other_methods_are_405_with_allow(setup: Setup, method: str) -> None:
    client, _ = logged_in("dora")
    response = getattr(client, method)("/ticket/")
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    if method != "head":
        assert response.json()["status"] == "error"
    assert setup.keys() == []


def test_expired_ticket_is_refused(setup: Setup) -> None:
    with override_settings(REALTIME_TICKET_EXPIRE=1):
        client, _ = logged_in("erin")
        ticket = client.post("/ticket/").json()["message"]
    key = ticket_key(ticket, setup.prefix)
    deadline = time.monotonic() + T
    while setup.redis.exists(key):  # Redis expires it after a second; a bound, not a timing
        assert time.monotonic() < deadline, "the ticket never expired"
        time.sleep(0.1)
    assert asyncio.run(sse_connect(setup.hub, ticket)) == 401


def test_redis_down_means_503_and_none_with_the_reason_logged(
        setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    client, user = logged_in("fred")
    down = setup.settings(port=free_port())  # nothing listens there
    with override_settings(REALTIME_TICKET_REDIS=down), \
            caplog.at_level(logging.ERROR, logger="clarion.django.tickets"):
        response = client.post("/ticket/")
        assert response.status_code == 503
        assert response.json()["status"] == "error"
        assert response["Retry-After"] == "1"
        assert rendered_ticket(client) is None
    failures = [r for r in caplog.records if r.name == "clarion.django.tickets"]
    assert len(failures) == 2
    for record in failures:
        assert record.exc_info is not None  # the traceback, not just a line
        assert f"user {user.pk}" in record.getMessage()
        assert "ConnectionError" in str(record.exc_info[1])


def test_deleted_user_gets_no_new_ticket_and_is_disconnected_by_the_app(setup: Setup) -> None:
    """The hub cannot know a user was deleted: a ticket issued before stays good for at most
    REALTIME_TICKET_EXPIRE seconds. The app stops new ones (the session no longer logs the
    user in) and disconnects the user's connections (docs/topics/tickets.md)."""
    client, user = logged_in("gus")
    ticket = client.post("/ticket/").json()["message"]
    user_id = str(user.pk)
    user.delete()
    assert client.post("/ticket/").status_code == 403
    assert rendered_ticket(client) is None

    async def run() -> None:
        async with httpx.AsyncClient(timeout=T) as http:
            params = {"channel": "chat:room", "token": ticket}
            async with http.stream("GET", f"{setup.hub.url}/connection/sse",
                                   params=params) as r:
                assert r.status_code == 200  # issued before the delete, within its expiry
                reader = SSEReader(r)
                assert (await reader.next()).json["connect"]["client"]
                answer = await asyncio.to_thread(setup.hub.api, "disconnect", {"user": user_id})
                assert answer.status_code == 200, answer.text
                while True:
                    message = (await reader.next()).json
                    if "disconnect" in message:
                        break

    asyncio.run(run())


# -- without REALTIME_TICKET_REDIS: through clarion.django.realtime (the hub's API) ----------

def hub_settings(url: str) -> dict[str, Any]:
    return {"HUB": {"URL": url, "API_KEY": API_KEY, "TOKEN_HMAC_SECRET": HMAC_SECRET}}


def test_without_redis_setting_tickets_come_from_the_hub_api(setup: Setup) -> None:
    with override_settings(REALTIME_TICKET_REDIS=None, REALTIME_TICKET_EXPIRE=20,
                           CLARION=hub_settings(setup.hub.url)):
        client, user = logged_in("ivan")
        body = client.post("/ticket/").json()
        rendered = rendered_ticket(client)
    assert body["status"] == "ok" and body["expires_in"] == 20
    ticket = body["message"]
    # Issued by the hub's Redis broker under the same key, with the same payload.
    key = ticket_key(ticket, setup.prefix)
    payload = decode_payload(setup.redis.get(key) or b"")
    assert payload.user == str(user.pk) and payload.info_json == b'{"username":"ivan"}'
    assert 0 < setup.redis.pttl(key) <= 20_000
    assert asyncio.run(sse_connect(setup.hub, ticket)) == 200
    assert asyncio.run(sse_connect(setup.hub, ticket)) == 401
    assert rendered is not None
    assert asyncio.run(sse_connect(setup.hub, rendered)) == 200


def test_hub_down_means_503_and_none(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with override_settings(REALTIME_TICKET_REDIS=None, CLARION=hub_settings(down)), \
            caplog.at_level(logging.ERROR, logger="clarion.django.tickets"):
        client, _ = logged_in("jane")
        response = client.post("/ticket/")
        assert response.status_code == 503
        assert response.json()["status"] == "error"
        assert rendered_ticket(client) is None
    failures = [r for r in caplog.records if r.name == "clarion.django.tickets"]
    assert len(failures) == 2 and all(r.exc_info for r in failures)


def test_hub_refusing_the_ticket_is_500_and_logged(
        hub_factory: HubFactory, clean_db: None,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    hub = hub_factory("ticket_max_ttl = 5\n" + CHAT_NAMESPACE)  # the memory broker
    with override_settings(ROOT_URLCONF=__name__, TEMPLATES=TEMPLATES,
                           REALTIME_TICKET_REDIS=None, REALTIME_TICKET_EXPIRE=10,
                           CLARION=hub_settings(hub.url)), \
            caplog.at_level(logging.ERROR, logger="clarion.django.tickets"):
        client, _ = logged_in("max")
        response = client.post("/ticket/")
        assert response.status_code == 500
        assert response.json() == {"status": "error",
                                   "message": "the ticket could not be issued"}
        assert rendered_ticket(client) is None
        with override_settings(REALTIME_TICKET_EXPIRE=5):
            ticket = client.post("/ticket/").json()["message"]
    assert [r.exc_info is not None for r in caplog.records
            if r.name == "clarion.django.tickets"] == [True, True]
    assert asyncio.run(sse_connect(hub, ticket)) == 200  # memory broker: via the hub's API
    assert asyncio.run(sse_connect(hub, ticket)) == 401


# -- template tags ----------------------------------------------------------------------------

def test_template_tags(setup: Setup) -> None:
    client, _ = logged_in("hana")
    request = client.get("/chat/").wsgi_request
    engine = engines["django"]
    hub = {"URL": setup.hub.url + "/"}
    with override_settings(CLARION={"HUB": hub}):
        script = engine.from_string("{% load clarion %}{% clarion_script %}").render()
    assert script == (f'<script type="module" src="{setup.hub.url}'
                      '/static/clarion.js"></script>')
    assert httpx.get(f"{setup.hub.url}/static/clarion.js").status_code == 200

    page = engine.from_string("{% load clarion %}{% realtime_ticket as t %}[{{ t }}]")
    ticket = page.render(request=request).strip("[]")
    assert ticket.startswith("tkt_")
    assert asyncio.run(sse_connect(setup.hub, ticket)) == 200
    anonymous = DjangoClient().get("/chat/").wsgi_request
    assert page.render(request=anonymous) == "[]"

    jwt_page = engine.from_string("{% load clarion %}{% clarion_token %}")
    with override_settings(CLARION=hub_settings(setup.hub.url)):
        token = jwt_page.render(request=request)
        assert jwt_page.render(request=anonymous) == ""
    assert token.count(".") == 2
    assert asyncio.run(sse_connect(setup.hub, token)) == 200
    assert asyncio.run(sse_connect(setup.hub, token)) == 200  # a JWT is not one-time


# -- settings (pure) --------------------------------------------------------------------------

def test_redis_target_never_shows_the_password() -> None:
    from clarion.django.tickets.conf import parse_redis

    for value in ("redis://user:secret@h:6379/3?health_check_interval=5",
                  {"host": "h", "password": "secret"}):
        target = parse_redis(value)
        assert target is not None
        assert "secret" not in target.display() and "secret" not in repr(target)
    assert parse_redis("redis://user:secret@h:6379/3").display() == "redis://h:6379/3"


# -- settings checks (pure) -------------------------------------------------------------------

@pytest.mark.parametrize(("expire", "redis", "ids"), [
    (10, None, []),
    (10, "redis://:secret@127.0.0.1:6379/3", []),
    (2.5, {"url": "rediss://h:6380/0", "prefix": "app", "socket_timeout": 0.5}, []),
    (0, None, ["clarion.E201"]),
    (301, None, ["clarion.E201"]),
    ("10", None, ["clarion.E201"]),
    (True, None, ["clarion.E201"]),
    (10, {"host": "localhost", "prot": 6379}, ["clarion.E202"]),
    (10, {"port": "6379"}, ["clarion.E202"]),
    (10, {"port": 70000}, ["clarion.E202"]),
    (10, {"db": -1}, ["clarion.E202"]),
    (10, {"socket_timeout": None}, ["clarion.E202"]),
    (10, {"prefix": "a b"}, ["clarion.E202"]),
    (10, {"prefix": "{x}"}, ["clarion.E202"]),
    (10, {"url": "redis://h/0", "host": "h"}, ["clarion.E202"]),
    (10, "redis+sentinel://h:26379/mymaster", ["clarion.E202"]),
    (10, "redis://a:6379,b:6379/0", ["clarion.E202"]),
    (10, "http://h:6379", ["clarion.E202"]),
    (10, "redis://h:port/0", ["clarion.E202"]),
    (10, ["127.0.0.1"], ["clarion.E202"]),
    (10, "secret@127.0.0.1:6379", ["clarion.E202"]),
    (10, "redis://:secret@h:port/0", ["clarion.E202"]),
    (0, {"db": "0"}, ["clarion.E201", "clarion.E202"]),
])
def test_checks(expire: Any, redis: Any, ids: list[str]) -> None:
    with override_settings(REALTIME_TICKET_EXPIRE=expire, REALTIME_TICKET_REDIS=redis):
        found = check_ticket_settings()
    assert [m.id for m in found] == ids
    for message in found:
        assert "secret" not in message.msg
    if ids:  # registered: manage.py check reports them
        with override_settings(REALTIME_TICKET_EXPIRE=expire, REALTIME_TICKET_REDIS=redis):
            assert set(ids) <= {m.id for m in checks.run_checks()}
