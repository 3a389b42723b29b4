"""Response headers that keep the dashboard and the webhooks API from being framed, sniffed or
cached, whatever middleware the project runs.

The dashboard's rotate, delete and revoke actions are one-click buttons, so a page that frames it
could trick a signed-in user into clicking them; the secret shown once after a create must not
stay in a shared cache or the browser's history cache. Django's ``SecurityMiddleware`` and
``XFrameOptionsMiddleware`` set most of these project-wide (and the system check
``clarion.W010`` says when they are missing); the views set them too, so the app is safe in a
project that left them out.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

HEADERS = (
    ("X-Frame-Options", "DENY"),
    # frame-ancestors is the standard successor of X-Frame-Options; the rest close what a
    # page without scripts of its own never needs.
    ("Content-Security-Policy",
     "frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)


def protect(view: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a view so its responses carry :data:`HEADERS`, and ``Cache-Control: no-store``
    unless the view chose its own caching (the stylesheet does)."""

    @functools.wraps(view)
    def wrapped(request: Any, *args: Any, **kwargs: Any) -> Any:
        response = view(request, *args, **kwargs)
        for name, value in HEADERS:
            response[name] = value
        if not response.has_header("Cache-Control"):
            response["Cache-Control"] = "no-store"
        return response

    return wrapped


def protect_patterns(patterns: list[Any]) -> list[Any]:
    """Apply :func:`protect` to every route of a ``urlpatterns`` list, in place."""
    for pattern in patterns:
        pattern.callback = protect(pattern.callback)
    return patterns


_RECOMMENDED = ("django.middleware.security.SecurityMiddleware",
                "django.middleware.clickjacking.XFrameOptionsMiddleware")


def check_middleware(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """``clarion.W010``: the project runs without Django's security middleware."""
    from django.conf import settings
    from django.core import checks

    middleware = list(getattr(settings, "MIDDLEWARE", None) or ())
    missing = [name for name in _RECOMMENDED if name not in middleware]
    if not missing:
        return []
    return [checks.Warning(
        f"MIDDLEWARE lacks {', '.join(missing)}.",
        hint="Clarion's dashboard and API set their own anti-framing and no-sniff headers, "
             "but the rest of the project (the admin, the sign-in page) relies on these; "
             "see docs/topics/webhook-security.md.",
        id="clarion.W010",
    )]


def check_sqlite(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """``clarion.W011``: the webhook database is SQLite with deferred transactions, which fail
    with "database is locked" under concurrent writers instead of waiting."""
    from django.conf import settings
    from django.core import checks
    from django.core.exceptions import ImproperlyConfigured

    from clarion.django.conf import webhook_settings

    try:
        alias = webhook_settings().DATABASE
    except ImproperlyConfigured:  # reported when the settings are first read
        return []
    db = settings.DATABASES.get(alias, {})
    if "sqlite3" not in str(db.get("ENGINE", "")):
        return []
    mode = str((db.get("OPTIONS") or {}).get("transaction_mode") or "").upper()
    if mode in ("IMMEDIATE", "EXCLUSIVE"):
        return []
    return [checks.Warning(
        f"DATABASES[{alias!r}] is SQLite without OPTIONS['transaction_mode'] = 'IMMEDIATE'.",
        hint="The webhook worker and the API write concurrently; deferred transactions fail "
             "with 'database is locked' instead of waiting. Set 'transaction_mode': "
             "'IMMEDIATE' and a 'timeout' (Django 5.1+), or use PostgreSQL.",
        id="clarion.W011",
    )]
