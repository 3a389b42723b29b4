"""What a permission function, a publish validator, an RPC method or the connect hook is given:
one :class:`Call`, and who the user is.

Who the user is:

* **connect**: the Django session of the browser's cookie, which the hub forwards (its
  ``Cookie`` header). ``request.user`` when ``AuthenticationMiddleware`` ran; otherwise the
  session is read here the same way, so the views do not depend on the project's middleware.
* **every other proxy**: the user id the hub sends (``user``), which is the one the connect
  proxy answered for this connection. The hub is authenticated (a shared secret and/or its
  address), so the id is trusted; the user is loaded from the database, and one that is gone
  or inactive gets nothing. When the hub forwards the cookie for that proxy too, the session
  must still be that user's: a user who logged out loses the connection at its next refresh
  and is refused new subscriptions.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user, get_user_model
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError
from django.http import HttpRequest

__all__ = ["Call", "hub_user", "session_user"]


@dataclass(frozen=True, slots=True)
class Call:
    """One proxy request, as the Django code that answers it sees it."""

    kind: str  # "connect", "refresh", "subscribe", "publish", "sub_refresh", "rpc"
    request: HttpRequest  # the hub's request (headers it forwarded: Cookie, Origin, ...)
    user: Any  # a Django user, or AnonymousUser for an anonymous connection
    client: str  # the hub's id of the connection
    transport: str  # "websocket", "sse", "http_stream", ...
    channel: str = ""  # subscribe, publish, sub_refresh
    method: str = ""  # rpc ("" for an unnamed call)
    data: Any = None  # the client's payload: a JSON value, or bytes in the hub's binary mode
    meta: Any = None  # the connection's meta, when the hub includes it

    @property
    def user_id(self) -> str:
        """The hub's user id: ``str(user.pk)``, ``""`` when anonymous."""
        return "" if not self.user.is_authenticated else str(self.user.pk)


def session_user(request: HttpRequest) -> Any:
    """The user of the request's session cookie (AnonymousUser without a valid one)."""
    user = getattr(request, "user", None)
    if user is not None:
        return user
    if not hasattr(request, "session"):
        engine = import_module(settings.SESSION_ENGINE)
        request.session = engine.SessionStore(request.COOKIES.get(settings.SESSION_COOKIE_NAME))
    return get_user(request)


def hub_user(request: HttpRequest, user_id: str) -> Any | None:
    """The user the hub names, or None when that user is gone, inactive, or no longer the
    one of the session cookie the hub forwarded. ``""`` is the anonymous user."""
    if settings.SESSION_COOKIE_NAME in request.COOKIES:
        current = session_user(request)
        current_id = str(current.pk) if current.is_authenticated else ""
        return current if current_id == user_id else None
    if user_id == "":
        return AnonymousUser()
    model = get_user_model()
    try:
        user = model._default_manager.get(pk=user_id)
    except (model.DoesNotExist, ValueError, ValidationError):
        return None
    # ModelBackend's rule (user_can_authenticate): an inactive user has no session either.
    if not getattr(user, "is_active", True):
        return None
    return user
