"""A built-in Django configuration for running the webhook app without a Django project.

``clarion serve --webhooks-db FILE``, ``clarion worker --db FILE`` and ``clarion manage`` use it,
so FastAPI or Flask applications get the subscriptions API, the dashboard and durable delivery
by talking HTTP to Clarion. Storage is one SQLite file (WAL mode: the dashboard reads while the
worker writes); the secret key lives next to it, created on first use.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from clarion.errors import ConfigError

log = logging.getLogger("clarion.webhooks")

DEFAULT_DB = "clarion-webhooks.sqlite3"
API_PUBLISH_LEASE = 5.0  # seconds the worker waits before publishing an API event itself
PREFIX = "webhooks/"


def _secret_key(db: Path) -> str:
    env = os.environ.get("CLARION_SECRET_KEY")
    if env:
        return env
    path = db.with_suffix(db.suffix + ".key")
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


def sqlite_options() -> dict[str, Any]:
    """SQLite as it supports concurrency: WAL (readers never block the writer), a busy timeout
    (a writer waits for the lock instead of failing at once), and transactions that take the
    write lock when they begin. A transaction that starts by reading and writes later cannot
    wait for the lock: when another writer committed in between, SQLite answers "database is
    locked" at once, whatever the timeout (the embedded worker died of exactly that while the
    API was writing). ``init_command`` and ``transaction_mode`` came with Django 5.1."""
    import django

    if django.VERSION < (5, 1):
        raise ConfigError("the built-in webhook app needs Django 5.1 or newer "
                          f"(found {django.get_version()})")
    return {
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
    }


def configure(db: str | os.PathLike[str] = DEFAULT_DB, *, webhooks: dict[str, Any] | None = None,
              migrate: bool = True) -> None:
    """Configure Django for the built-in app (once per process) and bring the database up to
    date. ``webhooks`` is ``CLARION['WEBHOOKS']``."""
    import django
    from django.conf import settings

    path = Path(db).resolve()
    if webhooks is None:
        webhooks = _env_webhooks()
    if not settings.configured:
        settings.configure(
            SECRET_KEY=_secret_key(path),
            DEBUG=False,
            ALLOWED_HOSTS=["*"],
            USE_TZ=True,
            ROOT_URLCONF="clarion.django.embedded_urls",
            INSTALLED_APPS=[
                "django.contrib.contenttypes", "django.contrib.auth",
                "django.contrib.sessions", "django.contrib.messages", "clarion.django",
            ],
            MIDDLEWARE=[
                "django.middleware.security.SecurityMiddleware",
                "django.contrib.sessions.middleware.SessionMiddleware",
                "django.middleware.common.CommonMiddleware",
                "django.middleware.csrf.CsrfViewMiddleware",
                "django.contrib.auth.middleware.AuthenticationMiddleware",
                "django.contrib.messages.middleware.MessageMiddleware",
                "django.middleware.clickjacking.XFrameOptionsMiddleware",
            ],
            X_FRAME_OPTIONS="DENY",
            SECURE_CONTENT_TYPE_NOSNIFF=True,
            SECURE_REFERRER_POLICY="same-origin",
            SECURE_CROSS_ORIGIN_OPENER_POLICY="same-origin",
            SESSION_COOKIE_HTTPONLY=True,
            SESSION_COOKIE_SAMESITE="Lax",
            CSRF_COOKIE_SAMESITE="Lax",
            # Behind TLS (the hub's own or a proxy's), CLARION_SECURE_COOKIES=1 keeps the
            # session and CSRF cookies off plain HTTP.
            SESSION_COOKIE_SECURE=_flag("CLARION_SECURE_COOKIES"),
            CSRF_COOKIE_SECURE=_flag("CLARION_SECURE_COOKIES"),
            TEMPLATES=[{
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {"context_processors": [
                    "django.template.context_processors.request",
                    "django.contrib.auth.context_processors.auth",
                    "django.contrib.messages.context_processors.messages",
                ]},
            }],
            DATABASES={"default": {
                "ENGINE": "django.db.backends.sqlite3", "NAME": str(path),
                "OPTIONS": sqlite_options(),
            }},
            DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
            STATIC_URL=f"/{PREFIX}static/",
            LOGIN_URL=f"/{PREFIX}login/",
            LOGIN_REDIRECT_URL=f"/{PREFIX}",
            SECRET_KEY_FALLBACKS=_words("CLARION_SECRET_KEY_FALLBACKS"),
            CLARION={"WEBHOOKS": webhooks or {},
                     **({"ENCRYPTION_KEYS": keys} if (keys := _words("CLARION_ENCRYPTION_KEYS"))
                        else {})},
        )
        django.setup()
    if migrate:
        from django.core.management import call_command

        call_command("migrate", verbosity=0)


def attach_hub(hub: Any) -> None:
    """Give the hub this process runs (``serve --webhooks-db``) this app's outbox for its
    ``POST /api/event``; the command line calls it, as it builds the worker with the hub's
    own relay (``worker.hub_relay``)."""
    hub.api.events = EventSink()


class EventSink:
    """``POST /api/event`` on the webhook outbox; database work on a thread of its own (the
    hub's event loop never blocks on SQLite)."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._db = ThreadPoolExecutor(1, thread_name_prefix="clarion-events")

    async def record(self, type: str, data: bytes, channel: str,
                     idempotency_key: str) -> Any:
        import asyncio

        from django.db import Error

        from clarion.errors import ReplyError

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._db, self._record, type, data, channel,
                                              idempotency_key)
        except Error as exc:
            # The database is locked, full or gone: the caller may retry (with its
            # idempotency_key, the retry cannot write the event twice).
            log.exception("POST /api/event: the webhook store failed")
            raise ReplyError(100, f"internal server error: the webhook store failed "
                                  f"({exc.__class__.__name__})", temporary=True) from None

    async def relayed(self, event_id: str) -> None:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(self._db, self._relayed, event_id)

    def _record(self, type: str, data: bytes, channel: str, idempotency_key: str) -> Any:
        from datetime import timedelta

        from django.db import transaction
        from django.utils import timezone

        from clarion.django.conf import webhook_settings
        from clarion.django.hooks import NotRegistered, hooks
        from clarion.django.models import Event
        from clarion.django.outbox import MAX_KEY_LENGTH, check_channel
        from clarion.django.store import fan_out
        from clarion.errors import ReplyError, WebhookError
        from clarion.hub.api import RecordedEvent

        try:
            hook = hooks.get_hook(type)
        except NotRegistered:
            raise ReplyError(107, f"bad request: unknown event type {type!r}; the hub knows "
                                  f"{sorted(h.name for h in hooks)} (add types with "
                                  f"--webhook-types)") from None
        fields = json.loads(data)
        if not isinstance(fields, dict):
            raise ReplyError(107, "bad request: data must be a JSON object (the event's "
                                  "fields)")
        if len(idempotency_key) > MAX_KEY_LENGTH:
            raise ReplyError(107, f"bad request: idempotency_key is longer than "
                                  f"{MAX_KEY_LENGTH} characters")
        db = webhook_settings().DATABASE
        with transaction.atomic(using=db):
            if idempotency_key:
                earlier = (Event.objects.using(db)
                           .filter(hook=type, request_key=idempotency_key).first())
                if earlier is not None:
                    return RecordedEvent(earlier.msg_id, earlier.deliveries.count(),
                                         earlier.payload.encode(), earlier.channel,
                                         relayed=earlier.relayed_at is not None)
            try:
                if channel:
                    check_channel(channel, where="event")
                event = hook.send(None, using=db, **fields)
            except (WebhookError, TypeError) as exc:
                raise ReplyError(107, f"bad request: {exc}") from None
            event.channel = channel or event.channel
            event.request_key = idempotency_key
            # The API publishes it at once: the worker leaves it alone for a while, and takes
            # it over only if the API could not (its broker away, the process gone).
            Event.objects.using(db).filter(pk=event.pk).update(
                channel=event.channel, request_key=idempotency_key,
                relay_next_at=timezone.now() + timedelta(seconds=API_PUBLISH_LEASE))
            deliveries = fan_out(db, [event])
            event.dispatched_at = timezone.now()
        return RecordedEvent(event.msg_id, deliveries, event.payload.encode(), event.channel)

    def _relayed(self, event_id: str) -> None:
        from django.db.models import F
        from django.utils import timezone

        from clarion.django.conf import webhook_settings
        from clarion.django.models import Event

        Event.objects.using(webhook_settings().DATABASE).filter(
            msg_id=event_id, relayed_at__isnull=True,
        ).update(relayed_at=timezone.now(), relay_attempts=F("relay_attempts") + 1)


def _words(name: str) -> list[str]:
    """A list from the environment, separated by commas or white space (neither appears in
    Django secret keys made by ``get_random_secret_key`` nor in Fernet keys)."""
    return os.environ.get(name, "").replace(",", " ").split()


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


def _env_webhooks() -> dict[str, Any]:
    """``CLARION_WEBHOOKS``: the ``CLARION['WEBHOOKS']`` dict as JSON, e.g.
    ``{"ALLOWED_NETWORKS": ["10.0.0.0/8"], "HTTPS_ONLY": true}``."""
    raw = os.environ.get("CLARION_WEBHOOKS", "")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"CLARION_WEBHOOKS must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError("CLARION_WEBHOOKS must be a JSON object")
    return value


def register_types(names: str) -> None:
    """Event types for applications that are not Python: plain hooks, every field passes."""
    from clarion.django.hooks import Hook, hooks

    for name in filter(None, (n.strip() for n in names.split(","))):
        if name not in hooks:
            hooks.register(Hook(name=name))


def wsgi_app() -> Any:
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()
