"""The demo chat page served by Django, its ticket view, and what Django sees of a request."""

from __future__ import annotations

import json
from importlib import resources

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from clarion.client import Client


def demo_page(request: HttpRequest) -> HttpResponse:
    page = resources.files("clarion.hub").joinpath("static/demo.html").read_text("utf-8")
    return HttpResponse(page, content_type="text/html; charset=utf-8")


def demo_ticket(request: HttpRequest) -> HttpResponse:
    """The demo page's ticket, from the hub's server API (a real app checks its login here;
    this app has no CSRF middleware, as the demo page sends no token)."""
    if request.method != "POST":
        return JsonResponse({"error": "use POST"}, status=405)
    try:
        name = str(json.loads(request.body or b"{}").get("name", "")).strip()[:32]
    except (ValueError, AttributeError):
        return JsonResponse({"error": 'body must be JSON like {"name": "ada"}'}, status=400)
    if not name:
        return JsonResponse({"error": "name is required"}, status=422)
    with Client(settings.DEPLOY_HUB_URL, api_key=settings.DEPLOY_API_KEY) as hub:
        ticket = hub.ticket(name, info={"name": name})
    return JsonResponse({"ticket": ticket.ticket})


def whoami(request: HttpRequest) -> HttpResponse:
    return JsonResponse({
        "remote_addr": request.META.get("REMOTE_ADDR", ""),
        "x_forwarded_for": request.META.get("HTTP_X_FORWARDED_FOR", ""),
        "x_forwarded_proto": request.META.get("HTTP_X_FORWARDED_PROTO", ""),
        "host": request.get_host(),
        "secure": request.is_secure(),
    })
