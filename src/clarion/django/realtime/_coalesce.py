"""Async publications made while one is on its way leave together in the next batch.

Each ``apublish`` on its own costs a request (and on httpx's async client 1-2.5 ms of CPU);
async views that publish at once, each waiting for its answer, paid that once each. Per event
loop, the first publication goes at once, and those made while a batch is in flight wait for it
and go in the next one (one ``/api/batch``, or one Redis call on the direct path), so the cost
is per batch and a publication waits at most for one batch ahead of it. Batches go one after
another, so the order of publications on one loop is the order they were made in.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from clarion.django.realtime._outgoing import Outgoing

Send = Callable[[Sequence[Outgoing]], Awaitable[Sequence[Any]]]

MAX_BATCH = 100  # publications per batch: a bound on one request's size and Redis script

_queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue] = (
    weakref.WeakKeyDictionary())


class _Queue:
    __slots__ = ("drainer", "waiting")

    def __init__(self) -> None:
        self.waiting: list[tuple[Outgoing, Send, asyncio.Future[Any]]] = []
        self.drainer: asyncio.Task[None] | None = None  # kept: the loop holds tasks weakly


async def send(item: Outgoing, sender: Send) -> Any:
    """``item``'s result (or the error it met, returned, not raised), once its batch is
    answered; ``sender`` is where the batch goes (the hub's API or the direct broker)."""
    loop = asyncio.get_running_loop()
    queue = _queues.get(loop)
    if queue is None:
        queue = _queues[loop] = _Queue()
    done: asyncio.Future[Any] = loop.create_future()
    queue.waiting.append((item, sender, done))
    if queue.drainer is None:
        queue.drainer = loop.create_task(_drain(queue))
    # A caller that gives up (cancelled, timed out) does not unsend its publication: the
    # batch may be on the wire already. Its future is just left unread.
    return await asyncio.shield(done)


async def _drain(queue: _Queue) -> None:
    try:
        while queue.waiting:
            # One sender per batch: the settings (and so the route) can change between calls.
            sender = queue.waiting[0][1]
            batch: list[tuple[Outgoing, Send, asyncio.Future[Any]]] = []
            rest: list[tuple[Outgoing, Send, asyncio.Future[Any]]] = []
            for entry in queue.waiting:
                # == and not is: each access to a bound method makes a new object.
                if entry[1] == sender and len(batch) < MAX_BATCH:
                    batch.append(entry)
                else:
                    rest.append(entry)
            queue.waiting = rest
            try:
                results: Sequence[Any] = await sender([item for item, _, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
                results = [exc] * len(batch)
            for (_, _, done), result in zip(batch, results, strict=True):
                if not done.done():
                    done.set_result(result)
    finally:
        queue.drainer = None
