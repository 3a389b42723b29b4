"""examples/chat: the Channels articles' chat on Clarion, started by its own `run` script.

The example runs as users run it (one process: the hub with the Django project mounted), on
PostgreSQL for the browser tests and on its default SQLite for the HTTP one. Two users in two
Chromium contexts chat; one goes offline while the other sends, and gets every message once,
in order, when it comes back: through Clarion's recovery, with no database query, and from the
database only when the hub lost its history. The page marks each message with how it arrived
(data-via) and counts its database catch-ups (#messages[data-catch-ups]). Chromium and
playwright as in tests/test_browser.py; PostgreSQL at 127.0.0.1:5432 (a database of its own per
test, dropped after). Under CI=true a missing browser or PostgreSQL fails instead of skipping.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import free_port, in_ci
from test_browser import SCREENSHOT_DIR, browser  # noqa: F401  (the Chromium fixture)

RUN = Path(__file__).resolve().parent.parent / "examples" / "chat" / "run"
PG_DSN = os.environ.get("CLARION_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("CLARION_TEST_REDIS", "redis://127.0.0.1:6379/0")
SECRET_KEY = "chat-example-test-secret-key-" + "x" * 30


@dataclass
class ChatServer:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    database: str | None
    redis_prefix: str | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def hub_api(self, method: str, body: object) -> dict[str, Any]:
        """The hub's server API, with the key the example derives from its secret key."""
        key = hmac.new(SECRET_KEY.encode(), b"clarion-hub-api-key", hashlib.sha256).hexdigest()
        r = httpx.post(f"{self.url}/api/{method}", json=body, headers={"X-API-Key": key},
                       timeout=10)
        assert r.status_code == 200, r.text
        reply = r.json()
        assert "error" not in reply, reply
        return reply["result"]  # type: ignore[no-any-return]


ChatFactory = Callable[..., ChatServer]


def _postgres_database() -> str:
    """A fresh database for one test (the shared `test` database is other tests' ground)."""
    try:
        import psycopg
    except ImportError:
        if in_ci():
            pytest.fail("psycopg is not installed")
        pytest.skip("psycopg is not installed")
    name = f"chat_example_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(f"{PG_DSN}/postgres", autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        if in_ci():
            pytest.fail(f"PostgreSQL is not reachable at {PG_DSN}: {exc}")
        pytest.skip(f"PostgreSQL is not reachable at {PG_DSN}: {exc}")
    return name


