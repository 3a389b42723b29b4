"""System checks for the ticket settings (``manage.py check`` and every ``runserver``).

``clarion.E201``: ``REALTIME_TICKET_EXPIRE`` is not a number of seconds in range.
``clarion.E202``: ``REALTIME_TICKET_REDIS`` is not a usable Redis (bad type, unknown key, bad
value, or a URL that is not one plain Redis).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

from clarion.errors import ConfigError

from .conf import DEFAULT_EXPIRE, parse_expire, parse_redis

__all__ = ["check_ticket_settings"]

_DOCS = "see docs/topics/tickets.md, \"Settings\""


def check_ticket_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    try:
        parse_expire(getattr(settings, "REALTIME_TICKET_EXPIRE", DEFAULT_EXPIRE))
    except ConfigError as exc:
        errors.append(checks.Error(str(exc), hint=_DOCS, id="clarion.E201"))
    try:
        parse_redis(getattr(settings, "REALTIME_TICKET_REDIS", None))
    except ConfigError as exc:
        errors.append(checks.Error(str(exc), hint=_DOCS, id="clarion.E202"))
    return errors
