"""The worker's :class:`~clarion.webhooks.store.Store` on the Django app's tables.

:class:`PostgresStore` is the production path: fan-out, claim and record are a few set-based
statements per batch (``INSERT … SELECT`` with the ``clarion_match`` SQL function,
``FOR UPDATE SKIP LOCKED`` claims, ``unnest`` updates), so many workers share the tables without
stepping on each other, and ``LISTEN clarion_webhooks`` wakes an idle worker as soon as an event
commits. :class:`DjangoStore` does the same through the ORM for any other database (SQLite for
one worker, development and the embedded server); it filters with ``clarion_match`` where the
database has it and in Python otherwise.

The rare work (disabling a listener, writing operational events) is shared and uses the ORM.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from django.db import connections, transaction
from django.db.models import Exists, F, Min, OuterRef, Q
from django.utils import timezone

from clarion.django import match as _match
from clarion.django.hooks import ATTEMPTS_EXHAUSTED, LISTENER_DISABLED
from clarion.django.models import Attempt, Delivery, Event, Listener, valid_secrets
from clarion.errors import LimitError
from clarion.webhooks.limits import MAX_TIMEOUT, MIN_TIMEOUT, check_schedule, clamp_delay
from clarion.webhooks.retry import Outcome
from clarion.webhooks.store import AttemptResult, Job, Publication, RelayResult

log = logging.getLogger("clarion.webhooks")

OPERATIONAL_PREFIX = "clarion."
DISPATCH_TIMEOUT = 60.0  # seconds for one fan-out statement on PostgreSQL


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _body_text(body: bytes) -> tuple[str, bool]:
    # A capture cut inside a multi-byte character is still text: drop the partial character.
    for cut in range(4):
        try:
            return body[: len(body) - cut].decode("utf-8"), False
        except UnicodeDecodeError:
            continue
    return base64.b64encode(body).decode("ascii"), True


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _status(result: AttemptResult) -> str:
    if result.outcome is Outcome.SUCCESS:
        return Delivery.Status.SUCCEEDED
    return Delivery.Status.PENDING if result.next_attempt_in is not None else Delivery.Status.FAILED


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in (_json(value) or {}).items())


def _schedule(*values: Any) -> tuple[float, ...] | None:
    for value in values:
        value = _json(value)
        if value is not None:
            try:
                checked = check_schedule(value)
            except LimitError as exc:
                # Written before the bound existed, or by hand: the default schedule applies.
                log.warning("ignoring a stored retry schedule that %s", exc)
                return None
            return tuple(float(v) for v in checked or ())
    return None


def _timeout(value: Any) -> float | None:
    return None if value is None else min(max(float(value), MIN_TIMEOUT), MAX_TIMEOUT)


def _next_at(now: datetime, delay: float | None) -> datetime | None:
    return None if delay is None else now + timedelta(seconds=clamp_delay(delay))


def _pg_job(row: tuple[Any, ...]) -> Job:
    (did, lid, attempts, manual, msg_id, hook, payload, ev_schedule, url, secret, previous,
     l_schedule, timeout, headers, _rate, now) = row
    return Job(
        delivery_id=did, listener_id=lid, attempt=attempts + 1, message_id=msg_id,
        hook=hook, url=url, body=payload.encode(),
        secrets=valid_secrets(secret, previous, float(now)),
        schedule=_schedule(l_schedule, ev_schedule), timeout=_timeout(timeout),
        manual=manual, headers=_headers(headers),
    )


def _guarded_job(delivery_id: int, listener_id: int, attempt: int, url: str,
                 build: Callable[[], Job]) -> Job:
    """``build()``, or, when the stored row cannot be turned into a job, a job that the sender
    records as a failed attempt naming the reason (never a claim that fails forever)."""
    try:
        return build()
    except Exception as exc:  # any defect of one row stays with that delivery
        log.exception("delivery %d cannot be attempted", delivery_id)
        return Job(delivery_id=delivery_id, listener_id=listener_id, attempt=attempt,
                   message_id="", hook="", url=url, body=b"", secrets=(),
                   problem=f"the delivery could not be prepared: {type(exc).__name__}: {exc}")


def fan_out(db: str, events: Sequence[Event]) -> int:
    """One delivery per listener that matches each event, and the events marked dispatched;
    in the caller's transaction. Returns how many deliveries were written."""
    vendor = connections[db].vendor
    now = timezone.now()
    rows: list[Delivery] = []
    for event in events:
        if not event.hook:
            continue  # a publication alone: no webhook listeners
        candidates = Listener.objects.using(db).filter(hook=event.hook, active=True)
        if event.hook.startswith(OPERATIONAL_PREFIX):
            # about one owner's listener: never to anyone else (nor app-wide ones)
            candidates = candidates.filter(owner_id=event.owner_id)
        elif event.owner_id is not None:
            candidates = candidates.filter(owner_id=event.owner_id)
        if vendor == "sqlite":
            ids = list(candidates.extra(
                where=['clarion_match("clarion_listener"."match", %s)'],
                params=[json.dumps(event.data)],
            ).values_list("id", flat=True))
        else:
            ids = [
                lid for lid, spec in candidates.values_list("id", "match")
                if _match.matches_json(spec, event.data)
            ]
        rows.extend(
            Delivery(event_id=event.id, listener_id=lid, next_attempt_at=now, created_at=now)
            for lid in ids
        )
    Delivery.objects.using(db).bulk_create(rows, ignore_conflicts=True)
    Event.objects.using(db).filter(id__in=[e.id for e in events]).update(dispatched_at=now)
    return len(rows)


