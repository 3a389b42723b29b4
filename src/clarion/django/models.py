"""Webhook tables: listeners (endpoints), the event outbox, deliveries and their attempts.

An :class:`Event` row is the outbox: it is written by ``Hook.send`` in the caller's transaction,
so it commits or rolls back with the change that caused it. A worker later fans each event out
into one :class:`Delivery` per matching :class:`Listener`, and every try is an :class:`Attempt`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from clarion.django.encryption import EncryptedSecretField, EncryptedSecretsField, decrypt


class Listener(models.Model):  # type: ignore[misc]
    hook = models.CharField("event type", max_length=200, db_index=True)
    url = models.URLField("URL", max_length=2048)
    match = models.JSONField(
        "filter", default=dict, blank=True,
        help_text="Field conditions an event must meet (see clarion.django.match).")
    # Encrypted at rest (clarion.django.encryption); instances hold the plain values.
    secret: str = EncryptedSecretField("signing secret", max_length=500)
    previous_secrets: list[Any] = EncryptedSecretsField(default=list, blank=True,
                                                        editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                              on_delete=models.CASCADE, related_name="clarion_listeners")
    description = models.CharField(max_length=500, blank=True)
    headers = models.JSONField("extra request headers", default=dict, blank=True)
    active = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=200, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    first_failure_at = models.DateTimeField(null=True, blank=True, editable=False)
    rate_limit = models.PositiveIntegerField("rate limit (per second)", null=True, blank=True)
    rl_tokens = models.FloatField(null=True, blank=True, editable=False)
    rl_updated_at = models.DateTimeField(null=True, blank=True, editable=False)
    fifo = models.BooleanField("strict order", default=False,
                               help_text="Send one delivery at a time, in event order.")
    retry_schedule = models.JSONField(null=True, blank=True,
                                      help_text="Seconds between attempts; empty for the default.")
    timeout = models.FloatField("request timeout (s)", null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "clarion_listener"
        ordering = ["-id"]
        indexes = [models.Index(fields=["hook", "active"], name="clarion_listener_hook")]

    def __str__(self) -> str:
        return f"{self.hook} → {self.url}"

    def __repr__(self) -> str:  # never the secret
        return f"<Listener {self.pk} {self.hook} {self.url}>"

    def clean(self) -> None:
        """The bounds of :mod:`clarion.webhooks.limits`, for every path that runs
        ``full_clean``: the durian builder, the admin, the API's updates."""
        from django.core.exceptions import ValidationError

        from clarion.django import match as _match
        from clarion.errors import LimitError
        from clarion.webhooks import limits

        errors: dict[str, str] = {}
        checks = (("retry_schedule", limits.check_schedule), ("timeout", limits.check_timeout),
                  ("rate_limit", limits.check_rate_limit), ("headers", limits.check_headers))
        for name, check in checks:
            try:
                check(getattr(self, name))
            except LimitError as exc:
                errors[name] = str(exc)
        try:
            limits.check_url_length(self.url or "")
        except LimitError as exc:
            errors["url"] = str(exc)
        try:
            limits.check_filter_json(self.match)
            if not isinstance(self.match or {}, dict):
                raise ValueError("an object of field name → matcher")
            _match.filter_from_json(self.match or {})
        except ValueError as exc:  # LimitError is one
            errors["match"] = f"not a valid filter: {exc}"
        if errors:
            raise ValidationError(errors)

    def signing_secrets(self, now: Any = None) -> list[str]:
        """The current secret, then earlier ones still inside their rotation grace period."""
        return list(valid_secrets(self.secret, self.previous_secrets,
                                  (now or timezone.now()).timestamp()))

    def rotate_secret(self, grace: float | None = None, kind: str | None = None) -> str:
        """A new signing secret; the old one keeps signing too for ``grace`` seconds
        (``ROTATION_GRACE``, a day by default), so receivers can switch without a gap."""
        from clarion.django.conf import webhook_settings
        from clarion.webhooks.signing import generate_secret

        conf = webhook_settings()
        grace = conf.ROTATION_GRACE if grace is None else grace
        now = timezone.now().timestamp()
        kept = [old for old in self.previous_secrets or [] if old["expires"] > now]
        if grace > 0:
            kept.insert(0, {"secret": self.secret, "expires": now + grace})
        self.previous_secrets = kept[:MAX_OLD_SECRETS]
        self.secret = generate_secret(kind or conf.SECRET_KIND)  # type: ignore[arg-type]
        self.save(update_fields=["secret", "previous_secrets", "updated_at"])
        return str(self.secret)

    def enable(self) -> None:
        """Enable again, with a fresh failure clock. Deliveries failed meanwhile stay failed:
        ``recover(since)`` sends them."""
        self.active = True
        self.disabled_reason = ""
        self.disabled_at = None
        self.first_failure_at = None
        self.save(update_fields=["active", "disabled_reason", "disabled_at", "first_failure_at",
                                 "updated_at"])

    def disable(self, reason: str = "disabled by hand") -> None:
        from clarion.django.store import disable_listener

        disable_listener(self, reason)

    def recover(self, since: Any) -> int:
        """Send again, once each, every delivery to this listener that failed since ``since``
        (at most ``RECOVER_WINDOW``, 14 days, back). Returns how many."""
        from clarion.django.conf import webhook_settings

        earliest = timezone.now() - timedelta(seconds=webhook_settings().RECOVER_WINDOW)
        if since < earliest:
            raise ValueError(f"recovery reaches back at most to {earliest.isoformat()}")
        db = self._state.db or "default"
        count: int = Delivery.objects.using(db).filter(
            listener=self, status=Delivery.Status.FAILED, created_at__gte=since,
        ).update(status=Delivery.Status.PENDING, manual=True, ended_at=None,
                 next_attempt_at=timezone.now())
        if count:
            wake_workers(db)
        return count


