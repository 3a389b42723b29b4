"""The npm `centrifuge` client (and the hub's own clarion.js) under Node, against a real hub.

tests/js/node_client.mjs is a scripted client: it prints a JSON line for everything it sees
and takes commands (presence, history, publish, drop, online, exit) as JSON lines on stdin.
Publications come from Python through the `cent` HTTP API client.
Needs Node and `npm ci` in tests/js (scripts/install-test-deps); skipped without them unless
CI is set, where that is a failure.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cent import Client, HistoryRequest, PresenceRequest, PublishRequest

from conftest import API_KEY, CHAT_NAMESPACE, HMAC_SECRET, Hub, HubFactory

pytestmark = pytest.mark.node

JS_DIR = Path(__file__).parent / "js"
SCRIPT = JS_DIR / "node_client.mjs"
LIBS = ["centrifuge", "clarion"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _require_node() -> str:
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "node is not installed"
    elif not (JS_DIR / "node_modules" / "centrifuge").is_dir() or not (
        JS_DIR / "node_modules" / "ws"
    ).is_dir():
        problem = "tests/js/node_modules is missing (run scripts/install-test-deps)"
    if problem:
        if _in_ci():
            pytest.fail(f"{problem}; CI must run scripts/install-test-deps")
        pytest.skip(problem)
    assert node is not None
    return node


def connection_token(user: str, ttl: int = 3600) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + ttl}, HMAC_SECRET, algorithm="HS256")


Event = dict[str, Any]


class NodeClient:
    """One node_client.mjs process; events are read on a thread into a queue."""

    def __init__(self, node: str, hub: Hub, lib: str, user: str, channel: str) -> None:
        self.lib = lib
        self.user = user
        self.events: list[Event] = []
        self._queue: queue.Queue[Event | None] = queue.Queue()
        cmd = [node, str(SCRIPT), "--lib", lib, "--url", hub.ws_url,
               "--token", connection_token(user), "--channel", channel]
        self.proc = subprocess.Popen(
            cmd, cwd=JS_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, bufsize=1,
        )
        self._stderr: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "raw", "line": line}
            self._queue.put(event)
        self._queue.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def describe(self) -> str:
        seen = "\n".join(json.dumps(e) for e in self.events[-60:])
        return f"[{self.lib} as {self.user}] events seen:\n{seen}\nstderr:\n{''.join(self._stderr)}"

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 10.0,
                 what: str = "event") -> Event:
        deadline = time.monotonic() + timeout
        # Events already seen count too.
        for event in self.events:
            if predicate(event) and not event.get("_consumed"):
                event["_consumed"] = True
                return event
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}\n{self.describe()}")
            try:
                event = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if event is None:
                raise AssertionError(f"node exited while waiting for {what}\n{self.describe()}")
            self.events.append(event)
            if event.get("event") in ("error", "sub_error"):
                raise AssertionError(f"client reported an error: {event}\n{self.describe()}")
            if predicate(event):
                event["_consumed"] = True
                return event

    def wait_event(self, name: str, timeout: float = 10.0, **fields: Any) -> Event:
        def match(e: Event) -> bool:
            return e.get("event") == name and all(e.get(k) == v for k, v in fields.items())

        return self.wait_for(match, timeout, what=f"{name} {fields or ''}")

    def publications(self) -> list[Event]:
        self.drain()
        return [e for e in self.events if e.get("event") == "publication"]

    def drain(self, settle: float = 0.0) -> None:
        deadline = time.monotonic() + settle
        while True:
            try:
                event = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            if event is None:
                return
            self.events.append(event)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="exit")
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def node() -> str:
    return _require_node()


@pytest.fixture
def clients(node: str) -> Iterator[Callable[..., NodeClient]]:
    started: list[NodeClient] = []

    def start(hub: Hub, lib: str, user: str, channel: str) -> NodeClient:
        client = NodeClient(node, hub, lib, user, channel)
        started.append(client)
        return client

    yield start
    for client in started:
        client.close()


@pytest.fixture
def cent(hub: Hub) -> Iterator[Client]:
    client = Client(f"{hub.url}/api", API_KEY)
    yield client
    client.close()


def test_clarion_js_protocol_edges(node: str) -> None:
    """tests/js/clarion_unit.test.mjs: clarion.js against a scripted fake server (no hub)."""
    result = subprocess.run(
        [node, "--test", "clarion_unit.test.mjs"], cwd=JS_DIR, capture_output=True, text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


def new_channel() -> str:
    return f"chat:room-{uuid.uuid4().hex[:8]}"


def pub_texts(client: NodeClient) -> list[Any]:
    return [e["data"].get("text") for e in client.publications() if isinstance(e["data"], dict)]


@pytest.mark.parametrize("lib", LIBS)
def test_receives_publications_from_the_server_api(
    hub: Hub, clients: Callable[..., NodeClient], cent: Client, lib: str
) -> None:
    channel = new_channel()
    alice = clients(hub, lib, "alice", channel)
    connected = alice.wait_event("connected")
    assert connected["client"]
    subscribed = alice.wait_event("subscribed")
    assert subscribed["channel"] == channel
    assert subscribed["recoverable"] is True  # force_recovery in the chat namespace

    results = [cent.publish(PublishRequest(channel=channel, data={"text": f"m{i}"}))
               for i in range(3)]
    for i in range(3):
        alice.wait_for(lambda e, i=i: e.get("event") == "publication"
                       and e["data"] == {"text": f"m{i}"}, what=f"publication m{i}")
    pubs = alice.publications()
    assert [p["data"]["text"] for p in pubs] == ["m0", "m1", "m2"]
    assert [p["offset"] for p in pubs] == [r.offset for r in results]
    assert all(p["channel"] == channel for p in pubs)
    assert "info" not in pubs[0] or pubs[0]["info"] is None  # server API publications carry no info


@pytest.mark.parametrize("lib", LIBS)
def test_presence_join_leave_history_and_client_publish(
    hub: Hub, clients: Callable[..., NodeClient], cent: Client, lib: str
) -> None:
    channel = new_channel()
    for i in range(3):
        cent.publish(PublishRequest(channel=channel, data={"text": f"early{i}"}))

    alice = clients(hub, lib, "alice", channel)
    alice.wait_event("subscribed")
    bob = clients(hub, lib, "bob", channel)
    bob.wait_event("subscribed")

    join = alice.wait_for(lambda e: e.get("event") == "join" and e["info"].get("user") == "bob",
                          what="bob's join")
    assert join["channel"] == channel and join["info"]["client"]

    alice.send(cmd="presence")
    presence = alice.wait_event("presence")
    users = sorted(info["user"] for info in presence["clients"].values())
    assert users == ["alice", "bob"]
    for client_id, info in presence["clients"].items():
        assert info["client"] == client_id

    # The server API sees the same presence.
    api_presence = cent.presence(PresenceRequest(channel=channel))
    assert sorted(i.user for i in api_presence.presence.values()) == ["alice", "bob"]

    alice.send(cmd="history", limit=2)
    history = alice.wait_event("history")
    assert [p["data"]["text"] for p in history["publications"]] == ["early0", "early1"]
    assert [p["offset"] for p in history["publications"]] == [1, 2]
    assert history["offset"] == 3 and history["epoch"]
    alice.send(cmd="history", limit=2, reverse=True)
    latest = alice.wait_event("history")
    assert [p["data"]["text"] for p in latest["publications"]] == ["early2", "early1"]

    # A client-side publish reaches the other subscriber with the publisher's info.
    bob.send(cmd="publish", data={"text": "hello from bob"})
    bob.wait_event("published")
    got = alice.wait_for(lambda e: e.get("event") == "publication"
                         and e["data"] == {"text": "hello from bob"}, what="bob's message")
    assert got["info"]["user"] == "bob"
    assert got["offset"] == 4
    # ... and the publisher gets its own publication too.
    bob.wait_for(lambda e: e.get("event") == "publication"
                 and e["data"] == {"text": "hello from bob"}, what="own message")
    api_history = cent.history(HistoryRequest(channel=channel, limit=10))
    assert [p.data["text"] for p in api_history.publications][-1] == "hello from bob"

    bob.close()
    leave = alice.wait_for(lambda e: e.get("event") == "leave" and e["info"].get("user") == "bob",
                           what="bob's leave")
    assert leave["info"]["client"] == join["info"]["client"]


@pytest.mark.parametrize("lib", LIBS)
def test_recovers_publications_missed_during_a_network_drop(
    hub: Hub, clients: Callable[..., NodeClient], cent: Client, lib: str
) -> None:
    channel = new_channel()
    alice = clients(hub, lib, "alice", channel)
    first = alice.wait_event("subscribed")
    assert first["wasRecovering"] is False

    cent.publish(PublishRequest(channel=channel, data={"text": "before"}))
    alice.wait_for(lambda e: e.get("event") == "publication"
                   and e["data"] == {"text": "before"}, what="'before'")

    alice.send(cmd="drop")
    alice.wait_event("dropped")
    alice.wait_for(lambda e: e.get("event") in ("connecting", "subscribing"),
                   what="the drop noticed")
    # The hub must notice the dead socket too; publish while the client is away.
    missed = [f"missed{i}" for i in range(5)]
    for text in missed:
        cent.publish(PublishRequest(channel=channel, data={"text": text}))
    time.sleep(0.5)  # a few failed reconnect attempts
    alice.send(cmd="online")

    resubscribed = alice.wait_for(lambda e: e.get("event") == "subscribed" and e is not first,
                                  timeout=15, what="resubscribe after the drop")
    assert resubscribed["wasRecovering"] is True, resubscribed
    assert resubscribed["recovered"] is True, resubscribed
    for text in missed:
        alice.wait_for(lambda e, t=text: e.get("event") == "publication"
                       and e["data"] == {"text": t}, what=f"recovered {text}")

    cent.publish(PublishRequest(channel=channel, data={"text": "after"}))
    alice.wait_for(lambda e: e.get("event") == "publication"
                   and e["data"] == {"text": "after"}, what="'after'")
    alice.drain(settle=0.3)
    texts = pub_texts(alice)
    assert texts == ["before", *missed, "after"], texts  # each exactly once, in order
    offsets = [p["offset"] for p in alice.publications()]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert not [e for e in alice.events if e.get("event") == "unrecoverable"]


@pytest.mark.parametrize("lib", LIBS)
def test_answers_server_pings_and_stays_connected(
    hub_factory: HubFactory, clients: Callable[..., NodeClient], lib: str
) -> None:
    """With pong required, a client that did not answer `{}` pings would be dropped."""
    hub = hub_factory("ping_interval = 1\npong_timeout = 1\n" + CHAT_NAMESPACE)
    channel = new_channel()
    alice = clients(hub, lib, "alice", channel)
    alice.wait_event("subscribed")
    time.sleep(4.5)
    alice.drain()
    trouble = [e for e in alice.events
               if e.get("event") in ("connecting", "disconnected", "subscribing")
               and e.get("reason") not in ("connect called", "subscribe called")]
    assert not trouble, alice.describe()
    with Client(f"{hub.url}/api", API_KEY) as cent:
        cent.publish(PublishRequest(channel=channel, data={"text": "still here"}))
    alice.wait_for(lambda e: e.get("event") == "publication"
                   and e["data"] == {"text": "still here"}, what="publication after pings")