# Claims of publications take this transaction-scoped lock on PostgreSQL, so two workers never
# hand out the same channel's publications at once (one would publish ahead of the other).
RELAY_LOCK = 0x636C6172  # "clar"
RELAY_SCAN = 4  # a claim looks at this many times its limit of the oldest unrelayed rows


class DjangoStore:
    """Any database Django supports, through the ORM.

    ``publications``: the worker relays publications (it has a relay), so ``next_due`` counts
    them; without one they wait in the outbox and must not keep the worker busy."""

    def __init__(self, using: str = "default", *, publications: bool = False) -> None:
        self.using = using
        self.publications = publications
        self._wake = threading.Event()

    # -- fan-out -------------------------------------------------------------------------------
    def dispatch(self, limit: int) -> int:
        db = self.using
        with transaction.atomic(using=db):
            events = list(
                Event.objects.using(db)
                .select_for_update(**self._lock_options())
                .filter(dispatched_at__isnull=True)
                .order_by("id")
                .only("id", "hook", "data", "owner_id")[:limit]
            )
            if not events:
                return 0
            fan_out(db, events)
        return len(events)

    def _lock_options(self) -> dict[str, bool]:
        features = connections[self.using].features
        return {"skip_locked": True} if features.has_select_for_update_skip_locked else {}

    # -- claiming ------------------------------------------------------------------------------
    def _due(self) -> Any:
        now = timezone.now()
        older_pending = Delivery.objects.filter(
            listener_id=OuterRef("listener_id"), status=Delivery.Status.PENDING,
            id__lt=OuterRef("id"),
        )
        return (
            Delivery.objects.using(self.using)
            .filter(status=Delivery.Status.PENDING, next_attempt_at__lte=now,
                    listener__active=True)
            .exclude(Q(listener__fifo=True) & Exists(older_pending))
        )

    def claim(self, limit: int, lease: float) -> list[Job]:
        db = self.using
        with transaction.atomic(using=db):
            due = list(
                self._due()
                .select_for_update(of=("self",), **self._lock_options())
                .select_related("event", "listener")
                .order_by("next_attempt_at")[:limit]
            )
            if not due:
                return []
            now = timezone.now()
            longest = max(lease, *((_timeout(d.listener.timeout) or 0) + 10 for d in due))
            Delivery.objects.using(db).filter(id__in=[d.id for d in due]).update(
                next_attempt_at=now + timedelta(seconds=longest)
            )
            stamp = now.timestamp()
            jobs = [_guarded_job(d.id, d.listener_id, d.attempts + 1, d.listener.url,
                                 partial(self._job, d, stamp)) for d in due]
            return self._rate_limit(jobs, {d.listener_id: d.listener.rate_limit for d in due})

    def _job(self, d: Delivery, now: float) -> Job:
        listener, event = d.listener, d.event
        return Job(
            delivery_id=d.id, listener_id=d.listener_id, attempt=d.attempts + 1,
            message_id=event.msg_id, hook=event.hook, url=listener.url,
            body=event.payload.encode(),
            secrets=valid_secrets(listener.secret, listener.previous_secrets, now),
            schedule=_schedule(listener.retry_schedule, event.retry_schedule),
            timeout=_timeout(listener.timeout), manual=d.manual,
            headers=_headers(listener.headers),
        )

    def _rate_limit(self, jobs: list[Job], limits: dict[int, int | None]) -> list[Job]:
        """A token bucket per listener, in the listener's row (so every worker shares it):
        ``rate_limit`` tokens a second, at most one second's worth saved up. Jobs beyond the
        tokens go back, spread over the time the tokens take to come."""
        groups: dict[int, list[Job]] = defaultdict(list)
        for job in jobs:
            if limits.get(job.listener_id):
                groups[job.listener_id].append(job)
        if not groups:
            return jobs
        deferred: set[int] = set()
        now = timezone.now()
        for listener_id, group in groups.items():
            listener = (Listener.objects.using(self.using).select_for_update()
                        .only("rate_limit", "rl_tokens", "rl_updated_at").get(id=listener_id))
            rate = float(listener.rate_limit)
            tokens = rate if listener.rl_tokens is None else listener.rl_tokens
            if listener.rl_updated_at is not None:
                tokens = min(rate, tokens + (now - listener.rl_updated_at).total_seconds() * rate)
            take = min(int(tokens), len(group))
            tokens -= take
            for i, job in enumerate(group[take:]):
                deferred.add(job.delivery_id)
                wait = (i + 1 - tokens) / rate
                Delivery.objects.using(self.using).filter(id=job.delivery_id).update(
                    next_attempt_at=now + timedelta(seconds=max(wait, 0.001)))
            Listener.objects.using(self.using).filter(id=listener_id).update(
                rl_tokens=tokens, rl_updated_at=now)
        return [j for j in jobs if j.delivery_id not in deferred]

    # -- recording -----------------------------------------------------------------------------
    def record(self, results: Sequence[AttemptResult], disable_after: float) -> None:
        if not results:
            return
        with transaction.atomic(using=self.using):
            self._write_attempts(results)
            self._update_deliveries(results)
            self._listener_health(results, disable_after)

    def _write_attempts(self, results: Sequence[AttemptResult]) -> None:
        rows = []
        for r in results:
            text, b64 = _body_text(r.response_body)
            rows.append(Attempt(
                delivery_id=r.job.delivery_id, number=r.job.attempt, manual=r.job.manual,
                url=r.job.url, started_at=_at(r.started_at), duration_ms=r.duration_ms,
                outcome=r.outcome.value, status_code=r.status_code,
                response_headers=r.response_headers, response_body=text, body_base64=b64,
                error=r.error,
            ))
        Attempt.objects.using(self.using).bulk_create(rows)

    def _update_deliveries(self, results: Sequence[AttemptResult]) -> None:
        now = timezone.now()
        for r in results:
            status = _status(r)
            Delivery.objects.using(self.using).filter(
                id=r.job.delivery_id, status=Delivery.Status.PENDING
            ).update(
                status=status, attempts=r.job.attempt, manual=False,
                next_attempt_at=_next_at(now, r.next_attempt_in),
                last_status_code=r.status_code, last_error=r.error[:2000],
                last_attempt_at=_at(r.started_at),
                ended_at=None if status == Delivery.Status.PENDING else now,
            )

    def _listener_health(self, results: Sequence[AttemptResult], disable_after: float) -> None:
        """Successes reset a listener's failure clock; failures start it; a 410 or a clock
        older than ``disable_after`` disables the listener. Operational events follow."""
        db = self.using
        now = timezone.now()
        last: dict[int, AttemptResult] = {}
        for r in results:
            last[r.job.listener_id] = r  # the latest result per listener decides
        ok = [lid for lid, r in last.items() if r.outcome is Outcome.SUCCESS]
        gone = [lid for lid, r in last.items() if r.outcome is Outcome.GONE]
        failing = [lid for lid, r in last.items()
                   if r.outcome in (Outcome.FAILURE, Outcome.OVERLOAD)]
        listeners = Listener.objects.using(db)
        if ok:
            listeners.filter(id__in=ok, first_failure_at__isnull=False).update(
                first_failure_at=None)
        if failing:
            listeners.filter(id__in=failing, first_failure_at__isnull=True).update(
                first_failure_at=now)
            stale = listeners.filter(id__in=failing, active=True,
                                     first_failure_at__lt=now - timedelta(seconds=disable_after))
            self._disable(stale, f"failing for more than {disable_after / 86400:g} days")
        if gone:
            self._disable(listeners.filter(id__in=gone, active=True),
                          "the receiver answered 410 Gone")
        for r in results:
            if (_status(r) == Delivery.Status.FAILED and r.outcome is not Outcome.GONE
                    and not r.job.manual and not r.job.hook.startswith(OPERATIONAL_PREFIX)):
                owner = Listener.objects.using(db).filter(id=r.job.listener_id).values_list(
                    "owner_id", flat=True).first()
                ATTEMPTS_EXHAUSTED.send(
                    None, using=db, owner=owner, delivery_id=r.job.delivery_id,
                    listener_id=r.job.listener_id, msg_id=r.job.message_id, hook=r.job.hook,
                    url=r.job.url, attempts=r.job.attempt, status_code=r.status_code,
                    error=r.error)

    def _disable(self, queryset: Any, reason: str) -> None:
        for listener in queryset.select_for_update():
            disable_listener(listener, reason, using=self.using)

    # -- publications ----------------------------------------------------------------------
    def _relay_lock(self) -> None:
        """Serialize claims (SQLite's write transactions already are)."""

    def claim_publications(self, limit: int, lease: float) -> list[Publication]:
        """The oldest unrelayed publications, per channel a prefix in outbox order: a channel
        whose oldest publication is leased or backing off gives none, so its order holds
        across workers and retries."""
        db = self.using
        with transaction.atomic(using=db):
            self._relay_lock()
            now = timezone.now()
            rows = list(
                Event.objects.using(db)
                .filter(relayed_at__isnull=True).exclude(channel="")
                .order_by("id")
                .values_list("id", "channel", "payload", "publish_key", "msg_id",
                             "relay_attempts", "relay_next_at")[:limit * RELAY_SCAN]
            )
            blocked: set[str] = set()
            claimed: list[Publication] = []
            for eid, channel, payload, key, msg_id, attempts, next_at in rows:
                if channel in blocked:
                    continue
                if next_at is not None and next_at > now:
                    blocked.add(channel)
                    continue
                claimed.append(Publication(eid, channel, payload.encode(), key or msg_id,
                                           attempts + 1))
                if len(claimed) >= limit:
                    break
            if claimed:
                Event.objects.using(db).filter(id__in=[p.event_id for p in claimed]).update(
                    relay_next_at=now + timedelta(seconds=lease))
            return claimed

    def record_publications(self, results: Sequence[RelayResult]) -> None:
        if not results:
            return
        db = self.using
        now = timezone.now()
        rows = Event.objects.using(db)
        with transaction.atomic(using=db):
            done = [r.publication.event_id for r in results if r.attempted and not r.error]
            if done:
                rows.filter(id__in=done).update(relayed_at=now, relay_next_at=None,
                                                relay_error="",
                                                relay_attempts=F("relay_attempts") + 1)
            for r in results:
                if not r.error and r.attempted:
                    continue
                fields: dict[str, Any] = {}
                if r.attempted:
                    fields.update(relay_error=r.error[:2000].replace("\x00", ""),
                                  relay_attempts=F("relay_attempts") + 1)
                if r.retry_in is None:
                    fields.update(relayed_at=now, relay_next_at=None)
                else:
                    fields.update(relay_next_at=now + timedelta(seconds=r.retry_in))
                rows.filter(id=r.publication.event_id).update(**fields)

    def _publications_due(self) -> float | None:
        pending = (Event.objects.using(self.using)
                   .filter(relayed_at__isnull=True).exclude(channel=""))
        if pending.filter(Q(relay_next_at__isnull=True)
                          | Q(relay_next_at__lte=timezone.now())).exists():
            return 0.0
        first: datetime | None = pending.aggregate(at=Min("relay_next_at"))["at"]
        return None if first is None else max(0.0, (first - timezone.now()).total_seconds())

    # -- waiting and housekeeping --------------------------------------------------------------
    def next_due(self) -> float | None:
        return _earliest(self._deliveries_due(),
                         self._publications_due() if self.publications else None)

    def _deliveries_due(self) -> float | None:
        db = self.using
        if Event.objects.using(db).filter(dispatched_at__isnull=True).exists():
            return 0.0
        first: datetime | None = (Delivery.objects.using(db)
                                  .filter(status=Delivery.Status.PENDING, listener__active=True)
                                  .aggregate(at=Min("next_attempt_at"))["at"])
        if first is None:
            return None
        wait: float = (first - timezone.now()).total_seconds()
        return max(0.0, wait)

    def wait(self, timeout: float) -> bool:
        woken = self._wake.wait(timeout)
        self._wake.clear()
        return woken

    def wake(self) -> None:
        self._wake.set()

    def cleanup(self, retention: float) -> int:
        db = self.using
        cutoff = timezone.now() - timedelta(seconds=retention)
        pending = Delivery.objects.filter(event_id=OuterRef("id"), status=Delivery.Status.PENDING)
        removed = 0
        while True:
            ids = list(
                Event.objects.using(db)
                .filter(created_at__lt=cutoff, dispatched_at__isnull=False)
                .filter(Q(channel="") | Q(relayed_at__isnull=False))  # never one unpublished
                .exclude(Exists(pending))
                .values_list("id", flat=True)[:5000]
            )
            if not ids:
                return removed
            with transaction.atomic(using=db):
                Attempt.objects.using(db).filter(delivery__event_id__in=ids).delete()
                Delivery.objects.using(db).filter(event_id__in=ids).delete()
                Event.objects.using(db).filter(id__in=ids).delete()
            removed += len(ids)

    def close(self) -> None:
        connections[self.using].close()


