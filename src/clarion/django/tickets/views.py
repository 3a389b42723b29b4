"""``POST /ticket/``: a one-time ticket for the logged-in user, as django-realtime-ticket's view.

Answers (always JSON, never cached):

* 200 ``{"status": "ok", "message": "<ticket>", "expires_in": <seconds>}``;
* 403 ``{"status": "error", "message": …}`` for an anonymous user, or when the CSRF check
  fails (the view is CSRF-protected whether or not the project runs ``CsrfViewMiddleware``);
* 503 (with ``Retry-After``) when the ticket store (Redis, or the hub) is unreachable, 500
  when the hub refuses the request: the reason is logged with its traceback, the client is
  told only that there is no ticket;
* 405 with ``Allow: POST`` for any other method.

django-realtime-ticket answered 200 with ``"status": "error"`` for failures; a status code
lets ``fetch`` callers tell "log in" from "try again" without parsing the body.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils.decorators import decorator_from_middleware, method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from clarion.errors import BrokerError, HubError, HubUnavailable

from .issuing import create_ticket

__all__ = ["RealtimeTicketView", "error"]

log = logging.getLogger("clarion.django.tickets")


def error(status: int, message: str) -> JsonResponse:
    response = JsonResponse({"status": "error", "message": message}, status=status)
    response["Cache-Control"] = "no-store"
    return response


class _JsonCsrf(CsrfViewMiddleware):  # type: ignore[misc]  # Django ships no types
    """Django's own CSRF check (same cookie, header, trusted origins) answering in the
    view's JSON instead of the HTML failure page."""

    def _reject(self, request: HttpRequest, reason: str) -> HttpResponse:
        # The one hook Django's CsrfViewMiddleware has for its failure answer.
        log.warning("ticket refused: CSRF verification failed (%s)", reason)
        return error(403, f"CSRF verification failed: {reason}")


# csrf_exempt only tells a project-wide CsrfViewMiddleware to leave the view to ours, which
# performs the same check: the view is never without one.
@method_decorator(csrf_exempt, name="dispatch")
@method_decorator(decorator_from_middleware(_JsonCsrf), name="dispatch")
class RealtimeTicketView(View):  # type: ignore[misc]
    """Subclass and override :meth:`ticket_info` (presence info) or :meth:`ticket_channels`
    (server-side subscriptions) to put more in the ticket."""

    http_method_names = ["post"]

    def ticket_info(self, request: HttpRequest) -> Mapping[str, Any] | None:
        """Extra connection info, merged over ``{"username": …}``."""
        return None

    def ticket_channels(self, request: HttpRequest) -> list[str]:
        return []

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return error(403, "log in to get a ticket")
        try:
            ticket = create_ticket(user, info=self.ticket_info(request),
                                   channels=self.ticket_channels(request))
        except (BrokerError, HubUnavailable) as exc:
            # Unreachable (Redis or the hub): worth a retry. A broken configuration is not
            # caught (ConfigError, ImproperlyConfigured): it is the operator's 500.
            log.exception("ticket for user %s not issued", user.pk)
            response = error(503, "tickets are unavailable right now; try again shortly")
            retry_after = getattr(exc, "retry_after", None) or 1
            response["Retry-After"] = str(max(1, round(retry_after)))
            return response
        except HubError:
            # The hub refused the request (say a ttl above its ticket_max_ttl): no retry helps.
            log.exception("ticket for user %s refused by the hub", user.pk)
            return error(500, "the ticket could not be issued")
        response = JsonResponse({"status": "ok", "message": ticket.ticket,
                                 "expires_in": ticket.expires_in})
        response["Cache-Control"] = "no-store"
        return response

    def http_method_not_allowed(self, request: HttpRequest, *args: Any,
                                **kwargs: Any) -> HttpResponse:
        response = error(405, f"method {request.method} not allowed; use POST")
        response["Allow"] = "POST"
        return response