def _redis_prefix() -> str:
    """A key prefix of one test's own on the shared Redis (checked reachable first)."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping()
    except redis.RedisError as exc:
        if in_ci():
            pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc}")
    return f"chat-test-{uuid.uuid4().hex[:10]}"


def _drop_redis_keys(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=3)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


def _drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(f"{PG_DSN}/postgres", autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def chat_factory(tmp_path: Path) -> Iterator[ChatFactory]:
    started: list[ChatServer] = []

    def start(*, postgres: bool, redis: bool = False) -> ChatServer:
        port = free_port()
        database = _postgres_database() if postgres else None
        redis_prefix = _redis_prefix() if redis else None
        env = {**os.environ, "CHAT_PORT": str(port), "CHAT_DATA_DIR": str(tmp_path / "var"),
               "CHAT_SECRET_KEY": SECRET_KEY}
        env.pop("CHAT_DATABASE_URL", None)
        env.pop("CHAT_REDIS_URL", None)
        if database:
            env["CHAT_DATABASE_URL"] = f"{PG_DSN}/{database}"
        if redis_prefix:
            env["CHAT_REDIS_URL"] = REDIS_URL
            env["CHAT_REDIS_PREFIX"] = redis_prefix
        log = tmp_path / f"chat-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([str(RUN)], stdout=out, stderr=subprocess.STDOUT, env=env)
        server = ChatServer(proc, port, log, database, redis_prefix)
        started.append(server)
        deadline = time.monotonic() + 60  # migrations first
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"chat exited with {proc.returncode}:\n{server.output()}")
            try:
                if httpx.get(f"{server.url}/login/", timeout=1).status_code == 200:
                    return server
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"chat did not start:\n{server.output()}")

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.terminate()
            try:
                server.process.wait(15)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()
        if server.database:
            _drop_database(server.database)
        if server.redis_prefix:
            _drop_redis_keys(server.redis_prefix)


# ---- in the browser ---------------------------------------------------------------------

def sign_up_and_enter(browser: Any, chat: ChatServer, name: str, room: str) -> tuple[Any, Any]:  # noqa: F811
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    page = context.new_page()
    page.on("console", lambda m: print(f"[{name} console.{m.type}] {m.text}"))
    page.on("pageerror", lambda e: print(f"[{name} pageerror] {e}"))
    page.goto(f"{chat.url}/")
    assert "/login/" in page.url, "anonymous users are sent to the login page"
    page.click("text=Sign up")
    page.fill("#id_username", name)
    page.fill("#id_password1", "correct-horse-battery")
    page.fill("#id_password2", "correct-horse-battery")
    page.click("#signup")
    page.wait_for_selector("#room-name")
    page.fill("#room-name", room)
    page.click("#enter")
    page.wait_for_url(f"{chat.url}/rooms/{room}/")
    wait_connected(page)
    return context, page


def wait_connected(page: Any, timeout: float = 15_000) -> None:
    page.wait_for_selector("#status[data-state='connected']", timeout=timeout)


@contextlib.contextmanager
def offline(context: Any, page: Any) -> Iterator[None]:
    """The page's network is gone for the block (the page has noticed when it starts), and
    back after it, once the page is connected again."""
    context.set_offline(True)
    page.wait_for_selector("#status:not([data-state='connected'])", timeout=15_000)
    yield
    context.set_offline(False)
    wait_connected(page, timeout=30_000)


def send(page: Any, text: str) -> None:
    page.fill("#message", text)
    page.click("#send")
    page.wait_for_function("document.querySelector('#message').value === ''", timeout=10_000)


def shown(page: Any) -> list[tuple[str, str]]:
    return [tuple(x) for x in page.eval_on_selector_all(
        "#messages .message",
        "els => els.map(e => [e.querySelector('.author').textContent,"
        " e.querySelector('.text').textContent])")]


def arrivals(page: Any) -> dict[str, str]:
    """How each shown message arrived: text -> the page's data-via."""
    return dict(page.eval_on_selector_all(
        "#messages .message",
        "els => els.map(e => [e.querySelector('.text').textContent, e.dataset.via])"))


def catch_ups(page: Any) -> int:
    """How many times the page asked the database for messages the hub could not give."""
    return int(page.eval_on_selector("#messages", "e => e.dataset.catchUps || '0'"))


def recovered(page: Any) -> str | None:
    """The last subscribe's `recovered` ("true"/"false"), as the page recorded it."""
    return page.eval_on_selector("#status", "e => e.dataset.recovered ?? null")  # type: ignore[no-any-return]


def wait_shown(page: Any, texts: list[str], timeout: float = 20_000) -> None:
    try:
        page.wait_for_function(
            """(want) => {
              const got = [...document.querySelectorAll('#messages .message .text')]
                .map(e => e.textContent);
              return want.every(t => got.includes(t));
            }""", arg=texts, timeout=timeout)
    except Exception as exc:
        raise AssertionError(f"messages {texts} not all shown; got {shown(page)}") from exc


def wait_presence(page: Any, users: list[str], timeout: float = 15_000) -> None:
    try:
        page.wait_for_function(
            """(want) => JSON.stringify([...document.querySelectorAll('#presence .user')]
                 .map(e => e.dataset.user).sort()) === JSON.stringify(want)""",
            arg=sorted(users), timeout=timeout)
    except Exception as exc:
        got = page.eval_on_selector_all("#presence .user", "els => els.map(e => e.dataset.user)")
        raise AssertionError(f"presence is {got}, want {sorted(users)}") from exc


