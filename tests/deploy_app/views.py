"""What Django sees of a request (served beside examples/chat by chat_urls.py)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse


def whoami(request: HttpRequest) -> HttpResponse:
    return JsonResponse({
        "remote_addr": request.META.get("REMOTE_ADDR", ""),
        "x_forwarded_for": request.META.get("HTTP_X_FORWARDED_FOR", ""),
        "x_forwarded_proto": request.META.get("HTTP_X_FORWARDED_PROTO", ""),
        "host": request.get_host(),
        "secure": request.is_secure(),
    })
