"""A crash between publishing and recording it: ``manage.py clarion_worker`` relays durable
publications (``realtime.publish(durable=True)``, PostgreSQL) to a real hub and is SIGKILLed
after the hub published but before the worker heard back; more rows are committed while no
worker runs; a new worker relays everything again. A real subscriber (centrifuge-python) sees
every publication exactly once, in order: the repeats carry the row's idempotency key and the
hub drops them (issue 11, part 1: "a crash between commit and publish loses nothing").

The crash lands at a known point, not at a random one: the worker reaches the hub through a
real TCP proxy that forwards its requests and withholds the hub's answers, so the worker is
killed while the publications are out and none is recorded as relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

import django_env

django_env.configure()

from django.db import connections, transaction  # noqa: E402
from tests.conftest import API_KEY, HubFactory  # noqa: E402
from tests.test_hook_channels import subscribe  # noqa: E402

from centrifuge_support import wait_changed  # noqa: E402
from clarion.client import AsyncClient  # noqa: E402
from clarion.django import realtime  # noqa: E402
from clarion.django.models import Event  # noqa: E402
from webhook_support import clean_db, webhook_databases, worker_env  # noqa: E402

__all__ = ["clean_db", "webhook_databases"]

ORDERS = """
[namespaces.orders]
history_size = 100
history_ttl = 300
allow_subscribe_for_client = true
"""
CHANNEL = "orders:crash"


class AnswerHoldingProxy:
    """A TCP proxy on a real socket: requests reach the hub, the hub's answers are dropped."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> AnswerHoldingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.update((writer, up_writer))

        async def forward() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await reader.read(65536):
                    up_writer.write(data)
                    await up_writer.drain()
            up_writer.transport.abort()

        async def swallow() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while await up_reader.read(65536):
                    pass  # the answer that never reaches the worker

        await asyncio.gather(forward(), swallow())

    async def close(self) -> None:
        for w in list(self._writers):
            w.transport.abort()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


def spawn_worker(hub: dict[str, Any]) -> subprocess.Popen[bytes]:
    """``python -m django clarion_worker`` relaying to ``hub`` (``CLARION['HUB']``); a short
    lease, so the dead worker's claim is taken over soon."""
    env = worker_env(LEASE=3)
    env["DJANGO_SETTINGS_MODULE"] = "realtime_worker_settings"
    env["CLARION_TEST_HUB"] = json.dumps({"API_KEY": API_KEY, **hub})
    return subprocess.Popen([sys.executable, "-m", "django", "clarion_worker"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def commit(numbers: range) -> None:
    with transaction.atomic():
        for n in numbers:
            assert realtime.publish(CHANNEL, {"n": n}, durable=True) is None
    connections.close_all()  # this thread's connections end with it


def rows() -> list[tuple[Any, int]]:
    found = list(Event.objects.filter(channel=CHANNEL).order_by("id")
                 .values_list("relayed_at", "relay_attempts"))
    connections.close_all()
    return found


async def test_a_worker_killed_between_publish_and_record_loses_and_repeats_nothing(
        clean_db: None, hub_factory: HubFactory) -> None:
    hub = hub_factory(ORDERS)
    proxy = await AnswerHoldingProxy(hub.port).start()
    client, rec = await subscribe(hub, CHANNEL, "watcher")
    workers: list[subprocess.Popen[bytes]] = []
    try:
        await asyncio.to_thread(commit, range(10))
        first = spawn_worker({"URL": f"http://127.0.0.1:{proxy.port}", "TIMEOUT": 120})
        workers.append(first)
        # The hub has published; the worker waits for answers that will not come.
        await wait_changed(rec.changed, lambda: len(rec.pubs) >= 1, 60)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
        assert first.returncode == -signal.SIGKILL
        published_before_the_crash = len(rec.pubs)
        assert [relayed for relayed, _ in await asyncio.to_thread(rows)] == [None] * 10

        # Committed while no worker runs.
        await asyncio.to_thread(commit, range(10, 15))

        second = spawn_worker({"URL": hub.url})
        workers.append(second)
        await wait_changed(rec.changed, lambda: len(rec.pubs) >= 15, 60)
        deadline = time.monotonic() + 60  # a bound on the wait, not a measurement
        while any(relayed is None for relayed, _ in await asyncio.to_thread(rows)):
            assert time.monotonic() < deadline, "publications still unrelayed"
            assert second.poll() is None, second.stdout.read() if second.stdout else b""
            await asyncio.sleep(0.1)
        second.send_signal(signal.SIGTERM)
        out, _ = second.communicate(timeout=30)
        assert second.returncode == 0, out.decode(errors="replace")[-3000:]
    finally:
        for proc in workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        await client.disconnect()
        await proxy.close()

    # Exactly once, in order: the repeats of the first rows were dropped by the hub.
    assert rec.pubs == [{"n": n} for n in range(15)]
    assert rec.offsets == list(range(1, 16))
    async with AsyncClient(hub.url, api_key=API_KEY) as api:
        page = await api.history(CHANNEL, limit=100)
    assert [p.data for p in page.publications] == [{"n": n} for n in range(15)]
    # Each row was recorded once, by the second worker, which relayed again the ones the hub
    # had already published before the crash.
    assert await asyncio.to_thread(rows) and all(
        attempts == 1 for _, attempts in await asyncio.to_thread(rows))
    assert published_before_the_crash >= 1


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
