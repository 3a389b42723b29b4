"""``CLARION["CONNECT"]``: the settings of :mod:`clarion.django.connect`, read at each use.

Every key has a default. An unknown key or a bad value raises ``ImproperlyConfigured`` naming it
(system check ``clarion.E301`` reports the same at ``manage.py check``): a misspelt
``ALLOW_HTTP`` must not silently let the site fetch plain-HTTP discovery documents, and a typo in
``ALLOWED_NETWORKS`` must not silently open private addresses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from dataclasses import field as dataclass_field
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from clarion.errors import ConfigError
from clarion.webhooks.addresses import AddressPolicy

DEFAULT_SCOPES: Mapping[str, tuple[str, ...]] = {
    # Mastodon: read the profile, post statuses. Generic OAuth 2: OpenID's profile and email.
    "mastodon": ("read", "write"),
    "oauth2": ("openid", "profile", "email"),
}
MIN_TTL = 30.0
MAX_STATE_TTL = 3600.0  # a flow state is a bearer secret for this long; an hour is plenty
MAX_EMAIL_TTL = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class ConnectSettings:
    CLIENT_NAME: str = "Clarion"
    CLIENT_WEBSITE: str = ""
    CALLBACK_BASE: str = ""            # "https://site.example": else the request's own host
    SCOPES: Mapping[str, tuple[str, ...]] = dataclass_field(
        default_factory=lambda: dict(DEFAULT_SCOPES))
    STATE_TTL: float = 600.0
    ALLOWED_NETWORKS: tuple[str, ...] = ()
    ALLOW_HTTP: bool = False
    VERIFY: bool | str = True          # TLS: True, False, or a CA bundle's path
    TIMEOUT: float = 10.0
    MAX_BYTES: int = 1_000_000
    MAX_REDIRECTS: int = 3
    REQUIRE_EMAIL: bool = False
    EMAIL_TTL: float = 86400.0
    EMAIL_FROM: str | None = None      # None: DEFAULT_FROM_EMAIL
    REDIRECT_URL: str = ""             # after connecting; "": the list of accounts

    def policy(self) -> AddressPolicy:
        try:
            return AddressPolicy(self.ALLOWED_NETWORKS)
        except ConfigError as exc:
            raise ImproperlyConfigured(f"CLARION['CONNECT']['ALLOWED_NETWORKS']: {exc}") from None

    def scopes_for(self, kind: str, supported: tuple[str, ...] = ()) -> tuple[str, ...]:
        """The scopes to ask a server of ``kind`` for: the configured ones it supports (all of
        them when it publishes no list)."""
        wanted = tuple(self.SCOPES.get(kind, ()))
        if supported:
            return tuple(s for s in wanted if s in supported)
        return wanted


_WHERE = "CLARION['CONNECT']"


def connect_settings() -> ConnectSettings:
    raw = getattr(settings, "CLARION", {}) or {}
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured("CLARION must be a dict")
    conf = raw.get("CONNECT", {}) or {}
    if not isinstance(conf, Mapping):
        raise ImproperlyConfigured(f"{_WHERE} must be a dict")
    known = {f.name for f in fields(ConnectSettings)}
    unknown = set(conf) - known
    if unknown:
        raise ImproperlyConfigured(
            f"{_WHERE} has unknown keys {sorted(map(str, unknown))}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    for key, value in conf.items():
        values[key] = _parse(key, value, f"{_WHERE}['{key}']")
    result = ConnectSettings(**values)
    result.policy()  # a bad network is reported now, not at the first connection
    return result


def _parse(key: str, value: Any, where: str) -> Any:
    if key in ("CLIENT_NAME",):
        if not isinstance(value, str) or not value.strip() or len(value) > 200:
            raise ImproperlyConfigured(f"{where} must be a non-empty name (at most 200 "
                                       f"characters), not {value!r}")
        return value
    if key in ("CALLBACK_BASE", "CLIENT_WEBSITE"):
        if not isinstance(value, str):
            raise ImproperlyConfigured(f"{where} must be a URL string, not {value!r}")
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query \
                    or parts.fragment:
                raise ImproperlyConfigured(f"{where} must be an http(s) URL such as "
                                           f"'https://site.example', not {value!r}")
        return value.rstrip("/") if key == "CALLBACK_BASE" else value
    if key == "REDIRECT_URL" or key == "EMAIL_FROM":
        if not (isinstance(value, str) or (value is None and key == "EMAIL_FROM")):
            raise ImproperlyConfigured(f"{where} must be a string, not {value!r}")
        return value
    if key == "SCOPES":
        if not isinstance(value, Mapping):
            raise ImproperlyConfigured(f"{where} must be a dict of server kind ('mastodon', "
                                       f"'oauth2') to a list of scopes, not {value!r}")
        scopes: dict[str, tuple[str, ...]] = {}
        for kind, items in value.items():
            if kind not in ("mastodon", "oauth2") or isinstance(items, str) \
                    or not isinstance(items, list | tuple) \
                    or not all(isinstance(s, str) and s and " " not in s for s in items):
                raise ImproperlyConfigured(f"{where}[{kind!r}] must be a list of scope names "
                                           "for 'mastodon' or 'oauth2'")
            scopes[kind] = tuple(items)
        return {**DEFAULT_SCOPES, **scopes}
    if key in ("STATE_TTL", "EMAIL_TTL"):
        top = MAX_STATE_TTL if key == "STATE_TTL" else MAX_EMAIL_TTL
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not MIN_TTL <= value <= top:
            raise ImproperlyConfigured(f"{where} must be a number of seconds between "
                                       f"{MIN_TTL:g} and {top:g}, not {value!r}")
        return float(value)
    if key == "TIMEOUT":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 120:
            raise ImproperlyConfigured(f"{where} must be a number of seconds in (0, 120], "
                                       f"not {value!r}")
        return float(value)
    if key in ("MAX_BYTES", "MAX_REDIRECTS"):
        low, high = (1024, 64 * 1024 * 1024) if key == "MAX_BYTES" else (0, 10)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ImproperlyConfigured(f"{where} must be an integer between {low} and {high}, "
                                       f"not {value!r}")
        return value
    if key == "ALLOWED_NETWORKS":
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ImproperlyConfigured(f"{where} must be a list of networks such as "
                                       f"['10.0.0.0/8'], not {value!r}")
        return tuple(value)
    if key in ("ALLOW_HTTP", "REQUIRE_EMAIL"):
        if not isinstance(value, bool):
            raise ImproperlyConfigured(f"{where} must be True or False, not {value!r}")
        return value
    if key == "VERIFY":
        if not isinstance(value, bool | str) or value == "":
            raise ImproperlyConfigured(f"{where} must be True, False or a CA bundle's path, "
                                       f"not {value!r}")
        return value
    raise AssertionError(key)  # every field of ConnectSettings is handled above
