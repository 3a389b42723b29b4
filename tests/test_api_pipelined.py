"""``POST /api/publish`` requests pipelined on one connection are published together (one
``publish_many``, one broker round trip) and each still gets the answer it would get alone,
in order, on the memory broker and on Redis."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from typing import Any

import pytest
from tests.netproxy import NetProxy
from tests.test_scaleout_nodes import node_config, redis_available

from conftest import API_KEY, CHAT_NAMESPACE, Hub, HubFactory

BROKERS = ["memory", "redis"]


def request(body: bytes, *, key: str = API_KEY, path: str = "/api/publish",
            close: bool = False) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: hub\r\nX-API-Key: {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n")
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


def publish(channel: str, data: Any) -> bytes:
    return json.dumps({"channel": channel, "data": data}).encode()


def exchange(hub: Hub, payload: bytes, count: int) -> list[tuple[int, dict[str, str], Any]]:
    """Send ``payload`` in one write and read ``count`` answers: (status, headers, JSON)."""
    with socket.create_connection(("127.0.0.1", hub.port), timeout=15) as sock:
        sock.sendall(payload)
        buf = b""
        answers: list[tuple[int, dict[str, str], Any]] = []
        while len(answers) < count:
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                assert chunk, f"connection closed after {len(answers)} answers: {buf!r}"
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
            length = int(headers["content-length"])
            while len(buf) < length:
                chunk = sock.recv(65536)
                assert chunk, "connection closed inside a body"
                buf += chunk
            body, buf = buf[:length], buf[length:]
            answers.append((int(status_line.split()[1]), headers, json.loads(body)))
        return answers


@pytest.fixture(params=BROKERS)
def pipelined_hub(request: pytest.FixtureRequest, hub_factory: HubFactory) -> Hub:
    if request.param == "memory":
        return hub_factory(CHAT_NAMESPACE)
    if not redis_available():
        pytest.fail("no Redis at 127.0.0.1:6379")  # the Redis half is not optional
    return hub_factory(node_config(f"t{uuid.uuid4().hex[:12]}"))


def test_a_pipelined_run_gets_each_request_its_own_answer_in_order(pipelined_hub: Hub) -> None:
    channel = f"chat:{uuid.uuid4().hex[:10]}"
    batch = [
        request(publish(channel, {"n": 1})),
        request(publish(channel, {"n": 2})),
        request(b'{"channel": '),  # broken JSON
        request(publish(channel, {"n": 3})),
        request(publish(channel, {"n": 4}), key="wrong"),
        request(publish("nosuchns:x", {"n": 5})),  # a namespace no rule defines
        request(json.dumps({"channel": channel}).encode()),  # no data
        request(b'{"channel": "' + channel.encode() + b'", "data": {"n": 6}, "extra": 1}'),
        request(publish(channel, {"n": 7})),
        request(publish(channel, {"n": 8}), close=True),
    ]
    answers = exchange(pipelined_hub, b"".join(batch), len(batch))
    statuses = [status for status, _, _ in answers]
    assert statuses == [200, 200, 400, 200, 401, 200, 200, 422, 200, 200]
    offsets = [body["result"]["offset"] for status, _, body in answers
               if status == 200 and "result" in body]
    assert offsets == [1, 2, 3, 4, 5]
    epochs = {body["result"]["epoch"] for _, _, body in answers if "result" in body}
    assert len(epochs) == 1
    assert answers[5][2]["error"]["code"] == 102  # unknown channel: Centrifugo's code
    assert answers[6][2]["error"] == {"code": 107, "message": "bad request: data is required"}
    assert answers[7][2]["error"]["fields"][0]["field"] == "extra"
    assert answers[-1][1]["connection"] == "close"
    assert "connection" not in answers[0][1]

    history = pipelined_hub.api("history", {"channel": channel, "limit": -1}).json()["result"]
    assert [p["data"]["n"] for p in history["publications"]] == [1, 2, 3, 7, 8]


def test_a_run_ends_at_a_request_of_another_kind(pipelined_hub: Hub) -> None:
    # history between publishes sees exactly the publications before it: runs never reorder.
    channel = f"chat:{uuid.uuid4().hex[:10]}"
    batch = [
        request(publish(channel, {"n": 1})),
        request(publish(channel, {"n": 2})),
        request(json.dumps({"channel": channel, "limit": -1}).encode(), path="/api/history"),
        request(publish(channel, {"n": 3})),
        request(json.dumps({"channel": channel, "limit": -1}).encode(), path="/api/history"),
    ]
    answers = exchange(pipelined_hub, b"".join(batch), len(batch))
    first, second = answers[2][2]["result"], answers[4][2]["result"]
    assert [p["data"]["n"] for p in first["publications"]] == [1, 2]
    assert [p["data"]["n"] for p in second["publications"]] == [1, 2, 3]


async def test_a_broker_that_is_away_fails_every_publish_of_the_run_clearly(
        hub_factory: HubFactory) -> None:
    # The hub's link to Redis is cut: every publication of the run gets the 503 a single
    # publish gets, with Retry-After, and the connection goes on.
    if not redis_available():
        pytest.fail("no Redis at 127.0.0.1:6379")
    link = await NetProxy(6379).start()
    try:
        # Started from a thread: the proxy runs on this loop, which must not block.
        hub = await asyncio.to_thread(
            hub_factory, f'broker = "redis://127.0.0.1:{link.port}/0"\n'
                         f'[redis]\nprefix = "t{uuid.uuid4().hex[:12]}"\n' + CHAT_NAMESPACE)
        link.cut()
        channel = f"chat:{uuid.uuid4().hex[:10]}"
        batch = [request(publish(channel, {"n": n})) for n in range(4)]
        answers = await asyncio.to_thread(exchange, hub, b"".join(batch), len(batch))
    finally:
        await link.close()
    assert [status for status, _, _ in answers] == [503] * 4
    for _, headers, body in answers:
        assert headers["retry-after"] == "1"
        assert body["error"]["code"] == 100