@pytest.mark.browser
def test_two_users_chat_and_one_comes_back_from_offline(
    browser: Any, chat_factory: ChatFactory  # noqa: F811
) -> None:
    chat = chat_factory(postgres=True)
    alice_ctx, alice = sign_up_and_enter(browser, chat, "alice", "lobby")
    bob_ctx, bob = sign_up_and_enter(browser, chat, "bob", "lobby")
    try:
        wait_presence(alice, ["alice", "bob"])
        wait_presence(bob, ["alice", "bob"])

        send(alice, "hi bob!")
        wait_shown(bob, ["hi bob!"])
        send(bob, "hey alice!")
        wait_shown(alice, ["hi bob!", "hey alice!"])

        # Bob's network goes; alice says three things meanwhile.
        missed = ["are you there?", "bob?", "I'll wait…"]
        with offline(bob_ctx, bob):
            for text in missed:
                send(alice, text)
            wait_shown(alice, missed)

        want = [("alice", "hi bob!"), ("bob", "hey alice!"), *(("alice", t) for t in missed)]
        wait_shown(bob, [t for _, t in want])
        # Clarion recovered them: replayed by the hub on resubscribe, and the database was not
        # asked (a broken recovery shows up as missing messages or as a catch-up).
        assert recovered(bob) == "true"
        assert {t: arrivals(bob)[t] for t in missed} == dict.fromkeys(missed, "recovery")
        assert catch_ups(bob) == 0
        # A duplicate would come with the recovery; it is done once the sentinel, sent after
        # bob is back, has arrived behind it.
        send(alice, "welcome back")
        want.append(("alice", "welcome back"))
        wait_shown(bob, ["welcome back"])
        assert arrivals(bob)["welcome back"] == "live"
        assert shown(bob) == want
        assert shown(alice) == want
        ids = bob.eval_on_selector_all("#messages .message", "els => els.map(e => e.dataset.id)")
        assert len(ids) == len(set(ids)) == len(want)
        wait_presence(alice, ["alice", "bob"])

        # History on join: a page loaded now shows them from the hub's history.
        carol_ctx, carol = sign_up_and_enter(browser, chat, "carol", "lobby")
        try:
            assert shown(carol) == want
            assert set(arrivals(carol).values()) == {"history"}
            assert catch_ups(carol) == 0
            wait_presence(alice, ["alice", "bob", "carol"])

            # A message committed after the view read the history and before the page
            # subscribed (held here by delaying clarion.js): the page asks the hub's history
            # for what came after the view's position.
            with _signed_up(chat, "erin") as erin:
                def post_then_load(route: Any) -> None:
                    r = erin.post("/rooms/lobby/messages/", json={"text": "in the gap"},
                                  headers=_csrf(erin))
                    assert r.status_code == 201, r.text
                    route.continue_()

                carol.route("**/static/clarion.js", post_then_load)
                carol.goto(f"{chat.url}/rooms/lobby/")
                wait_connected(carol)
                want.append(("erin", "in the gap"))
                wait_shown(carol, ["in the gap"])
            assert shown(carol) == want
            assert arrivals(carol)["in the gap"] == "history"
            assert catch_ups(carol) == 0
            wait_shown(alice, ["in the gap"])
            wait_shown(bob, ["in the gap"])
        finally:
            carol_ctx.close()
        wait_presence(alice, ["alice", "bob"])
        # Saved in PostgreSQL, in order.
        rows = _database_messages(chat)
        assert rows == want

        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        alice.screenshot(path=str(SCREENSHOT_DIR / "clarion-example-chat-alice.png"))
        bob.screenshot(path=str(SCREENSHOT_DIR / "clarion-example-chat-bob.png"))
    finally:
        alice_ctx.close()
        bob_ctx.close()
    assert "Traceback" not in chat.output(), chat.output()


