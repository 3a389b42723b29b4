"""System checks of ``CLARION["CONNECT"]`` (``manage.py check`` and every ``runserver``).

``clarion.E301``: a setting is unknown or has a bad value.
``clarion.E302``: ``clarion.django.connect`` is installed without ``django.contrib.sessions``
(the flow state is bound to the browser session), ``django.contrib.auth`` or ``clarion.django``
(the hooks' outbox and the encryption keys).
``clarion.W301``: ``ALLOW_HTTP`` is on while ``DEBUG`` is off (discovery and tokens over plain
HTTP in production).
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from .conf import connect_settings

_DOCS = "see docs/topics/connect.md, \"Settings\""


def check_connect_settings(app_configs: Any = None,
                           **kwargs: Any) -> list[checks.CheckMessage]:
    problems: list[checks.CheckMessage] = []
    try:
        conf = connect_settings()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), hint=_DOCS, id="clarion.E301")]
    for app in ("django.contrib.sessions", "django.contrib.auth", "clarion.django"):
        if not apps.is_installed(app):
            problems.append(checks.Error(
                f"clarion.django.connect needs {app} in INSTALLED_APPS",
                hint="a connection is started by a signed-in user, bound to the browser "
                     "session, and told to webhooks through clarion.django's outbox",
                id="clarion.E302"))
    if conf.ALLOW_HTTP and not settings.DEBUG:
        problems.append(checks.Warning(
            "CLARION['CONNECT']['ALLOW_HTTP'] is on with DEBUG off: discovery documents and "
            "tokens may travel over plain HTTP",
            hint="ALLOW_HTTP is for development against local servers", id="clarion.W301"))
    return problems
