"""``path("", include("clarion.django.tickets.urls"))``: ``POST /ticket/``, named
``realtime_ticket`` as in django-realtime-ticket."""

from __future__ import annotations

from django.urls import path

from .views import RealtimeTicketView

app_name = None  # the seed's URL name stays unnamespaced: {% url 'realtime_ticket' %}

urlpatterns = [
    path("ticket/", RealtimeTicketView.as_view(), name="realtime_ticket"),
]