@pytest.mark.browser
def test_when_the_hub_lost_its_history_the_database_fills_in_once_in_order(
    browser: Any, chat_factory: ChatFactory  # noqa: F811
) -> None:
    chat = chat_factory(postgres=True)
    alice_ctx, alice = sign_up_and_enter(browser, chat, "alice", "attic")
    bob_ctx, bob = sign_up_and_enter(browser, chat, "bob", "attic")
    try:
        wait_presence(bob, ["alice", "bob"])
        send(alice, "before the loss")
        wait_shown(bob, ["before the loss"])
        assert arrivals(bob)["before the loss"] == "live"

        missed = ["one", "two", "three"]
        with offline(bob_ctx, bob):
            for text in missed:
                send(alice, text)
            # The hub forgets the room (as after a restart on the memory broker, or past
            # history_ttl); its stream position stays, so bob's recovery finds the gap.
            chat.hub_api("history_remove", {"channel": "room:attic"})
            assert chat.hub_api("history", {"channel": "room:attic", "limit": 10})[
                "publications"] == []

        want = [("alice", "before the loss"), *(("alice", t) for t in missed)]
        wait_shown(bob, missed)
        assert recovered(bob) == "false"
        assert {t: arrivals(bob)[t] for t in missed} == dict.fromkeys(missed, "database")
        assert catch_ups(bob) == 1
        send(alice, "after the loss")
        want.append(("alice", "after the loss"))
        wait_shown(bob, ["after the loss"])
        assert arrivals(bob)["after the loss"] == "live"
        assert shown(bob) == want
        ids = bob.eval_on_selector_all("#messages .message", "els => els.map(e => e.dataset.id)")
        assert len(ids) == len(set(ids)) == len(want)

        # A page loaded now: the one message the hub has comes from its history, the older
        # ones from the database, each once, in order.
        carol_ctx, carol = sign_up_and_enter(browser, chat, "carol", "attic")
        try:
            assert shown(carol) == want
            assert arrivals(carol) == {**{t: "database" for _, t in want[:-1]},
                                       "after the loss": "history"}
            assert catch_ups(carol) == 0
        finally:
            carol_ctx.close()
        assert _database_messages(chat, "attic") == want
    finally:
        alice_ctx.close()
        bob_ctx.close()
    assert "Traceback" not in chat.output(), chat.output()


def _database_messages(chat: ChatServer, room: str = "lobby") -> list[tuple[str, str]]:
    import psycopg

    with psycopg.connect(f"{PG_DSN}/{chat.database}", connect_timeout=3) as conn:
        rows = conn.execute(
            "SELECT u.username, m.text FROM chat_message m JOIN auth_user u ON u.id = m.author_id"
            " JOIN chat_room r ON r.id = m.room_id WHERE r.name = %s ORDER BY m.id", (room,)
        ).fetchall()
    return [(u, t) for u, t in rows]


# ---- over HTTP, on the default SQLite; the hub on memory, and on Redis ----------------------

@contextlib.contextmanager
def _signed_up(chat: ChatServer, name: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=chat.url, timeout=10) as client:
        yield _sign_up(client, name)


