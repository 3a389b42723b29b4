"""Build and run the delivery worker from the ``CLARION['WEBHOOKS']`` settings.

Shared by ``manage.py clarion_worker`` and ``clarion worker``: both end up in :func:`run`.

The worker also relays the outbox's publications (``clarion.django.outbox``, hooks with a
channel). Its relay is the one given to :func:`build` (inside the hub, ``clarion serve
--webhooks-db`` gives :func:`hub_relay`: the hub's own publish, straight into its broker and
fan-out); by default ``clarion.django.realtime.apublish`` when ``CLARION['HUB']`` or
``CLARION['BROKER']`` is set. With none, publications wait in the outbox (logged once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from clarion.django.conf import webhook_settings
from clarion.django.store import open_store
from clarion.webhooks.sender import Sender
from clarion.webhooks.transport import PinnedTransport
from clarion.webhooks.worker import Relay, Worker, WorkerConfig

if TYPE_CHECKING:
    from clarion.hub.app import Hub

log = logging.getLogger("clarion.webhooks")

def hub_relay(hub: Hub) -> Relay:
    """Publish through ``hub`` itself: its broker and fan-out, no HTTP."""

    async def relay(channel: str, data: bytes, idempotency_key: str) -> Any:
        return await hub.publish(channel, data, idempotency_key=idempotency_key)

    return relay


def realtime_relay() -> Relay | None:
    """``clarion.django.realtime.apublish``, when the project configures a hub or broker."""
    from django.conf import settings

    conf = getattr(settings, "CLARION", {}) or {}
    if not (conf.get("HUB") or conf.get("BROKER")):
        return None
    try:
        from clarion.django import realtime
    except ImportError:
        log.exception("clarion.django.realtime cannot be imported: publications are not relayed")
        return None
    apublish = realtime.apublish  # type: ignore[attr-defined,unused-ignore]

    async def relay(channel: str, data: bytes, idempotency_key: str) -> Any:
        return await apublish(channel, json.loads(data), idempotency_key=idempotency_key)

    return relay


def default_relay() -> Relay | None:
    relay = realtime_relay()
    if relay is None:
        log.info("durable publications are not relayed by this worker: set CLARION['HUB'] "
                 "(or CLARION['BROKER']) to publish them")
    return relay


def build(*, exit_when_idle: bool = False, concurrency: int | None = None,
          using: str | None = None,
          relay: Relay | Literal["default"] | None = "default") -> Worker:
    """``relay``: how publications reach the hub; None: this worker does not relay them."""
    conf = webhook_settings()
    policy = conf.policy()
    transport = PinnedTransport(policy, max_connections_per_host=conf.MAX_CONNECTIONS_PER_HOST)
    sender = Sender(transport, policy, conf.retry(), timeout=conf.TIMEOUT)
    config = WorkerConfig(
        batch=conf.BATCH, concurrency=conf.CONCURRENCY, lease=conf.LEASE,
        disable_after=conf.DISABLE_AFTER, retention=conf.RETENTION,
        exit_when_idle=exit_when_idle,
    )
    if concurrency:
        config = replace(config, concurrency=concurrency)
    if relay == "default":
        relay = default_relay()
    store = open_store(using or conf.DATABASE, publications=relay is not None)
    return Worker(store, sender, config, relay=relay)


class Supervisor:
    """Runs a worker inside another process (``clarion serve --webhooks-db``) and starts a new
    one whenever it fails: the process it lives in (the hub, with every realtime client) must
    never end because webhook delivery hit a database error. Failures are logged with their
    traceback and passed to ``on_failure`` (the hub counts them in its metrics); restarts back
    off from 1 s to 60 s, and a run that lasted a minute resets the backoff."""

    def __init__(self, build: Callable[[], Worker],
                 on_failure: Callable[[BaseException], None] | None = None) -> None:
        self._build = build
        self._on_failure = on_failure
        self._stopping = asyncio.Event()
        self.worker: Worker | None = None
        self.restarts = 0

    def stop(self) -> None:
        self._stopping.set()
        if self.worker is not None:
            self.worker.stop()

    async def run(self) -> None:
        backoff = 1.0
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            started = loop.time()
            try:
                self.worker = self._build()
                if self._stopping.is_set():
                    self.worker.stop()
                await self.worker.run()
                if self._stopping.is_set():
                    return
                raise RuntimeError("the webhook worker returned without being stopped")
            except Exception as exc:
                log.exception("the webhook worker failed; restarting in %.0f s", backoff)
                if self._on_failure is not None:
                    self._on_failure(exc)
            self.restarts += 1
            if loop.time() - started > 60:
                backoff = 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            backoff = min(backoff * 2, 60.0)


async def serve(worker: Worker) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, worker.stop)
    await worker.run()


def run(*, exit_when_idle: bool = False, concurrency: int | None = None,
        using: str | None = None) -> int:
    """Run a worker until SIGTERM/SIGINT (or until idle); returns the attempts it made."""
    return run_worker(exit_when_idle=exit_when_idle, concurrency=concurrency,
                      using=using).delivered


def run_worker(*, exit_when_idle: bool = False, concurrency: int | None = None,
               using: str | None = None) -> Worker:
    """:func:`run`, returning the worker (``delivered`` attempts, ``published``
    publications)."""
    worker = build(exit_when_idle=exit_when_idle, concurrency=concurrency, using=using)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        asyncio.run(serve(worker))
    else:
        uvloop.run(serve(worker))
    return worker