class PostgresStore(DjangoStore):
    """Set-based SQL for the hot path, and LISTEN/NOTIFY for wake-ups."""

    def __init__(self, using: str = "default", *, publications: bool = False) -> None:
        super().__init__(using, publications=publications)
        self._listen: Any = None
        self._stop = False

    def dispatch(self, limit: int) -> int:
        with transaction.atomic(using=self.using), connections[self.using].cursor() as cur:
            # Filters are RE2-checked when saved, so matching is linear; this bound is for what
            # slipped past (rows written by hand): the fan-out fails loudly and is retried
            # after the worker's backoff, where it would otherwise hold its locks for as long
            # as PostgreSQL's regex engine needs.
            cur.execute("SELECT set_config('statement_timeout', %s, true)",
                        [f"{int(DISPATCH_TIMEOUT * 1000)}ms"])
            cur.execute(
                """
                WITH ev AS (
                  SELECT id, hook, data, owner_id FROM clarion_event
                  WHERE dispatched_at IS NULL ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED
                ), ins AS (
                  INSERT INTO clarion_delivery (event_id, listener_id, status, attempts,
                    next_attempt_at, manual, last_error, created_at)
                  SELECT ev.id, l.id, 'pending', 0, now(), false, '', now()
                  FROM ev JOIN clarion_listener l ON l.hook = ev.hook AND l.active
                    AND (ev.owner_id IS NULL OR l.owner_id = ev.owner_id)
                    AND (ev.hook NOT LIKE 'clarion.%%'
                         OR l.owner_id IS NOT DISTINCT FROM ev.owner_id)
                    AND clarion_match(l."match", ev.data)
                  ORDER BY ev.id, l.id
                  ON CONFLICT DO NOTHING
                  RETURNING 1
                )
                UPDATE clarion_event e SET dispatched_at = now()
                FROM ev WHERE e.id = ev.id
                """,
                [limit],
            )
            return int(cur.rowcount)

    def claim(self, limit: int, lease: float) -> list[Job]:
        with transaction.atomic(using=self.using), connections[self.using].cursor() as cur:
            cur.execute(
                """
                WITH c AS (
                  SELECT d.id FROM clarion_delivery d
                  JOIN clarion_listener l ON l.id = d.listener_id
                  WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND l.active
                    AND (NOT l.fifo OR NOT EXISTS (
                      SELECT 1 FROM clarion_delivery p WHERE p.listener_id = d.listener_id
                        AND p.status = 'pending' AND p.id < d.id))
                  ORDER BY d.next_attempt_at LIMIT %s FOR UPDATE OF d SKIP LOCKED
                )
                UPDATE clarion_delivery d SET next_attempt_at = now() + make_interval(
                  secs => GREATEST(%s, LEAST(coalesce(l.timeout, 0), %s) + 10))
                FROM c, clarion_event e, clarion_listener l
                WHERE d.id = c.id AND e.id = d.event_id AND l.id = d.listener_id
                RETURNING d.id, d.listener_id, d.attempts, d.manual, e.msg_id, e.hook, e.payload,
                  e.retry_schedule, l.url, l.secret, l.previous_secrets, l.retry_schedule,
                  l.timeout, l.headers, l.rate_limit, extract(epoch from now())
                """,
                [limit, lease, MAX_TIMEOUT],
            )
            rows = cur.fetchall()
            if not rows:
                return []
            jobs = []
            limits: dict[int, int | None] = {}
            for row in rows:
                did, lid, attempts, url, rate = row[0], row[1], row[2], row[8], row[14]
                jobs.append(_guarded_job(did, lid, attempts + 1, url, partial(_pg_job, row)))
                limits[lid] = rate
            return self._rate_limit(jobs, limits)

    def _write_attempts(self, results: Sequence[AttemptResult]) -> None:
        cols: list[list[Any]] = [[] for _ in range(12)]
        for r in results:
            text, b64 = _body_text(r.response_body)
            for col, value in zip(cols, (
                r.job.delivery_id, r.job.attempt, r.job.manual, r.job.url, _at(r.started_at),
                r.duration_ms, r.outcome.value, r.status_code, json.dumps(r.response_headers),
                text.replace("\x00", ""), b64, r.error.replace("\x00", ""),
            ), strict=True):
                col.append(value)
        with connections[self.using].cursor() as cur:
            cur.execute(
                """
                INSERT INTO clarion_attempt (delivery_id, number, manual, url, started_at,
                  duration_ms, outcome, status_code, response_headers, response_body,
                  body_base64, error)
                SELECT d, n, m, u, s, ms, o, c, h::jsonb, b, b64, err FROM unnest(
                  %s::bigint[], %s::int[], %s::bool[], %s::text[], %s::timestamptz[],
                  %s::int[], %s::text[], %s::int[], %s::text[], %s::text[], %s::bool[],
                  %s::text[]) AS t(d, n, m, u, s, ms, o, c, h, b, b64, err)
                """,
                cols,
            )

    def _update_deliveries(self, results: Sequence[AttemptResult]) -> None:
        ids, statuses, numbers, delays, codes, errors, started = ([] for _ in range(7))
        for r in results:
            ids.append(r.job.delivery_id)
            statuses.append(str(_status(r)))
            numbers.append(r.job.attempt)
            delays.append(None if r.next_attempt_in is None else clamp_delay(r.next_attempt_in))
            codes.append(r.status_code)
            errors.append(r.error[:2000].replace("\x00", ""))
            started.append(_at(r.started_at))
        with connections[self.using].cursor() as cur:
            cur.execute(
                """
                UPDATE clarion_delivery d SET status = u.status, attempts = u.num, manual = false,
                  next_attempt_at = CASE WHEN u.delay IS NULL THEN NULL
                                         ELSE now() + make_interval(secs => u.delay) END,
                  last_status_code = u.code, last_error = u.error, last_attempt_at = u.started,
                  ended_at = CASE WHEN u.status = 'pending' THEN NULL ELSE now() END
                FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::float8[], %s::int[],
                            %s::text[], %s::timestamptz[])
                  AS u(id, status, num, delay, code, error, started)
                WHERE d.id = u.id AND d.status = 'pending'
                """,
                [ids, statuses, numbers, delays, codes, errors, started],
            )

    def _listener_health(self, results: Sequence[AttemptResult], disable_after: float) -> None:
        # The common case, all successes to healthy listeners, costs one indexed statement.
        if all(r.outcome is Outcome.SUCCESS for r in results):
            ids = sorted({r.job.listener_id for r in results})
            with connections[self.using].cursor() as cur:
                cur.execute(
                    "UPDATE clarion_listener SET first_failure_at = NULL "
                    "WHERE id = ANY(%s) AND first_failure_at IS NOT NULL",
                    [ids],
                )
            return
        super()._listener_health(results, disable_after)

    def _relay_lock(self) -> None:
        with connections[self.using].cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [RELAY_LOCK])

    def next_due(self) -> float | None:
        return _earliest(self._pg_deliveries_due(),
                         self._publications_due() if self.publications else None)

    def _pg_deliveries_due(self) -> float | None:
        with connections[self.using].cursor() as cur:
            cur.execute(
                """
                SELECT CASE WHEN EXISTS (SELECT 1 FROM clarion_event WHERE dispatched_at IS NULL)
                  THEN 0 ELSE (SELECT extract(epoch from min(d.next_attempt_at) - now())
                    FROM clarion_delivery d JOIN clarion_listener l ON l.id = d.listener_id
                    WHERE d.status = 'pending' AND l.active) END
                """
            )
            row = cur.fetchone()
        return None if row[0] is None else max(0.0, float(row[0]))

    def wait(self, timeout: float) -> bool:
        """Block on ``LISTEN clarion_webhooks`` (psycopg 3), in slices so ``wake`` is prompt."""
        if self._wake.is_set():
            self._wake.clear()
            return True
        conn = self._listener()
        if conn is None:
            return super().wait(timeout)
        deadline = timezone.now().timestamp() + timeout
        while not self._wake.is_set():
            left = deadline - timezone.now().timestamp()
            if left <= 0:
                return False
            try:
                got = False
                for _ in conn.notifies(timeout=min(left, 0.5), stop_after=1):
                    got = True
                if got:
                    # Outside the loop: the generator holds the connection's lock until it ends.
                    self._drain(conn)
                    return True
            except Exception as exc:  # noqa: BLE001  # a lost LISTEN connection: reconnect later
                if self._stop:
                    return True  # closed under us at shutdown
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
                self._close_listener()
                return super().wait(min(timeout, 1.0))
        self._wake.clear()
        return True

    @staticmethod
    def _drain(conn: Any) -> None:
        # Several commits may have notified; one wake-up covers them all.
        for _ in conn.notifies(timeout=0.001, stop_after=1000):  # 0 would mean "forever"
            pass

    def _listener(self) -> Any:
        if self._listen is not None:
            return self._listen
        wrapper = connections[self.using]
        try:
            import psycopg  # noqa: F401  # LISTEN needs psycopg 3's notifies()
        except ImportError:
            return None
        conn = wrapper.get_new_connection(wrapper.get_connection_params())
        if not hasattr(conn, "notifies"):
            conn.close()
            return None
        conn.autocommit = True
        conn.execute("LISTEN clarion_webhooks")
        self._listen = conn
        return conn

    def _close_listener(self) -> None:
        if self._listen is not None:
            try:
                self._listen.close()
            finally:
                self._listen = None

    def close(self) -> None:
        self._stop = True
        self._close_listener()
        super().close()


