"""``CLARION = {"WEBHOOKS": {...}}``: the webhook settings, read at each use, checked once.
``CLARION["HUB"]``, ``["BROKER"]`` and ``["REDIS"]``: the realtime settings
(:mod:`clarion.django.realtime`), cached and checked by the system checks (clarion.E1xx).

Every key has a default, so a project only names what it changes. An unknown key or a bad
value raises ``ImproperlyConfigured`` naming it (a typo must not silently fall back to a
default that, say, allows private addresses).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from dataclasses import field as dataclass_field
from os import PathLike, fspath, path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

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


# -- realtime: CLARION["HUB"], CLARION["BROKER"], CLARION["REDIS"] ------------------------------
#
# Read once into one cached object (a publish per request must not re-validate settings) and
# dropped on Django's ``setting_changed``, so ``override_settings`` in tests takes effect. Each
# problem carries the id of the system check that reports it (clarion.E1xx), so ``manage.py
# check`` names every mistake at start and a call made anyway raises ImproperlyConfigured with
# the same words.

DEFAULT_HUB_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True, slots=True)
class HubSettings:
    """``CLARION["HUB"]``: where the hub's server API is and the secrets shared with it."""

    URL: str = DEFAULT_HUB_URL
    API_KEY: str | None = None
    TOKEN_HMAC_SECRET: str | None = None
    TIMEOUT: float = 5.0
    # The TOML file the hub runs with (``clarion serve --config``): the direct Redis path
    # reads channel options (history, namespaces) and ticket lifetimes from it, so what it
    # publishes is what the hub would have published.
    CONFIG: str | None = None
    # A CA bundle to check an https:// hub's certificate against (a private CA); None: the
    # usual public CAs.
    CA_FILE: str | None = None


@dataclass(frozen=True, slots=True)
class RealtimeSettings:
    HUB: HubSettings
    # Redis URLs of the hub's broker (several: shards); empty means "through the hub's API".
    BROKER: tuple[str, ...] = ()
    # ``create_broker`` keyword options, as the hub's ``[redis]`` table gives them.
    REDIS: Mapping[str, Any] = dataclass_field(default_factory=dict)

    @property
    def direct(self) -> bool:
        return bool(self.BROKER)


Problem = tuple[str, str]  # (check id, message)


def realtime_problems() -> tuple[RealtimeSettings | None, list[Problem]]:
    """The realtime settings and every problem found in them (settings None when any)."""
    raw = getattr(settings, "CLARION", {}) or {}
    if not isinstance(raw, Mapping):
        return None, [("clarion.E100", "CLARION must be a dict")]
    problems: list[Problem] = []
    hub = _hub_settings(raw.get("HUB", {}), problems)
    broker = _broker_urls(raw.get("BROKER"), problems)
    redis = _redis_options(raw.get("REDIS"), bool(broker), problems)
    if problems or hub is None:
        return None, problems
    return RealtimeSettings(hub, broker, redis), []


def realtime_settings() -> RealtimeSettings:
    """The cached realtime settings; ImproperlyConfigured naming the first problem."""
    global _realtime
    cached = _realtime
    if cached is not None:
        return cached
    conf, problems = realtime_problems()
    if conf is None:
        raise ImproperlyConfigured(problems[0][1] + f" ({problems[0][0]})")
    _realtime = conf
    return conf


_realtime: RealtimeSettings | None = None
_reset_hooks: list[Callable[[], None]] = []


def on_realtime_reset(hook: Callable[[], None]) -> None:
    """Run ``hook`` whenever ``CLARION`` changes (what was built from the old settings, such
    as a hub client or a broker, must be dropped with them)."""
    _reset_hooks.append(hook)


def _reset(*, setting: str, **kwargs: Any) -> None:
    global _realtime
    if setting != "CLARION":
        return
    _realtime = None
    for hook in _reset_hooks:
        hook()


setting_changed.connect(_reset, dispatch_uid="clarion.conf.reset")

