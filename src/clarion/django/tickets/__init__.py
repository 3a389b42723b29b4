"""``clarion.django.tickets``: django-realtime-ticket's API on Clarion's hub.

``path("", include("clarion.django.tickets.urls"))`` serves ``POST /ticket/``;
``RealtimeTicketMiddleware`` (per view, with ``decorator_from_middleware``) puts
``realtime_ticket`` in the template context. Settings ``REALTIME_TICKET_EXPIRE`` and
``REALTIME_TICKET_REDIS``. See docs/topics/tickets.md.
"""

from __future__ import annotations

from .issuing import Ticket, create_ticket
from .middleware import RealtimeTicketMiddleware
from .views import RealtimeTicketView

__all__ = ["RealtimeTicketMiddleware", "RealtimeTicketView", "Ticket", "create_ticket"]
