"""The delivery loop: fan out new events, claim due deliveries, send them, record the results.

Sends run concurrently on the event loop, up to ``concurrency`` at once; every store call runs on
one thread of the worker's own, so the database work of a batch (one claim, one record) overlaps
the network work of the others. When nothing is due the worker blocks in ``store.wait`` until the
store says new work may exist (PostgreSQL ``NOTIFY``) or the next retry falls due, so an idle
worker costs no queries.

Shutdown is bounded: ``stop()`` ends claiming, lets the attempts in flight finish for at most
``shutdown_timeout`` seconds and records them; whatever was cut short comes back after its lease.

Given a ``relay`` (an async callable ``relay(channel, data, idempotency_key)``, injected because
this engine knows no hub), the worker also publishes the outbox's publications: in rounds that
run beside the deliveries, each channel's publications one after another in outbox order, the
channels concurrently. A failure retries that publication after a backoff (0.5 s doubling to
30 s) and holds back the rest of its channel meanwhile, so a channel's order survives a hub
that is down; ``ReplyError`` from the relay means the hub refuses the publication for good (an
unknown channel): it is logged, counted and not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from prometheus_client import Counter, Histogram

from clarion.errors import HubReplyError, ReplyError
from clarion.webhooks.retry import Outcome
from clarion.webhooks.sender import Sender
from clarion.webhooks.store import (
    AttemptResult,
    Job,
    Publication,
    PublicationStore,
    RelayResult,
    Store,
)

log = logging.getLogger("clarion.webhooks")

T = TypeVar("T")

Relay = Callable[[str, bytes, str], Awaitable[Any]]
"""``relay(channel, data, idempotency_key)``: publish JSON ``data``; raise on failure."""

RELAY_BACKOFF = (0.5, 30.0)  # the first retry's delay, doubling up to the second


def relay_delay(attempt: int) -> float:
    first, cap = RELAY_BACKOFF
    return float(min(first * 2 ** min(attempt - 1, 16), cap))

ATTEMPTS = Counter("clarion_webhook_attempts", "Webhook attempts made", ["outcome"])
WORKER_ERRORS = Counter(
    "clarion_webhook_worker_errors", "Worker steps that failed and were retried after a backoff",
    ["error"])
RELAYED = Counter(
    "clarion_webhook_relayed_publications",
    "Outbox publications relayed to the hub, by outcome (published, retried, refused)",
    ["outcome"])
ATTEMPT_SECONDS = Histogram(
    "clarion_webhook_attempt_seconds", "Duration of webhook attempts",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    batch: int = 500
    concurrency: int = 1000
    lease: float | None = None  # default: the request timeout + 10 s
    disable_after: float = 5 * 86400.0
    retention: float | None = 90 * 86400.0
    cleanup_interval: float = 3600.0
    idle_wait: float = 30.0  # the longest wait without a wake-up (a safety net for lost NOTIFYs)
    exit_when_idle: bool = False
    shutdown_timeout: float = 20.0


def refused_for_good(exc: BaseException) -> bool:
    """Whether the hub's answer says retrying cannot help (an unknown channel, a bad request,
    data too large); an internal error, a wrong API key or a rate limit is worth a retry."""
    if isinstance(exc, ReplyError):
        return not exc.temporary and exc.code != 100
    if isinstance(exc, HubReplyError):
        return exc.code != 100 and exc.status not in (401, 403, 429) and exc.status < 500
    return False


class Worker:
    def __init__(self, store: Store, sender: Sender, config: WorkerConfig | None = None,
                 *, relay: Relay | None = None) -> None:
        self.store = store
        self.sender = sender
        self.config = config or WorkerConfig()
        self.relay = relay
        self._relaying: asyncio.Task[int] | None = None
        self.published = 0  # publications relayed, for callers that report
        self.lease = self.config.lease or sender.timeout + 10.0
        self._db = ThreadPoolExecutor(1, thread_name_prefix="clarion-db")
        self._waiter = ThreadPoolExecutor(1, thread_name_prefix="clarion-wait")
        self._in_flight: set[asyncio.Task[None]] = set()
        self._results: list[AttemptResult] = []
        self._progress = asyncio.Event()
        self._stopping = False
        self._idle_exit = False
        self._next_cleanup = time.monotonic() + 60.0
        self.delivered = 0  # attempts recorded, for callers that report

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    def stop(self) -> None:
        self._stopping = True
        self._progress.set()
        self.store.wake()

    async def run(self) -> None:
        """Work until ``stop()``. A failing store call (a database that is down, locked or
        refuses a statement) is logged with its traceback, counted in
        ``clarion_webhook_worker_errors_total`` and retried after a backoff that doubles from
        0.1 s to 30 s; results not yet recorded are kept for the next try."""
        backoff = 0.0
        try:
            while not self._stopping:
                try:
                    await self._cycle()
                except Exception as exc:  # the worker outlives any one failure
                    backoff = min(max(backoff * 2, 0.1), 30.0)
                    WORKER_ERRORS.labels(type(exc).__name__).inc()
                    log.exception("webhook worker step failed; retrying in %.1f s", backoff)
                    self._progress.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._progress.wait(), backoff)
                    continue
                backoff = 0.0
                if self._idle_exit:
                    break
        finally:
            await self._drain()

    async def _cycle(self) -> None:
        """One round: fan out, claim and start sends, record, housekeeping, then wait while
        there is nothing to do. Returns to ``run`` after every wait so failures are caught
        there."""
        cfg = self.config
        next_cleanup = self._next_cleanup
        while not self._stopping:
            dispatched = await self._call(self.store.dispatch, cfg.batch)
            relaying = self._relay_step()
            room = cfg.concurrency - len(self._in_flight)
            jobs: list[Job] = []
            if room >= min(cfg.batch, cfg.concurrency) // 2:
                jobs = await self._call(self.store.claim, min(cfg.batch, room), self.lease)
                for job in jobs:
                    self._spawn(job)
            await self._flush()
            if cfg.retention and time.monotonic() >= next_cleanup:
                # Housekeeping runs on schedule even when the worker is never idle. The
                # next time is set first, so a failing cleanup does not run every round.
                next_cleanup = self._next_cleanup = time.monotonic() + cfg.cleanup_interval
                removed = await self._call(self.store.cleanup, cfg.retention)
                if removed:
                    log.info("removed %d events older than the retention period", removed)
            if jobs or dispatched >= cfg.batch:
                continue
            if self._in_flight or relaying:
                self._progress.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), 0.05)
                continue
            if dispatched:
                continue
            due = await self._call(self.store.next_due)
            if due == 0:
                continue
            if cfg.exit_when_idle:
                self._idle_exit = True
                return
            timeout = cfg.idle_wait if due is None else min(due, cfg.idle_wait)
            await asyncio.get_running_loop().run_in_executor(
                self._waiter, self.store.wait, timeout
            )
            return

    def _relay_step(self) -> bool:
        """Start a relay round unless one runs; True while one runs. A round's failure (its
        store calls) surfaces here, in the cycle, to be logged and backed off by ``run``."""
        task = self._relaying
        if task is not None and task.done():
            self._relaying = None
            more = task.result()  # raises what the round raised
            if more:
                return self._relay_step()
            return False
        if task is None and self.relay is not None and not self._stopping:
            self._relaying = asyncio.create_task(self._relay_round())
        return self._relaying is not None

    async def _relay_round(self) -> int:
        """Claim due publications and relay them; returns how many were claimed (a full batch
        means more may be due)."""
        store = cast(PublicationStore, self.store)
        try:
            pubs = await self._call(store.claim_publications, self.config.batch, self.lease)
            if not pubs:
                return 0
            by_channel: dict[str, list[Publication]] = {}
            for pub in pubs:
                by_channel.setdefault(pub.channel, []).append(pub)
            per_channel = await asyncio.gather(*(self._relay_channel(group)
                                                 for group in by_channel.values()))
            results = [r for group in per_channel for r in group]
            await self._call(store.record_publications, results)
            return len(pubs) if len(pubs) >= self.config.batch else 0
        finally:
            self._progress.set()

    async def _relay_channel(self, pubs: list[Publication]) -> list[RelayResult]:
        assert self.relay is not None
        results: list[RelayResult] = []
        for i, pub in enumerate(pubs):
            try:
                await self.relay(pub.channel, pub.data, pub.idempotency_key)
            except Exception as exc:
                if refused_for_good(exc):
                    RELAYED.labels("refused").inc()
                    log.error("publication %s to %r refused by the hub, not retried: %s",
                              pub.idempotency_key, pub.channel, exc)
                    results.append(RelayResult(pub, f"refused: {exc}"[:2000]))
                    continue
                # The hub or its broker down, a timeout, a wrong API key: retried.
                delay = relay_delay(pub.attempt)
                RELAYED.labels("retried").inc()
                log.warning("publication %s to %r failed (attempt %d); retrying in %g s",
                            pub.idempotency_key, pub.channel, pub.attempt, delay, exc_info=True)
                results.append(RelayResult(pub, f"{type(exc).__name__}: {exc}"[:2000], delay))
                # The rest of the channel waits behind it: order within a channel holds.
                results.extend(RelayResult(later, "", delay, attempted=False)
                               for later in pubs[i + 1:])
                return results
            RELAYED.labels("published").inc()
            self.published += 1
            results.append(RelayResult(pub))
        return results

    def _spawn(self, job: Job) -> None:
        task = asyncio.create_task(self._one(job))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _one(self, job: Job) -> None:
        try:
            result = await self.sender.attempt(job)
        except Exception as exc:  # the sender promises not to raise; if it does,
            # the attempt is still recorded, or the delivery would be claimed again forever.
            log.exception("delivery %d: the sender raised", job.delivery_id)
            result = AttemptResult(job, time.time(), 0, Outcome.FAILURE,
                                   error=f"internal error: {type(exc).__name__}: {exc}"[:2000],
                                   next_attempt_in=self.sender.retry.delay(
                                       job.attempt, Outcome.FAILURE))
        ATTEMPTS.labels(result.outcome.value).inc()
        ATTEMPT_SECONDS.observe(result.duration_ms / 1000)
        if result.error:
            log.info("delivery %d attempt %d to %s: %s", job.delivery_id, job.attempt, job.url,
                     result.error)
        self._results.append(result)
        if len(self._results) >= 50 or len(self._in_flight) <= 1:
            self._progress.set()

    async def _flush(self) -> None:
        if not self._results:
            return
        batch, self._results = self._results, []
        try:
            await self._call(self.store.record, batch, self.config.disable_after)
        except BaseException:
            self._results[:0] = batch  # recorded by the next flush, not lost
            raise
        self.delivered += len(batch)

    async def _drain(self) -> None:
        try:
            if self._relaying is not None:
                # Bounded like the attempts; a round cut short is relayed again after its
                # lease (the idempotency key makes the repeat harmless).
                done, _ = await asyncio.wait({self._relaying},
                                             timeout=self.config.shutdown_timeout)
                if not done:
                    self._relaying.cancel()
                    await asyncio.wait({self._relaying})
                elif not self._relaying.cancelled() and self._relaying.exception() is not None:
                    log.error("the last relay round failed", exc_info=self._relaying.exception())
            if self._in_flight:
                _, pending = await asyncio.wait(
                    set(self._in_flight), timeout=self.config.shutdown_timeout
                )
                for task in pending:
                    task.cancel()
                if pending:
                    log.warning("%d attempts cut short at shutdown; they are retried after "
                                "their lease (%g s)", len(pending), self.lease)
                    await asyncio.wait(pending)
            await self._flush()
        finally:
            self.store.wake()
            # The store's connections belong to the database thread: close them there.
            with contextlib.suppress(Exception):
                await self._call(self.store.close)
            self._db.shutdown(wait=True)
            self.store.wake()
            self._waiter.shutdown(wait=False)
            with contextlib.suppress(Exception):
                await self.sender.transport.aclose()
