"""The settings of ``clarion.django.grip``, read from ``django.conf.settings`` at each use.

Nothing is read at import and nothing is written back: ``GRIP_URL`` and ``GRIP_VERIFY_KEY``
are merged into fresh objects, never into the ``GRIP_PROXIES`` list (django-grip appends to
it). Reading is cheap (a few dicts), so ``override_settings`` in tests just works.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

DEFAULT_RETRY_SECONDS = 30.0
DEFAULT_QUEUE_SIZE = 10_000

Key = str | bytes


@dataclass(frozen=True, slots=True)
class Proxy:
    """One ``GRIP_PROXIES`` entry (or ``GRIP_URL``)."""

    control_uri: str | None = None
    control_iss: str | None = None
    key: Key | None = None
    verify_iss: str | None = None
    verify_key: Key | None = None

    @property
    def sig_key(self) -> bytes | None:
        """The key a ``Grip-Sig`` from this proxy is checked with: ``verify_key``, else
        ``key``."""
        key = self.verify_key if self.verify_key is not None else self.key
        if key is None:
            return None
        return key.encode() if isinstance(key, str) else key


@dataclass(frozen=True, slots=True)
class Target:
    """Somewhere to publish: a proxy's control URI or a ``PUBLISH_SERVERS`` entry. Auth as
    pubcontrol does it: ``iss`` and ``key`` sign a Bearer JWT, a ``key`` alone is a static
    Bearer token, neither sends no ``Authorization``."""

    uri: str
    iss: str | None = None
    key: Key | None = None

    @property
    def publish_url(self) -> str:
        """``<uri>/publish/``, keeping any query string the URI carries after the path."""
        parts = urlsplit(self.uri)
        path = parts.path.rstrip("/") + "/publish/"
        return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _key(value: Any, where: str) -> Key | None:
    if value is None or isinstance(value, str | bytes):
        return value
    raise ImproperlyConfigured(f"{where} must be a str or bytes, not {type(value).__name__}")


def _str(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ImproperlyConfigured(f"{where} must be a str, not {type(value).__name__}")


def _b64_param(value: str, where: str) -> Key:
    if not value.startswith("base64:"):
        return value
    try:
        return base64.b64decode(value[7:], validate=True)
    except (binascii.Error, ValueError):
        raise ImproperlyConfigured(f"{where}: not valid base64") from None


def parse_grip_uri(uri: str) -> dict[str, Any]:
    """gripcontrol's ``parse_grip_uri``: ``http://host:5561/path?iss=I&key=base64:K&verify-iss=
    V&verify-key=K2`` gives ``{"control_uri", "control_iss"?, "key"?, "verify_iss"?,
    "verify_key"?}``. Other query parameters stay on the control URI; ``base64:`` keys are
    decoded to bytes."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ImproperlyConfigured(f"GRIP_URL {uri!r}: expected http(s)://host[:port][/path]")
    # gripcontrol's workaround: a '+' in a base64 key is not a space
    params = parse_qs(parts.query.replace("+", "%2B"))
    taken = {name: params.pop(name)[0] for name in ("iss", "key", "verify-iss", "verify-key")
             if name in params}
    control_uri = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"),
                              urlencode(params, doseq=True), ""))
    out: dict[str, Any] = {"control_uri": control_uri}
    if taken.get("iss"):
        out["control_iss"] = taken["iss"]
    if taken.get("key"):
        out["key"] = _b64_param(taken["key"], "GRIP_URL key")
    if taken.get("verify-iss"):
        out["verify_iss"] = taken["verify-iss"]
    if taken.get("verify-key"):
        out["verify_key"] = _b64_param(taken["verify-key"], "GRIP_URL verify-key")
    return out


