"""Build and run the delivery worker from the ``CLARION['WEBHOOKS']`` settings.

Shared by ``manage.py clarion_worker`` and ``clarion worker``: both end up in :func:`run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import replace

from clarion.django.conf import webhook_settings
from clarion.django.store import open_store
from clarion.webhooks.sender import Sender
from clarion.webhooks.transport import PinnedTransport
from clarion.webhooks.worker import Worker, WorkerConfig

log = logging.getLogger("clarion.webhooks")


def build(*, exit_when_idle: bool = False, concurrency: int | None = None,
          using: str | None = None) -> Worker:
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
    return Worker(open_store(using or conf.DATABASE), sender, config)


async def serve(worker: Worker) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, worker.stop)
    await worker.run()


def run(*, exit_when_idle: bool = False, concurrency: int | None = None,
        using: str | None = None) -> int:
    """Run a worker until SIGTERM/SIGINT (or until idle); returns the attempts it made."""
    worker = build(exit_when_idle=exit_when_idle, concurrency=concurrency, using=using)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        asyncio.run(serve(worker))
    else:
        uvloop.run(serve(worker))
    return worker.delivered