_HUB_KEYS = {f.name for f in fields(HubSettings)}


def _hub_settings(raw: Any, problems: list[Problem]) -> HubSettings | None:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        problems.append(("clarion.E101", "CLARION['HUB'] must be a dict"))
        return None
    unknown = set(raw) - _HUB_KEYS
    if unknown:
        problems.append(("clarion.E101", f"CLARION['HUB'] has unknown keys {sorted(unknown)}; "
                                         f"known: {sorted(_HUB_KEYS)}"))
    url = raw.get("URL", DEFAULT_HUB_URL)
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or (
            not urlsplit(url).hostname):
        problems.append(("clarion.E102", f"CLARION['HUB']['URL'] must be the hub's http:// or "
                                         f"https:// address, not {url!r}"))
    for key in ("API_KEY", "TOKEN_HMAC_SECRET"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            problems.append(("clarion.E103", f"CLARION['HUB']['{key}'] must be a non-empty "
                                             f"string (or left out)"))
    timeout = raw.get("TIMEOUT", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
            0 < timeout <= MAX_TIMEOUT):
        problems.append(("clarion.E104", f"CLARION['HUB']['TIMEOUT'] must be a number of "
                                         f"seconds in (0, {MAX_TIMEOUT:g}], not {timeout!r}"))
    config = raw.get("CONFIG")
    if config is not None and not isinstance(config, str | PathLike):
        problems.append(("clarion.E105", "CLARION['HUB']['CONFIG'] must be the path of the "
                                         "hub's TOML file"))
    ca_file = raw.get("CA_FILE")
    if ca_file is not None and (not isinstance(ca_file, str | PathLike)
                                or not path.isfile(ca_file)):
        problems.append(("clarion.E108", f"CLARION['HUB']['CA_FILE'] must be the path of a "
                                         f"readable CA bundle (PEM), not {ca_file!r}"))
    if problems:
        return None
    return HubSettings(URL=url.rstrip("/"), API_KEY=raw.get("API_KEY"),
                       TOKEN_HMAC_SECRET=raw.get("TOKEN_HMAC_SECRET"), TIMEOUT=float(timeout),
                       CONFIG=None if config is None else fspath(config),
                       CA_FILE=None if ca_file is None else fspath(ca_file))


MAX_TIMEOUT = 300.0
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://",
                  "redis+sentinel://", "rediss+sentinel://")


def _broker_urls(raw: Any, problems: list[Problem]) -> tuple[str, ...]:
    if raw is None:
        return ()
    urls = [raw] if isinstance(raw, str) else raw
    if not isinstance(urls, list | tuple) or not urls or not all(
            isinstance(u, str) and u.startswith(_REDIS_SCHEMES) for u in urls):
        problems.append(("clarion.E106", f"CLARION['BROKER'] must be the hub's Redis URL "
                                         f"(redis://, rediss://, unix://, redis+cluster://, "
                                         f"redis+sentinel://) or a list of shard URLs, "
                                         f"not {raw!r}"))
        return ()
    if len(set(urls)) != len(urls):
        problems.append(("clarion.E106", "CLARION['BROKER'] lists a shard URL twice"))
        return ()
    return tuple(urls)


def _redis_options(raw: Any, direct: bool, problems: list[Problem]) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not direct:
        problems.append(("clarion.E107", "CLARION['REDIS'] applies to CLARION['BROKER'], "
                                         "which is not set"))
        return {}
    if not isinstance(raw, Mapping):
        problems.append(("clarion.E107", "CLARION['REDIS'] must be a dict of the hub's [redis] "
                                         "options"))
        return {}
    # The hub's own [redis] table, so the two accept the same keys, units and bounds.
    import msgspec

    from clarion.hub.config import RedisOptions

    try:
        options = msgspec.convert(dict(raw), type=RedisOptions, strict=False)
    except msgspec.ValidationError as exc:
        problems.append(("clarion.E107", f"CLARION['REDIS']: {exc}"))
        return {}
    return options.options()
