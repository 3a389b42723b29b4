"""The server API (`POST /api/<method>`) against a real hub: Centrifugo's shapes through httpx
and the official `cent` client, authentication, request validation, tickets, the OpenAPI
document, /docs, /health, /metrics, and the `clarion publish` / `clarion serve` command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cent import (
    BatchRequest,
    BroadcastRequest,
    ChannelsRequest,
    Client,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
)
from cent.exceptions import CentApiResponseError, CentUnauthorizedError
from websockets.sync.client import ClientConnection, connect

from conftest import API_KEY, CHAT_NAMESPACE, HMAC_SECRET, Hub, HubFactory, free_port

API_METHODS = {"publish", "event", "broadcast", "subscribe", "unsubscribe", "disconnect", "refresh",
               "presence", "presence_stats", "history", "history_remove", "channels", "info",
               "ticket", "batch"}

# Channels without a namespace: no history, nothing allowed to clients.
PLAIN = "plainchannel"


def unique_channel(prefix: str = "chat") -> str:
    return f"{prefix}:{uuid.uuid4().hex[:12]}"


def cent_client(hub: Hub, key: str = API_KEY) -> Client:
    return Client(f"{hub.url}/api", key, timeout=10)


def post(hub: Hub, method: str, body: Any = None, *, content: bytes | None = None,
         headers: dict[str, str] | None = None) -> httpx.Response:
    hdrs = {"X-API-Key": API_KEY} if headers is None else headers
    if content is not None:
        return httpx.post(f"{hub.url}/api/{method}", content=content,
                          headers={"Content-Type": "application/json", **hdrs},
                          timeout=10, trust_env=False)
    return httpx.post(f"{hub.url}/api/{method}", json=body, headers=hdrs, timeout=10,
                      trust_env=False)


def connection_token(user: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 3600}, HMAC_SECRET,
                      algorithm="HS256")


@contextmanager
def subscriber(hub: Hub, channel: str, user: str = "bob") -> Iterator[ClientConnection]:
    """A real WebSocket client connected as ``user`` and subscribed to ``channel``."""
    with connect(hub.ws_url, proxy=None, open_timeout=5, close_timeout=1) as ws:
        ws.send(json.dumps({"id": 1, "connect": {"token": connection_token(user)}}))
        assert "connect" in read_reply(ws, 1)
        ws.send(json.dumps({"id": 2, "subscribe": {"channel": channel}}))
        assert "subscribe" in read_reply(ws, 2)
        yield ws


def read_messages(ws: ClientConnection, timeout: float = 4.0) -> Iterator[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        frame = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        for line in str(frame).split("\n"):
            if line.strip():
                yield json.loads(line)


def read_reply(ws: ClientConnection, cmd_id: int) -> dict[str, Any]:
    for msg in read_messages(ws):
        if msg.get("id") == cmd_id:
            return msg
    raise AssertionError("unreachable")


def read_pub(ws: ClientConnection, channel: str) -> dict[str, Any]:
    for msg in read_messages(ws):
        push = msg.get("push", {})
        if push.get("channel") == channel and "pub" in push:
            return push["pub"]  # type: ignore[no-any-return]
    raise AssertionError("unreachable")


# -- the methods, in Centrifugo's shapes ----------------------------------------------------------


def test_publish_returns_stream_position_and_reaches_subscriber(hub: Hub) -> None:
    channel = unique_channel()
    with subscriber(hub, channel) as ws:
        resp = post(hub, "publish", {"channel": channel, "data": {"text": "hi"}})
        assert resp.status_code == 200
        result = resp.json()["result"]
        assert result["offset"] == 1 and isinstance(result["epoch"], str) and result["epoch"]
        pub = read_pub(ws, channel)
        assert pub["data"] == {"text": "hi"} and pub["offset"] == 1
    second = cent_client(hub).publish(PublishRequest(channel=channel, data=["second"]))
    assert second.offset == 2 and second.epoch == result["epoch"]


def test_publish_without_history_has_empty_result(hub: Hub) -> None:
    resp = post(hub, "publish", {"channel": PLAIN, "data": 1})
    assert resp.json() == {"result": {}}


def test_broadcast(hub: Hub) -> None:
    a, b = unique_channel(), unique_channel()
    with subscriber(hub, a) as wa, subscriber(hub, b) as wb:
        result = cent_client(hub).broadcast(BroadcastRequest(channels=[a, b], data={"n": 1}))
        assert [r.result.offset for r in result.responses if r.result] == [1, 1]
        assert read_pub(wa, a)["data"] == {"n": 1}
        assert read_pub(wb, b)["data"] == {"n": 1}
    # One bad channel fails alone, in its own slot.
    raw = post(hub, "broadcast", {"channels": [a, "nowhere:x"], "data": 2}).json()
    responses = raw["result"]["responses"]
    assert responses[0]["result"]["offset"] == 2
    assert responses[1]["error"]["code"] == 102


def test_history_and_history_remove(hub: Hub) -> None:
    client = cent_client(hub)
    channel = unique_channel()
    for i in range(3):
        client.publish(PublishRequest(channel=channel, data={"i": i}))
    hist = client.history(HistoryRequest(channel=channel, limit=10))
    assert [p.data for p in hist.publications] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert [p.offset for p in hist.publications] == [1, 2, 3]
    assert hist.offset == 3 and hist.epoch
    # Without a limit: the position only.
    raw = post(hub, "history", {"channel": channel}).json()["result"]
    assert raw.get("publications", []) == [] and raw["offset"] == 3
    newest = client.history(HistoryRequest(channel=channel, limit=1, reverse=True))
    assert [p.offset for p in newest.publications] == [3]
    client.history_remove(HistoryRemoveRequest(channel=channel))
    after = client.history(HistoryRequest(channel=channel, limit=10))
    assert after.publications == []
    assert after.offset == 3 and after.epoch == hist.epoch  # the position survives


def test_history_where_not_kept_is_108(hub: Hub) -> None:
    answer = post(hub, "history", {"channel": PLAIN, "limit": 5}).json()
    assert answer["error"]["code"] == 108


def test_presence_presence_stats_channels_info(hub: Hub) -> None:
    client = cent_client(hub)
    channel = unique_channel()
    with subscriber(hub, channel, user="bob"):
        presence = client.presence(PresenceRequest(channel=channel)).presence
        assert len(presence) == 1
        ((client_id, info),) = presence.items()
        assert info.user == "bob" and info.client == client_id
        stats = client.presence_stats(PresenceStatsRequest(channel=channel))
        assert (stats.num_clients, stats.num_users) == (1, 1)
        channels = client.channels(ChannelsRequest(pattern="chat:*")).channels
        assert channels[channel].num_clients == 1
        assert channel not in client.channels(ChannelsRequest(pattern="other:*")).channels
        nodes = client.info(InfoRequest()).nodes
        assert len(nodes) == 1
        node = nodes[0]
        assert node.uid and node.name and node.version
        assert node.num_clients >= 1 and node.num_users >= 1
        assert node.num_channels >= 1 and node.num_subs >= 1
    raw = post(hub, "presence_stats", {"channel": channel}).json()
    assert set(raw) == {"result"} and set(raw["result"]) <= {"num_clients", "num_users"}


def test_batch(hub: Hub) -> None:
    channel = unique_channel()
    client = cent_client(hub)
    result = client.batch(BatchRequest(requests=[
        PublishRequest(channel=channel, data={"a": 1}),
        PublishRequest(channel=channel, data={"a": 2}),
        HistoryRequest(channel=channel, limit=10),
    ]))
    assert len(result.replies) == 3
    assert [p.data for p in result.replies[2].publications] == [{"a": 1}, {"a": 2}]
    raw = post(hub, "batch", {"commands": [
        {"publish": {"channel": channel, "data": 3}},
        {"publish": {"channel": "nowhere:x", "data": 3}},
        {"no_such_method": {}},
        {"presence_stats": {"channel": channel}},
    ]}).json()
    replies = raw["replies"]
    assert replies[0] == {"publish": {"offset": 3, "epoch": replies[0]["publish"]["epoch"]}}
    assert replies[1]["error"]["code"] == 102
    assert replies[2]["error"]["code"] == 104
    assert replies[3] == {"presence_stats": {"num_clients": 0, "num_users": 0}}


def test_unknown_namespace_is_200_with_error_102(hub: Hub) -> None:
    resp = post(hub, "publish", {"channel": "nowhere:room", "data": {}})
    assert resp.status_code == 200
    assert resp.json()["error"] == {"code": 102, "message": "unknown channel"}
    with pytest.raises(CentApiResponseError) as info:
        cent_client(hub).publish(PublishRequest(channel="nowhere:room", data={}))
    assert info.value.code == 102


def test_idempotency_key_publishes_once(hub: Hub) -> None:
    channel = unique_channel()
    body = {"channel": channel, "data": {"order": 7}, "idempotency_key": "order-7"}
    first = post(hub, "publish", body).json()["result"]
    second = post(hub, "publish", body).json()["result"]
    assert second == first
    hist = cent_client(hub).history(HistoryRequest(channel=channel, limit=10))
    assert [p.data for p in hist.publications] == [{"order": 7}]
    # A different key is a different publication.
    post(hub, "publish", {**body, "idempotency_key": "order-8"})
    hist = cent_client(hub).history(HistoryRequest(channel=channel, limit=10))
    assert len(hist.publications) == 2


# -- tickets -------------------------------------------------------------------------------------


def test_ticket_issued(hub: Hub) -> None:
    answer = post(hub, "ticket", {"user": "42", "info": {"name": "Ada"}}).json()
    result = answer["result"]
    assert result["ticket"].startswith("tkt_") and len(result["ticket"]) > 20
    assert result["expires_in"] == 10
    short = post(hub, "ticket", {"user": "42", "ttl": 3}).json()["result"]
    assert short["expires_in"] == 3 and short["ticket"] != result["ticket"]


@pytest.mark.parametrize("ttl", [301, -1])
def test_ticket_ttl_out_of_range_is_107(hub: Hub, ttl: int) -> None:
    resp = post(hub, "ticket", {"user": "42", "ttl": ttl})
    assert resp.status_code == 200
    assert resp.json()["error"]["code"] == 107


def test_ticket_max_ttl_is_configurable(hub_factory: HubFactory) -> None:
    hub = hub_factory('ticket_max_ttl = "5s"\n' + CHAT_NAMESPACE)
    assert post(hub, "ticket", {"user": "1", "ttl": 5}).json()["result"]["expires_in"] == 5
    assert post(hub, "ticket", {"user": "1", "ttl": 6}).json()["error"]["code"] == 107


# -- authentication ------------------------------------------------------------------------------


def test_missing_api_key_is_401(hub: Hub) -> None:
    resp = post(hub, "publish", {"channel": PLAIN, "data": 1}, headers={})
    assert resp.status_code == 401


def test_wrong_api_key_is_401(hub: Hub) -> None:
    resp = post(hub, "publish", {"channel": PLAIN, "data": 1}, headers={"X-API-Key": "nope"})
    assert resp.status_code == 401
    with pytest.raises(CentUnauthorizedError):
        cent_client(hub, "nope").publish(PublishRequest(channel=PLAIN, data=1))


def test_authorization_apikey_header(hub: Hub) -> None:
    resp = post(hub, "publish", {"channel": PLAIN, "data": 1},
                headers={"Authorization": f"apikey {API_KEY}"})
    assert resp.status_code == 200 and "result" in resp.json()
    wrong = post(hub, "publish", {"channel": PLAIN, "data": 1},
                 headers={"Authorization": "apikey nope"})
    assert wrong.status_code == 401


# -- request validation --------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "body", "field"), [
    ("publish", {"channel": 1, "data": {}}, "channel"),
    ("publish", {"channel": "chat:x", "data": {}, "skip_history": "yes"}, "skip_history"),
    ("history", {"channel": "chat:x", "limit": "ten"}, "limit"),
    ("history", {"channel": "chat:x", "since": {"offset": "1"}}, "since.offset"),
    ("broadcast", {"channels": "chat:x", "data": {}}, "channels"),
    ("publish", {"data": {}}, "channel"),
    ("ticket", {"user": 42}, "user"),
], ids=["wrong-type", "wrong-bool", "wrong-int", "nested", "not-a-list", "missing", "ticket"])
def test_invalid_body_is_422_naming_field(hub: Hub, method: str, body: Any,
                                          field: str) -> None:
    resp = post(hub, method, body)
    assert resp.status_code == 422, resp.text
    fields = resp.json()["error"]["fields"]
    assert fields[0]["field"] == field
    assert fields[0]["problem"]


def test_unknown_field_is_422_naming_it(hub: Hub) -> None:
    resp = post(hub, "publish", {"channel": "chat:x", "data": {}, "chanel": "typo"})
    assert resp.status_code == 422
    assert resp.json()["error"]["fields"][0]["field"] == "chanel"


@pytest.mark.parametrize(("method", "body"), [
    ("publish", b'{"channel": "chat:x", "data": '),
    ("publish", b"not json"),
    ("publish", b"[not json"),
    ("batch", b'{"commands": ['),
    ("batch", b"[not json"),
], ids=["truncated", "bare-words", "bracket-garbage", "batch-truncated", "batch-bracket-garbage"])
def test_malformed_json_is_400(hub: Hub, method: str, body: bytes) -> None:
    resp = post(hub, method, content=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["message"]


def test_oversized_body_is_413(hub_factory: HubFactory) -> None:
    hub = hub_factory("api_max_body_size = 2048\n" + CHAT_NAMESPACE)
    resp = post(hub, "publish", {"channel": "chat:x", "data": "x" * 8192})
    assert resp.status_code == 413
    # The next (small) request is served.
    assert post(hub, "publish", {"channel": "chat:x", "data": "ok"}).status_code == 200


def test_get_is_405(hub: Hub) -> None:
    resp = httpx.get(f"{hub.url}/api/publish", headers={"X-API-Key": API_KEY}, timeout=5,
                     trust_env=False)
    assert resp.status_code == 405
    assert "POST" in resp.headers.get("allow", "")


def test_unknown_method_is_404_with_104(hub: Hub) -> None:
    resp = post(hub, "no_such_method", {})
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == 104


# -- OpenAPI, docs, health, metrics ----------------------------------------------------------------


def test_openapi_document_is_valid_and_complete(hub: Hub) -> None:
    from openapi_spec_validator import validate

    resp = httpx.get(f"{hub.url}/openapi.json", timeout=5, trust_env=False)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    spec = resp.json()
    assert spec["openapi"].startswith("3.1")
    validate(spec)
    assert {p.removeprefix("/api/") for p in spec["paths"]} == API_METHODS
    for path, item in spec["paths"].items():
        assert "post" in item, path


def test_docs_page_is_html(hub: Hub) -> None:
    resp = httpx.get(f"{hub.url}/docs", timeout=5, trust_env=False)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert "<" in resp.text


def test_health(hub: Hub) -> None:
    resp = httpx.get(f"{hub.url}/health", timeout=5, trust_env=False)
    assert resp.status_code == 200
    assert resp.json()["status"] == "ok"


def metrics(hub: Hub) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    resp = httpx.get(f"{hub.url}/metrics", timeout=5, trust_env=False)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return out


def test_metrics_parse_and_move(hub: Hub) -> None:
    channel = unique_channel()
    sent = ("clarion_messages_sent_total", ())
    pubs = ("clarion_publications_total", ())
    ws_conns = ("clarion_connections", (("transport", "websocket"),))
    before = metrics(hub)
    assert before[ws_conns] == 0
    with subscriber(hub, channel) as ws:
        during = metrics(hub)
        assert during[ws_conns] == 1
        post(hub, "publish", {"channel": channel, "data": {"m": 1}})
        read_pub(ws, channel)
        after = metrics(hub)
    assert after[sent] == during[sent] + 1
    assert after[pubs] == during[pubs] + 1
    assert after[("clarion_api_calls_total", (("method", "publish"),))] >= 1
    assert any(name == "clarion_publish_to_deliver_seconds_count" for name, _ in after)


# -- the command line -------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    return subprocess.run([sys.executable, "-m", "clarion", *args], capture_output=True,
                          text=True, timeout=30, env=env)


def test_cli_publish(hub: Hub) -> None:
    channel = unique_channel()
    done = run_cli("publish", channel, '{"text": "from the CLI"}', "--url", hub.url,
                   "--api-key", API_KEY)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["offset"] == 1
    hist = cent_client(hub).history(HistoryRequest(channel=channel, limit=10))
    assert [p.data for p in hist.publications] == [{"text": "from the CLI"}]


def test_cli_publish_non_json_data_exits_2(hub: Hub) -> None:
    done = run_cli("publish", unique_channel(), "hello there", "--url", hub.url,
                   "--api-key", API_KEY)
    assert done.returncode == 2
    assert "JSON" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_publish_wrong_key_exits_1(hub: Hub) -> None:
    done = run_cli("publish", unique_channel(), "{}", "--url", hub.url, "--api-key", "nope")
    assert done.returncode == 1
    assert "401" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("toml", "name"), [
    ("client_channel_limt = 5\n", "client_channel_limt"),
    ("[namespaces.chat]\nallow_subscribe_for_clients = true\n", "allow_subscribe_for_clients"),
], ids=["top-level", "in-namespace"])
def test_serve_with_misspelled_option_exits_2(tmp_path: Path, toml: str, name: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    done = run_cli("serve", "--host", "127.0.0.1", "--port", str(free_port()),
                   "--config", str(cfg))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert name in done.stderr
    assert "Traceback" not in done.stderr
