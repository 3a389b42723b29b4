"""The contract between the delivery worker and where deliveries live.

The worker never touches a database; it calls a :class:`Store`. The Django app's store
(``clarion.django.store``) implements it on the ORM's tables, with PostgreSQL's
``FOR UPDATE SKIP LOCKED`` and ``LISTEN/NOTIFY`` where available. A store's methods are
blocking: the worker runs them on one thread of its own, so a store may hold a connection per
thread, as Django's do.

Claiming is a lease: ``claim`` moves each claimed delivery's due time ``lease`` seconds ahead.
If the worker dies before ``record``, the delivery simply becomes due again when the lease
ends and another worker sends it (at least once; the ``webhook-id`` stays the same).

Publications (events with a channel) are leased the same way: ``claim_publications`` hands
out, per channel, the oldest ones not yet relayed, never one whose earlier sibling is still
leased elsewhere, so a channel's publications reach the hub in outbox order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from clarion.webhooks.retry import Outcome


@dataclass(slots=True)
class Job:
    """One claimed delivery: everything needed to make the next attempt."""

    delivery_id: int
    listener_id: int
    attempt: int  # 1-based number of the attempt about to be made
    message_id: str  # the webhook-id: the event's, the same on every attempt
    hook: str
    url: str
    body: bytes
    secrets: tuple[str, ...]  # signing keys valid now (several during a rotation's grace period)
    schedule: tuple[float, ...] | None = None  # listener's or hook's override of the policy
    timeout: float | None = None  # listener's override of the request timeout
    manual: bool = False  # a manual resend gets one attempt, no retries
    headers: tuple[tuple[str, str], ...] = ()  # listener's extra request headers
    # Why the delivery cannot be attempted (its stored row cannot be read: a secret no key
    # decrypts, a corrupt column). The sender records a failed attempt with this reason, so
    # the delivery follows its retry schedule instead of failing every claim forever.
    problem: str = ""


@dataclass(slots=True)
class AttemptResult:
    job: Job
    started_at: float  # unix time
    duration_ms: int
    outcome: Outcome
    status_code: int | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    response_body: bytes = b""
    error: str = ""
    next_attempt_in: float | None = None  # seconds; None: the delivery has ended


@dataclass(slots=True)
class Publication:
    """One claimed publication: what the relay sends to the hub."""

    event_id: int
    channel: str
    data: bytes  # JSON
    idempotency_key: str
    attempt: int  # 1-based


@dataclass(slots=True)
class RelayResult:
    publication: Publication
    error: str = ""  # empty (and attempted): published
    retry_in: float | None = None  # seconds; None with an error: refused for good
    attempted: bool = True  # False: held back behind an earlier failure of its channel


class Store(Protocol):
    def dispatch(self, limit: int) -> int:
        """Fan out up to ``limit`` new events into deliveries, one per matching listener."""
        ...

    def claim(self, limit: int, lease: float) -> list[Job]:
        """Take up to ``limit`` due deliveries, each leased for ``lease`` seconds."""
        ...

    def record(self, results: Sequence[AttemptResult], disable_after: float) -> None:
        """Store attempts, reschedule or end deliveries, and update listeners' health: a 410
        or failures spanning more than ``disable_after`` seconds disable a listener."""
        ...

    def next_due(self) -> float | None:
        """Seconds until the earliest pending delivery is due (0 if one is due now)."""
        ...

    def wait(self, timeout: float) -> bool:
        """Block until new work may have arrived or ``timeout`` passes; True if woken."""
        ...

    def wake(self) -> None:
        """Make a ``wait`` in progress return (used at shutdown)."""
        ...

    def cleanup(self, retention: float) -> int:
        """Delete events (with their deliveries and attempts) older than ``retention``
        seconds that have nothing pending; returns how many events went."""
        ...

    def close(self) -> None: ...


class PublicationStore(Protocol):
    """What a store offers when its worker relays publications (the worker's ``relay``)."""

    def claim_publications(self, limit: int, lease: float) -> list[Publication]:
        """Up to ``limit`` due publications in outbox order, each leased for ``lease`` s."""
        ...

    def record_publications(self, results: Sequence[RelayResult]) -> None:
        """Mark publications relayed, refused for good, or due again after ``retry_in``."""
        ...