class Event(models.Model):  # type: ignore[misc]
    msg_id = models.CharField("webhook-id", max_length=64, unique=True)
    hook = models.CharField("event type", max_length=200, db_index=True)
    payload = models.TextField(help_text="The exact JSON body every listener receives.")
    data = models.JSONField(default=dict, help_text="The fields listeners filter on.")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                              on_delete=models.CASCADE, related_name="clarion_events")
    retry_schedule = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    # The realtime half (clarion.django.outbox): a row with a channel is also published there,
    # by the worker, after commit. A row with no hook is a publication alone.
    channel = models.CharField(max_length=255, blank=True, default="",
                               help_text="Channel the payload is published to; empty: none.")
    publish_key = models.CharField(
        "idempotency key", max_length=255, blank=True, default="",
        help_text="The hub drops a repeated publication with this key; empty: the webhook-id.")
    relayed_at = models.DateTimeField(
        "published at", null=True, blank=True,
        help_text="When the publication ended: published, or refused by the hub (see error).")
    relay_attempts = models.PositiveIntegerField(default=0, editable=False)
    relay_next_at = models.DateTimeField(null=True, blank=True, editable=False)
    relay_error = models.TextField(blank=True, default="", editable=False)
    # POST /api/event's idempotency_key: a repeated request answers with this event.
    request_key = models.CharField(max_length=255, blank=True, default="", editable=False)

    class Meta:
        db_table = "clarion_event"
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["id"], name="clarion_event_undispatched",
                         condition=models.Q(dispatched_at__isnull=True)),
            models.Index(fields=["id"], name="clarion_event_unrelayed",
                         condition=models.Q(relayed_at__isnull=True) & ~models.Q(channel="")),
            models.Index(fields=["hook", "request_key"], name="clarion_event_request_key",
                         condition=~models.Q(request_key="")),
        ]

    @property
    def idempotency_key(self) -> str:
        """What the hub sees as the publication's idempotency key."""
        return str(self.publish_key or self.msg_id)

    def __str__(self) -> str:
        return f"{self.hook} {self.msg_id}"