def _sign_up(client: httpx.Client, name: str) -> httpx.Client:
    page = client.get("/signup/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token, page.text
    r = client.post("/signup/", data={
        "csrfmiddlewaretoken": token.group(1), "username": name,
        "password1": "correct-horse-battery", "password2": "correct-horse-battery"})
    assert r.status_code == 302 and r.headers["location"] == "/", r.text
    return client


def _csrf(client: httpx.Client) -> dict[str, str]:
    return {"X-CSRFToken": client.cookies["csrftoken"]}


@pytest.mark.parametrize("broker", ["memory", "redis"])
def test_messages_are_saved_then_published_and_bad_input_is_refused(
    chat_factory: ChatFactory, broker: str
) -> None:
    """With Redis, Django publishes and issues tickets straight into the hub's Redis: the
    hub's history shows the publication all the same."""
    chat = chat_factory(postgres=False, redis=broker == "redis")
    assert f"broker: {broker}, database: sqlite3" in chat.output()
    with _signed_up(chat, "dave") as dave:
        room = dave.get("/rooms/kitchen/")
        assert room.status_code == 200
        # The ticket RealtimeTicketMiddleware put in the page.
        assert re.search(r'id="chat-ticket" type="application/json">"tkt_', room.text), room.text
        assert '/static/clarion.js"></script>' in room.text  # {% clarion_script %}

        before = chat.hub_api("history", {"channel": "room:kitchen", "limit": 0})
        r = dave.post("/rooms/kitchen/messages/", json={"text": "  soup is ready  "},
                      headers=_csrf(dave))
        assert r.status_code == 201, r.text
        message = r.json()
        assert message["text"] == "soup is ready" and message["user"] == "dave"
        history = chat.hub_api("history", {"channel": "room:kitchen", "limit": 10})
        assert [p["data"] for p in history["publications"]] == [message]
        assert history["offset"] == before["offset"] + 1

        listed = dave.get("/rooms/kitchen/messages/", params={"after": 0}).json()
        assert listed["messages"] == [message]
        assert dave.get("/rooms/kitchen/messages/",
                        params={"after": message["id"]}).json()["messages"] == []

        ticket = dave.post("/ticket/", headers=_csrf(dave))
        assert ticket.status_code == 200 and ticket.json()["message"].startswith("tkt_")
        assert dave.get("/rooms/kitchen/presence/").json() == {"clients": {}}

        # Bad input: a clear answer, nothing saved, nothing published.
        post = dave.post
        assert post("/rooms/kitchen/messages/", json={"text": "   "},
                    headers=_csrf(dave)).status_code == 422
        assert post("/rooms/kitchen/messages/", json={"text": 5},
                    headers=_csrf(dave)).status_code == 422
        too_long = post("/rooms/kitchen/messages/", json={"text": "x" * 1001},
                        headers=_csrf(dave))
        assert too_long.status_code == 422 and "1000" in too_long.json()["error"]
        assert post("/rooms/kitchen/messages/", json={"text": "x" * 1000},
                    headers=_csrf(dave)).status_code == 201
        assert post("/rooms/kitchen/messages/", content=b"{not json",
                    headers=_csrf(dave)).status_code == 400
        assert post("/rooms/kitchen/messages/", json={"text": "no csrf"}).status_code == 403
        assert post("/rooms/nowhere/messages/", json={"text": "hi"},
                    headers=_csrf(dave)).status_code == 404
        assert dave.get("/rooms/kitchen/messages/", params={"after": "x"}).status_code == 400
        assert dave.get("/rooms/" + "a" * 51 + "/").status_code == 404
        assert dave.get("/rooms/not%20a%20slug/").status_code == 404
        history = chat.hub_api("history", {"channel": "room:kitchen", "limit": 10})
        assert len(history["publications"]) == 2

    anonymous = httpx.Client(base_url=chat.url, timeout=10)
    with anonymous:
        assert anonymous.get("/rooms/kitchen/messages/").status_code == 401
        r = anonymous.get("/rooms/kitchen/")
        assert r.status_code == 302 and r.headers["location"].startswith("/login/")
    assert "Traceback" not in chat.output(), chat.output()


@pytest.mark.browser
def test_a_publication_that_is_no_chat_message_is_ignored_by_the_page(
    browser: Any, chat_factory: ChatFactory  # noqa: F811
) -> None:
    """A notice published to a room through the hub's server API has no integer id: the page
    shows nothing for it and its next catch-up still asks for the right messages (it asked
    ?after=NaN, which the view refuses, so nothing missed was ever shown)."""
    chat = chat_factory(postgres=True)
    bob_ctx, bob = sign_up_and_enter(browser, chat, "bob", "porch")
    try:
        with _signed_up(chat, "alice") as alice:
            first = alice.post("/rooms/porch/messages/", json={"text": "first"},
                               headers=_csrf(alice))
            assert first.status_code == 201, first.text
            wait_shown(bob, ["first"])
            chat.hub_api("publish", {"channel": "room:porch", "data": {"notice": "maintenance"}})
            chat.hub_api("publish", {"channel": "room:porch", "data": "plain text"})
            second = alice.post("/rooms/porch/messages/", json={"text": "second"},
                                headers=_csrf(alice))
            assert second.status_code == 201, second.text
            wait_shown(bob, ["second"])  # after the notices: they were handled, not shown
            assert shown(bob) == [("alice", "first"), ("alice", "second")]

            with offline(bob_ctx, bob):
                for text in ("third", "fourth"):
                    r = alice.post("/rooms/porch/messages/", json={"text": text},
                                   headers=_csrf(alice))
                    assert r.status_code == 201, r.text
                chat.hub_api("history_remove", {"channel": "room:porch"})
            wait_shown(bob, ["third", "fourth"])
        assert arrivals(bob)["third"] == arrivals(bob)["fourth"] == "database"
        assert catch_ups(bob) == 1
        assert shown(bob) == [("alice", t) for t in ("first", "second", "third", "fourth")]
    finally:
        bob_ctx.close()
    assert "Traceback" not in chat.output(), chat.output()
