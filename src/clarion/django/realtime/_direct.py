"""Publishing and tickets straight into the hub's Redis broker, without the HTTP hop.

The broker is the hub's own code (:mod:`clarion.broker`), so a publication written here is the
one the hub would have written: the same Lua script appends it to the channel's stream (offset,
epoch, history size and lifetime from the hub's channel options) and publishes it on the same
Pub/Sub channel every hub node listens to; an idempotency key is checked by the same script.

The broker is asyncio code and Django views are mostly synchronous, so each process runs one
private event loop in a daemon thread and hands it coroutines
(``asyncio.run_coroutine_threadsafe``); sync callers wait on the future, async callers await it
wrapped. One loop per process, not one per call or per thread: the broker's connection pool
and its Pub/Sub link are built once and kept alive. After ``fork`` the child forgets the
parent's loop, thread and sockets (they belong to the parent) and builds its own on first use
(``os.register_at_fork``), so pre-forking servers (gunicorn, uWSGI) are safe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from clarion.broker import Broker, ClientInfo, Publication, PublishOptions, create_broker
from clarion.broker import PublishResult as BrokerResult
from clarion.client import PublishResult
from clarion.django.conf import RealtimeSettings
from clarion.django.realtime._outgoing import Outgoing
from clarion.errors import (
    BrokerError,
    ConfigError,
    HubError,
    HubReplyError,
    HubUnavailable,
    ReplyError,
)
from clarion.hub.channels import ChannelRules
from clarion.hub.config import Config, load_config
from clarion.hub.publishing import broker_request
from clarion.protocol import tickets

log = logging.getLogger("clarion.realtime")
T = TypeVar("T")
Request = tuple[str, bytes, PublishOptions]  # what Broker.publish_many takes, per channel
Outcome = PublishResult | list[PublishResult] | HubError  # an item's answer, as /api/batch's


class _NoSubscribers:
    """The broker's event handler: this process publishes, it serves no subscribers."""

    def on_publication(self, channel: str, pub: Publication, epoch: str) -> None:
        pass

    def on_join(self, channel: str, info: ClientInfo) -> None:
        pass

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        pass


def _new_loop() -> asyncio.AbstractEventLoop:
    # uvloop when installed (it is a dependency off Windows): the loop the hub runs its
    # broker on, and faster at the socket work that is all this loop does.
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def hub_config(path: str | None) -> Config:
    """The hub's configuration file (channel options, ticket lifetimes), read as the hub reads
    it but without this process's ``CLARION_*`` environment (that is the hub's, not ours)."""
    return load_config(path, environ={}) if path else Config()


