"""``{% load clarion %}``: the hub's browser client and connection credentials in templates.

* ``{% clarion_script %}``: ``<script type="module" src="…/static/clarion.js">``, from
  ``CLARION['HUB']['URL']``.
* ``{% realtime_ticket %}``: a one-time ticket for ``request.user`` (as
  ``RealtimeTicketMiddleware`` puts in the context), or ``""`` for an anonymous user or a
  failed store (logged); ``{% realtime_ticket as ticket %}`` stores it instead.
* ``{% clarion_token %}``: a connection JWT for ``request.user``
  (``clarion.django.realtime.connection_token``), ``""`` for an anonymous user.

The ticket and token tags need ``django.template.context_processors.request`` (or a
``request`` in the context): they say so instead of rendering an empty credential.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django import template
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.html import format_html
from django.utils.safestring import SafeString

from clarion.django.tickets.middleware import RealtimeTicketMiddleware

__all__ = ["clarion_script", "clarion_token", "realtime_ticket", "register"]

register = template.Library()


def hub_url() -> str:
    """``CLARION["HUB"]["URL"]`` without a trailing slash."""
    raw = getattr(settings, "CLARION", None) or {}
    hub = raw.get("HUB") if isinstance(raw, Mapping) else None
    url = hub.get("URL") if isinstance(hub, Mapping) else None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ImproperlyConfigured("{% clarion_script %} needs CLARION['HUB']['URL'], the "
                                   "hub's http(s):// address as browsers reach it, not "
                                   f"{url!r}")
    return url.rstrip("/")


def clarion_script() -> SafeString:
    # clarion.js is an ES module (it also sets window.Clarion once evaluated).
    return format_html('<script type="module" src="{}/static/clarion.js"></script>', hub_url())


def _request(context: template.Context, tag: str) -> Any:
    request = context.get("request")
    if request is None:
        raise ImproperlyConfigured(f"{{% {tag} %}} needs the request in the template context: "
                                   "add django.template.context_processors.request to "
                                   "TEMPLATES' context_processors")
    return request


def realtime_ticket(context: template.Context) -> str:
    ticket = RealtimeTicketMiddleware().ticket_for(_request(context, "realtime_ticket"))
    return ticket or ""


def clarion_token(context: template.Context) -> str:
    user = getattr(_request(context, "clarion_token"), "user", None)
    if user is None or not user.is_authenticated:
        return ""
    from clarion.django.realtime import connection_token

    return str(connection_token(user))


# Registered by call, not as decorators: Django's are untyped and would erase these signatures.
register.simple_tag(clarion_script)
register.simple_tag(realtime_ticket, takes_context=True)
register.simple_tag(clarion_token, takes_context=True)
