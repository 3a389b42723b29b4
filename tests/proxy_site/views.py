"""The page, and test-only account views (CSRF-exempt, so tests and the bench can sign up
users over plain HTTP)."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.contrib.auth import login, logout
from django.contrib.auth.models import User
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

SDK = Path(__file__).resolve().parent.parent / "js" / "node_modules" / "centrifuge" / "dist" / (
    "centrifuge.js")


def page(request: HttpRequest) -> HttpResponse:
    return render(request, "proxy_site/page.html",
                  {"hub_json": json.dumps(settings.PROXY_SITE_HUB)})


@csrf_exempt
@require_POST
def signup(request: HttpRequest) -> HttpResponse:
    user = User.objects.create_user(request.POST["username"], password="not-checked-here")
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return JsonResponse({"id": user.pk, "username": user.username})


@csrf_exempt
@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return JsonResponse({"ok": True})


@csrf_exempt
@require_POST
def deactivate(request: HttpRequest) -> HttpResponse:
    User.objects.filter(username=request.POST["username"]).update(is_active=False)
    return JsonResponse({"ok": True})


def ping(request: HttpRequest) -> HttpResponse:
    return HttpResponse("pong")


def sdk(request: HttpRequest) -> HttpResponse:
    return FileResponse(SDK.open("rb"), content_type="text/javascript")
