"""``RealtimeTicketMiddleware``: ``realtime_ticket`` in a ``TemplateResponse``'s context.

Meant per view, as django-realtime-ticket's README shows::

    @method_decorator(decorator_from_middleware(RealtimeTicketMiddleware))
    def dispatch(self, *args, **kwargs): ...

(listed in ``MIDDLEWARE`` it would write a ticket into Redis for every page that renders a
template). ``realtime_ticket`` is the ticket string, or ``None`` when there is none: an
anonymous user (logged at DEBUG), or a store that failed (logged at ERROR with the traceback).
Responses that are not ``TemplateResponse``s are left alone, and no ticket is issued for them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.utils.cache import add_never_cache_headers

from clarion.errors import BrokerError, HubError

from .issuing import create_ticket

__all__ = ["RealtimeTicketMiddleware"]

log = logging.getLogger("clarion.django.tickets")

CONTEXT_NAME = "realtime_ticket"


class RealtimeTicketMiddleware:
    """Subclass and override :meth:`ticket_info` / :meth:`ticket_channels` to put more in
    the ticket, as with :class:`~clarion.django.tickets.views.RealtimeTicketView`."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse] | None = None
                 ) -> None:
        # decorator_from_middleware passes the view; MIDDLEWARE passes the next handler.
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        assert self.get_response is not None, "RealtimeTicketMiddleware needs get_response"
        return self.get_response(request)

    def ticket_info(self, request: HttpRequest) -> Mapping[str, Any] | None:
        """Extra connection info, merged over ``{"username": …}``."""
        return None

    def ticket_channels(self, request: HttpRequest) -> list[str]:
        return []

    def process_template_response(self, request: HttpRequest,
                                  response: HttpResponse) -> HttpResponse:
        context = getattr(response, "context_data", None)
        if context is None:
            context = response.context_data = {}
        ticket = context[CONTEXT_NAME] = self.ticket_for(request)
        if ticket is not None:
            # A cached copy would hand one user's ticket to whoever gets the copy.
            add_never_cache_headers(response)
        return response

    def ticket_for(self, request: HttpRequest) -> str | None:
        """The ticket for this request's user, or None (with the reason logged)."""
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            log.debug("no realtime ticket for %s: not logged in", request.path)
            return None
        try:
            ticket = create_ticket(user, info=self.ticket_info(request),
                                   channels=self.ticket_channels(request))
        except (BrokerError, HubError):
            # Not ConfigError or ImproperlyConfigured: a broken configuration must be seen,
            # not rendered as "no ticket".
            log.exception("no realtime ticket for user %s on %s", user.pk, request.path)
            return None
        return ticket.ticket
