"""``path("accounts/", include("clarion.django.connect.urls"))``.

====================================  ==========================================================
``connect/``                          the connect form (GET), start with its address (POST, CSRF)
``connect/<webfinger>/``              the connect form prefilled with ``alice@pump.example``
                                      (GET; the user confirms with the form's POST)
``connect/callback/``                 where servers send users back
``connect/email/``                    the address of a connection paused for the email check
``connect/email/<token>/``            the emailed link: resumes the paused connection
``connect/accounts/``                 the user's connected accounts
``connect/<pk>/disconnect/``          disconnect one (POST, CSRF)
====================================  ==========================================================
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.urls import path

from clarion.django.security import protect

from . import views
from .conf import connect_settings

app_name = "clarion_connect"


def _protect(view: Callable[..., Any]) -> Callable[..., Any]:
    """Clarion's protective headers, with a ``form-action`` that lets the connect form's POST
    be redirected to the user's server: browsers apply ``form-action`` to the redirects that
    follow a submission, and that server is not known when the page is served. The other
    directives stay as strict as the dashboard's."""
    protected = protect(view)

    @functools.wraps(view)
    def wrapped(request: Any, *args: Any, **kwargs: Any) -> Any:
        response = protected(request, *args, **kwargs)
        schemes = "https: http:" if connect_settings().ALLOW_HTTP else "https:"
        response["Content-Security-Policy"] = (
            f"frame-ancestors 'none'; base-uri 'none'; form-action 'self' {schemes}; "
            "object-src 'none'")
        return response

    return wrapped


urlpatterns = [
    path("connect/", _protect(views.start), name="start"),
    path("connect/callback/", _protect(views.callback), name="callback"),
    path("connect/accounts/", _protect(views.accounts), name="accounts"),
    path("connect/email/", _protect(views.email), name="email"),
    path("connect/email/<str:token>/", _protect(views.confirm_email), name="confirm_email"),
    path("connect/<int:pk>/disconnect/", _protect(views.disconnect), name="disconnect"),
    path("connect/<str:webfinger>/", _protect(views.start), name="start_address"),
]
