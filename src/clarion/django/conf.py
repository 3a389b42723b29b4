"""``CLARION = {"WEBHOOKS": {...}}``: the webhook settings, read at each use, checked once.

Every key has a default, so a project only names what it changes. An unknown key or a bad
value raises ``ImproperlyConfigured`` naming it (a typo must not silently fall back to a
default that, say, allows private addresses).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from clarion.errors import ConfigError
from clarion.webhooks.addresses import AddressPolicy
from clarion.webhooks.retry import DEFAULT_SCHEDULE, RetryPolicy

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    DATABASE: str = "default"
    ALLOWED_NETWORKS: tuple[str, ...] = ()
    HTTPS_ONLY: bool = False
    RETRY_SCHEDULE: tuple[float, ...] = DEFAULT_SCHEDULE
    RETRY_JITTER: float = 0.2
    TIMEOUT: float = 15.0
    DISABLE_AFTER: float = 5 * DAY
    MAX_PAYLOAD: int = 256 * 1024
    RETENTION: float | None = 90 * DAY
    ROTATION_GRACE: float = DAY
    SECRET_KIND: str = "hmac"
    BATCH: int = 500
    CONCURRENCY: int = 1000
    MAX_CONNECTIONS_PER_HOST: int = 64
    LEASE: float | None = None
    RECOVER_WINDOW: float = 14 * DAY

    def policy(self) -> AddressPolicy:
        try:
            return AddressPolicy(self.ALLOWED_NETWORKS, https_only=self.HTTPS_ONLY)
        except ConfigError as exc:
            raise ImproperlyConfigured(f"CLARION['WEBHOOKS']: {exc}") from None

    def retry(self) -> RetryPolicy:
        try:
            return RetryPolicy(tuple(self.RETRY_SCHEDULE), self.RETRY_JITTER)
        except ConfigError as exc:
            raise ImproperlyConfigured(f"CLARION['WEBHOOKS']: {exc}") from None


_NUMBERS = {"RETRY_JITTER", "TIMEOUT", "DISABLE_AFTER", "ROTATION_GRACE", "RECOVER_WINDOW"}
_INTS = {"MAX_PAYLOAD", "BATCH", "CONCURRENCY", "MAX_CONNECTIONS_PER_HOST"}


def webhook_settings() -> WebhookSettings:
    raw = getattr(settings, "CLARION", {}) or {}
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured("CLARION must be a dict")
    hooks = raw.get("WEBHOOKS", {}) or {}
    if not isinstance(hooks, Mapping):
        raise ImproperlyConfigured("CLARION['WEBHOOKS'] must be a dict")
    known = {f.name for f in fields(WebhookSettings)}
    unknown = set(hooks) - known
    if unknown:
        raise ImproperlyConfigured(
            f"CLARION['WEBHOOKS'] has unknown keys {sorted(unknown)}; known: {sorted(known)}"
        )
    values: dict[str, Any] = {}
    for key, value in hooks.items():
        where = f"CLARION['WEBHOOKS']['{key}']"
        if key in _NUMBERS and (isinstance(value, bool) or not isinstance(value, int | float)
                                or value < 0):
            raise ImproperlyConfigured(f"{where} must be a non-negative number, not {value!r}")
        if key in _INTS and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ImproperlyConfigured(f"{where} must be a positive integer, not {value!r}")
        if key in ("ALLOWED_NETWORKS", "RETRY_SCHEDULE"):
            if isinstance(value, str) or not isinstance(value, list | tuple):
                raise ImproperlyConfigured(f"{where} must be a list")
            value = tuple(value)
        if key in ("LEASE", "RETENTION") and value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            raise ImproperlyConfigured(f"{where} must be a positive number of seconds or None")
        if key == "HTTPS_ONLY" and not isinstance(value, bool):
            raise ImproperlyConfigured(f"{where} must be True or False")
        if key == "DATABASE" and value not in settings.DATABASES:
            raise ImproperlyConfigured(f"{where} must name one of DATABASES: "
                                       f"{sorted(settings.DATABASES)}")
        if key == "SECRET_KIND" and value not in ("hmac", "ed25519"):
            raise ImproperlyConfigured(f"{where} must be 'hmac' or 'ed25519'")
        values[key] = value
    return WebhookSettings(**values)