class Delivery(models.Model):  # type: ignore[misc]
    class Status(models.TextChoices):  # type: ignore[misc]
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries")
    listener = models.ForeignKey(Listener, on_delete=models.CASCADE, related_name="deliveries")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    manual = models.BooleanField(default=False, help_text="The next attempt is a manual resend.")
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "clarion_delivery"
        ordering = ["-id"]
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(fields=["event", "listener"], name="clarion_delivery_once"),
        ]
        indexes = [
            models.Index(fields=["next_attempt_at"], name="clarion_delivery_due",
                         condition=models.Q(status="pending")),
            models.Index(fields=["listener", "status", "ended_at"],
                         name="clarion_delivery_listener"),
        ]

    def __str__(self) -> str:
        return f"delivery {self.pk} ({self.status})"

    def resend(self) -> None:
        """One more attempt now. A delivery that has ended gets a single manual attempt (not
        retried if it fails); one still retrying just moves its next attempt to now."""
        db = self._state.db or "default"
        now = timezone.now()
        rows = Delivery.objects.using(db).filter(pk=self.pk)
        if not rows.filter(status=Delivery.Status.PENDING).update(next_attempt_at=now):
            rows.update(status=Delivery.Status.PENDING, manual=True, ended_at=None,
                        next_attempt_at=now)
        self.refresh_from_db(using=db)
        wake_workers(db)


class Attempt(models.Model):  # type: ignore[misc]
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveSmallIntegerField()
    manual = models.BooleanField(default=False)
    url = models.CharField(max_length=2048)
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField()
    outcome = models.CharField(max_length=10)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_headers = models.JSONField(default=list, blank=True)
    response_body = models.TextField(blank=True, help_text="The first 20,000 bytes; base64 if "
                                     "not UTF-8 (see body_base64).")
    body_base64 = models.BooleanField(default=False)
    error = models.TextField(blank=True)

    class Meta:
        db_table = "clarion_attempt"
        ordering = ["-id"]
        indexes = [models.Index(fields=["delivery", "number"], name="clarion_attempt_delivery")]

    def __str__(self) -> str:
        return f"attempt {self.number} of delivery {self.delivery_id}: {self.outcome}"


class ApiKey(models.Model):  # type: ignore[misc]
    """A key for the subscriptions API. Only a hash is kept; the key is shown once."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                              related_name="clarion_api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked = models.BooleanField(default=False)

    class Meta:
        db_table = "clarion_api_key"
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name or self.owner})"

    @classmethod
    def issue(cls, owner: Any, name: str = "") -> tuple[ApiKey, str]:
        """Create a key; returns the row and the key itself (``ck_<prefix>_<secret>``)."""
        prefix = secrets.token_hex(6)
        raw = f"ck_{prefix}_{secrets.token_urlsafe(32)}"
        key = cls.objects.create(owner=owner, name=name, prefix=prefix, key_hash=_digest(raw))
        return key, raw

    @classmethod
    def authenticate(cls, raw: str) -> ApiKey | None:
        parts = raw.split("_", 2)
        if len(parts) != 3 or parts[0] != "ck":
            return None
        key = cls.objects.select_related("owner").filter(prefix=parts[1], revoked=False).first()
        if key is None or not secrets.compare_digest(key.key_hash, _digest(raw)):
            return None
        found: ApiKey = key
        return found


MAX_OLD_SECRETS = 10  # Svix keeps ten


def valid_secrets(secret: str, previous: Any, now: float) -> tuple[str, ...]:
    """The current secret, then earlier ones whose grace period (``expires``, unix time) has
    not ended. ``previous`` is the stored list, or its JSON text as a raw query returns it.

    The secrets may be as stored (encrypted; a raw query reads them so) or already decrypted
    (a model instance): both give the plain secrets."""
    if isinstance(previous, str | bytes):
        previous = json.loads(previous)
    return (decrypt(secret),
            *(decrypt(old["secret"]) for old in previous or [] if old["expires"] > now))


def wake_workers(using: str) -> None:
    """Tell idle workers there is work: NOTIFY on PostgreSQL (sent when the transaction
    commits), and any in-process worker once it commits."""
    from django.db import connections, transaction

    from clarion.django.hooks import _wake

    if connections[using].vendor == "postgresql":
        with connections[using].cursor() as cur:
            cur.execute("SELECT pg_notify('clarion_webhooks', '')")
    transaction.on_commit(_wake, using=using)


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()
