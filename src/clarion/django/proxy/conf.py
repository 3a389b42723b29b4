"""``CLARION["PROXY"]``: the settings of the proxy views, cached, checked at start (clarion.E4xx).

Every key has a default, so a project only names what it changes::

    CLARION = {"PROXY": {
        "SECRET": os.environ["CLARION_PROXY_SECRET"],  # the hub sends it in SECRET_HEADER
        "ALLOWED_NETWORKS": ["10.0.0.0/8"],             # and/or: where the hub calls from
        "CONNECT_TTL": 3600,                            # connections are refreshed hourly
        "CONNECT_INFO": "chat.realtime.connect_info",
        "PERMISSIONS": {"chat:*": "chat.realtime.can_join"},
        "PUBLISH": {"chat:*": "chat.forms.MessageForm"},
        "RPC": {"rooms": "chat.realtime.rooms"},
    }}

A problem carries the id of the system check that reports it, so ``manage.py check`` names
every mistake and a view called anyway fails with the same words (a 500 the hub turns into
its internal error: a broken configuration must be seen, not answered as "denied").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

__all__ = ["DEFAULT_SECRET_HEADER", "Network", "Problem", "ProxySettings", "imported",
           "on_reset", "proxy_problems", "proxy_settings"]

DEFAULT_SECRET_HEADER = "X-Clarion-Proxy-Secret"
MAX_TTL = 366 * 86400.0  # a year and a day: beyond it a value is a unit mistake (ms for s)
# Below the output size of SHA-256 a shared secret is weaker than the rest of the chain.
MIN_SECRET_BYTES = 32

Problem = tuple[str, str]  # (check id, message)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ProxySettings:
    SECRET: str | None = field(default=None, repr=False)
    SECRET_HEADER: str = DEFAULT_SECRET_HEADER
    ALLOWED_NETWORKS: tuple[Network, ...] = ()
    ALLOW_ANONYMOUS: bool = False
    CONNECT_TTL: float | None = None
    SUBSCRIBE_TTL: float | None = None
    CONNECT_INFO: str | None = None
    PERMISSIONS: Mapping[str, str] = field(default_factory=dict)
    PUBLISH: Mapping[str, str] = field(default_factory=dict)
    RPC: Mapping[str, str] = field(default_factory=dict)

    @property
    def guarded(self) -> bool:
        """Whether the hub's calls can be told from anyone else's; the views refuse every
        call when they cannot (fail closed)."""
        return self.SECRET is not None or bool(self.ALLOWED_NETWORKS)


_KEYS = frozenset(f.name for f in fields(ProxySettings))
_PATH_MAPS = ("PERMISSIONS", "PUBLISH", "RPC")


def proxy_problems() -> tuple[ProxySettings | None, list[Problem]]:
    """The proxy settings and every problem found in them (settings None when any).

    Dotted paths are checked for their form here and imported by :func:`imported` (and by the
    system check), so reading the settings never imports project code."""
    raw = getattr(settings, "CLARION", {}) or {}
    if not isinstance(raw, Mapping):
        return None, [("clarion.E401", "CLARION must be a dict")]
    section = raw.get("PROXY", {})
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        return None, [("clarion.E401", "CLARION['PROXY'] must be a dict")]
    problems: list[Problem] = []
    unknown = set(section) - _KEYS
    if unknown:
        problems.append(("clarion.E401", f"CLARION['PROXY'] has unknown keys "
                                         f"{sorted(unknown)}; known: {sorted(_KEYS)}"))
    values: dict[str, Any] = {}

    secret = section.get("SECRET")
    if secret is not None and (not isinstance(secret, str) or not secret):
        problems.append(("clarion.E402", "CLARION['PROXY']['SECRET'] must be a non-empty "
                                         "string (or left out)"))
    values["SECRET"] = secret
    header = section.get("SECRET_HEADER", DEFAULT_SECRET_HEADER)
    if not isinstance(header, str) or not _is_token(header):
        problems.append(("clarion.E402", f"CLARION['PROXY']['SECRET_HEADER'] must be an HTTP "
                                         f"header name, not {header!r}"))
    values["SECRET_HEADER"] = header

    networks = section.get("ALLOWED_NETWORKS", ())
    parsed: list[Network] = []
    if isinstance(networks, str) or not isinstance(networks, list | tuple):
        problems.append(("clarion.E403", "CLARION['PROXY']['ALLOWED_NETWORKS'] must be a list "
                                         "of addresses or networks (\"10.0.0.0/8\")"))
    else:
        for item in networks:
            try:
                parsed.append(ipaddress.ip_network(item, strict=False))
            except (TypeError, ValueError):
                problems.append(("clarion.E403", f"CLARION['PROXY']['ALLOWED_NETWORKS']: "
                                                 f"{item!r} is not an address or a network"))
    values["ALLOWED_NETWORKS"] = tuple(parsed)

    anonymous = section.get("ALLOW_ANONYMOUS", False)
    if not isinstance(anonymous, bool):
        problems.append(("clarion.E404", "CLARION['PROXY']['ALLOW_ANONYMOUS'] must be True or "
                                         "False"))
    values["ALLOW_ANONYMOUS"] = anonymous

    for key in ("CONNECT_TTL", "SUBSCRIBE_TTL"):
        ttl = section.get(key)
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)
                                or not 1 <= ttl <= MAX_TTL):
            problems.append(("clarion.E404", f"CLARION['PROXY']['{key}'] must be a number of "
                                             f"seconds in [1, {MAX_TTL:g}] or None, not "
                                             f"{ttl!r}"))
            ttl = None
        values[key] = None if ttl is None else float(ttl)

    hook = section.get("CONNECT_INFO")
    if hook is not None and not _is_dotted(hook):
        problems.append(("clarion.E405", f"CLARION['PROXY']['CONNECT_INFO'] must be the dotted "
                                         f"path of a function, not {hook!r}"))
    values["CONNECT_INFO"] = hook
    for key in _PATH_MAPS:
        table = section.get(key, {})
        if table is None:
            table = {}
        if not isinstance(table, Mapping) or not all(
                isinstance(k, str) and k and _is_dotted(v) for k, v in table.items()):
            problems.append(("clarion.E405", f"CLARION['PROXY']['{key}'] must map non-empty "
                                             f"names to dotted paths, not {table!r}"))
            table = {}
        values[key] = dict(table)

    if problems:
        return None, problems
    return ProxySettings(**values), []


def proxy_settings() -> ProxySettings:
    """The cached settings; ImproperlyConfigured naming the first problem."""
    global _cached
    conf = _cached
    if conf is not None:
        return conf
    conf, problems = proxy_problems()
    if conf is None:
        raise ImproperlyConfigured(f"{problems[0][1]} ({problems[0][0]})")
    _cached = conf
    return conf


def imported(path: str, where: str) -> Callable[..., Any]:
    """The callable (function or class) at ``path``; ImproperlyConfigured naming the setting
    (``where``) when it cannot be imported or is not callable."""
    try:
        target = import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(f"{where}: cannot import {path!r}: {exc}") from exc
    if not callable(target):
        raise ImproperlyConfigured(f"{where}: {path!r} is not callable")
    return target  # type: ignore[no-any-return]


_cached: ProxySettings | None = None
_reset_hooks: list[Callable[[], None]] = []


def on_reset(hook: Callable[[], None]) -> None:
    """Run ``hook`` when ``CLARION`` changes (registries built from it start again)."""
    _reset_hooks.append(hook)


def _reset(*, setting: str, **kwargs: Any) -> None:
    global _cached
    if setting != "CLARION":
        return
    _cached = None
    for hook in _reset_hooks:
        hook()


setting_changed.connect(_reset, dispatch_uid="clarion.proxy.conf.reset")


def _is_dotted(value: Any) -> bool:
    return isinstance(value, str) and "." in value.strip(".") and " " not in value


_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _is_token(name: str) -> bool:
    """An RFC 9110 field name (token)."""
    return bool(name) and all(c in _TCHARS for c in name)