def _proxy(entry: Any, where: str, default_verify_key: Key | None) -> Proxy:
    if not isinstance(entry, Mapping):
        raise ImproperlyConfigured(f"{where} must be a dict, not {type(entry).__name__}")
    verify_key = _key(entry.get("verify_key"), f"{where}['verify_key']")
    return Proxy(
        control_uri=_str(entry.get("control_uri"), f"{where}['control_uri']"),
        control_iss=_str(entry.get("control_iss"), f"{where}['control_iss']"),
        key=_key(entry.get("key"), f"{where}['key']"),
        verify_iss=_str(entry.get("verify_iss"), f"{where}['verify_iss']"),
        verify_key=verify_key if verify_key is not None else default_verify_key,
    )


def proxies() -> list[Proxy]:
    """``GRIP_PROXIES`` plus ``GRIP_URL``, with ``GRIP_VERIFY_KEY`` as the default
    ``verify_key`` (django-grip's rules)."""
    raw = getattr(settings, "GRIP_PROXIES", None) or []
    if isinstance(raw, Mapping) or not isinstance(raw, list | tuple):
        raise ImproperlyConfigured("GRIP_PROXIES must be a list of dicts")
    default_verify_key = _key(getattr(settings, "GRIP_VERIFY_KEY", None), "GRIP_VERIFY_KEY")
    out = [_proxy(entry, f"GRIP_PROXIES[{i}]", default_verify_key)
           for i, entry in enumerate(raw)]
    grip_url = getattr(settings, "GRIP_URL", None)
    if grip_url:
        if not isinstance(grip_url, str):
            raise ImproperlyConfigured("GRIP_URL must be a str")
        out.append(_proxy(parse_grip_uri(grip_url), "GRIP_URL", default_verify_key))
    return out


def publish_targets() -> list[Target]:
    """Every proxy with a ``control_uri``, then every ``PUBLISH_SERVERS`` entry
    (``{"uri", "iss"?, "key"?}``); an exact duplicate is published to once."""
    targets: list[Target] = []
    for proxy in proxies():
        if proxy.control_uri:
            targets.append(Target(proxy.control_uri, proxy.control_iss, proxy.key))
    raw = getattr(settings, "PUBLISH_SERVERS", None) or []
    if isinstance(raw, Mapping) or not isinstance(raw, list | tuple):
        raise ImproperlyConfigured("PUBLISH_SERVERS must be a list of dicts")
    for i, entry in enumerate(raw):
        where = f"PUBLISH_SERVERS[{i}]"
        if not isinstance(entry, Mapping):
            raise ImproperlyConfigured(f"{where} must be a dict, not {type(entry).__name__}")
        uri = _str(entry.get("uri"), f"{where}['uri']")
        if not uri:
            raise ImproperlyConfigured(f"{where} needs a 'uri'")
        targets.append(Target(uri, _str(entry.get("iss"), f"{where}['iss']"),
                              _key(entry.get("key"), f"{where}['key']")))
    for target in targets:
        parts = urlsplit(target.uri)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ImproperlyConfigured(f"publish URI {target.uri!r}: expected http(s)://host")
    return list(dict.fromkeys(targets))


def prefix() -> str:
    value = getattr(settings, "GRIP_PREFIX", "") or ""
    if not isinstance(value, str):
        raise ImproperlyConfigured("GRIP_PREFIX must be a str")
    return value


def proxy_required() -> bool:
    return bool(getattr(settings, "GRIP_PROXY_REQUIRED", False))


def _number(name: str, default: float, minimum: float) -> float:
    value = getattr(settings, name, None)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ImproperlyConfigured(f"{name} must be a number >= {minimum}, not {value!r}")
    return float(value)


def retry_seconds() -> float:
    """``GRIP_PUBLISH_RETRY_SECONDS``: how long a queued publish is retried (default 30)."""
    return _number("GRIP_PUBLISH_RETRY_SECONDS", DEFAULT_RETRY_SECONDS, 0)


def queue_size() -> int:
    """``GRIP_PUBLISH_QUEUE_SIZE``: items waiting per publish target (default 10000)."""
    return int(_number("GRIP_PUBLISH_QUEUE_SIZE", DEFAULT_QUEUE_SIZE, 1))
