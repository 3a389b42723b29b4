"""What the tests that drive the centrifuge-python SDK share: a subscription recorder, and a
wait on "something changed" that re-checks a condition instead of sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from centrifuge import (
    JoinContext,
    LeaveContext,
    PublicationContext,
    SubscribedContext,
    SubscriptionEventHandler,
)


async def wait_changed(changed: asyncio.Event, predicate: Callable[[], bool],
                       timeout: float) -> None:
    """Until ``predicate()`` holds, waking each time ``changed`` is set; AssertionError after
    ``timeout`` seconds (a bound, never a measurement)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        changed.clear()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("condition not met in time")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), remaining)


class Recorder(SubscriptionEventHandler):
    """Everything one client-side subscription saw."""

    timeout = 10.0  # the default bound of wait_for; a module may raise it

    def __init__(self) -> None:
        self.pubs: list[Any] = []
        self.offsets: list[int] = []
        self.subscribed: list[SubscribedContext] = []
        self.joins: list[str] = []
        self.leaves: list[str] = []
        self.changed = asyncio.Event()

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.pubs.append(ctx.pub.data)
        self.offsets.append(ctx.pub.offset)
        self.changed.set()

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.subscribed.append(ctx)
        self.changed.set()

    async def on_join(self, ctx: JoinContext) -> None:
        self.joins.append(ctx.info.user)
        self.changed.set()

    async def on_leave(self, ctx: LeaveContext) -> None:
        self.leaves.append(ctx.info.user)
        self.changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float | None = None) -> None:
        await wait_changed(self.changed, predicate, self.timeout if timeout is None else timeout)