class DirectBroker:
    def __init__(self, conf: RealtimeSettings) -> None:
        try:
            self.config = hub_config(conf.HUB.CONFIG)
        except ConfigError as exc:
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(f"CLARION['HUB']['CONFIG']: {exc}") from None
        self.rules = ChannelRules(self.config)
        self.urls = conf.BROKER
        self.options = dict(conf.REDIS)
        self.timeout = conf.HUB.TIMEOUT
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Broker | None = None
        self._starting: asyncio.Lock | None = None

    # -- the private loop ---------------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = _new_loop()
                thread = threading.Thread(target=loop.run_forever, name="clarion-realtime",
                                          daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    async def _started(self) -> Broker:
        if self._broker is not None:
            return self._broker
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._broker is None:
                broker = create_broker(self.urls[0] if len(self.urls) == 1 else self.urls,
                                       **self.options)
                await broker.start(_NoSubscribers())
                self._broker = broker
            return self._broker

    async def _run(self, work: Callable[[Broker], Awaitable[T]]) -> T:
        try:
            return await work(await self._started())
        except BrokerError as exc:
            raise HubUnavailable(f"the hub's broker is unavailable: {exc}") from exc
        except ReplyError as exc:  # the hub's channel rules refused it, as the hub would
            raise HubReplyError(exc.code, exc.message) from None

    def call(self, work: Callable[[Broker], Awaitable[T]]) -> T:
        future = asyncio.run_coroutine_threadsafe(self._run(work), self._running_loop())
        try:
            return future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise HubUnavailable(f"the hub's broker did not answer within "
                                 f"{self.timeout:g}s") from None

    async def acall(self, work: Callable[[Broker], Awaitable[T]]) -> T:
        future = asyncio.run_coroutine_threadsafe(self._run(work), self._running_loop())
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError:
            raise HubUnavailable(f"the hub's broker did not answer within "
                                 f"{self.timeout:g}s") from None

    def close(self) -> None:
        """Close the broker and stop the loop (settings changed, or the process ends)."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(self.timeout)
        except Exception:
            log.warning("closing the realtime broker failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(self.timeout)
        if not thread.is_alive():
            loop.close()

    async def _shutdown(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.close()
        # Calls still waiting (a broker that never answered): ended here, not destroyed
        # pending with the loop.
        current = asyncio.current_task()
        waiting = [task for task in asyncio.all_tasks() if task is not current]
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)

    # -- what the hub would do ----------------------------------------------------------------

    def _plan(self, item: Outgoing) -> list[Request | HubReplyError]:
        """Per channel, the ``(channel, data, options)`` request ``Hub.publish`` would send
        the broker, or the error the hub's channel rules answer (102 unknown channel, …)."""
        data = item.data
        limit = self.config.api_max_body_size
        if len(data) > limit:
            # The hub's API refuses a request body over api_max_body_size with 413; a
            # publication too large to go through the API must not go in through Redis.
            return [HubReplyError(413, f"the data is {len(data)} bytes, more than the hub's "
                                       f"api_max_body_size ({limit})", status=413)]
        plan: list[Request | HubReplyError] = []
        for channel in item.channels:
            try:
                options = self.rules.options(channel)
            except ReplyError as exc:
                plan.append(HubReplyError(exc.code, exc.message))
                continue
            plan.append((channel, *broker_request(self.config, options, data,
                                                  idempotency_key=item.idempotency_key or "")))
        return plan

    def publish_batch(self, items: Sequence[Outgoing]) -> list[Outcome]:
        """Every item in one broker call (one Redis pipeline); a result or error per item, as
        the hub's ``/api/batch`` answers (a refused channel fails its item, not the batch)."""
        plans = [self._plan(item) for item in items]
        if not any(isinstance(r, tuple) for plan in plans for r in plan):
            return [_outcome(item, plan) for item, plan in zip(items, plans, strict=True)]
        return self.call(lambda broker: _publish_many(broker, items, plans))

    async def apublish_batch(self, items: Sequence[Outgoing]) -> list[Outcome]:
        plans = [self._plan(item) for item in items]
        if not any(isinstance(r, tuple) for plan in plans for r in plan):
            return [_outcome(item, plan) for item, plan in zip(items, plans, strict=True)]
        return await self.acall(lambda broker: _publish_many(broker, items, plans))

    def _ticket_args(self, user: str, info: Any, channels: Sequence[str],
                     ttl: float | None) -> tuple[str, bytes, float]:
        ttl = ttl or self.config.seconds("ticket_ttl")
        limit = self.config.seconds("ticket_max_ttl")
        if not 0 < ttl <= limit:
            raise HubReplyError(107, f"bad request: ttl must be within 0-{limit:g} seconds")
        try:
            for channel in channels:
                self.rules.options(channel)
        except ReplyError as exc:
            raise HubReplyError(exc.code, exc.message) from None
        return tickets.new_ticket(), tickets.encode_payload(user, info=info,
                                                            channels=channels), ttl

    def ticket(self, user: str, info: Any, channels: Sequence[str], ttl: float | None) -> str:
        ticket, payload, seconds = self._ticket_args(user, info, channels, ttl)
        self.call(lambda broker: broker.store_ticket(ticket, payload, seconds))
        return ticket

    async def aticket(self, user: str, info: Any, channels: Sequence[str],
                      ttl: float | None) -> str:
        ticket, payload, seconds = self._ticket_args(user, info, channels, ttl)
        await self.acall(lambda broker: broker.store_ticket(ticket, payload, seconds))
        return ticket


async def _publish_many(broker: Broker, items: Sequence[Outgoing],
                        plans: list[list[Request | HubReplyError]]) -> list[Outcome]:
    requests = [r for plan in plans for r in plan if isinstance(r, tuple)]
    results = iter(await broker.publish_many(requests))
    return [_outcome(item, [next(results) if isinstance(r, tuple) else r for r in plan])
            for item, plan in zip(items, plans, strict=True)]


def _outcome(item: Outgoing,
             results: Sequence[BrokerResult | BrokerError | HubReplyError | Request]) -> Outcome:
    """One item's answer from its channels' results, as the hub's API gives it."""
    for place, result in enumerate(results):
        if isinstance(result, BrokerError):
            return HubUnavailable(f"the hub's broker is unavailable: {result}")
        if isinstance(result, HubReplyError):
            if not item.broadcast or result.status == 413:  # too large: the item, no channel
                return result
            # Worded as clarion.client words the hub's answer, so both paths read the same.
            return HubReplyError(result.code, f"broadcast to {item.channels[place]!r} failed: "
                                              f"{result.message} (the other channels were "
                                              f"still tried)")
    published = [_result(r) for r in results if isinstance(r, BrokerResult)]
    return published if item.broadcast else published[0]


def _result(result: BrokerResult) -> PublishResult:
    # As the hub's API answers: a channel without history has no position.
    pos = result.position
    return PublishResult(offset=pos.offset, epoch=pos.epoch) if pos.epoch else PublishResult()
