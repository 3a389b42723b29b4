"""System checks of ``CLARION["PROXY"]`` (``manage.py check``; ids clarion.E4xx/W4xx).

``clarion.E401``: ``CLARION["PROXY"]`` is not a dict or has unknown keys.
``clarion.E402``: ``SECRET`` or ``SECRET_HEADER`` is not a usable string.
``clarion.E403``: ``ALLOWED_NETWORKS`` is not a list of addresses/networks.
``clarion.E404``: ``ALLOW_ANONYMOUS``, ``CONNECT_TTL`` or ``SUBSCRIBE_TTL`` has a bad value.
``clarion.E405``: a dotted path (``CONNECT_INFO``, ``PERMISSIONS``, ``PUBLISH``, ``RPC``) does
not import or is not callable.
``clarion.E406``: the proxy views are mounted but neither ``SECRET`` nor ``ALLOWED_NETWORKS``
is set: they refuse every call (the hub could not be told from anyone else).
``clarion.E407``: the proxy views need ``django.contrib.auth`` and ``django.contrib.sessions``.
``clarion.W401``: ``SECRET`` is shorter than 32 bytes.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.urls import NoReverseMatch, reverse

from .conf import MIN_SECRET_BYTES, imported, proxy_problems

__all__ = ["check_proxy"]

_DOCS = "see docs/topics/django-proxy.md, \"Settings\""


def check_proxy(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    conf, problems = proxy_problems()
    found: list[checks.CheckMessage] = [checks.Error(message, hint=_DOCS, id=check_id)
                                        for check_id, message in problems]
    if conf is None:
        return found
    targets = ([("CLARION['PROXY']['CONNECT_INFO']", conf.CONNECT_INFO)]
               if conf.CONNECT_INFO else [])
    for key in ("PERMISSIONS", "PUBLISH", "RPC"):
        targets += [(f"CLARION['PROXY']['{key}'][{name!r}]", path)
                    for name, path in getattr(conf, key).items()]
    for where, path in targets:
        try:
            imported(path, where)
        except ImproperlyConfigured as exc:
            found.append(checks.Error(str(exc), hint=_DOCS, id="clarion.E405"))
    if _mounted():
        if not conf.guarded:
            found.append(checks.Error(
                "the clarion.django.proxy views are mounted, but CLARION['PROXY'] sets neither "
                "SECRET nor ALLOWED_NETWORKS: they refuse every call, because the hub cannot "
                "be told from anyone who would name another user's id",
                hint="Set CLARION['PROXY']['SECRET'] (and the same value in the hub's proxy "
                     "headers) and/or ALLOWED_NETWORKS (the addresses the hub calls from).",
                id="clarion.E406"))
        missing = [app for app in ("django.contrib.auth", "django.contrib.sessions")
                   if not apps.is_installed(app)]
        if missing:
            found.append(checks.Error(
                f"the clarion.django.proxy views read the user's session: add {missing} to "
                f"INSTALLED_APPS", id="clarion.E407"))
    if conf.SECRET is not None and len(conf.SECRET.encode()) < MIN_SECRET_BYTES:
        found.append(checks.Warning(
            f"CLARION['PROXY']['SECRET'] is {len(conf.SECRET.encode())} bytes; use at least "
            f"{MIN_SECRET_BYTES}",
            hint="python -c 'import secrets; print(secrets.token_urlsafe(32))'",
            id="clarion.W401"))
    return found


def _mounted() -> bool:
    if not getattr(settings, "ROOT_URLCONF", None):
        return False  # a project that serves no URLs (a worker's settings) mounts nothing
    try:
        reverse("clarion_proxy:connect")
    except NoReverseMatch:
        return False
    except (ImportError, ImproperlyConfigured):
        # A URLconf that does not load is reported by Django's own urls checks
        # (urls.E…); this check cannot tell, and must not crash the check run over it.
        return False
    return True
