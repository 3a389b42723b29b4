"""The demo chat page in headless Chromium against ``clarion demo --broker redis://… --workers 2``
(issue 10, parts 5 and 3): two browser windows on different workers chat and see each other's
presence, and when Redis comes back empty the page says it reloaded history and keeps working.

The hub is the real CLI (a supervisor and two worker processes on one port). Which worker a
browser's WebSocket lands on is the kernel's choice, and the connect reply does not name the
node, so ``/metrics`` (WebSockets per worker) tells, and a window that landed next to the other
is closed and opened again. The browser fixture and the page helpers are tests/test_browser.py's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import Hub, free_port, in_ci
from tests.test_browser import (  # noqa: F401 - browser is the Chromium fixture
    SCREENSHOT_DIR,
    browser,
    join_demo,
    message_texts,
    send,
    wait_messages,
    wait_presence,
)
from tests.test_scaleout_redis_failure import REDIS_OPTIONS, REDIS_SERVER, RedisServer
from tests.test_workers import REDIS_URL as SHARED_REDIS
from tests.test_workers import (  # noqa: F401 - tag is a fixture
    settled,
    start_workers,
    stop_workers,
    tag,
    websockets_per_worker,
)

pytestmark = pytest.mark.browser

CHANNEL = "chat:lobby"  # the page's one channel; a key prefix of the test's own keeps runs apart
T = 30.0  # a bound for things that must happen, never a measurement


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Callable[[str, str], Hub]]:
    """``start(broker, redis_table) -> Hub``: ``clarion demo --broker BROKER --workers 2`` on
    a free port, once both workers are ready; stopped (SIGTERM, then SIGKILL) at teardown."""
    started: list[Hub] = []

    def start(broker: str, redis_table: str) -> Hub:
        hub = start_workers(tmp_path, "demo", f"\n[redis]\n{redis_table}", broker)
        started.append(hub)
        return hub

    yield start
    stop_workers(started)


def windows_on_both_workers(browser: Any, hub: Hub,  # noqa: F811 - the fixture's value
                            names: tuple[str, str]) -> list[tuple[Any, Any]]:
    """A joined demo window per name, the first on one worker and the second on the other."""
    first = join_demo(browser, hub, names[0])
    counts = settled(hub, 1, T)
    taken = next(w for w, n in counts.items() if n == 1)
    for _ in range(32):
        context, page = join_demo(browser, hub, names[1])
        counts = settled(hub, 2, T)
        if counts[taken] == 1:
            return [first, (context, page)]
        context.close()
        settled(hub, 1, T)
    first[0].close()
    raise AssertionError("no second window reached the other worker in 32 tries")


def notices(page: Any) -> list[str]:
    return page.eval_on_selector_all(  # type: ignore[no-any-return]
        "#messages .notice.warn", "els => els.map(e => e.textContent)")


# -- two windows, two workers, one Redis -------------------------------------------------------


def test_two_windows_on_two_workers_chat_and_see_each_other(
        browser: Any, demo: Callable[[str, str], Hub], tag: str) -> None:  # noqa: F811
    hub = demo(SHARED_REDIS, f'prefix = "{tag}"\n')
    (ada_ctx, ada), (bob_ctx, bob) = windows_on_both_workers(browser, hub, ("ada", "bob"))
    try:
        assert sorted(websockets_per_worker(hub).values()) == [1.0, 1.0]
        wait_presence(ada, ["ada", "bob"])
        wait_presence(bob, ["ada", "bob"])

        send(ada, "hello from one worker")
        wait_messages(bob, ["hello from one worker"])
        send(bob, "and hello from the other")
        wait_messages(ada, ["hello from one worker", "and hello from the other"])
        want = ["hello from one worker", "and hello from the other"]
        assert message_texts(ada) == message_texts(bob) == want
        authors = ada.eval_on_selector_all(
            "#messages .message", "els => els.map(e => e.querySelector('.author').textContent)")
        assert authors == ["ada", "bob"]

        # A window closed on one worker leaves the other's list.
        bob_ctx.close()
        wait_presence(ada, ["ada"])
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        ada.screenshot(path=str(SCREENSHOT_DIR / "clarion-demo-workers-ada.png"))
    finally:
        ada_ctx.close()
        bob_ctx.close()


# -- Redis comes back empty --------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, without persistence: after SIGKILL and a restart on
    the same port it is empty, as a Redis restarted without AOF or RDB is."""
    if REDIS_SERVER is None:
        why = "redis-server is not installed"
        if in_ci():
            pytest.fail(f"{why}; CI must run scripts/install-test-deps")
        pytest.skip(why)
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(free_port(), directory, persistent=False)
    server.start()
    yield server
    server.stop()


def test_redis_back_empty_the_page_reloads_history_and_chats_on(
        browser: Any, demo: Callable[[str, str], Hub],  # noqa: F811
        own_redis: RedisServer) -> None:
    hub = demo(own_redis.url, REDIS_OPTIONS)
    (ada_ctx, ada), (bob_ctx, bob) = windows_on_both_workers(browser, hub, ("ada", "bob"))
    try:
        wait_presence(ada, ["ada", "bob"])
        wait_presence(bob, ["ada", "bob"])
        before = ["before the restart", "me too"]
        send(ada, before[0])
        send(bob, before[1])
        wait_messages(ada, before)
        wait_messages(bob, before)
        epochs = {page.evaluate("window.clarionDemo.epoch") for page in (ada, bob)}
        assert len(epochs) == 1 and None not in epochs, epochs

        own_redis.kill()
        own_redis.start()  # the same port, nothing in it: the channel's stream is gone

        # Each window is told its position is gone, says so, and shows the new stream's history
        # (empty) instead of messages whose offsets mean nothing any more.
        for page in (ada, bob):
            try:
                page.wait_for_function(
                    "document.querySelectorAll('#messages .notice.warn').length > 0",
                    timeout=T * 1000)
            except Exception as exc:
                raise AssertionError(f"no reload notice; messages {message_texts(page)}, "
                                     f"log:\n{hub.output()}") from exc
            page.wait_for_function("window.clarionDemo.historyLoaded === true", timeout=T * 1000)
            assert page.evaluate("window.clarionDemo.epoch") not in epochs
            assert message_texts(page) == []
        assert notices(ada) == notices(bob) == ["The chat history was reset"]

        # The connections stayed up on their workers, and the chat goes on across them.
        for page in (ada, bob):
            page.wait_for_selector("#status[data-state='connected']", timeout=T * 1000)
        after = ["after the restart", "still here"]
        send(ada, after[0])
        wait_messages(bob, after[:1])
        send(bob, after[1])
        wait_messages(ada, after)
        wait_messages(bob, after)
        assert message_texts(ada) == message_texts(bob) == after
        # Presence was in the lost Redis too; each worker writes its own clients back.
        wait_presence(ada, ["ada", "bob"])
        wait_presence(bob, ["ada", "bob"])
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        ada.screenshot(path=str(SCREENSHOT_DIR / "clarion-demo-redis-reset.png"))
    finally:
        ada_ctx.close()
        bob_ctx.close()
