"""A stopping hub answers the HTTP requests it holds before it closes their connections.

A retiring worker (rolling restart, SIGTERM) used to close every keep-alive connection at
once, including one whose publish was waiting on Redis: nginx in front reported that as a 502
it cannot retry (a POST). Now idle connections close at once, and a connection with a request
in hand answers it with ``Connection: close`` and then closes, within ``shutdown_timeout``; an
idle one stays open for a grace second for a request already on its way (answered the same way:
a proxy sends its next request on the connection it used last), then closes.

Real hub processes, a Redis of the test's own (SIGSTOPped to hold a publish in flight), raw
sockets to see the bytes and the close.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable

from conftest import API_KEY, HubFactory
from test_scaleout_edges import OwnRedis, own_redis  # noqa: F401 - the fixture

T = 15.0  # a bound for what must happen, never a measurement


def _publish(channel: str, n: int) -> bytes:
    body = f'{{"channel":"{channel}","data":{{"n":{n}}}}}'.encode()
    return (b"POST /api/publish HTTP/1.1\r\nHost: hub\r\nX-API-Key: " + API_KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the hub closes the connection."""
    sock.settimeout(T)
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _answers(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        length = int(headers.get("content-length", "0"))
        out.append((int(lines[0].split()[1]), headers, rest[:length]))
        raw = rest[length:]
    return out


def test_a_publish_in_flight_is_answered_before_the_hub_closes(
        hub_factory: HubFactory, own_redis: Callable[..., OwnRedis]) -> None:  # noqa: F811
    redis = own_redis()
    hub = hub_factory('shutdown_timeout = "10s"\n', "--broker",
                      f"redis://127.0.0.1:{redis.port}/0")
    idle = socket.create_connection(("127.0.0.1", hub.port), timeout=T)
    busy = socket.create_connection(("127.0.0.1", hub.port), timeout=T)
    pipelined = socket.create_connection(("127.0.0.1", hub.port), timeout=T)
    try:
        # Both used once, so both are keep-alive connections the hub knows.
        for s in (idle, busy, pipelined):
            s.sendall(_publish("warm", 0))
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
        assert redis.process is not None
        redis.process.send_signal(signal.SIGSTOP)  # publishes now wait on Redis
        busy.sendall(_publish("news", 1))
        pipelined.sendall(_publish("news", 2) + _publish("news", 3))
        time.sleep(0.3)  # the requests are read and waiting on Redis
        hub.process.send_signal(signal.SIGTERM)
        # The idle connection closes after the grace, with nothing written to it.
        assert _read_all(idle) == b""
        time.sleep(0.5)
        redis.process.send_signal(signal.SIGCONT)
        got = _answers(_read_all(busy))
        assert [(status, h.get("connection")) for status, h, _ in got] == [(200, "close")]
        assert b'"offset"' in got[0][2] or got[0][2] == b'{"result":{}}'
        # A pipelined run: every request answered, only the last says close.
        got = _answers(_read_all(pipelined))
        assert [(status, h.get("connection")) for status, h, _ in got] == [
            (200, None), (200, "close")]
        assert hub.process.wait(T) == 0
        assert "Traceback" not in hub.output()
    finally:
        for s in (idle, busy, pipelined):
            s.close()
        if redis.process is not None and redis.process.poll() is None:
            redis.process.send_signal(signal.SIGCONT)


def test_a_request_still_arriving_is_answered_then_closed(hub_factory: HubFactory) -> None:
    hub = hub_factory('shutdown_timeout = "10s"\n')
    sock = socket.create_connection(("127.0.0.1", hub.port), timeout=T)
    try:
        request = _publish("news", 1)
        sock.sendall(request[:-5])  # the body's last bytes are still on their way
        time.sleep(0.2)
        hub.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        sock.sendall(request[-5:])
        got = _answers(_read_all(sock))
        assert [(status, h.get("connection")) for status, h, _ in got] == [(200, "close")]
        assert hub.process.wait(T) == 0
    finally:
        sock.close()


def test_a_stalled_request_does_not_hold_the_shutdown_past_its_bound(
        hub_factory: HubFactory) -> None:
    """A client that never finishes its request cannot keep a stopping hub alive: the
    connection is cut at shutdown_timeout."""
    hub = hub_factory('shutdown_timeout = "1s"\nhttp_header_timeout = "60s"\n')
    sock = socket.create_connection(("127.0.0.1", hub.port), timeout=T)
    try:
        sock.sendall(_publish("news", 1)[:-5])
        time.sleep(0.2)
        hub.process.send_signal(signal.SIGTERM)
        assert hub.process.wait(T) == 0
        assert _read_all(sock) == b""
    finally:
        sock.close()


def test_a_request_sent_on_an_idle_connection_as_the_hub_stops_is_answered(
        hub_factory: HubFactory) -> None:
    """The race a proxy in front runs into: its next request goes out on a kept-alive
    connection just as the hub begins to stop. It is answered, with Connection: close, and a
    connection that stays idle is closed once the grace is over."""
    hub = hub_factory('shutdown_timeout = "10s"\n')
    used = socket.create_connection(("127.0.0.1", hub.port), timeout=T)
    unused = socket.create_connection(("127.0.0.1", hub.port), timeout=T)
    try:
        for s in (used, unused):
            s.sendall(_publish("warm", 0))
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
        hub.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)  # the stop has begun; the proxy's next request arrives now
        used.sendall(_publish("news", 1))
        got = _answers(_read_all(used))
        assert [(status, h.get("connection")) for status, h, _ in got] == [(200, "close")]
        assert _read_all(unused) == b""
        assert hub.process.wait(T) == 0
    finally:
        used.close()
        unused.close()