def _earliest(*waits: float | None) -> float | None:
    known = [w for w in waits if w is not None]
    return min(known) if known else None


def open_store(using: str = "default", *, publications: bool = False) -> DjangoStore:
    """The store for database ``using``; ``publications``: its worker relays them."""
    if connections[using].vendor == "postgresql":
        return PostgresStore(using, publications=publications)
    return DjangoStore(using, publications=publications)


def disable_listener(listener: Listener, reason: str, *, using: str | None = None) -> None:
    """Disable a listener, fail its pending deliveries (recoverable later) and send the
    ``clarion.listener.disabled`` operational event, all in one transaction."""
    db = using or listener._state.db or "default"
    now = timezone.now()
    with transaction.atomic(using=db):
        updated = Listener.objects.using(db).filter(id=listener.id, active=True).update(
            active=False, disabled_reason=reason[:200], disabled_at=now)
        if not updated:
            return
        Delivery.objects.using(db).filter(
            listener_id=listener.id, status=Delivery.Status.PENDING
        ).update(status=Delivery.Status.FAILED, ended_at=now, next_attempt_at=None,
                 last_error=f"listener disabled: {reason}"[:2000])
        if not listener.hook.startswith(OPERATIONAL_PREFIX):
            LISTENER_DISABLED.send(None, using=db, owner=listener.owner_id,
                                   listener_id=listener.id, hook=listener.hook,
                                   url=listener.url, reason=reason)
    listener.active = False
    listener.disabled_reason = reason[:200]
    listener.disabled_at = now


def register_sqlite_match(sender: Any, connection: Any, **kwargs: Any) -> None:
    """``connection_created`` receiver: gives SQLite the ``clarion_match`` function."""
    if connection.vendor != "sqlite":
        return

    def clarion_match(spec: str | None, data: str | None) -> bool:
        try:
            return _match.matches_json(json.loads(spec or "{}"), json.loads(data or "{}"))
        except Exception:  # raised into SQLite, it would fail the fan-out for every event
            # A filter that cannot be read or evaluated matches nothing (the admin shows it).
            log.warning("listener filter %.200s cannot be evaluated", spec, exc_info=True)
            return False

    connection.connection.create_function("clarion_match", 2, clarion_match, deterministic=True)

